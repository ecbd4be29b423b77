"""Prompts → text embeddings per batch item, with DreamFusion's view-dependent prompting.

For 3D systems each camera gets its view's prompt (``"a red cube, back view"``), chosen by the
azimuth/elevation rule of :func:`scorestudio.data.cameras.view_index`. 2D systems pass no cameras
and every item gets the plain prompt. Embeddings come from the prior's per-prompt cache, so
each distinct prompt is encoded once.

Two Janus mitigations of threestudio, for any guidance (both off by default):

- ``use_perp_neg``: each camera is conditioned on a mixture of the view prompts' embeddings and
  carries the other views as negatives (:class:`~scorestudio.priors.perp_neg.PerpNegBatch`); the
  prior combines them where it computes classifier-free guidance (:mod:`scorestudio.priors.perp_neg`).
- ``prompt_debiasing``: words of the prompt that imply a view are dropped from the other views'
  prompts (:mod:`scorestudio.priors.prompt_debiasing`, a masked language model from a local folder).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

import torch
from omegaconf import MISSING
from torch import Tensor

from scorestudio.data.cameras import VIEW_NAMES, ViewThresholds, view_index
from scorestudio.priors.perp_neg import F_FS, F_FSB, F_SB, F_SF, PerpNegBatch, view_mixture
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
    prompts: list[str]  # the B prompt strings behind ``cond`` (with Perp-Neg: each camera's nearest view)
    perp_neg: Optional[PerpNegBatch] = None  # Perp-Neg's negative views of each item (use_perp_neg)
    # [B, L, D] embedding of each item's prompt without its view (None: as ``cond``): what a model
    # given the camera itself (VSD's LoRA) is conditioned on, as in ProlificDreamer and threestudio
    plain: Optional[Tensor] = None

    @property
    def without_view(self) -> Tensor:
        """``plain``, or ``cond`` where the prompts carry no view."""
        return self.cond if self.plain is None else self.plain

    def index(self, rows: Tensor) -> "PromptBatch":
        """The items ``rows`` (long ``[b]``) of the batch."""
        rows = rows.to(self.cond.device)
        perp_neg = self.perp_neg.index(rows) if self.perp_neg is not None else None
        plain = self.plain[rows] if self.plain is not None else None
        return PromptBatch(self.cond[rows], self.uncond[rows], [self.prompts[int(i)] for i in rows.tolist()], perp_neg,
                           plain)


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
        # Perp-Neg (threestudio's use_perp_neg): needs view_dependent_prompting and cameras (3D).
        # The four weight functions a·exp(−b·r) + c, threestudio's defaults (scorestudio.priors.perp_neg).
        use_perp_neg: bool = False
        perp_neg_f_sb: list = field(default_factory=lambda: list(F_SB))
        perp_neg_f_fsb: list = field(default_factory=lambda: list(F_FSB))
        perp_neg_f_fs: list = field(default_factory=lambda: list(F_FS))
        perp_neg_f_sf: list = field(default_factory=lambda: list(F_SF))
        # Prompt debiasing (threestudio's prompt_debiasing): drop view-implying words from the
        # other views' prompts, scored by a masked language model (a local folder or cached hub id).
        prompt_debiasing: bool = False
        prompt_debiasing_mask_ids: Optional[list] = None   # word indices that may be dropped; None = all
        pretrained_model_name_or_path_prompt_debiasing: str = "bert-base-uncased"

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
        if self.cfg.use_perp_neg and not self.cfg.view_dependent_prompting:
            raise ConfigError(f"{key}use_perp_neg needs {key}view_dependent_prompting=true: Perp-Neg mixes "
                              "the view prompts")
        for name in ("sb", "fsb", "fs", "sf"):
            if len(getattr(self.cfg, f"perp_neg_f_{name}")) != 3:
                raise ConfigError(f"{key}perp_neg_f_{name} must be [a, b, c] of a·exp(−b·r) + c")
        self.view_subjects = self.debiased_subjects() if self.cfg.prompt_debiasing else [self.cfg.prompt] * len(VIEW_NAMES)

    def debiased_subjects(self) -> list[str]:
        """The prompt of each view (``VIEW_NAMES`` order) without the words that imply another view."""
        from scorestudio.priors.prompt_debiasing import ViewScorer, debiased_prompts

        key = f"{self.config_path}." if self.config_path else ""
        scorer = ViewScorer(self.cfg.pretrained_model_name_or_path_prompt_debiasing, VIEW_NAMES,
                            key=f"{key}pretrained_model_name_or_path_prompt_debiasing")
        return debiased_prompts(self.cfg.prompt, scorer, len(VIEW_NAMES), self.cfg.prompt_debiasing_mask_ids)

    def view_prompts(self) -> list[str]:
        """The 4 view prompts, in ``VIEW_NAMES`` order (front, side, back, overhead)."""
        return [getattr(self.cfg, f"prompt_{view}").format(subject)
                for view, subject in zip(VIEW_NAMES, self.view_subjects)]

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
        if prior.cfg.free_text_encoder and prior.text_encoder is not None:
            # every prompt this processor can ask for, before the prior frees its encoder
            prior.encode_text([*self.view_prompts(), self.cfg.prompt, self.cfg.negative_prompt])
        prompts = self.prompts_for(elevation, azimuth, batch_size)
        if self.cfg.use_perp_neg and elevation is not None:
            return self.perp_neg_batch(prior, elevation, azimuth, prompts)
        cond = prior.encode_text(prompts)
        uncond = prior.encode_text([self.cfg.negative_prompt]).expand_as(cond)
        return PromptBatch(cond=cond, uncond=uncond, prompts=prompts, plain=self.plain_embedding(prior, elevation, cond))

    def plain_embedding(self, prior: DiffusionPrior, elevation: Optional[Tensor], cond: Tensor) -> Optional[Tensor]:
        """The prompt's embedding without a view, ``[B, L, D]`` like ``cond``, where the items'
        prompts carry views (view-dependent prompting with cameras); else None."""
        if elevation is None or not self.cfg.view_dependent_prompting:
            return None
        return prior.encode_text([self.cfg.prompt]).expand_as(cond)

    def perp_neg_batch(self, prior: DiffusionPrior, elevation: Tensor, azimuth: Tensor,
                       prompts: list[str]) -> PromptBatch:
        """Perp-Neg conditioning of B cameras: ``cond`` the mixture of the view embeddings,
        ``perp_neg`` the two negative views of each camera with their weights (see
        :mod:`scorestudio.priors.perp_neg`)."""
        views = prior.encode_text(self.view_prompts())                     # [4, L, D]
        functions = (self.cfg.perp_neg_f_sb, self.cfg.perp_neg_f_fsb, self.cfg.perp_neg_f_fs, self.cfg.perp_neg_f_sf)
        overhead = torch.as_tensor(elevation) > self.thresholds.overhead_threshold
        mix, negatives, weights = view_mixture(torch.as_tensor(azimuth), overhead, functions)
        cond = torch.einsum("bv,vld->bld", mix.to(views), views)
        uncond = prior.encode_text([self.cfg.negative_prompt]).expand_as(cond)
        perp_neg = PerpNegBatch(views[negatives.to(views.device)], weights.to(views))
        return PromptBatch(cond=cond, uncond=uncond, prompts=prompts, perp_neg=perp_neg,
                           plain=self.plain_embedding(prior, elevation, cond))
