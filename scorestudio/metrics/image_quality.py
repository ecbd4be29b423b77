"""Image-quality metrics for inverse problems and restoration: PSNR, SSIM, measurement
consistency, best-of-N summaries and (when installed with its weights) LPIPS.

Images are ``[N, 3, H, W]`` in **[0, 1]** and every metric returns one value per image, a tensor
``[N]``. Nothing is clamped: clamp generated images to [0, 1] first.

Reporting particles (RLSD): each measurement is solved by N particles. ``summarize`` gives both
numbers the paper uses: ``"mean"``, the average over particles (the main tables), and ``"best"``,
the best particle per measurement (best-of-N, RLSD Table 14 and its notebooks).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

LPIPS_UNAVAILABLE = ("LPIPS needs the lpips package and its VGG/AlexNet weights, which it downloads "
                     "on first use; install and cache them on a networked machine")


class MetricUnavailable(RuntimeError):
    """A metric whose package or weights are not available on this machine."""


def _check_pair(x: Tensor, ref: Tensor, who: str) -> None:
    if x.dim() != 4 or x.shape != ref.shape:
        raise ValueError(f"{who}: expected two image batches [N, C, H, W] of the same shape, got "
                         f"{tuple(x.shape)} and {tuple(ref.shape)}")


def psnr(x: Tensor, ref: Tensor, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio in dB per image ``[N]``: 10·log10(range² / MSE)
    (``inf`` for identical images)."""
    _check_pair(x, ref, "psnr")
    mse = (x - ref).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse)


def _gaussian_window(size: int, sigma: float, like: Tensor) -> Tensor:
    """Normalised 1-D Gaussian ``[size]`` centred in the window."""
    offsets = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-offsets.pow(2) / (2 * sigma**2))
    return g / g.sum()


def _local_mean(images: Tensor, window: Tensor) -> Tensor:
    """Separable Gaussian-weighted means over 'valid' windows: ``[N, C, H-k+1, W-k+1]``."""
    c, k = images.shape[1], window.numel()
    out = F.conv2d(images, window.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return F.conv2d(out, window.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


def ssim(x: Tensor, ref: Tensor, data_range: float = 1.0, window_size: int = 11,
         sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> Tensor:
    """Structural similarity per image ``[N]`` (Wang et al. 2004): Gaussian window 11, σ 1.5,
    K1 0.01, K2 0.03, population (not sample) covariances, averaged over the valid windows and the
    channels. Equals ``skimage.metrics.structural_similarity(..., channel_axis=0, data_range=1,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``. Needs H, W ≥ window_size."""
    _check_pair(x, ref, "ssim")
    if min(x.shape[-2:]) < window_size:
        raise ValueError(f"ssim: images {x.shape[-2]}x{x.shape[-1]} are smaller than the "
                         f"{window_size}x{window_size} window")
    window = _gaussian_window(window_size, sigma, x)
    mu_x, mu_r = _local_mean(x, window), _local_mean(ref, window)
    var_x = _local_mean(x * x, window) - mu_x**2
    var_r = _local_mean(ref * ref, window) - mu_r**2
    cov = _local_mean(x * ref, window) - mu_x * mu_r
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mu_x * mu_r + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_r**2 + c1) * (var_x + var_r + c2))
    return s.flatten(1).mean(1)


def measurement_consistency(operator, x: Tensor, y: Tensor) -> Tensor:
    """‖y − A(2x − 1)‖ / √numel per image ``[N]``: the RMS residual of the measurement.

    ``x [N, 3, H, W]`` is in [0, 1] like every metric here and is mapped to the operators'
    [−1, 1] range before A; ``y`` is a measurement in the operator's units (``operator.measure``);
    numel counts the entries of one measurement. With noisy y the floor is ≈ σ_y.
    """
    residual = y - operator(2 * x - 1)
    return residual.flatten(1).pow(2).mean(1).sqrt()


def best_of_n(values: Tensor, higher_is_better: bool) -> Tensor:
    """The best of per-particle ``values [N]`` (max if ``higher_is_better``, else min), a 0-d tensor;
    for ``[M, N]`` (M measurements x N particles) the best per measurement, ``[M]``."""
    return values.max(-1).values if higher_is_better else values.min(-1).values


def summarize(per_particle_values: Tensor, higher_is_better: bool = True) -> dict[str, float]:
    """``{"mean": average over all particles, "best": best-of-N}`` of per-particle values.

    ``per_particle_values`` is ``[N]`` (one measurement) or ``[M, N]`` (M measurements x N
    particles; "best" is then the mean over measurements of each one's best particle). Set
    ``higher_is_better=False`` for LPIPS and measurement consistency.
    """
    values = torch.as_tensor(per_particle_values, dtype=torch.float64)
    if values.dim() not in (1, 2) or values.shape[-1] == 0:
        raise ValueError(f"summarize: expected values [N] or [M, N], got shape {tuple(values.shape)}")
    return {"mean": values.mean().item(), "best": best_of_n(values, higher_is_better).mean().item()}


@functools.lru_cache(maxsize=2)
def _lpips_model(net: str):
    try:
        import lpips as lpips_package
    except ImportError as err:
        raise MetricUnavailable(f"{LPIPS_UNAVAILABLE} (import lpips: {err})") from err
    try:
        model = lpips_package.LPIPS(net=net, verbose=False)
    except (OSError, RuntimeError) as err:  # download refused offline, or a broken cache file
        raise MetricUnavailable(f"{LPIPS_UNAVAILABLE} (loading the {net} weights: {err})") from err
    return model.eval().requires_grad_(False)


def lpips(x: Tensor, ref: Tensor, net: str = "alex") -> Tensor:
    """LPIPS distance per image ``[N]`` (lower is more similar) with the ``alex`` or ``vgg``
    backbone. Raises :class:`MetricUnavailable` when the package or its weights are missing."""
    _check_pair(x, ref, "lpips")
    model = _lpips_model(net).to(x.device)
    return model(2 * x - 1, 2 * ref - 1).flatten()
