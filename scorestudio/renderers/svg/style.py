"""The computed style of every SVG element: presentation attributes, ``<style>`` sheets, ``style``
attributes, ``!important``, inheritance and ``inherit``, colours and paints.

Written on tinycss2 (CSS syntax, colours) and cssselect2 (selector matching with specificity), the
parsers CairoSVG and WeasyPrint use. svgelements, which reads the geometry, gets the cascade wrong
in ways real files hit: combined selectors, a ``<style>`` after the elements it styles, a
``type`` other than CSS, ``inherit``, and ``rgb()`` with spaces or decimals; so the cascade is done
here, once, over the whole XML tree, before the tree is walked.

Sheets are read only from ``<style>`` elements inside the document (``@import`` and every other
at-rule are ignored), so styling never reads another file.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional
from xml.etree import ElementTree

import cssselect2
import tinycss2
import tinycss2.color4

MAX_SVG_CSS_SELECTORS = 10_000     # selectors of all <style> sheets; each is matched against every element

# Properties with their initial value; the inherited ones take their parent's computed value when
# an element does not specify them. Presentation attributes are exactly these names.
INHERITED = {
    "fill": "black", "fill-opacity": "1", "fill-rule": "nonzero",
    "stroke": "none", "stroke-width": "1", "stroke-opacity": "1", "stroke-linecap": "butt",
    "stroke-linejoin": "miter", "stroke-miterlimit": "4", "stroke-dasharray": "none",
    "stroke-dashoffset": "0", "color": "black", "visibility": "visible", "clip-rule": "nonzero",
    "font-size": "16", "paint-order": "normal",
    "marker-start": "none", "marker-mid": "none", "marker-end": "none",
}
NOT_INHERITED = {
    "opacity": "1", "display": "inline", "clip-path": "none", "mask": "none", "filter": "none",
    "stop-color": "black", "stop-opacity": "1", "mix-blend-mode": "normal", "isolation": "auto",
    "overflow": "visible", "transform": "", "transform-origin": "0 0", "background-color": "transparent",
}
PROPERTIES = {**INHERITED, **NOT_INHERITED}
# `marker` is a shorthand for the three marker properties
_SHORTHANDS = {"marker": ("marker-start", "marker-mid", "marker-end")}


class StyleError(ValueError):
    """A document whose style sheets are beyond :data:`MAX_SVG_CSS_SELECTORS`."""


def local(tag) -> str:
    """An element's tag without its namespace ('' for comments and processing instructions)."""
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def attribute(el: ElementTree.Element, name: str, default: Optional[str] = None) -> Optional[str]:
    """An attribute by its local name (``href`` also as ``xlink:href``)."""
    if name in el.attrib:
        return el.attrib[name]
    for key, value in el.attrib.items():
        if key.endswith("}" + name):
            return value
    return default


def cascade(root: ElementTree.Element) -> dict[int, dict[str, str]]:
    """The specified declarations of every element under ``root`` that has any (keyed by
    ``id(element)``): presentation attributes, matching rules of the document's style sheets and
    the ``style`` attribute, in cascade order. Inheritance is left to the walk (:func:`compute`),
    because an element that ``<use>`` inserts inherits from the ``<use>``, not from its XML parent."""
    matcher, count = _style_sheets(root)
    if not count:
        return {id(el): _specified(el, []) for el in root.iter()}
    return {id(w.etree_element): _specified(w.etree_element, matcher.match(w))
            for w in cssselect2.ElementWrapper.from_xml_root(root).iter_subtree()}


def initial() -> dict[str, str]:
    """The computed style of the root's parent: every property at its initial value."""
    return dict(PROPERTIES)


def compute(own: dict[str, str], parent: dict[str, str]) -> dict[str, str]:
    """Computed values from an element's specified ones and its parent's computed ones."""
    out = {}
    for name, first in PROPERTIES.items():
        value = own.get(name)
        if value is not None and not _valid(name, value):
            value = None
        if value is None or value == "inherit":
            value = parent[name] if (value == "inherit" or name in INHERITED) else first
        elif value in ("initial", "unset"):
            value = parent[name] if (value == "unset" and name in INHERITED) else first
        out[name] = value
    return out


def _valid(name: str, value: str) -> bool:
    """Whether a specified value is valid for its property; an invalid one is dropped as if it were
    not specified (CSS), so the property inherits or takes its initial value. Checked for the paints
    only: an unreadable ``fill`` must give the inherited paint (black at the root), not nothing."""
    if name not in ("fill", "stroke") or value in ("inherit", "initial", "unset"):
        return True
    return is_paint(value)


def _style_sheets(root: ElementTree.Element) -> tuple[cssselect2.Matcher, int]:
    """One matcher for the rules of every CSS ``<style>`` of the document, wherever it stands
    (a sheet applies to the whole document, also to elements before it)."""
    matcher, count = cssselect2.Matcher(), 0
    for el in root.iter():
        if local(el.tag) != "style" or (el.get("type") or "text/css").strip().lower() != "text/css":
            continue
        for rule in tinycss2.parse_stylesheet("".join(el.itertext()), skip_comments=True, skip_whitespace=True):
            if rule.type != "qualified-rule":
                continue                                   # at-rules (@import, @media, …) are not read
            try:
                selectors = cssselect2.compile_selector_list(rule.prelude)
            except cssselect2.SelectorError:
                continue                                   # CSS: an invalid selector drops its rule
            declarations = _declarations(rule.content)
            for selector in selectors:
                count += 1
                if count > MAX_SVG_CSS_SELECTORS:
                    raise StyleError(f"more than {MAX_SVG_CSS_SELECTORS} CSS selectors, over the limit "
                                     f"{__name__}.MAX_SVG_CSS_SELECTORS; raise it for files you trust")
                matcher.add_selector(selector, declarations)
    return matcher, count


