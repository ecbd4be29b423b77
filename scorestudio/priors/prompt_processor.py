"""Prompts → text embeddings per batch item, with DreamFusion's view-dependent prompting.

For 3D systems each camera gets its view's prompt (``"a red cube, back view"``), chosen by the
azimuth/elevation rule of :func:`scorestudio.data.cameras.view_index`. 2D systems pass no cameras
and every item gets the plain prompt. Embeddings come from the prior's per-prompt cache, so
each distinct prompt is encoded once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from omegaconf import MISSING
from torch import Tensor

from scorestudio.data.cameras import VIEW_NAMES, ViewThresholds, view_index
from scorestudio.utils.base import Configurable
from scorestudio.utils.config import ConfigError
from scorestudio.utils.registry import register

if TYPE_CHECKING:
    from scorestudio.priors.base import DiffusionPrior

# The NFSD paper's negative prompt (guidance/nfsd.py): a prompt, so it lives with the prompts; the
# text-embeddings command always encodes it.
NFSD_NEGATIVE_PROMPT = ("unrealistic, blurry, low quality, out of focus, ugly, low contrast, dull, "
                        "dark, low-resolution, gloomy")


@dataclass
class PromptBatch:
    """Text conditioning for a batch of B items (rows aligned with the cameras, if any)."""

    cond: Tensor  # [B, L, D] embedding of each item's (view-dependent) prompt
    uncond: Tensor  # [B, L, D] embedding of the negative prompt ("" = unconditional)
    prompts: list[str]  # the B prompt strings behind ``cond``

    def index(self, rows: Tensor) -> "PromptBatch":
        """The items ``rows`` (long ``[b]``) of the batch."""
        rows = rows.to(self.cond.device)
        return PromptBatch(self.cond[rows], self.uncond[rows], [self.prompts[int(i)] for i in rows.tolist()])


@register("prompt-processor")
class PromptProcessor(Configurable):
    """``processor(prior, elevation, azimuth)`` → :class:`PromptBatch`."""

    @dataclass
    class Config:
        prompt: str = MISSING  # required, non-empty
        negative_prompt: str = ""  # "" is the unconditional embedding
        view_dependent_prompting: bool = True  # per-camera view suffixes (3D systems)
        # View thresholds in degrees (see data.cameras.ViewThresholds):
        front_threshold: float = 45.0  # |azimuth| < this -> front
        back_threshold: float = 45.0  # |azimuth| > 180 - this -> back
        overhead_threshold: float = 60.0  # elevation > this -> overhead (wins over the others)
        # View templates; "{}" is replaced by the prompt.
        prompt_front: str = "{}, front view"
        prompt_side: str = "{}, side view"
        prompt_back: str = "{}, back view"
        prompt_overhead: str = "{}, overhead view"

    cfg: Config

    def configure(self) -> None:
        key = f"{self.config_path}." if self.config_path else ""
        if not self.cfg.prompt.strip():
            raise ConfigError(f"{key}prompt is empty: set the text to distill, e.g. {key}prompt=\"a red cube\"")
        for view in VIEW_NAMES:
            if "{}" not in getattr(self.cfg, f"prompt_{view}"):
                raise ConfigError(f"{key}prompt_{view} must contain '{{}}' where the prompt goes, "
                                  f"got {getattr(self.cfg, f'prompt_{view}')!r}")
        self.thresholds = ViewThresholds(front_threshold=self.cfg.front_threshold,
                                         back_threshold=self.cfg.back_threshold,
                                         overhead_threshold=self.cfg.overhead_threshold)

    def view_prompts(self) -> list[str]:
        """The 4 view prompts, in ``VIEW_NAMES`` order (front, side, back, overhead)."""
        return [getattr(self.cfg, f"prompt_{view}").format(self.cfg.prompt) for view in VIEW_NAMES]

    def prompts_for(self, elevation: Optional[Tensor] = None, azimuth: Optional[Tensor] = None,
                    batch_size: Optional[int] = None) -> list[str]:
        """Prompt strings for B items: per camera (``elevation``, ``azimuth`` ``[B]`` degrees) or,
        without cameras, ``batch_size`` (default 1) copies of the plain prompt."""
        if (elevation is None) != (azimuth is None):
            raise ValueError("pass both elevation and azimuth, or neither")
        if elevation is None:
            return [self.cfg.prompt] * (1 if batch_size is None else batch_size)
        n = len(elevation)
        if batch_size is not None and batch_size != n:
            raise ValueError(f"batch_size={batch_size} but {n} cameras were given")
        if not self.cfg.view_dependent_prompting:
            return [self.cfg.prompt] * n
        views = self.view_prompts()
        return [views[i] for i in view_index(elevation, azimuth, self.thresholds).tolist()]

    def __call__(self, prior: DiffusionPrior, elevation: Optional[Tensor] = None,
                 azimuth: Optional[Tensor] = None, batch_size: Optional[int] = None) -> PromptBatch:
        """Embeddings of :meth:`prompts_for`'s prompts (``cond`` ``[B, L, D]``) and of the negative
        prompt (``uncond``, expanded to ``[B, L, D]``), both on the prior's device."""
        prompts = self.prompts_for(elevation, azimuth, batch_size)
        cond = prior.encode_text(prompts)
        uncond = prior.encode_text([self.cfg.negative_prompt]).expand_as(cond)
        return PromptBatch(cond=cond, uncond=uncond, prompts=prompts)
