"""vectorize: a clean raster image → an SVG of few editable paths.

The restoration system (:mod:`scorestudio.systems.svg_restoration`) with the identity as the
degradation and without a prior: the data term is ‖x − render(θ)‖² (images in [−1, 1]), the
paths grow where the render is furthest from the image and the written SVG is the cleaned scene
(:mod:`scorestudio.generators.svg_paths`). Same outputs and metrics as restoration, the image
itself being the ground truth.

    scorestudio train --config configs/vectorize.yaml data.image=logo.png
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

from scorestudio.data.operators import Operator
from scorestudio.systems.distillation import EvalConfig
from scorestudio.systems.svg_restoration import SvgRestorationSystem
from scorestudio.utils.config import ConfigError, parse_structured
from scorestudio.utils.registry import register


class Identity(Operator):
    """A(x) = x: the image is measured as it is, without noise."""

    @dataclass
    class Config(Operator.Config):
        sigma_y: float = 0.0

    def forward(self, x: Tensor) -> Tensor:
        return x

    def pseudo_inverse(self, y: Tensor) -> Tensor:
        return y


@dataclass
class VectorizeDataConfig:
    image: Optional[str] = None    # the image to vectorise (square; grey or RGBA become RGB on white)
    size: Optional[int] = None     # px: resize it to size² first; None = as it is


def load_image_problem(data) -> "RestorationProblem":  # noqa: F821
    """The image of ``data`` as a restoration problem with the identity operator, the image
    being both y (in [−1, 1]) and the ground truth ``[1, 3, H, W]``."""
    from scorestudio.data.problems import RestorationProblem
    from scorestudio.priors.base import resize_square
    from scorestudio.utils.images import load_image

    cfg: VectorizeDataConfig = parse_structured(VectorizeDataConfig, data, "data")
    if not cfg.image:
        raise ConfigError("data.image is missing: the image to vectorise, e.g. data.image=logo.png")
    image = load_image(cfg.image, key="data.image")[None]
    if image.shape[-1] != image.shape[-2]:
        raise ConfigError(f"data.image={cfg.image} is {image.shape[-2]}x{image.shape[-1]} (HxW); vectorize needs a "
                          "square image: crop or pad it")
    if cfg.size is not None:
        if cfg.size < 8:
            raise ConfigError(f"data.size={cfg.size}: ask for at least 8 px")
        image = resize_square(image, cfg.size).clamp(0, 1)
    operator = Identity(path="data")
    return RestorationProblem(2 * image - 1, operator, image.shape[-1], ground_truth=image)


@register("vectorize")
class VectorizeSystem(SvgRestorationSystem):
    """Restoration with the identity operator and no prior (see the module docstring)."""

    @dataclass
    class Config(SvgRestorationSystem.Config):
        distillation: bool = False
        evaluation: EvalConfig = field(default_factory=lambda: EvalConfig(evaluators=["psnr-ssim"]))

    def configure(self) -> None:
        if self.cfg.distillation:
            raise ConfigError("system.distillation: vectorize fits the image itself; for a prior's help with a "
                              "degraded image use the svg-restoration system")
        super().configure()

    def load_problem(self):
        return load_image_problem(self.data_cfg)