def _declarations(tokens) -> list[tuple[str, str, bool]]:
    """(property, value, important) of a declaration block, shorthands expanded."""
    out = []
    for decl in tinycss2.parse_declaration_list(tokens, skip_comments=True, skip_whitespace=True):
        if decl.type != "declaration":
            continue
        value = tinycss2.serialize(decl.value).strip()
        for name in _SHORTHANDS.get(decl.lower_name, (decl.lower_name,)):
            if name in PROPERTIES:
                out.append((name, value, decl.important))
    return out


def _specified(el: ElementTree.Element, matches) -> dict[str, str]:
    """The cascade for one element: presentation attributes < rules (by specificity, then order) <
    ``style`` attribute < ``!important`` rules < ``!important`` in ``style``."""
    own: dict[str, str] = {}
    for key, value in el.attrib.items():
        name = local(key)
        if name in PROPERTIES:
            own[name] = value.strip()
    for name in _SHORTHANDS:
        if name in el.attrib:
            own.update(dict.fromkeys(_SHORTHANDS[name], el.attrib[name].strip()))
    inline = _declarations(tinycss2.parse_component_value_list(el.get("style", "")))
    ranked = sorted(matches, key=lambda m: (m[0], m[1]))            # (specificity, order, pseudo, payload)
    for important in (False, True):
        for match in ranked:
            own.update((n, v) for n, v, imp in match[3] if imp == important)
        own.update((n, v) for n, v, imp in inline if imp == important)
    return own


# ---------------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Paint:
    """A ``fill`` or ``stroke``: ``rgba`` (straight, in [0, 1]) for a colour, else ``ref`` (the id of
    a paint server) with ``fallback`` (an RGBA or None) for when that server cannot be used."""

    rgba: Optional[tuple[float, float, float, float]] = None
    ref: Optional[str] = None
    fallback: Optional[tuple[float, float, float, float]] = None
    keyword: Optional[str] = None      # context-fill / context-stroke: unsupported, drawn as none


def parse_color(text: str, current: str = "black") -> Optional[tuple[float, float, float, float]]:
    """A CSS colour (named, #rgb[a], rgb()/rgba() with commas or spaces, integers, decimals or
    percentages, hsl(), transparent, currentColor) as straight RGBA in [0, 1]; None if invalid."""
    text = text.strip()
    if text.lower() == "currentcolor":
        text = current if current.strip().lower() != "currentcolor" else "black"
    try:
        color = tinycss2.color4.parse_color(text)
    except (ValueError, TypeError, IndexError):
        return None
    if not isinstance(color, tinycss2.color4.Color):
        return None
    if color.space == "hsl":                       # CSS clamps saturation and lightness to [0, 100] %
        h, sat, light = color.coordinates
        color = tinycss2.color4.Color("hsl", (h, min(max(sat, 0.0), 100.0), min(max(light, 0.0), 100.0)),
                                      color.alpha)
    r, g, b, a = tuple(color.to("srgb"))
    return (min(max(r, 0.0), 1.0), min(max(g, 0.0), 1.0), min(max(b, 0.0), 1.0), min(max(a, 0.0), 1.0))


@functools.lru_cache(maxsize=4096)
def is_paint(text: str) -> bool:
    """Whether ``text`` is a paint: ``none``, ``context-fill`` / ``context-stroke``, a colour, or
    ``url(…)`` followed by nothing, ``none`` or a colour."""
    text = text.strip()
    low = text.lower()
    if low in ("none", "context-fill", "context-stroke", "currentcolor"):
        return True
    if low.startswith("url(") and ")" in text:
        rest = text[text.index(")") + 1:].strip()
        return not rest or rest.lower() == "none" or parse_color(rest) is not None
    return parse_color(text) is not None


def parse_paint(text: str, current: str) -> Optional[Paint]:
    """A paint value; None for ``none`` and for a value that is not a paint (drawn as nothing;
    :func:`compute` has already replaced an invalid specified paint by the inherited one)."""
    text = text.strip()
    low = text.lower()
    if low == "none":
        return None
    if low in ("context-fill", "context-stroke"):
        return Paint(keyword=low)
    if low.startswith("url(") and ")" in text:
        ref = parse_url(text) or ""                   # "" (another file's id) never resolves: fallback
        rest = text[text.index(")") + 1:].strip()
        fallback = None
        if rest and rest.lower() != "none":
            fallback = parse_color(rest, current)
        return Paint(ref=ref, fallback=fallback)
    rgba = parse_color(text, current)
    return Paint(rgba=rgba) if rgba is not None else None


def parse_url(text: str) -> Optional[str]:
    """The id of a ``url(#id)`` reference (spaces and quotes allowed), else None. References to
    other files (``url(other.svg#id)``) are never followed: they also give None."""
    text = text.strip()
    if not text.lower().startswith("url(") or ")" not in text:
        return None
    inner = text[4:text.index(")")].strip().strip("'\"").strip()
    return inner[1:] if inner.startswith("#") and len(inner) > 1 else None


def parse_number(text: str, default: float) -> float:
    """A number or percentage (``50%`` = 0.5); ``default`` when it is neither."""
    text = str(text).strip()
    try:
        return float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        return default


def opacity(text: str) -> float:
    """An opacity value clamped to [0, 1] (1 when invalid)."""
    return min(max(parse_number(text, 1.0), 0.0), 1.0)
