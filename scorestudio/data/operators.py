"""Imaging forward operators y = A(x) + σ_y·n for inverse problems and SVG restoration.

Every operator is a registered :class:`Operator` (a ``BaseModule``), so a config can say
``data.operator=gaussian-blur`` and :func:`build_operator` (or ``scorestudio.find``) builds it.

Range convention: operators act on images ``x [N, 3, H, W]`` in **[−1, 1]** (the diffusion
models' range, as in DPS/RLSD; HDR's ``clip(2x, −1, 1)`` only makes sense there). Callers with
[0, 1] images (SVG restoration) pass ``2x − 1``. Measurements ``y`` are in the same units.

Interface of every operator:

* ``forward(x) -> y``: A(x), differentiable; shape ``output_shape(x.shape)``.
* ``measure(x, generator) -> A(x) + σ_y·n``, n ~ N(0, I) drawn from the passed generator only.
* ``pseudo_inverse(y) -> x̂ [N, 3, H, W]`` where ``has_pseudo_inverse`` (an estimate to initialise
  a solver or to show next to y); phase retrieval has none and raises.
* ``is_linear``: A is linear (PSLD-style solvers need that).

Names: ``box-inpaint``, ``random-inpaint``, ``mask-inpaint``, ``super-resolution``,
``gaussian-blur``, ``motion-blur``, ``phase-retrieval``, ``hdr`` (:data:`OPERATOR_NAMES`).
Settings follow DPS (Chung et al. 2022) / RLSD (appendix D) at 256², scaled to our 64² images
where a size is in pixels; each config comment gives both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from scorestudio.utils.base import BaseModule
from scorestudio.utils.config import ConfigError
from scorestudio.utils.registry import RegistryError, find, register
from scorestudio.utils.seeding import generator as keyed_generator

OPERATOR_NAMES = ("box-inpaint", "random-inpaint", "mask-inpaint", "super-resolution",
                  "gaussian-blur", "motion-blur", "phase-retrieval", "hdr")


# --------------------------------------------------------------------------------------------
# Input checks and the factory.
# --------------------------------------------------------------------------------------------


def check_input(x: Tensor, who: str, size: tuple[int, int] | None = None) -> None:
    """Raise ``ValueError`` unless ``x`` is ``[N, 3, H, W]`` (and ``(H, W) == size`` if given).

    ``who`` names the operator (and the config key fixing the size) in the message.
    """
    if x.dim() != 4:
        raise ValueError(f"{who}: expected images [N, 3, H, W], got a tensor of shape {tuple(x.shape)}")
    if x.shape[1] != 3:
        raise ValueError(f"{who}: expected 3 (RGB) channels, got {x.shape[1]} in shape {tuple(x.shape)}; "
                         "operators act on decoded images in [-1, 1], not on latents")
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        raise ValueError(f"{who}: expects {size[0]}x{size[1]} (HxW) images, got "
                         f"{x.shape[-2]}x{x.shape[-1]}")


def build_operator(name: str, cfg: Any = None, path: str = "data") -> "Operator":
    """``find(name)(cfg, path)``: the registered operator ``name`` configured by ``cfg``.

    Unknown names raise the registry's ``RegistryError`` listing close matches.
    """
    cls = find(name, kind="data")
    if not (isinstance(cls, type) and issubclass(cls, Operator)):
        raise RegistryError(f"{name!r} is registered but is not a forward operator; "
                            f"operators: {', '.join(OPERATOR_NAMES)}")
    return cls(cfg, path)


# --------------------------------------------------------------------------------------------
# Base class.
# --------------------------------------------------------------------------------------------


class Operator(BaseModule):
    """A forward operator A on images ``[N, 3, H, W]`` in [−1, 1] plus its measurement noise."""

    @dataclass
    class Config:
        # Std of the Gaussian measurement noise, in units of the [-1, 1] image range.
        # DPS uses 0.05; RLSD's tables use 0.001.
        sigma_y: float = 0.05

    cfg: Config
    has_pseudo_inverse = True
    is_linear = True

    @property
    def name(self) -> str:
        return getattr(self, "registered_name", type(self).__name__)

    def key(self, field_name: str) -> str:
        """Full config key of ``field_name`` for messages, e.g. ``data.kernel_size``."""
        return f"{self.config_path}.{field_name}" if self.config_path else field_name

    def check_input(self, x: Tensor) -> None:
        """Raise a clear ``ValueError`` if ``x`` is not a batch of images this operator takes."""
        check_input(x, self.name)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of ``forward(x)`` for ``x`` of ``input_shape`` ``(N, 3, H, W)``."""
        self.check_input(torch.empty(input_shape, device="meta"))
        return tuple(input_shape)

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def measure(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """y = A(x) + σ_y·n with n ~ N(0, I) from ``generator`` (``[N, ...]`` like ``forward``)."""
        y = self.forward(x)
        noise = torch.randn(y.shape, generator=generator, dtype=y.dtype, device=generator.device)
        return y + self.cfg.sigma_y * self.observed(noise.to(y.device))

    def observed(self, values: Tensor) -> Tensor:
        """``values`` restricted to what is measured (all of y here; inpainting keeps hidden pixels 0)."""
        return values

    def pseudo_inverse(self, y: Tensor) -> Tensor:
        """An image ``x̂ [N, 3, H, W]`` with A(x̂) ≈ y (see each operator for what it is)."""
        raise NotImplementedError(f"{self.name} has no pseudo-inverse (has_pseudo_inverse is False)")


# --------------------------------------------------------------------------------------------
# Inpainting: y = mask ⊙ x, mask [1, 1, H, W] with 1 = observed, 0 = hidden.
# --------------------------------------------------------------------------------------------


class MaskOperator(Operator):
    """y = mask ⊙ x, the same mask on the 3 channels; hidden pixels of y are exactly 0 (also in
    ``measure``: hidden pixels are not measured, so they get no noise).

    The Moore–Penrose pseudo-inverse of this projection is itself: A⁺(y) = mask ⊙ y.
    """

    def mask_for(self, x: Tensor) -> Tensor:
        """The mask ``[1, 1, H, W]`` (1 = observed) for images like ``x``, in x's dtype/device."""
        raise NotImplementedError  # pragma: no cover - abstract

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return self.mask_for(x) * x

    def observed(self, values: Tensor) -> Tensor:
        return self.mask_for(values) * values

    def pseudo_inverse(self, y: Tensor) -> Tensor:
        self.check_input(y)
        return self.mask_for(y) * y


class FixedMaskOperator(MaskOperator):
    """A mask of one fixed size held as a (non-persistent) buffer ``mask [1, 1, H, W]``."""

    mask: Tensor

    def size_hint(self) -> str:
        """How to make the image and mask sizes agree, for the size-mismatch message."""
        raise NotImplementedError  # pragma: no cover - abstract

    def check_input(self, x: Tensor) -> None:
        check_input(x, self.name)
        h, w = self.mask.shape[-2:]
        if tuple(x.shape[-2:]) != (h, w):
            raise ValueError(f"{self.name}: the mask is {h}x{w} (HxW) but the images are "
                             f"{x.shape[-2]}x{x.shape[-1]}; {self.size_hint()}")

    def mask_for(self, x: Tensor) -> Tensor:
        return self.mask.to(x.dtype)


def box_mask(height: int, width: int, box: list[float]) -> Tensor:
    """Mask ``[1, 1, H, W]`` that is 0 inside ``box = [top, left, height, width]`` (fractions of
    the image size, rounded to pixels) and 1 elsewhere."""
    top, left = round(box[0] * height), round(box[1] * width)
    bottom, right = round((box[0] + box[2]) * height), round((box[1] + box[3]) * width)
    mask = torch.ones(1, 1, height, width)
    mask[..., top:bottom, left:right] = 0
    return mask


@register("box-inpaint")
class BoxInpaint(MaskOperator):
    """Hide a box (RLSD's "box hiding half of the faces"): by default the **right half**."""

    @dataclass
    class Config(Operator.Config):
        # Hidden box [top, left, height, width] as fractions of the image height/width.
        # Default: the right half of the image.
        box: list = field(default_factory=lambda: [0.0, 0.5, 1.0, 0.5])

    cfg: Config

    def configure(self) -> None:
        box = [float(v) for v in self.cfg.box]
        inside = len(box) == 4 and all(v >= 0 for v in box) and box[0] + box[2] <= 1 and box[1] + box[3] <= 1
        if not inside:
            raise ConfigError(f"{self.key('box')}={self.cfg.box}: expected [top, left, height, width] "
                              "fractions with the box inside the image, e.g. [0, 0.5, 1, 0.5]")
        self.box = box

    def mask_for(self, x: Tensor) -> Tensor:
        return box_mask(x.shape[-2], x.shape[-1], self.box).to(x.device, x.dtype)


@register("random-inpaint")
class RandomInpaint(FixedMaskOperator):
    """Hide a random fraction ``p`` of the pixels (all 3 channels of a pixel together).

    The mask is drawn once, at construction, from ``generator(seed, "mask")``: exactly
    ``round(p·H·W)`` hidden pixels chosen by a seeded random permutation.
    """

    @dataclass
    class Config(Operator.Config):
        p: float = 0.8          # fraction of pixels hidden (RLSD/DPS: 80%)
        resolution: int = 64    # the mask is drawn for resolution x resolution images
        seed: int = 0           # mask seed (say ${seed} to follow the run seed)

    cfg: Config

    def configure(self) -> None:
        if not 0.0 <= self.cfg.p <= 1.0:
            raise ConfigError(f"{self.key('p')}={self.cfg.p}: the hidden fraction must lie in [0, 1]")
        n = self.cfg.resolution * self.cfg.resolution
        order = torch.randperm(n, generator=keyed_generator(self.cfg.seed, "mask"))
        mask = torch.ones(n)
        mask[order[: round(self.cfg.p * n)]] = 0
        self.register_buffer("mask", mask.view(1, 1, self.cfg.resolution, self.cfg.resolution),
                             persistent=False)

    def size_hint(self) -> str:
        return f"set {self.key('resolution')} to the image size"


@register("mask-inpaint")
class MaskInpaint(FixedMaskOperator):
    """Free-form mask from an image file (e.g. the Saharia et al. masks RLSD uses on ImageNet).

    The file's **white pixels are observed (kept)** and black pixels hidden (grey level ≥ 0.5 after
    averaging the channels; transparent pixels count as white). ``invert=True`` reads white = hidden,
    the convention of hole masks (LaMa, Saharia et al.).
    """

    @dataclass
    class Config(Operator.Config):
        mask_path: str = ""     # PNG (or any image) of the same HxW as the images
        invert: bool = False    # False: white = observed; True: white = hidden

    cfg: Config

    def configure(self) -> None:
        from scorestudio.utils.images import load_image

        if not self.cfg.mask_path:
            raise ConfigError(f"{self.key('mask_path')} is empty: set the mask image, white = observed")
        gray = load_image(self.cfg.mask_path, key=self.key("mask_path")).mean(0)
        keep = gray >= 0.5
        if self.cfg.invert:
            keep = ~keep
        self.register_buffer("mask", keep.float()[None, None], persistent=False)

    def size_hint(self) -> str:
        return f"resize the mask {self.cfg.mask_path} or the images"


# --------------------------------------------------------------------------------------------
# Super-resolution.
# --------------------------------------------------------------------------------------------


@register("super-resolution")
class SuperResolution(Operator):
    """Downsample by ``scale``: ``avgpool`` (s x s block means) or antialiased ``bicubic``.

    Pseudo-inverse: for ``avgpool`` nearest-neighbour upsampling, the exact Moore–Penrose
    pseudo-inverse (A·A⁺ = identity); for ``bicubic`` bicubic upsampling, an approximation.
    """

    @dataclass
    class Config(Operator.Config):
        scale: int = 4               # downsampling factor s (DPS x4 at 256²; RLSD x8 at 512²)
        method: str = "bicubic"      # "bicubic" (antialiased, as DPS's resizer) or "avgpool"

    cfg: Config
    METHODS = ("bicubic", "avgpool")

    def configure(self) -> None:
        if self.cfg.method not in self.METHODS:
            raise ConfigError(f"{self.key('method')}={self.cfg.method!r}: expected one of {', '.join(self.METHODS)}")
        if self.cfg.scale < 1:
            raise ConfigError(f"{self.key('scale')}={self.cfg.scale}: the factor must be ≥ 1")

    def check_input(self, x: Tensor) -> None:
        check_input(x, self.name)
        s = self.cfg.scale
        if x.shape[-2] % s or x.shape[-1] % s:
            raise ValueError(f"{self.name}: image size {x.shape[-2]}x{x.shape[-1]} is not divisible by "
                             f"{self.key('scale')}={s}")

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        self.check_input(torch.empty(input_shape, device="meta"))
        n, c, h, w = input_shape
        return (n, c, h // self.cfg.scale, w // self.cfg.scale)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        if self.cfg.method == "avgpool":
            return F.avg_pool2d(x, self.cfg.scale)
        size = (x.shape[-2] // self.cfg.scale, x.shape[-1] // self.cfg.scale)
        return F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)

    def pseudo_inverse(self, y: Tensor) -> Tensor:
        check_input(y, self.name)
        size = (y.shape[-2] * self.cfg.scale, y.shape[-1] * self.cfg.scale)
        if self.cfg.method == "avgpool":
            return F.interpolate(y, size=size, mode="nearest")
        return F.interpolate(y, size=size, mode="bicubic", align_corners=False)


# --------------------------------------------------------------------------------------------
# Blur: y = k * x (true convolution, depthwise), "same" size.
# --------------------------------------------------------------------------------------------


def gaussian_kernel(size: int, sigma: float) -> Tensor:
    """``[size, size]`` samples of exp(−(i² + j²) / 2σ²) at integer offsets from the centre,
    normalised to sum 1 (``size`` odd)."""
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-offsets.pow(2) / (2 * sigma**2))
    kernel = torch.outer(g, g)
    return (kernel / kernel.sum()).float()


def motion_kernel(size: int, intensity: float, generator: torch.Generator) -> Tensor:
    """A random camera-shake kernel ``[size, size]``: non-negative, sums to 1, centred.

    A point moves ``4·size`` unit steps; its heading starts uniform in [0, 2π) and does a Gaussian
    random walk whose total std over the path is ``intensity·π`` radians (0 → a straight line,
    0.5 → a bent stroke, ≥ 1 → loops). The path is centred and scaled so its longer bounding-box
    side spans the kernel, resampled every ¼ pixel along its length and splatted bilinearly.
    """
    steps = 4 * size
    heading0 = torch.rand((), generator=generator, dtype=torch.float64) * 2 * math.pi
    turns = torch.randn(steps, generator=generator, dtype=torch.float64) * intensity * math.pi / math.sqrt(steps)
    headings = heading0 + torch.cumsum(turns, 0)
    moves = torch.stack([headings.sin(), headings.cos()], -1)           # (row, col) unit steps
    path = torch.cat([torch.zeros(1, 2, dtype=torch.float64), torch.cumsum(moves, 0)])
    low, high = path.min(0).values, path.max(0).values
    scale = (size - 1) / (high - low).max()
    path = (path - (low + high) / 2) * scale + (size - 1) / 2         # inside [0, size − 1]²
    return _splat(_resample(path, spacing=0.25), size).float()


def _resample(path: Tensor, spacing: float) -> Tensor:
    """Points every ``spacing`` along a polyline ``[P, 2]`` of equal-length segments."""
    segments = path.shape[0] - 1
    length = (path[1] - path[0]).norm().item() * segments
    u = torch.linspace(0, segments, max(2, math.ceil(length / spacing) + 1), dtype=path.dtype)
    i = u.floor().long().clamp(max=segments - 1)
    frac = (u - i)[:, None]
    return path[i] + frac * (path[i + 1] - path[i])


def _splat(points: Tensor, size: int) -> Tensor:
    """Bilinearly splat equal-weight ``points [P, 2]`` (row, col) into ``[size, size]``, sum 1."""
    base = points.floor().clamp(0, size - 2)
    frac = points - base
    kernel = torch.zeros(size, size, dtype=points.dtype)
    r, c = base[:, 0].long(), base[:, 1].long()
    fr, fc = frac[:, 0], frac[:, 1]
    for dr, dc, w in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc),
                      (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
        kernel.index_put_((r + dr, c + dc), w, accumulate=True)
    return kernel / kernel.sum()


class BlurOperator(Operator):
    """y = k * x: depthwise true convolution with ``kernel [k, k]`` (odd k), output size = input.

    Borders (``padding``): "reflect" (DPS; a constant image stays constant), "zeros" (the image
    continues as 0, i.e. mid-grey) or "circular" (periodic; the Fourier pseudo-inverse is then exact).
    Pseudo-inverse: Tikhonov/Wiener deconvolution in Fourier space,
    X = conj(K)·Y / (|K|² + λ) with λ = ``wiener_reg``, which treats the blur as circular (so it is
    approximate near the borders unless padding is "circular").
    """

    @dataclass
    class Config(Operator.Config):
        padding: str = "reflect"   # "reflect", "zeros" or "circular" (see the class docstring)
        wiener_reg: float = 1e-3   # λ of the deconvolution; raise it for noisier y

    cfg: Config
    kernel: Tensor
    PADDINGS = {"reflect": "reflect", "zeros": "constant", "circular": "circular"}

    def make_kernel(self) -> Tensor:
        """The kernel ``[k, k]``, non-negative, sum 1."""
        raise NotImplementedError  # pragma: no cover - abstract

    def configure(self) -> None:
        if self.cfg.padding not in self.PADDINGS:
            raise ConfigError(f"{self.key('padding')}={self.cfg.padding!r}: expected one of {', '.join(self.PADDINGS)}")
        size = self.cfg.kernel_size
        if size < 1 or size % 2 == 0:
            raise ConfigError(f"{self.key('kernel_size')}={size}: the kernel size must be odd and positive")
        self.register_buffer("kernel", self.make_kernel(), persistent=False)

    def check_input(self, x: Tensor) -> None:
        check_input(x, self.name)
        half = self.cfg.kernel_size // 2
        if self.cfg.padding != "zeros" and min(x.shape[-2:]) <= half:
            raise ValueError(f"{self.name}: {self.cfg.padding} padding of {half} pixels needs images larger "
                             f"than {half}, got {x.shape[-2]}x{x.shape[-1]}; lower {self.key('kernel_size')}")

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        half = self.cfg.kernel_size // 2
        padded = F.pad(x, (half, half, half, half), mode=self.PADDINGS[self.cfg.padding])
        weight = self.kernel.flip(0, 1).to(x.dtype).expand(x.shape[1], 1, -1, -1)  # flip: convolution
        return F.conv2d(padded, weight, groups=x.shape[1])

    def transfer_function(self, height: int, width: int) -> Tensor:
        """K = FFT2 of the kernel zero-padded to ``[H, W]`` with its centre at pixel (0, 0)."""
        k, half = self.cfg.kernel_size, self.cfg.kernel_size // 2
        if k > height or k > width:
            raise ValueError(f"{self.name}: the {k}x{k} kernel is larger than the {height}x{width} images")
        full = torch.zeros(height, width, dtype=torch.float64, device=self.kernel.device)
        full[:k, :k] = self.kernel
        return torch.fft.fft2(full.roll((-half, -half), (0, 1)))

    def pseudo_inverse(self, y: Tensor) -> Tensor:
        self.check_input(y)
        kf = self.transfer_function(y.shape[-2], y.shape[-1])
        yf = torch.fft.fft2(y.double())
        xf = kf.conj() * yf / (kf.abs().pow(2) + self.cfg.wiener_reg)
        return torch.fft.ifft2(xf).real.to(y.dtype)


@register("gaussian-blur")
class GaussianBlur(BlurOperator):
    """Gaussian blur. DPS/RLSD at 256²: a 61x61 kernel with σ = 3.0 px; the defaults are that blur
    scaled to 64² images (σ = 3.0 · 64/256 = 0.75 px, 9x9 kernel = ±5σ)."""

    @dataclass
    class Config(BlurOperator.Config):
        kernel_size: int = 9   # kernel side in pixels, odd (61 at 256²)
        sigma: float = 0.75    # Gaussian std in pixels (3.0 at 256²)

    cfg: Config

    def make_kernel(self) -> Tensor:
        if self.cfg.sigma <= 0:
            raise ConfigError(f"{self.key('sigma')}={self.cfg.sigma}: the blur std must be positive")
        return gaussian_kernel(self.cfg.kernel_size, self.cfg.sigma)


@register("motion-blur")
class MotionBlur(BlurOperator):
    """Random motion blur with a kernel from :func:`motion_kernel`, drawn once at construction
    from ``generator(seed, "motion-kernel")``. DPS/RLSD at 256²: 61x61 kernels from the
    ``motionblur`` package (intensity 0.5 in DPS, 0.3 in RLSD D.3); that package's intensity is a
    different parameterisation, so kernels resemble but do not reproduce theirs."""

    @dataclass
    class Config(BlurOperator.Config):
        kernel_size: int = 15   # kernel side in pixels, odd (61 at 256² ≈ 15 at 64²)
        intensity: float = 0.5  # heading random-walk std over the path, in units of π radians
        seed: int = 0           # kernel seed (say ${seed} to follow the run seed)

    cfg: Config

    def make_kernel(self) -> Tensor:
        if self.cfg.intensity < 0:
            raise ConfigError(f"{self.key('intensity')}={self.cfg.intensity}: must be ≥ 0")
        gen = keyed_generator(self.cfg.seed, "motion-kernel")
        return motion_kernel(self.cfg.kernel_size, self.cfg.intensity, gen)


# --------------------------------------------------------------------------------------------
# Non-linear operators.
# --------------------------------------------------------------------------------------------


@register("phase-retrieval")
class PhaseRetrieval(Operator):
    """y = |FFT2(zero-pad(x))| per channel, orthonormal FFT, spectrum centred (fftshift).

    Oversampling ``oversample`` = padded size / image size per axis: 2 pads H/2 zero rows (0 = mid-grey
    in [−1, 1]) on each side → y ``[N, 3, 2H, 2W]``. (DPS's code pads ``oversample/8·256`` pixels,
    i.e. H/4 per side at 256².) y is invariant to translating x inside the padded frame (circular
    shift of the padded image) and to rotating it by 180° (the conjugate-flip twin), so the
    posterior has at least two isolated modes. There is no pseudo-inverse: the phase is lost.
    """

    @dataclass
    class Config(Operator.Config):
        oversample: float = 2.0   # padded size / image size per axis (≥ 1)

    cfg: Config
    has_pseudo_inverse = False
    is_linear = False

    def configure(self) -> None:
        if self.cfg.oversample < 1:
            raise ConfigError(f"{self.key('oversample')}={self.cfg.oversample}: must be ≥ 1")

    def padding(self, height: int, width: int) -> tuple[int, int]:
        """Zero rows and columns added on each side: (pad_h, pad_w)."""
        return (int((self.cfg.oversample - 1) * height / 2), int((self.cfg.oversample - 1) * width / 2))

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        self.check_input(torch.empty(input_shape, device="meta"))
        n, c, h, w = input_shape
        ph, pw = self.padding(h, w)
        return (n, c, h + 2 * ph, w + 2 * pw)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        ph, pw = self.padding(x.shape[-2], x.shape[-1])
        padded = F.pad(x, (pw, pw, ph, ph))
        spectrum = torch.fft.fftshift(torch.fft.fft2(padded, norm="ortho"), dim=(-2, -1))
        return spectrum.abs()

    def pseudo_inverse(self, y: Tensor) -> Tensor:
        raise NotImplementedError(
            "phase-retrieval has no pseudo-inverse (has_pseudo_inverse is False): |FFT| discards the "
            "phase, and x, its translates and its 180° rotation give the same y; start a solver from noise")


@register("hdr")
class HDR(Operator):
    """RLSD's HDR task: y = clip(2x, −1, 1) on [−1, 1] images (pixels with |x| > 0.5 saturate).

    Pseudo-inverse y/2: exact where |x| ≤ 0.5; saturated pixels come back as ±0.5.
    """

    is_linear = False

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return (2 * x).clamp(-1, 1)

    def pseudo_inverse(self, y: Tensor) -> Tensor:
        self.check_input(y)
        return y / 2
