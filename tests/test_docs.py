"""The documentation in docs/ stays true to the code: the generated config reference is current,
relative links point at files that exist, and the commands and configs the pages name exist."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
COMMAND = re.compile(r"(?<![\w/.-])scorestudio ([a-z][a-z-]*)")
CONFIG = re.compile(r"(?<![\w/.-])(configs/[\w./-]+\.yaml)")
CODE = re.compile(r"```.*?```|`[^`\n]+`", re.S)
CODE_BLOCK = re.compile(r"^```.*?^```", re.S | re.M)


def test_config_reference_is_current():
    from scorestudio.tools.config_reference import COMMAND as REGENERATE
    from scorestudio.tools.config_reference import render, stale_diff

    current = (DOCS / "config-reference.md").read_text()
    expected = render()
    assert current == expected, (f"docs/config-reference.md is stale: regenerate it with `{REGENERATE}` "
                                 f"and commit it.\n{stale_diff(current, expected)}")


def anchors(page: Path) -> Iterator[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces → '-', and
    '-1', '-2', ... after repeated headings."""
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#+ (.+)$", CODE_BLOCK.sub("", page.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        seen[slug] = seen.get(slug, -1) + 1
        yield slug if seen[slug] == 0 else f"{slug}-{seen[slug]}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_point_at_existing_files_and_headings(page):
    missing = []
    for target in LINK.findall(CODE_BLOCK.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue
        name, _, anchor = target.partition("#")
        path = (page.parent / name).resolve() if name else page
        if not path.exists() or (anchor and path.suffix == ".md" and anchor not in set(anchors(path))):
            missing.append(target)
    assert not missing, f"{page.name} links to files or headings that do not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_named_commands_and_configs_exist(page):
    from scorestudio.cli import COMMANDS

    text = page.read_text()
    code = "\n".join(CODE.findall(text))
    commands = set(COMMAND.findall(code)) - set(COMMANDS)
    configs = sorted({c for c in CONFIG.findall(text) if not (ROOT / c).is_file() and c != "configs/parsed.yaml"})
    assert not commands, f"{page.name} names commands that scorestudio --help does not list: {sorted(commands)}"
    assert not configs, f"{page.name} names configs that do not exist: {configs}"
