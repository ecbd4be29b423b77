"""Latent diffusion priors: a diffusers ``UNet2DConditionModel`` denoising ``AutoencoderKL`` latents.

The folder holds ``unet/``, ``vae/`` and ``scheduler/`` (diffusers ``save_pretrained`` layout);
subclasses add the text encoder (CLIP for Stable Diffusion, MiniLM for the embedded prior).
"""

from __future__ import annotations

from torch import Tensor

from scorestudio.priors.base import DiffusionPrior, resize_square


class LatentDiffusionPrior(DiffusionPrior):
    """Model space = VAE latents scaled by the VAE's ``scaling_factor`` (0.18215 for SD 1/2).

    ``image_size`` = ``latent_size`` × the VAE factor 2^(levels − 1) (SD: 64 × 8 = 512).
    """

    is_latent = True

    def load_models(self, source: str) -> None:
        from diffusers import AutoencoderKL, UNet2DConditionModel

        self.unet = self.load_weights(UNet2DConditionModel, source, "unet")
        self.vae = self.load_weights(AutoencoderKL, source, "vae")
        self.load_text_encoder(source)
        vae_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.image_size: int = int(self.unet.config.sample_size) * vae_factor

    def load_text_encoder(self, source: str) -> None:
        """Set the text encoder (and tokenizer) used by :meth:`encode_uncached`."""
        raise NotImplementedError

    def encode_images(self, images: Tensor) -> Tensor:
        """Images ``[N, 3, H, W]`` in [0, 1] → latents ``[N, C, h, w]`` = scaling_factor × the mean
        of the VAE posterior (deterministic: no sampling noise, so no RNG stream is needed).
        Images are resized to ``image_size`` first. Differentiable."""
        x = resize_square(images, self.image_size) * 2.0 - 1.0
        posterior = self.vae.encode(x.to(self.torch_dtype)).latent_dist
        return (posterior.mean * self.vae.config.scaling_factor).to(images.dtype)

    def decode_latents(self, latents: Tensor) -> Tensor:
        """Latents ``[N, C, h, w]`` → images ``[N, 3, image_size, image_size]`` in [0, 1]. Differentiable
        (clamped to [0, 1], so out-of-range pixels pass no gradient)."""
        x = self.vae.decode((latents / self.vae.config.scaling_factor).to(self.torch_dtype)).sample
        return ((x.to(latents.dtype) + 1.0) / 2.0).clamp(0.0, 1.0)
