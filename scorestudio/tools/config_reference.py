"""``scorestudio config-reference``: write docs/config-reference.md from the ``Config`` dataclasses.

    scorestudio config-reference                 # (re)writes docs/config-reference.md
    scorestudio config-reference --check         # exit status 1 when the file is stale
    scorestudio config-reference --out FILE      # elsewhere

Every registered module of the package (:func:`scorestudio.utils.registry.known_names`) gets a
table of its config keys: type, default and the comment written beside the field in the source
(the comment on the field's lines, else the comment lines right above it; a field a subclass
redeclares without a comment keeps its base class's). Nested dataclasses are expanded into dotted
keys (``system.generator.geometry.grid.resolution``) with the defaults of the enclosing class, so
a subclass that changes a nested default shows its own. The order is fixed: the run config, then
the kinds in :data:`KIND_ORDER` (others after them, by name), names sorted, fields in declaration
order. Modules registered from outside the package (a test's toy generator) are left out.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import inspect
import io
import json
import sys
import textwrap
import tokenize
import typing
from functools import lru_cache
from importlib import import_module
from pathlib import Path
from typing import Any, Iterator, Optional

from omegaconf import MISSING

DEFAULT_OUT = Path("docs/config-reference.md")
COMMAND = "scorestudio config-reference"

# Kind → (section title, where its keys sit in a run config, how a config selects a module).
KIND_ORDER = {
    "systems": ("Systems", "system.", "`system_type: NAME`"),
    "generators": ("Generators", "system.generator.", "`system.generator_type: NAME`"),
    "priors": ("Priors", "system.prior.", "`system.prior_type: NAME`"),
    "guidance": ("Guidance", "system.guidance.", "`system.guidance_type: NAME`"),
    "metrics": ("Evaluators", "", "a name in `system.evaluation.evaluators`"),
    "data": ("Operators", "data.operator_cfg.", "`data.operator: NAME`"),
}
# Registered names whose keys sit elsewhere than their kind's.
PREFIX_OVERRIDES = {"prompt-processor": "system.prompt_processor."}
# The ``data`` section a system parses itself (not a registered module).
DATA_CONFIGS = {
    "inverse": "scorestudio.data.problems:InverseDataConfig",
    "svg-restoration": "scorestudio.data.problems:RestorationDataConfig",
}
RUN_CONFIG = "scorestudio.utils.run:ExperimentConfig"
RULES = ("---", "===")   # a comment line starting so is a section rule of the source, not a field's comment
ROOT = Path(__file__).resolve().parents[2]   # defaults under the checkout are shown relative to it


# --------------------------------------------------------------------------------------------
# Comments beside the fields in the source.
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def field_comments(cls: type) -> dict[str, str]:
    """{field: comment} for the fields ``cls`` itself declares: the ``# ...`` on the field's lines
    (with the comment-only lines below it that continue it, aligned with it), else the comment
    lines right above the field, at its indentation. Empty when there is no source."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments: dict[int, tuple[int, str]] = {}   # line → (column, text)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = (token.start[1], token.string.lstrip("#").strip())
    lines = source.splitlines()

    def comment_only(n: int, column: int) -> bool:
        return n in comments and comments[n][0] == column and not lines[n - 1][:column].strip()

    out = {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        beside = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
        if beside:
            n, column = node.end_lineno + 1, beside[-1][0]
            while comment_only(n, column) and column > node.col_offset:
                beside.append(comments[n])
                n += 1
        above, n = [], node.lineno - 1
        while comment_only(n, node.col_offset):
            above.insert(0, comments[n])
            n -= 1
        text = " ".join(t for _, t in (beside or above) if not t.startswith(RULES))
        if text:
            out[node.target.id] = text
    return out


def comment_of(cls: type, name: str) -> str:
    """The comment of field ``name`` of dataclass ``cls``: from the most derived class that
    declares it with a comment."""
    for klass in cls.__mro__:
        if name in vars(klass).get("__annotations__", {}):
            text = field_comments(klass).get(name)
            if text:
                return text
    return ""


# --------------------------------------------------------------------------------------------
# Types and defaults as a config file writes them.
# --------------------------------------------------------------------------------------------


def type_name(tp: Any, schedulable: bool = False) -> str:
    """``Optional[int]`` → ``int | null``, a schedulable field → ``float | schedule``."""
    if schedulable:
        return "float \\| schedule"
    if tp is Any:
        return "any"
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        return " \\| ".join(type_name(a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return " \\| ".join(repr(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(type_name(a) for a in typing.get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if isinstance(tp, str):
        return tp
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def yaml_value(value: Any) -> str:
    """A default in YAML flow style: ``null``, ``true``, ``"text"``, ``[0, 0.5]``, ``{lr: 0.01}``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        if value.startswith(f"{ROOT}/"):
            value = value[len(f"{ROOT}/"):]
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {yaml_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def default_of(field: dataclasses.Field, owner: Any) -> Any:
    """The default of ``field``: read from ``owner`` (an instance) when given, else the field's."""
    if owner is not None:
        return getattr(owner, field.name)
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return MISSING


def default_cell(value: Any) -> str:
    if value is MISSING or value == MISSING:
        return "*required*"
    return f"`{yaml_value(value)}`".replace("|", "\\|")


# --------------------------------------------------------------------------------------------
# Rows of one Config.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    key: str
    type: str
    default: str
    comment: str


def resolved_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:   # an annotation that does not resolve: its text is still worth showing
        return {f.name: f.type for f in dataclasses.fields(cls)}


def config_rows(cls: type, prefix: str, owner: Any = None) -> Iterator[Row]:
    """A row per leaf key of dataclass ``cls`` under ``prefix`` (nested dataclasses expanded,
    their defaults taken from ``owner``, the enclosing default instance)."""
    hints = resolved_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for field in dataclasses.fields(cls):
        value = default_of(field, owner)
        tp = hints.get(field.name, field.type)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            yield from config_rows(type(value), f"{prefix}{field.name}.", value)
            continue
        notes = [comment_of(cls, field.name)]
        selects = selected_kind(field.name, value)
        if selects:
            notes.append(f"(one of the [{selects}](#{selects.lower()}))")
        if f"{field.name}_type" in names:
            notes.append(f"(the config of the module `{prefix}{field.name}_type` selects)")
        comment = " ".join(n for n in notes if n).replace("|", "\\|").replace("<", "\\<")
        yield Row(f"{prefix}{field.name}", type_name(tp, field.metadata.get("schedulable", False)),
                  default_cell(value), comment)


def selected_kind(name: str, value: Any) -> Optional[str]:
    """The section a ``*_type`` key picks a module from (its default's kind), else None."""
    if not name.endswith("_type") or not isinstance(value, str):
        return None
    from scorestudio.utils.registry import _KINDS

    kind = _KINDS.get(value)
    return KIND_ORDER[kind][0] if kind in KIND_ORDER else None


def table(rows: list[Row]) -> list[str]:
    lines = ["| key | type | default | description |", "|---|---|---|---|"]
    lines += [f"| `{r.key}` | {r.type} | {r.default} | {r.comment} |" for r in rows]
    return lines


# --------------------------------------------------------------------------------------------
# The document.
# --------------------------------------------------------------------------------------------


def load(spec: str) -> type:
    module, name = spec.split(":")
    return getattr(import_module(module), name)


def summary(cls: type) -> str:
    """The first paragraph of a class's (or else its module's) docstring, on one line."""
    doc = cls.__doc__ if "__doc__" in vars(cls) else None
    if doc and doc.startswith(f"{cls.__name__}("):   # the signature a dataclass writes when undocumented
        doc = None
    doc = inspect.cleandoc(doc) if doc else inspect.getdoc(sys.modules[cls.__module__]) or ""
    return " ".join(doc.split("\n\n")[0].split())


def package_names(kind: str) -> list[str]:
    """Registered names of ``kind`` defined in the package (imported on the way)."""
    from scorestudio.utils.registry import find, known_names

    return [n for n in known_names(kind) if find(n).__module__.startswith("scorestudio.")]


def kinds() -> list[str]:
    from scorestudio.utils.registry import _KINDS, known_names

    found = {k for k in _KINDS.values() if k != "other" and known_names(k)}
    return [k for k in KIND_ORDER if k in found] + sorted(found - set(KIND_ORDER))


def module_section(name: str, kind: str) -> list[str]:
    from scorestudio.utils.registry import find

    cls = find(name)
    _, prefix, selected = KIND_ORDER.get(kind, ("", "", "its name"))
    prefix = PREFIX_OVERRIDES.get(name, prefix)
    lines = [f"### `{name}`", "", f"`{cls.__module__}.{cls.__qualname__}`. {summary(cls)}", ""]
    config = getattr(cls, "Config", None)
    fields = dataclasses.fields(config) if dataclasses.is_dataclass(config) else ()
    how = "Built by every distillation system" if name in PREFIX_OVERRIDES else f"Selected by {selected}"
    where = f" Keys under `{prefix.rstrip('.')}`." if prefix else ""
    lines += [f"{how.replace('NAME', name)}.{where}", ""]
    if not fields:
        return lines + ["No settings.", ""]
    lines += table(list(config_rows(config, prefix))) + [""]
    if kind == "systems" and name in DATA_CONFIGS:
        data = load(DATA_CONFIGS[name])
        lines += [f"Its inputs, `data` (`{data.__module__}.{data.__qualname__}`): {summary(data)}", ""]
        lines += table(list(config_rows(data, "data."))) + [""]
    return lines


def render() -> str:
    """The whole of docs/config-reference.md."""
    run = load(RUN_CONFIG)
    lines = [
        "# Config reference",
        "",
        f"Generated by `{COMMAND}` from the `Config` dataclasses of every registered module; do not edit",
        "by hand (`tests/test_docs.py` fails when this file is stale). How configs are written, inherited",
        "and overridden: [configs.md](configs.md).",
        "",
        "Keys are written as a run config nests them (`system.generator.geometry.grid.resolution`); set them",
        "in YAML or as `key=value` on the command line. A **schedule** is `[start_step, start_value,",
        "end_value, end_step]`. A `dict` key holds the config of the module its `*_type` key selects.",
        "",
        "## Run config",
        "",
        f"`{run.__module__}.{run.__qualname__}`: the top level of every YAML config.",
        "",
        *table(list(config_rows(run, ""))),
        "",
    ]
    for kind in kinds():
        title = KIND_ORDER.get(kind, (kind.capitalize(),))[0]
        lines += [f"## {title}", ""]
        for name in package_names(kind):
            lines += module_section(name, kind)
    return "\n".join(lines).rstrip("\n") + "\n"


def stale_diff(current: str, expected: str, limit: int = 40) -> str:
    """The first ``limit`` lines of a unified diff from ``current`` to ``expected``."""
    diff = difflib.unified_diff(current.splitlines(), expected.splitlines(), "docs/config-reference.md (file)",
                                "regenerated", lineterm="", n=1)
    return "\n".join(list(diff)[:limit])


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description="write the config reference from the Config dataclasses")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"the file to write (default {DEFAULT_OUT})")
    parser.add_argument("--check", action="store_true", help="write nothing; exit with 1 when the file is stale")
    args = parser.parse_args(argv)
    text = render()
    current = args.out.read_text() if args.out.is_file() else ""
    if args.check:
        if current != text:
            print(f"{args.out} is stale: run {COMMAND}\n{stale_diff(current, text)}", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
