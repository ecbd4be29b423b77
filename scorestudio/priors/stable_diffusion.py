"""Stable Diffusion (1.x / 2.x) as a prior: CLIP text encoder + VAE latents + UNet."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from scorestudio.priors.base import hf_text_embeddings
from scorestudio.priors.latent_diffusion import LatentDiffusionPrior
from scorestudio.utils.registry import register


@register("stable-diffusion")
class StableDiffusionPrior(LatentDiffusionPrior):
    """A diffusers Stable Diffusion folder: ``unet/``, ``vae/``, ``scheduler/``, ``tokenizer/``
    (CLIPTokenizer: vocab.json + merges.txt in the hub repos) and ``text_encoder/`` (CLIPTextModel),
    as ``huggingface-cli download`` leaves SD 1.5, 2.1-base and 2.1 (whatever scheduler class the
    repo names, only its noise schedule and prediction type are read). With precomputed
    ``text_embeddings`` neither the tokenizer nor the text encoder is constructed.

    Text embeddings: CLIP ``last_hidden_state`` ``[B, 77, D]`` (D = 768 for SD 1.x, 1024 for 2.x),
    prompts padded to the tokenizer's ``model_max_length`` (77) without attention mask, as the
    diffusers pipeline does. v-prediction checkpoints (SD 2.1 768) are returned as ε.
    """

    @dataclass
    class Config(LatentDiffusionPrior.Config):
        # threestudio's default SD prior (ε-prediction, 512x512 images, 64x64x4 latents).
        pretrained_model_name_or_path: str = "stabilityai/stable-diffusion-2-1-base"

    def load_text_encoder(self, source: str) -> None:
        from transformers import CLIPTextModel, CLIPTokenizer

        loads = self.loads_text_encoder
        self.tokenizer = self.load(CLIPTokenizer, source, "tokenizer") if loads else None
        self.text_encoder = self.load_weights(CLIPTextModel, source, "text_encoder") if loads else None
        self.text_max_length = self.cfg.text_max_length or self.tokenizer_length(source)

    def encode_uncached(self, prompts: list[str]) -> Tensor:
        return hf_text_embeddings(self.tokenizer, self.text_encoder, prompts, self.text_max_length,
                                  use_attention_mask=False)
