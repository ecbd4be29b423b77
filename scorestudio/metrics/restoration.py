"""Metrics of restorations and inverse-problem solutions against a :class:`~scorestudio.data.problems.Problem`:
PSNR/SSIM (mean and best-of-N), measurement consistency, probe diversity and class agreement
(:func:`evaluate`), and phase retrieval's twin solution (:func:`is_rotated`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch
from torch import Tensor, nn

from scorestudio.metrics.image_quality import measurement_consistency, psnr, ssim, summarize
from scorestudio.metrics.probe import diversity

if TYPE_CHECKING:
    from scorestudio.data.problems import Problem


@torch.no_grad()
def evaluate(images: Tensor, problem: Problem, probe: Optional[nn.Module] = None) -> dict[str, float]:
    """Metrics of particles ``[N, 3, H, W]`` in [0, 1] for ``problem`` (computed on the images'
    device, where the operator must be too).

    ``*_mean`` averages over the N particles, ``*_best`` is the best particle (best-of-N): PSNR
    (dB) and SSIM against the ground truth, ``consistency`` the RMS measurement residual
    ‖y − A(2x − 1)‖/√numel (lower is better). With a probe: ``diversity`` (1 − mean pairwise
    cosine similarity of probe features, N ≥ 2) and, when the class is known, the fraction of
    particles whose predicted shape / colour agrees with the ground truth's.
    """
    images = images.detach().float()
    gt = problem.ground_truth.to(images.device).expand_as(images)
    y = problem.y.to(images.device)
    out = {}
    for name, values, higher in (("psnr", psnr(images, gt), True), ("ssim", ssim(images, gt), True),
                                 ("consistency", measurement_consistency(problem.operator, images, y), False)):
        summary = summarize(values.cpu(), higher_is_better=higher)
        out[f"{name}_mean"], out[f"{name}_best"] = summary["mean"], summary["best"]
    if probe is not None:
        probe = probe.to(images.device)
        if images.shape[0] >= 2:
            out["diversity"] = diversity(probe.features(images))
        if problem.labels is not None:
            predictions = probe.classify(images)
            for head, name in problem.labels.items():
                out[f"probe_{head}_agreement"] = sum(p[head] == name for p in predictions) / len(predictions)
    return out


def is_rotated(images: Tensor, ground_truth: Tensor) -> Tensor:
    """Per particle ``[N]`` bool: closer (PSNR) to the 180°-rotated ground truth ``[1, 3, H, W]``
    than to the upright one (phase retrieval's twin solution)."""
    gt = ground_truth.to(images.device).expand_as(images)
    return psnr(images, gt.flip(-2, -1)) > psnr(images, gt)
