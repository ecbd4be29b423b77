"""Perp-Neg (Armandpour et al. 2023), the Janus mitigation of threestudio's ``use_perp_neg``.

A view-dependent prompt alone ("..., back view") does not stop a prior that has mostly seen
fronts from painting a face on every side (the Janus problem). Perp-Neg conditions each camera on
an *interpolation* of the view prompts and pushes the prediction away from the other views, but
only along what is perpendicular to the positive direction, so the prompt itself is not weakened:

    e_pos = ε(y_pos) − ε_u,     e_k = ε(y_neg,k) − ε_u                    (k = 1, 2)
    d     = e_pos + Σ_k w_k · (e_k − (⟨e_k, e_pos⟩ / ‖e_pos‖²) e_pos)      (w_k ≤ 0)
    ε_cfg = ε_u + s · d

Views, as threestudio builds them from the azimuth φ ∈ (−180, 180] of each camera (its own rule,
independent of the prompt processor's view thresholds), with r the interpolation weight:

    overhead (elevation above the overhead threshold): y_pos = overhead, no negative (w = 0);
    |φ| < 90  (front ↔ side):  r = 1 − |φ|/90, y_pos = r·front + (1−r)·side,
                               negatives front (w = −f_fs(r)), side (w = −f_sf(1 − r));
    |φ| ≥ 90  (side ↔ back):   r = 2 − |φ|/90, y_pos = r·side + (1−r)·back,
                               negatives side (w = −f_sb(r)), front (w = −f_fsb(r)),

with f(r) = a·exp(−b·r) + c, (a, b, c) = ``perp_neg_f_*`` (threestudio's defaults below: each
weight is 0 where its view is the positive one). The interpolations are of the text embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

# threestudio's defaults of a·exp(−b·r) + c for the four negative weights.
F_SB = (1.0, 0.5, -0.606)     # side as the negative between side (r = 1) and back (r = 0)
F_FSB = (1.0, 0.5, 0.967)     # front as the negative between side and back
F_FS = (4.0, 0.5, -2.426)     # front as the negative between front (r = 1) and side (r = 0)
F_SF = (4.0, 0.5, -2.426)     # side as the negative between front and side (argument 1 − r)
N_NEGATIVES = 2


def decay(abc: Sequence[float], r: Tensor) -> Tensor:
    """a·exp(−b·r) + c, elementwise for ``r`` ``[B]``."""
    a, b, c = (float(v) for v in abc)
    return a * torch.exp(-b * r) + c


@dataclass
class PerpNegBatch:
    """The negatives of B items: ``embeddings`` ``[B, K, L, D]`` (K = 2 negative view prompts per
    item) and their weights ``[B, K]`` (≤ 0; 0 where an item has no negative)."""

    embeddings: Tensor
    weights: Tensor

    def index(self, rows: Tensor) -> "PerpNegBatch":
        """The items ``rows`` (long ``[b]``)."""
        rows = rows.to(self.embeddings.device)
        return PerpNegBatch(self.embeddings[rows], self.weights[rows.to(self.weights.device)])


def view_mixture(azimuth: Tensor, overhead: Tensor, functions: Sequence[Sequence[float]] = (F_SB, F_FSB, F_FS, F_SF)
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """Per camera the positive mixture and the negatives, as indices into the view prompts
    (front 0, side 1, back 2, overhead 3).

    Args:
        azimuth: ``[B]`` degrees (any range; wrapped to (−180, 180]).
        overhead: bool ``[B]``: the camera is an overhead view.
        functions: (a, b, c) of f_sb, f_fsb, f_fs, f_sf.
    Returns:
        ``mix`` ``[B, 4]`` (weights of the 4 view embeddings in y_pos, summing to 1),
        ``negatives`` long ``[B, 2]`` and their ``weights`` ``[B, 2]`` (≤ 0).
    """
    f_sb, f_fsb, f_fs, f_sf = functions
    phi = torch.remainder(azimuth.float() + 180.0, 360.0) - 180.0
    a = phi.abs()
    front_side = a < 90.0
    r = torch.where(front_side, 1.0 - a / 90.0, 2.0 - a / 90.0)
    mix = torch.zeros(len(phi), 4, device=phi.device)
    mix[:, 0] = torch.where(front_side, r, 0.0)
    mix[:, 1] = torch.where(front_side, 1.0 - r, r)
    mix[:, 2] = torch.where(front_side, 0.0, 1.0 - r)
    negatives = torch.where(front_side[:, None], torch.tensor([0, 1], device=phi.device),
                            torch.tensor([1, 0], device=phi.device))
    weights = torch.where(front_side[:, None], torch.stack([-decay(f_fs, r), -decay(f_sf, 1.0 - r)], 1),
                          torch.stack([-decay(f_sb, r), -decay(f_fsb, r)], 1))
    mix[overhead] = torch.tensor([0.0, 0.0, 0.0, 1.0], device=phi.device)
    weights[overhead] = 0.0
    negatives[overhead] = 3
    return mix, negatives, weights


def perpendicular_component(x: Tensor, y: Tensor) -> Tensor:
    """The part of ``x`` ``[B, ...]`` perpendicular to ``y`` ``[B, ...]``, per item (‖y‖² floored
    at 1e-6 as in threestudio, so a zero direction leaves ``x`` unchanged)."""
    dims = tuple(range(1, x.ndim))
    dot = (x * y).sum(dims)
    norm = (y * y).sum(dims).clamp_min(1e-6)
    return x - (dot / norm).view(-1, *(1,) * (x.ndim - 1)) * y


def guided_direction(eps_cond: Tensor, eps_uncond: Tensor, eps_neg: Tensor, weights: Tensor) -> Tensor:
    """d = e_pos + Σ_k w_k ⊥(e_k, e_pos) ``[B, C, h, w]`` from ε(y_pos), ε_u ``[B, C, h, w]``, the
    negatives' ε ``[B, K, C, h, w]`` and their weights ``[B, K]``."""
    e_pos = eps_cond - eps_uncond
    direction = e_pos
    for k in range(eps_neg.shape[1]):
        w = weights[:, k].to(e_pos).view(-1, *(1,) * (e_pos.ndim - 1))
        direction = direction + w * perpendicular_component(eps_neg[:, k] - eps_uncond, e_pos)
    return direction


__all__ = ["F_FS", "F_FSB", "F_SB", "F_SF", "N_NEGATIVES", "PerpNegBatch", "decay", "guided_direction",
           "perpendicular_component", "view_mixture"]
