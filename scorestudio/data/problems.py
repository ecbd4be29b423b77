"""Inverse problems as data: image or procedural index → operator → measurement.

Two loaders share the same steps: a ground truth (an image file, or held-out image #i of the
procedural test split, :func:`procedural_image`), a registered operator A
(:mod:`scorestudio.data.operators`, images in [−1, 1]) and the measurement
y = A(2x − 1) + σ_y·n with n from the stream (seed, "measurement") (:func:`measure`), so runs
with other seeds solve the same y.

- :func:`build_problem` (:class:`InverseDataConfig` → :class:`Problem`): the ``inverse`` system's
  problems; any operator, its config under ``data.operator_cfg``; the ground truth is always known.
- :func:`load_problem` (:class:`RestorationDataConfig` → :class:`RestorationProblem`): SVG
  restoration of a blurred or low-resolution raster; flat operator keys; ``data.image`` is the
  *degraded* input itself (no ground truth), a procedural icon is degraded here.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from scorestudio.data.operators import Operator, build_operator
from scorestudio.priors.base import resize_square
from scorestudio.utils.config import ConfigError, parse_structured
from scorestudio.utils.seeding import generator

# --------------------------------------------------------------------------------------------
# Shared steps.
# --------------------------------------------------------------------------------------------


def procedural_image(index: int, resolution: int, **procedural) -> tuple[Tensor, dict[str, str]]:
    """Held-out image ``index`` of the procedural test split (``procedural``: more
    :class:`ProceduralConfig` keys, e.g. ``icon_fraction=1.0`` for icons only): (image
    ``[1, 3, R, R]`` in [0, 1], its class names ``{"shape", "color"}``)."""
    from scorestudio.data.procedural import ALL_SHAPES, COLOR_NAMES, ProceduralConfig, ProceduralDataset

    data = ProceduralDataset(ProceduralConfig(resolution=resolution, **procedural), split="test")
    batch = data.batch(1, index)
    labels = {"shape": ALL_SHAPES[int(batch.shape[0])], "color": COLOR_NAMES[int(batch.color[0])]}
    return batch.images, labels


def measure(operator: Operator, image: Tensor, seed: int, name: str, note: str = "") -> Tensor:
    """y = A(2·image − 1) + σ_y·n ``[1, ...]`` of a ground truth ``[1, 3, H, W]`` in [0, 1], n from
    the stream (seed, "measurement"). Operator errors about the input (wrong-size masks,
    indivisible scales) become ``ConfigError``s naming ``data.operator={name}``, then ``note``."""
    try:
        return operator.measure(2 * image - 1, generator(seed, "measurement"))
    except ValueError as err:
        raise ConfigError(f"data.operator={name}: {err}{note}") from err


# --------------------------------------------------------------------------------------------
# Inverse problems (the `inverse` system).
# --------------------------------------------------------------------------------------------


@dataclass
class InverseDataConfig:
    image: Optional[str] = None            # ground-truth image file; takes precedence over procedural_index
    procedural_index: Optional[int] = None  # else held-out image #i: ProceduralDataset(split="test").batch(1, i)
    operator: str = "box-inpaint"          # registered operator (scorestudio.data.operators)
    operator_cfg: dict = field(default_factory=dict)   # its config (box, scale, kernel_size, ...)
    sigma_y: Optional[float] = None        # measurement noise std in [−1, 1] units; None = the operator's
    resize: str = "warn"                   # image size ≠ the prior's: "warn" (resize, warn) or "error"
    measurement_seed: int = 0              # noise stream of y, fixed so runs with other seeds solve the same y


@dataclass
class Problem:
    """One inverse problem: ground truth ``[1, 3, H, W]`` in [0, 1], operator, measurement y
    ``[1, ...]`` and, for procedural images, the ground-truth class names."""

    ground_truth: Tensor
    operator: Operator
    y: Tensor
    labels: Optional[dict[str, str]] = None


def load_ground_truth(cfg: InverseDataConfig, size: int) -> tuple[Tensor, Optional[dict[str, str]]]:
    """(image ``[1, 3, size, size]`` in [0, 1], class names or None) from ``cfg``."""
    if cfg.image:
        from scorestudio.utils.images import load_image

        image = load_image(cfg.image, key="data.image")[None]
        if tuple(image.shape[-2:]) != (size, size):
            message = (f"data.image={cfg.image} is {image.shape[-2]}x{image.shape[-1]} but the prior "
                       f"works at {size}x{size}")
            if cfg.resize == "error":
                raise ConfigError(f"{message}; resize it or set data.resize=warn")
            warnings.warn(f"{message}: resizing it (data.resize=error refuses instead)")
            image = resize_square(image, size).clamp(0, 1)
        return image, None
    if cfg.procedural_index is None:
        raise ConfigError("data: set data.image=FILE or data.procedural_index=N (a held-out procedural image)")
    return procedural_image(cfg.procedural_index, size)


def build_problem(data, size: int) -> Problem:
    """The :class:`Problem` of a ``data`` config (dict or :class:`InverseDataConfig`) at ``size``².

    Operator errors about the input (wrong-size masks, indivisible scales) become ``ConfigError``.
    """
    cfg: InverseDataConfig = parse_structured(InverseDataConfig, data, "data")
    if cfg.resize not in ("warn", "error"):
        raise ConfigError(f"data.resize={cfg.resize!r}: expected 'warn' or 'error'")
    op_cfg = dict(cfg.operator_cfg)
    if cfg.sigma_y is not None:
        if "sigma_y" in op_cfg:
            raise ConfigError("set the noise level once: data.sigma_y or data.operator_cfg.sigma_y, not both")
        op_cfg["sigma_y"] = cfg.sigma_y
    operator = build_operator(cfg.operator, op_cfg, path="data.operator_cfg")
    image, labels = load_ground_truth(cfg, size)
    y = measure(operator, image, cfg.measurement_seed, cfg.operator)
    return Problem(image, operator, y, labels)


def measurement_image(problem: Problem) -> Tensor:
    """The measurement as a picture ``[1, 3, h, w]`` in [0, 1]: y itself when it is an image of
    the ground truth's size (inpainting: hidden pixels grey; blur; HDR), else A⁺(y) (super-
    resolution: the upsampled low-res image), else the log-magnitude (phase retrieval)."""
    y, op = problem.y, problem.operator
    if y.shape == problem.ground_truth.shape:
        return ((y + 1) / 2).clamp(0, 1)
    if op.has_pseudo_inverse:
        return ((op.pseudo_inverse(y) + 1) / 2).clamp(0, 1)
    log_mag = torch.log1p(y.abs())
    lo, hi = log_mag.amin(dim=(1, 2, 3), keepdim=True), log_mag.amax(dim=(1, 2, 3), keepdim=True)
    return (log_mag - lo) / (hi - lo).clamp_min(1e-12)


# --------------------------------------------------------------------------------------------
# SVG restoration (the `svg-restoration` system).
# --------------------------------------------------------------------------------------------

OPERATOR_ALIASES = {"gaussian-blur": "gaussian-blur", "super-resolution": "super-resolution",
                    "downsample": "super-resolution"}


@dataclass
class RestorationDataConfig:
    """The degraded input. Keys of the other operator are ignored."""

    image: Optional[str] = None          # degraded input image (square; grey/RGBA → RGB on white); wins over procedural_index
    procedural_index: Optional[int] = None  # else held-out icon #i of the test split, degraded here (ground truth known)
    resolution: int = 64                 # size of the procedural ground truth (px)
    operator: str = "gaussian-blur"      # "gaussian-blur" or "super-resolution" (alias "downsample")
    kernel_size: int = 11                # blur kernel side, px, odd
    sigma: float = 1.5                   # blur std, px (paper: 5 at 512²)
    scale: int = 4                       # super-resolution factor: canvas = scale × the low-res input
    method: str = "bicubic"              # super-resolution downsampling: "bicubic" (paper) or "avgpool"
    sigma_y: float = 0.01                # noise std of procedural measurements, [−1, 1] units
    measurement_seed: int = 0            # noise stream of procedural measurements


@dataclass
class RestorationProblem:
    """y ``[1, 3, h, w]`` in [−1, 1], the operator A, the canvas side (A maps canvas² images to
    y's size) and, for procedural inputs, the ground truth ``[1, 3, canvas, canvas]`` in [0, 1] and
    its class names."""

    y: Tensor
    operator: Operator
    canvas: int
    ground_truth: Optional[Tensor] = None
    labels: Optional[dict] = None
    caption: Optional[str] = None


def restoration_operator(cfg: RestorationDataConfig) -> Operator:
    """A of ``cfg.operator`` built from the flat data keys."""
    name = OPERATOR_ALIASES.get(cfg.operator)
    if name is None:
        raise ConfigError(f"data.operator={cfg.operator!r}: svg-restoration restores blurred or low-resolution "
                          f"images; use one of {', '.join(OPERATOR_ALIASES)}")
    if name == "gaussian-blur":
        args = {"kernel_size": cfg.kernel_size, "sigma": cfg.sigma, "sigma_y": cfg.sigma_y}
    else:
        args = {"scale": cfg.scale, "method": cfg.method, "sigma_y": cfg.sigma_y}
    return build_operator(name, args, path="data")


def read_measurement(path: str) -> Tensor:
    """The input image as y ``[1, 3, h, w]`` in [−1, 1]; it must be square."""
    from scorestudio.utils.images import load_image

    image = load_image(path, key="data.image")
    if image.shape[1] != image.shape[2]:
        raise ConfigError(f"data.image={path} is {image.shape[1]}x{image.shape[2]} (HxW); svg-restoration needs a "
                          "square image (the canvas and the prior are square): crop or pad it")
    return 2 * image[None] - 1


def procedural_icon(cfg: RestorationDataConfig) -> tuple[Tensor, dict, str]:
    """Held-out icon ``cfg.procedural_index`` of the test split: (image ``[1, 3, R, R]`` in [0, 1],
    class names, caption)."""
    from scorestudio.data.procedural import caption_for

    image, labels = procedural_image(cfg.procedural_index, cfg.resolution, icon_fraction=1.0)
    return image, labels, caption_for(labels["shape"], labels["color"])


def load_problem(data, canvas_size: Optional[int] = None) -> RestorationProblem:
    """The :class:`RestorationProblem` of a ``data`` config; ``canvas_size`` (``system.generator.canvas_size``)
    must agree with the input when given. Mismatches are ``ConfigError``s that say what to change."""
    cfg: RestorationDataConfig = parse_structured(RestorationDataConfig, data, "data")
    operator = restoration_operator(cfg)
    is_sr = OPERATOR_ALIASES[cfg.operator] == "super-resolution"
    if cfg.image:
        y = read_measurement(cfg.image)
        canvas = y.shape[-1] * (cfg.scale if is_sr else 1)
        if canvas_size not in (None, canvas):
            how = f"data.scale={cfg.scale} × the {y.shape[-1]} px input" if is_sr else "the input size"
            raise ConfigError(f"system.generator.canvas_size={canvas_size} does not match data.image={cfg.image}: with "
                              f"data.operator={cfg.operator} the canvas is {how} = {canvas} px")
        try:
            expected = operator.output_shape((1, 3, canvas, canvas))
        except ValueError as err:
            raise ConfigError(f"data.operator={cfg.operator}: {err}") from err
        if tuple(expected) != tuple(y.shape):
            raise ConfigError(f"data.operator={cfg.operator} maps a {canvas} px canvas to {tuple(expected)}, but "
                              f"data.image is {tuple(y.shape)}")
        return RestorationProblem(y, operator, canvas)
    if cfg.procedural_index is None:
        raise ConfigError("data: set data.image=FILE (a blurry or low-resolution image) or data.procedural_index=N "
                          "(a held-out procedural icon, degraded here)")
    if canvas_size not in (None, cfg.resolution):
        raise ConfigError(f"system.generator.canvas_size={canvas_size} must equal data.resolution={cfg.resolution}, the size "
                          "of the procedural ground truth")
    truth, labels, caption = procedural_icon(cfg)
    y = measure(operator, truth, cfg.measurement_seed, cfg.operator, f" (data.resolution={cfg.resolution})")
    return RestorationProblem(y, operator, cfg.resolution, truth, labels, caption)


def upsampled(y: Tensor, canvas: int) -> Tensor:
    """The measurement as a canvas-size picture ``[1, 3, canvas, canvas]`` in [0, 1]: itself for
    blur, bicubic upsampling for super-resolution (the baseline restorations of the benchmark)."""
    if y.shape[-1] != canvas:
        y = F.interpolate(y, size=(canvas, canvas), mode="bicubic", align_corners=False)
    return ((y + 1) / 2).clamp(0, 1)
