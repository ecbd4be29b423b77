"""Countable quality from the probe: what a prompt asks for vs what the images show."""

from __future__ import annotations

import re
from typing import Optional

import torch
from torch import Tensor

from scorestudio.data.procedural import ALL_SHAPES, COLOR_NAMES, ICON_SHAPES, KINDS

ATTRIBUTES = ("shape", "color", "kind")


def prompt_attributes(prompt: str) -> dict[str, Optional[str]]:
    """The procedural attributes a caption names: ``"a red cube, front view"`` →
    ``{"shape": "cube", "color": "red", "kind": "object"}``; unnamed ones are ``None``."""
    words = re.findall(r"[a-z]+", prompt.lower())
    shape = next((w for w in words if w in ALL_SHAPES), None)
    color = next((w for w in words if w in COLOR_NAMES), None)
    if "icon" in words or shape in ICON_SHAPES:
        kind = "icon"
    elif shape is not None or "object" in words:
        kind = "object"
    else:
        kind = None
    return {"shape": shape, "color": color, "kind": kind}


def attribute_probabilities(logits: dict[str, Tensor], attrs: dict[str, Optional[str]]) -> Tensor:
    """Per image, the mean probe probability of the prompt's named attributes ``[N]``
    (NaN when the prompt names none)."""
    names = {"shape": ALL_SHAPES, "color": COLOR_NAMES, "kind": KINDS}
    probs = [logits[a].softmax(-1)[:, names[a].index(attrs[a])] for a in ATTRIBUTES if attrs[a]]
    if not probs:
        return torch.full((logits["shape"].shape[0],), float("nan"))
    return torch.stack(probs).mean(0)


def distinct_classes(logits: dict[str, Tensor]) -> dict[str, int]:
    """Number of distinct predicted shapes and colours among the images."""
    return {f"distinct_{a}s": int(logits[a].argmax(-1).unique().numel()) for a in ("shape", "color")}


@torch.no_grad()
def probe_report(images: Tensor, prompt: str, probe) -> dict[str, float]:
    """Diversity, quality and distinct classes of images ``[N, 3, H, W]`` generated for ``prompt``.

    diversity: 1 − mean pairwise cosine similarity of probe features (RSD papers);
    quality: mean probe probability of the attributes the prompt names.
    """
    from scorestudio.metrics.probe import diversity

    logits = probe(images)
    quality = attribute_probabilities(logits, prompt_attributes(prompt))
    return {"diversity": diversity(probe.features(images)), "quality": float(quality.mean()),
            **distinct_classes(logits)}
