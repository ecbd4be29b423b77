"""YAML configs with inheritance and dot-list overrides, parsed into per-module dataclasses.

A run's config is a YAML file (optionally ``extends: base.yaml`` or a list of bases) merged
with command-line ``key=value`` overrides through OmegaConf, then resolved. Each module parses
its own sub-tree into its nested ``Config`` dataclass with :func:`parse_structured`, which turns
OmegaConf's exceptions into one :class:`ConfigError` naming the full key path, the dataclass
and what to do about it.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (
    ConfigKeyError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)


class ConfigError(ValueError):
    """A config that cannot be used as written. The message says which key and how to fix it."""


def did_you_mean(name: str, known: list[str]) -> str:
    """The hint ' Did you mean "a", "b"?' naming the known names closest to a misspelt ``name`` (or "")."""
    close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.5)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


# --------------------------------------------------------------------------------------------
# Resolvers usable as ${name:args} in YAML files.
# --------------------------------------------------------------------------------------------

_RESOLVERS = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "idiv": lambda a, b: a // b,
    "rmspace": lambda s, sub="_": str(s).replace(" ", sub),
    "basename": lambda p: os.path.basename(str(p)),
    "tuple2": lambda s: [float(s), float(s)],
    "shsplit": lambda s: shlex.split(str(s)),
}
for _name, _fn in _RESOLVERS.items():
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_resolver(_name, _fn, annotation_validation="off")


# --------------------------------------------------------------------------------------------
# Scheduled scalars (threestudio's C()).
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """A scalar that ramps linearly from ``start_value`` at ``start_step`` to ``end_value`` at
    ``end_step`` and stays constant outside that interval. A plain number is a constant schedule.

    Written in YAML as a number or as ``[start_step, start_value, end_value, end_step]``.
    """

    start_step: int
    start_value: float
    end_value: float
    end_step: int

    @classmethod
    def constant(cls, value: float) -> "Schedule":
        return cls(0, float(value), float(value), 0)

    def at(self, step: int) -> float:
        if step <= self.start_step or self.end_step <= self.start_step:
            return self.start_value if step <= self.start_step else self.end_value
        if step >= self.end_step:
            return self.end_value
        frac = (step - self.start_step) / (self.end_step - self.start_step)
        return self.start_value + frac * (self.end_value - self.start_value)

    def ever_nonzero(self) -> bool:
        """Whether the value is nonzero at some step (a linear ramp is zero only where both ends are)."""
        return self.start_value != 0 or self.end_value != 0


# Annotation of schedulable fields: a number or a [s0, v0, v1, s1] list in YAML, a Schedule after
# parsing. OmegaConf checks fields against their annotation and takes neither a list in a float
# field nor a Union with a dataclass, so it sees Any; type checkers see what code reads.
if TYPE_CHECKING:
    ScheduledFloat = Schedule
else:
    ScheduledFloat = Any


def schedulable(default: float | tuple[float, float, float, float]) -> Any:
    """Declare a dataclass field (annotated ``ScheduledFloat``) that accepts a number or a
    ``[start_step, start_value, end_value, end_step]`` schedule; a tuple default is a schedule.

    After :func:`parse_structured` the field holds a :class:`Schedule`; read it with ``.at(step)``.
    """
    return field(default=default, metadata={"schedulable": True})


def _to_schedule(value: Any, key: str) -> Schedule:
    if isinstance(value, Schedule):
        return value
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a number or [start_step, start_value, end_value, end_step], got {value!r}")
    if isinstance(value, (int, float)):
        return Schedule.constant(value)
    if isinstance(value, (list, tuple, ListConfig)) and len(value) == 4:
        s0, v0, v1, s1 = list(value)
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (s0, v0, v1, s1)):
            if s1 < s0:
                raise ConfigError(f"{key}: schedule end_step {s1} comes before start_step {s0}")
            return Schedule(int(s0), float(v0), float(v1), int(s1))
    raise ConfigError(
        f"{key}: expected a number or a schedule [start_step, start_value, end_value, end_step], "
        f"got {value!r}"
    )


# --------------------------------------------------------------------------------------------
# Loading YAML files with inheritance and overrides.
# --------------------------------------------------------------------------------------------


def _load_yaml_with_extends(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    """Load ``path``; if it has ``extends: base.yaml`` (or a list), merge the bases first.

    Base paths are relative to the file that names them. Cycles are an error.
    """
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ConfigError(f"config inheritance cycle: {chain}")
    if not path.is_file():
        siblings = sorted(p.name for p in path.parent.glob("*.yaml")) if path.parent.is_dir() else []
        hint = did_you_mean(path.name, siblings)
        raise ConfigError(f"config file not found: {path}" + (f".{hint}" if hint else ""))
    try:
        cfg = OmegaConf.load(path)
    except Exception as err:  # yaml.YAMLError and friends: report the file
        raise ConfigError(f"cannot parse config file {path}: {err}") from err
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    bases = cfg.pop("extends", None)
    if bases is None:
        return cfg
    base_list = [bases] if isinstance(bases, str) else list(bases)
    merged = OmegaConf.create()
    for base in base_list:
        merged = OmegaConf.merge(merged, _load_yaml_with_extends(path.parent / base, (*seen, path)))
    return OmegaConf.merge(merged, cfg)


def shipped_config_dirs() -> list[Path]:
    """Where the shipped configs live: inside the package, or beside it in a source checkout."""
    package = Path(__file__).resolve().parents[1]
    return [d for d in (package / "configs", package.parent / "configs") if d.is_dir()]


def config_path(path: str | os.PathLike) -> Path:
    """``path`` itself when it exists or names a folder, else the shipped config of that name
    (``dreamfusion-embedded`` or ``dreamfusion-embedded.yaml``)."""
    given = Path(path)
    if given.exists() or len(given.parts) > 1:
        return given
    name = given.name if given.suffix == ".yaml" else f"{given.name}.yaml"
    found = [d / name for d in shipped_config_dirs() if (d / name).is_file()]
    if found:
        return found[0]
    shipped = sorted({p.stem for d in shipped_config_dirs() for p in d.glob("*.yaml")})
    raise ConfigError(f"config {str(path)!r} is neither a file nor a shipped config.{did_you_mean(given.stem, shipped)} "
                      f"Shipped configs: {', '.join(shipped)}")


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None,
                resolve: bool = True) -> DictConfig:
    """YAML file (with ``extends``) + dot-list overrides (``a.b=1``) → one resolved DictConfig."""
    cfg = _load_yaml_with_extends(config_path(path)) if path is not None else OmegaConf.create()
    if overrides:
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"overrides must look like key=value, got {bad}")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        except OmegaConfBaseException as err:
            raise ConfigError(f"bad override {overrides}: {err.msg if hasattr(err, 'msg') else err}") from err
    if resolve:
        try:
            OmegaConf.resolve(cfg)
        except OmegaConfBaseException as err:
            raise ConfigError(f"cannot resolve interpolation: {err}") from err
    return cfg


def dump_config(cfg: Any, path: str | os.PathLike) -> None:
    """Write a fully resolved config, re-runnable with ``--config``."""
    if dataclasses.is_dataclass(cfg):
        cfg = OmegaConf.structured(cfg)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, path, resolve=True)


# --------------------------------------------------------------------------------------------
# Parsing a sub-tree into a dataclass, with errors a person can act on.
# --------------------------------------------------------------------------------------------


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _nested_class(cls: type, dotted: str) -> tuple[type, str]:
    """Follow a dotted key through nested dataclasses: return (innermost class, last key)."""
    parts = dotted.split(".")
    hints = _resolved_types(cls)
    for part in parts[:-1]:
        nxt = hints.get(part)
        if nxt is None or not dataclasses.is_dataclass(nxt):
            break
        cls, hints = nxt, _resolved_types(nxt)
    return cls, parts[-1]


def _resolved_types(cls: type) -> dict[str, Any]:
    import typing

    try:
        return typing.get_type_hints(cls)
    except Exception:  # forward references that cannot be resolved: fall back to raw annotations
        return {f.name: f.type for f in dataclasses.fields(cls)}


def _schedulable_fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.metadata.get("schedulable")]


def _pop_schedulables(cls: type, raw: dict, prefix: str) -> dict[str, Schedule]:
    """Take schedulable fields out of ``raw`` (OmegaConf would reject a list in a float field)."""
    out = {}
    for name in _schedulable_fields(cls):
        if name in raw:
            out[name] = _to_schedule(raw.pop(name), f"{prefix}{name}")
    return out


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def parse_structured(cls: type, cfg: Any = None, path: str = "") -> Any:
    """Parse ``cfg`` (dict, DictConfig, dataclass instance or None) into an instance of ``cls``.

    ``path`` is the dotted location of this sub-tree in the run config (e.g. ``system.guidance``)
    and prefixes every error message. Nested dataclass fields are parsed recursively so their
    errors name the full key too. Schedulable fields become :class:`Schedule` objects.
    """
    prefix = f"{path}." if path else ""
    if cfg is None:
        raw: dict = {}
    elif isinstance(cfg, cls):
        _finalize(cfg, prefix)
        return cfg
    elif dataclasses.is_dataclass(cfg):
        raw = dataclasses.asdict(cfg)
    elif isinstance(cfg, DictConfig):
        raw = OmegaConf.to_container(cfg, resolve=True)
    elif isinstance(cfg, dict):
        raw = dict(cfg)
    else:
        raise ConfigError(f"{path or 'config'}: expected a mapping of keys for {cls.__name__}, got {cfg!r}")

    known = _field_names(cls)
    for key in raw:
        if key not in known:
            where = f"{cls.__module__}.{cls.__qualname__}"
            raise ConfigError(f"unknown config key '{prefix}{key}' for {where}.{did_you_mean(key, known)} "
                              f"Valid keys: {', '.join(known)}")

    schedules = _pop_schedulables(cls, raw, prefix)
    hints = _resolved_types(cls)
    nested = {}
    for name in list(raw):
        tp = hints.get(name)
        if dataclasses.is_dataclass(tp) and raw[name] is not None:
            nested[name] = parse_structured(tp, _over_default(cls, name, raw.pop(name)), f"{prefix}{name}")

    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), raw)
        obj = OmegaConf.to_object(merged)
    except MissingMandatoryValue as err:
        key = getattr(err, "full_key", "") or getattr(err, "key", "")
        raise ConfigError(f"missing required config key '{prefix}{key}' for {cls.__qualname__}: set it in the YAML or as {prefix}{key}=...") from err
    except (ValidationError, ConfigKeyError) as err:
        key = str(getattr(err, "full_key", "") or getattr(err, "key", ""))
        owner, leaf = _nested_class(cls, key) if key else (cls, "")
        expected = _resolved_types(owner).get(leaf)
        value = raw
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else value
        raise ConfigError(
            f"config key '{prefix}{key}' expects {_type_name(expected)}, got {value!r} "
            f"(in {owner.__qualname__})"
        ) from err
    for name, value in {**schedules, **nested}.items():
        setattr(obj, name, value)
    _finalize(obj, prefix)
    return obj


def _over_default(cls: type, name: str, value: Any) -> Any:
    """``value`` (a mapping) merged over the default of ``cls``'s nested field ``name``, so a
    subclass's default for a nested section (its own optimizer args, evaluators) survives an
    override of some of its keys."""
    default = next(f for f in dataclasses.fields(cls) if f.name == name).default_factory
    if default is dataclasses.MISSING or not isinstance(value, (dict, DictConfig)):
        return value
    merged = OmegaConf.merge(OmegaConf.create(dataclasses.asdict(default())), value)
    return OmegaConf.to_container(merged, resolve=True)


def _finalize(obj: Any, prefix: str) -> None:
    """Make every schedulable field (in nested dataclasses too, defaults included) a Schedule."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.metadata.get("schedulable"):
            setattr(obj, f.name, _to_schedule(value, f"{prefix}{f.name}"))
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            _finalize(value, f"{prefix}{f.name}.")


def to_plain(cfg: Any) -> Any:
    """Dataclass / DictConfig → plain containers (Schedules back to YAML form), for saving."""
    if isinstance(cfg, Schedule):
        if cfg.start_step == cfg.end_step == 0 and cfg.start_value == cfg.end_value:
            return cfg.start_value
        return [cfg.start_step, cfg.start_value, cfg.end_value, cfg.end_step]
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    if isinstance(cfg, dict):
        return {k: to_plain(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [to_plain(v) for v in cfg]
    return cfg
