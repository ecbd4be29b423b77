"""DeepFloyd IF stage I as a prior: a pixel-space diffusion model on 64x64 images with T5 text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import Tensor

from scorestudio.priors.base import DiffusionPrior, hf_text_embeddings, resize_square
from scorestudio.utils.registry import register


@register("deepfloyd-if")
class DeepFloydIFPrior(DiffusionPrior):
    """A diffusers IF stage I folder: ``unet/`` (UNet2DConditionModel with 6 output channels:
    ε and the learned variance, of which only ε is used), ``text_encoder/`` (T5EncoderModel),
    ``tokenizer/`` and ``scheduler/``. The hub repo's tokenizer is a SentencePiece ``spiece.model``
    (read through the ``sentencepiece`` and ``protobuf`` packages); with precomputed
    ``text_embeddings`` neither the tokenizer nor T5 is constructed.

    Model space = pixels in [-1, 1], ``[N, 3, 64, 64]`` (``latent_size`` = ``image_size`` = the
    UNet's sample_size). Text embeddings: T5 ``last_hidden_state`` ``[B, 77, 4096]`` with the
    attention mask on pad tokens, as the diffusers IF pipeline computes them (without its
    optional caption cleaning).
    """

    is_latent = False

    @dataclass
    class Config(DiffusionPrior.Config):
        pretrained_model_name_or_path: str = "DeepFloyd/IF-I-XL-v1.0"
        text_max_length: Optional[int] = 77  # T5 tokens per prompt, as in the IF pipeline

    def load_models(self, source: str) -> None:
        from diffusers import UNet2DConditionModel
        from transformers import AutoTokenizer, T5EncoderModel

        self.unet = self.load_weights(UNet2DConditionModel, source, "unet")
        loads = self.loads_text_encoder   # T5-XXL stays on disk with precomputed embeddings
        self.tokenizer = self.load(AutoTokenizer, source, "tokenizer") if loads else None
        self.text_encoder = self.load_weights(T5EncoderModel, source, "text_encoder") if loads else None
        self.text_max_length = self.cfg.text_max_length or self.tokenizer_length(source)
        self.image_size: int = int(self.unet.config.sample_size)

    def encode_uncached(self, prompts: list[str]) -> Tensor:
        return hf_text_embeddings(self.tokenizer, self.text_encoder, prompts, self.text_max_length,
                                  use_attention_mask=True)

    def encode_images(self, images: Tensor) -> Tensor:
        """Images ``[N, 3, H, W]`` in [0, 1] → pixels ``[N, 3, 64, 64]`` in [-1, 1] (2x − 1, resized
        with antialiased bilinear interpolation if H, W ≠ 64). Differentiable."""
        return resize_square(images, self.image_size) * 2.0 - 1.0

    def decode_latents(self, latents: Tensor) -> Tensor:
        """Pixels ``[N, 3, 64, 64]`` in [-1, 1] → images in [0, 1] ((x + 1) / 2, clamped)."""
        return ((latents + 1.0) / 2.0).clamp(0.0, 1.0)
