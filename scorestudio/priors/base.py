"""The one interface every guidance (SDS, NFSD, VSD, ...) uses to query a text-to-image prior.

Notation (DDPM, discrete time t in {0, ..., T-1}, T = ``num_train_timesteps``):

    x_t = α_t x_0 + σ_t ε,     α_t = sqrt(ᾱ_t),  σ_t = sqrt(1 − ᾱ_t),  ᾱ_t = ``alphas_cumprod[t]``.

x lives in the prior's *model space*: VAE latents ``[N, C, h, w]`` for latent priors (Stable
Diffusion, the embedded prior), pixels in [-1, 1] for pixel priors (DeepFloyd IF).

Classifier-free guidance convention (diffusers'), used by :meth:`DiffusionPrior.predict_noise_cfg`
and everything built on it:

    ε_cfg = ε_u + s (ε_c − ε_u)

so s = 1 is the plain conditional prediction and s = 0 the unconditional one. (DreamFusion's
ω is s − 1.)

Inputs and outputs of every method are float32; a float16 prior casts internally (explicit
casts at the boundary of each frozen network, no autocast needed: see ``Config.dtype``).

Low-memory switches (``Config``; all off by default, each documented with what it saves in
docs/priors.md): attention slicing and the attention backend, VAE slicing and tiling, freeing the
text encoder once the prompts are embedded, a cap on the items per UNet call, ``channels_last``.
"""

from __future__ import annotations

import warnings
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from omegaconf import MISSING
from torch import Tensor, nn

from scorestudio.priors.loading import load_component, resolve_dtype
from scorestudio.priors.perp_neg import PerpNegBatch, guided_direction
from scorestudio.priors.text_embeddings import COMMAND as TEXT_EMBEDDINGS_COMMAND
from scorestudio.priors.text_embeddings import default_file, load_text_embeddings
from scorestudio.utils.base import BaseModule
from scorestudio.utils.config import ConfigError


class EvalOnlyMixin:
    """``.train()`` keeps the module in eval mode.

    Lightning calls ``model.train()`` on the whole system at the start of fitting; frozen text
    encoders (T5, MiniLM) have dropout that must stay off. Adapters attached later (VSD's LoRA on
    ``unet``) therefore also run without dropout.
    """

    def train(self, mode: bool = True):
        return super().train(False)


@torch.no_grad()
def hf_text_embeddings(tokenizer: Any, encoder: nn.Module, prompts: list[str], max_length: int,
                       use_attention_mask: bool) -> Tensor:
    """Per-token ``last_hidden_state`` ``[B, max_length, D]`` of a transformers text encoder.

    Prompts are padded to ``max_length`` ("max_length" padding) and truncated to it. With
    ``use_attention_mask`` the encoder ignores pad tokens (T5, BERT); CLIP as used by Stable
    Diffusion attends to them (no mask). The pad positions are part of the output either way.
    """
    tokens = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True,
                       return_tensors="pt")
    device = next(encoder.parameters()).device
    mask = tokens.attention_mask.to(device) if use_attention_mask else None
    return encoder(tokens.input_ids.to(device), attention_mask=mask).last_hidden_state


def resize_square(images: Tensor, size: int) -> Tensor:
    """Images ``[N, C, H, W]`` → ``[N, C, size, size]`` (bilinear, antialiased); no-op if already."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def _drop_frozen_parameters(prior: DiffusionPrior, state_dict: dict, prefix: str, metadata: Any) -> None:
    """``state_dict`` post-hook: frozen pretrained weights come from the model folder, not checkpoints."""
    for name in prior.frozen_parameters():
        state_dict.pop(prefix + name, None)


def _restore_frozen_parameters(prior: DiffusionPrior, state_dict: dict, prefix: str, *args: Any) -> None:
    """``load_state_dict`` pre-hook: frozen weights missing from ``state_dict`` keep their loaded values."""
    for name, param in prior.frozen_parameters().items():
        state_dict.setdefault(prefix + name, param.detach())


class DiffusionPrior(EvalOnlyMixin, BaseModule):
    """A frozen text-conditioned ε-prediction diffusion model (see the module docstring).

    Attributes set by :meth:`configure`:
        unet: the denoiser, a plain diffusers ``UNet2DConditionModel`` (VSD attaches LoRA to it).
        num_train_timesteps (int): T, usually 1000.
        alphas_cumprod: buffer ``[T]`` float32, ᾱ_t.
        scheduler_config (dict): the folder's ``scheduler/scheduler_config.json`` (for samplers).
        latent_channels (int): C of the model space.
        latent_size (int): h = w of the model space.
        image_size (int): H = W of the images that ``encode_images`` expects/``decode_latents`` returns.
        is_latent (bool): model space is VAE latents (True) or pixels (False).

    Subclasses implement :meth:`load_models`, :meth:`encode_uncached`, :meth:`encode_images` and
    :meth:`decode_latents`. All parameters are frozen (``requires_grad=False``) and stay in eval
    mode; gradients still flow *through* ``predict_noise`` / ``encode_images`` / ``decode_latents``
    to their inputs.

    Checkpoints: ``state_dict()`` leaves out frozen parameters (gigabytes that the model folder
    already holds) and ``load_state_dict`` keeps the loaded ones for keys it lacks, so a system
    holding a prior checkpoints only what trains in it (e.g. VSD's LoRA) and resumes strictly.
    """

    # (lo, hi) fractions of T where `scorestudio sample` applies CFG by default (see
    # scorestudio.solvers.ddim: guidance interval). Every step: the convention of SD and IF users.
    sampling_guidance_interval: tuple[float, float] = (0.0, 1.0)

    def warn_unknown_prompts(self, prompts: list[str]) -> None:
        """One warning per prompt this prior cannot draw (see :meth:`unknown_prompt`)."""
        for prompt in dict.fromkeys(prompts):
            reason = self.unknown_prompt(prompt)
            if reason is not None:
                warnings.warn(reason, stacklevel=2)

    def unknown_prompt(self, prompt: str) -> Optional[str]:
        """Why this prior cannot draw ``prompt`` (a prior trained on a closed vocabulary says so
        when the prompt names nothing it knows), or None. Open-vocabulary priors: always None."""
        return None

    @dataclass
    class Config:
        # Local diffusers-format folder, or a Hugging Face hub id found in the local HF cache.
        pretrained_model_name_or_path: str = MISSING
        # True: never touch the network. False: from_pretrained may download missing files.
        local_files_only: bool = True
        # Weights and compute dtype of the frozen networks: "float32", or "float16" (CUDA only; on
        # the CPU it warns and keeps float32). Inputs and outputs are float32 either way; what
        # trains inside the prior (VSD's LoRA and camera embedding) stays float32.
        dtype: str = "float32"
        # Tokens per prompt = L of the text embeddings [B, L, D]; None = the model's own length
        # (77 for Stable Diffusion's CLIP and for IF; the embedded prior's text_encoder.json).
        text_max_length: Optional[int] = None
        # File of precomputed text embeddings (scorestudio.priors.text_embeddings): prompts come
        # from it and the text encoder model is never loaded. Default: $SCORESTUDIO_TEXT_EMBEDDINGS.
        text_embeddings: Optional[str] = field(default_factory=default_file)
        # Weights file variant to read, e.g. "fp16" for a folder downloaded with only the
        # *.fp16.safetensors files (`huggingface-cli download ... --include "*.fp16.*" "*.json" ...`).
        variant: Optional[str] = None
        # ---- low-memory switches (docs/priors.md) ----
        # Attention in slices of heads: None (off), "auto" (half the heads at a time), "max" (one
        # at a time) or a slice size. Sliced attention is classic attention one slice at a time,
        # so it replaces attention_backend "sdpa" / "classic" (not combinable with "xformers").
        attention_slicing: Optional[Any] = None
        # "sdpa": torch's scaled_dot_product_attention (diffusers' default, memory-efficient kernels
        # on CUDA); "classic": explicit softmax(QKᵀ)V (the [heads, n, n] matrix is materialised);
        # "xformers": xformers' memory-efficient attention (pip install xformers, CUDA only).
        attention_backend: str = "sdpa"
        vae_slicing: bool = False       # encode/decode the batch one image at a time
        vae_tiling: bool = False        # encode/decode large images in overlapping tiles
        # Drop the text encoder (T5-XXL for IF: ~9 GB in fp16) after the first UNet call: every
        # prompt the run uses must have been embedded by then (the prompt processor embeds all
        # its view prompts on its first call).
        free_text_encoder: bool = False
        # Most items per UNet call (None: the whole batch, e.g. 2N for CFG); smaller peaks lower
        # in the no-grad guidance passes, at the cost of more, smaller calls.
        unet_batch_size: Optional[int] = None
        channels_last: bool = False     # UNet and VAE in channels-last memory layout (faster convs on tensor cores)

    cfg: Config
    unet: nn.Module

    def configure(self) -> None:
        self.torch_dtype = resolve_dtype(self.cfg.dtype, self.config_key("dtype"))
        source = self.locate_weights()
        from diffusers import DDPMScheduler

        # The scheduler first: the cheapest file, so a wrong path fails fast.
        scheduler = self.load(DDPMScheduler, source, "scheduler")
        self.scheduler_config = dict(scheduler.config)
        if scheduler.config.prediction_type not in ("epsilon", "v_prediction"):
            raise ConfigError(f"{source}: prediction_type {scheduler.config.prediction_type!r} is not "
                              "supported; priors must predict epsilon or v")
        self.prediction_type: str = scheduler.config.prediction_type
        self.num_train_timesteps: int = int(scheduler.config.num_train_timesteps)
        self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod.to(torch.float32), persistent=False)
        self.load_models(source)
        self.apply_memory_options()
        self.latent_channels: int = int(self.unet.config.in_channels)
        self.latent_size: int = int(self.unet.config.sample_size)
        self.requires_grad_(False)
        self.eval()
        self._text_cache: dict[str, Tensor] = {}
        if self.cfg.text_embeddings:
            self._text_cache = load_text_embeddings(self.cfg.text_embeddings, self.text_max_length)
        self.register_state_dict_post_hook(_drop_frozen_parameters)
        self.register_load_state_dict_pre_hook(_restore_frozen_parameters)

    def apply_memory_options(self) -> None:
        """The low-memory switches of the config on the loaded networks (see ``Config``)."""
        cfg = self.cfg
        backends = ("sdpa", "classic", "xformers")
        if cfg.attention_backend not in backends:
            raise ConfigError(f"{self.config_key('attention_backend')}={cfg.attention_backend!r}: expected one "
                              f"of {', '.join(backends)}")
        if cfg.unet_batch_size is not None and cfg.unet_batch_size < 1:
            raise ConfigError(f"{self.config_key('unet_batch_size')}={cfg.unet_batch_size}: give a positive "
                              "number of items per UNet call, or null for the whole batch")
        if cfg.attention_slicing is not None and cfg.attention_backend == "xformers":
            raise ConfigError(f"{self.config_key('attention_slicing')}: slicing replaces the attention "
                              "processors, so it cannot be combined with attention_backend=xformers")
        self.apply_unet_options(self.unet)
        vae = getattr(self, "vae", None)
        if (cfg.vae_slicing or cfg.vae_tiling) and vae is None:
            raise ConfigError(f"{self.config_key('vae_slicing')} / vae_tiling: this prior has no VAE "
                              "(pixel space)")
        if cfg.vae_slicing:
            vae.enable_slicing()
        if cfg.vae_tiling:
            vae.enable_tiling()
        if cfg.channels_last and vae is not None:
            vae.to(memory_format=torch.channels_last)

    def apply_unet_options(self, unet: nn.Module) -> None:
        """Attention backend, attention slicing and memory layout of the config on ``unet``."""
        cfg = self.cfg
        if cfg.attention_backend == "classic":
            unet.set_default_attn_processor()
        elif cfg.attention_backend == "xformers":
            unet.enable_xformers_memory_efficient_attention()
        if cfg.attention_slicing is not None:
            unet.set_attention_slice(cfg.attention_slicing)
        if cfg.channels_last:
            unet.to(memory_format=torch.channels_last)

    def frozen_parameters(self) -> dict[str, Tensor]:
        """Parameters with ``requires_grad=False`` by state-dict key (tied weights under every name)."""
        return {name: p for name, p in self.named_parameters(remove_duplicate=False) if not p.requires_grad}

    # ---- loading ------------------------------------------------------------------------
    def config_key(self, field: str) -> str:
        """Full config key of ``field`` for error messages, e.g. ``system.prior.dtype``."""
        return f"{self.config_path or 'system.prior'}.{field}"

    def locate_weights(self) -> str:
        """The folder or hub id to load from (``pretrained_model_name_or_path``, ~ expanded)."""
        name = self.cfg.pretrained_model_name_or_path
        return str(Path(name).expanduser()) if name.startswith("~") else name

    def load(self, cls: Any, source: str, subfolder: str, **kwargs: Any) -> Any:
        """Load one component of the model folder (see :func:`loading.load_component`)."""
        return load_component(cls, source, subfolder, key=self.config_key("pretrained_model_name_or_path"),
                              local_files_only=self.cfg.local_files_only, **kwargs)

    def load_weights(self, cls: Any, source: str, subfolder: str) -> Any:
        """A network of the folder in the prior's dtype (and ``variant``'s files when set)."""
        variant = {"variant": self.cfg.variant} if self.cfg.variant else {}
        return self.load(cls, source, subfolder, dtype=self.torch_dtype, **variant)

    def load_models(self, source: str) -> None:
        """Set ``self.unet`` and the text encoder (and VAE) from ``source``."""
        raise NotImplementedError

    # ---- text -----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device

    def encode_uncached(self, prompts: list[str]) -> Tensor:
        """Text embeddings ``[B, L, D]`` of distinct ``prompts``, without the cache."""
        raise NotImplementedError

    def tokenizer_length(self, source: str) -> Optional[int]:
        """Tokens per prompt of the folder's tokenizer (``model_max_length``): from the loaded
        tokenizer, else (precomputed embeddings) from ``tokenizer/tokenizer_config.json`` of a
        local folder, without constructing the tokenizer; None when neither is at hand."""
        if self.tokenizer is not None:
            return int(self.tokenizer.model_max_length)
        config = Path(source) / "tokenizer" / "tokenizer_config.json"
        length = json.loads(config.read_text()).get("model_max_length") if config.is_file() else None
        return None if length is None else int(length)

    @property
    def loads_text_encoder(self) -> bool:
        """False when prompts come from a precomputed file: subclasses then set ``text_encoder = None``."""
        return not self.cfg.text_embeddings

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> Tensor:
        """Text embeddings ``[B, L, D]`` float32 for ``prompts`` (B = len(prompts)).

        "" is the unconditional embedding. Each distinct prompt is encoded once per prior
        instance and cached in memory; cached rows are returned as-is (no re-encoding).
        """
        if prompts is None or isinstance(prompts, str) or len(prompts) == 0:
            raise ValueError(f"encode_text needs a non-empty list of prompt strings, got {prompts!r}")
        bad = [p for p in prompts if not isinstance(p, str)]
        if bad:
            raise ValueError(f"encode_text: prompts must be strings ('' for unconditional), got {bad!r}")
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing and self.text_encoder is None and not self.cfg.text_embeddings:
            raise ConfigError(f"prompts {missing} were not embedded before the text encoder was freed "
                              f"({self.config_key('free_text_encoder')}=true frees it at the first UNet call): "
                              f"set it to false, or give them in a text embeddings file (`{TEXT_EMBEDDINGS_COMMAND}`)")
        if missing and self.text_encoder is None:
            raise ConfigError(f"prompts {missing} are not in the text embeddings file {self.cfg.text_embeddings} "
                              f"and the text encoder is not loaded: add them with `{TEXT_EMBEDDINGS_COMMAND}`, "
                              f"or unset {self.config_key('text_embeddings')}")
        if missing:
            embeddings = self.encode_uncached(missing).to(torch.float32)
            self._text_cache.update(zip(missing, embeddings))
        for p in dict.fromkeys(prompts):  # follow the prior when Lightning moves it
            if self._text_cache[p].device != self.device:
                self._text_cache[p] = self._text_cache[p].to(self.device)
        return torch.stack([self._text_cache[p] for p in prompts])

    def free_text_encoder(self) -> None:
        """Drop the text encoder (and tokenizer); cached embeddings stay. Later prompts fail clearly."""
        self.text_encoder = None
        self.tokenizer = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ---- images <-> model space ------------------------------------------------------------
    def encode_images(self, images: Tensor) -> Tensor:
        """Images ``[N, 3, H, W]`` in [0, 1] (any H, W; resized to ``image_size``) → model-space
        ``x_0`` ``[N, C, h, w]``. Differentiable."""
        raise NotImplementedError

    def decode_latents(self, latents: Tensor) -> Tensor:
        """Model-space ``x_0`` ``[N, C, h, w]`` → images ``[N, 3, H, W]`` in [0, 1]. Differentiable."""
        raise NotImplementedError

    # ---- noise schedule -----------------------------------------------------------------
    def timesteps(self, t: Union[Tensor, int], n: int) -> Tensor:
        """Timesteps as a long ``[n]`` tensor on the prior's device (a scalar is broadcast)."""
        t = torch.as_tensor(t, device=self.device).long()
        return t.expand(n) if t.ndim == 0 else t

    def alpha(self, t: Tensor) -> Tensor:
        """α_t = sqrt(ᾱ_t), ``[N]`` float32 for long ``t`` ``[N]``."""
        return self.alphas_cumprod[t.to(self.device)].sqrt()

    def sigma(self, t: Tensor) -> Tensor:
        """σ_t = sqrt(1 − ᾱ_t), ``[N]`` float32 for long ``t`` ``[N]``."""
        return (1.0 - self.alphas_cumprod[t.to(self.device)]).sqrt()

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """x_t = α_t x_0 + σ_t ε for ``x0``, ``noise`` ``[N, C, h, w]`` and long ``t`` ``[N]``."""
        t = self.timesteps(t, x0.shape[0])
        shape = (-1,) + (1,) * (x0.ndim - 1)
        return self.alpha(t).view(shape) * x0 + self.sigma(t).view(shape) * noise

    def denoised(self, x_t: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """x̂_0 = (x_t − σ_t ε̂) / α_t, the inverse of :meth:`add_noise`, for ``x_t``, ``eps``
        ``[N, C, h, w]`` and long ``t`` ``[N]``."""
        shape = (-1,) + (1,) * (x_t.ndim - 1)
        return (x_t - self.sigma(t).view(shape) * eps) / self.alpha(t).view(shape)

    # ---- denoiser -----------------------------------------------------------------------
    def predict_noise(self, x_t: Tensor, t: Union[Tensor, int], text_embeddings: Tensor,
                      class_labels: Optional[Tensor] = None) -> Tensor:
        """ε̂(x_t, t, y): ``[N, C, h, w]`` from ``x_t`` ``[N, C, h, w]``, long ``t`` ``[N]`` (or a
        scalar) and ``text_embeddings`` ``[N, L, D]``. One UNet call, no guidance; not under
        ``no_grad`` (VSD trains LoRA through it, some losses backpropagate to ``x_t``).
        ``class_labels`` ``[N, K]`` feed a class embedding attached to the UNet (VSD's camera).

        Learned-variance UNets (IF: 2C output channels) contribute their first C channels;
        v-prediction models are converted to ε = α_t v + σ_t x_t.
        """
        t = self.timesteps(t, x_t.shape[0])
        out = self.denoiser_output(x_t, t, text_embeddings, class_labels)
        return self.eps_from_output(out, x_t, t, self.prediction_type)

    def denoiser_output(self, x_t: Tensor, t: Tensor, text_embeddings: Tensor, class_labels: Optional[Tensor] = None,
                        unet: Optional[nn.Module] = None) -> Tensor:
        """The raw output (ε or v, its first C channels) of ``unet`` (default: the prior's) ``[N, C, h, w]``
        in ``x_t``'s dtype, for long ``t`` ``[N]``; batches of ``unet_batch_size`` items at most.

        Inputs are cast to the weights' dtype; ``class_labels`` to the class embedding's own
        (VSD's camera embedding keeps float32 master weights; the UNet casts its output)."""
        unet = self.unet if unet is None else unet
        n = x_t.shape[0]
        if text_embeddings.shape[0] != n:
            raise ValueError(f"predict_noise: x_t has batch {n} but text_embeddings has "
                             f"{text_embeddings.shape[0]}; pass one embedding per sample")
        if self.cfg.free_text_encoder and self.text_encoder is not None:
            self.free_text_encoder()
        if class_labels is not None:  # only UNets with a class embedding (VSD's camera) take labels
            class_labels = class_labels.to(next(unet.class_embedding.parameters()).dtype)
        size = self.cfg.unet_batch_size or n
        outs = [unet(x_t[i:i + size].to(self.torch_dtype), t[i:i + size],
                     encoder_hidden_states=text_embeddings[i:i + size].to(self.torch_dtype),
                     class_labels=None if class_labels is None else class_labels[i:i + size]).sample
                for i in range(0, n, size)]
        return (outs[0] if len(outs) == 1 else torch.cat(outs))[:, : x_t.shape[1]].to(x_t.dtype)

    def eps_from_output(self, out: Tensor, x_t: Tensor, t: Tensor, prediction_type: str) -> Tensor:
        """ε ``[N, C, h, w]`` from a denoiser output of ``prediction_type`` ("epsilon" or
        "v_prediction": ε = α_t v + σ_t x_t)."""
        if prediction_type == "v_prediction":
            shape = (-1,) + (1,) * (x_t.ndim - 1)
            out = self.alpha(t).view(shape) * out + self.sigma(t).view(shape) * x_t
        return out

    def velocity(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """v = α_t ε − σ_t x_0 ``[N, C, h, w]``, the target of a v-prediction model."""
        shape = (-1,) + (1,) * (x0.ndim - 1)
        return self.alpha(t).view(shape) * noise - self.sigma(t).view(shape) * x0

    def load_unet(self, source: str, key: str) -> tuple[nn.Module, str]:
        """A second, frozen UNet of this prior's kind (e.g. VSD's separate LoRA base model) from the
        model folder or hub id ``source`` (config key ``key``), in the prior's dtype, with its
        prediction type. Its noise schedule must be this prior's (the timesteps are shared)."""
        from diffusers import DDPMScheduler, UNet2DConditionModel

        scheduler = load_component(DDPMScheduler, source, "scheduler", key=key, local_files_only=self.cfg.local_files_only)
        alphas = scheduler.alphas_cumprod.to(torch.float32)
        if alphas.shape != self.alphas_cumprod.shape or not torch.allclose(alphas, self.alphas_cumprod.cpu(), atol=1e-6):
            raise ConfigError(f"{key}={source}: its noise schedule differs from the prior's "
                              f"({self.locate_weights()}); the two models must share their timesteps")
        variant = {"variant": self.cfg.variant} if self.cfg.variant else {}
        unet = load_component(UNet2DConditionModel, source, "unet", key=key,
                              local_files_only=self.cfg.local_files_only, dtype=self.torch_dtype, **variant)
        unet.requires_grad_(False)
        self.apply_unet_options(unet)
        return unet.eval().to(self.device), str(scheduler.config.prediction_type)

    def predict_noise_cfg(self, x_t: Tensor, t: Union[Tensor, int], cond: Tensor, uncond: Tensor,
                          guidance_scale: Union[float, Tensor], perp_neg: Optional[PerpNegBatch] = None
                          ) -> tuple[Tensor, Tensor, Tensor]:
        """Classifier-free guided ε with ONE batched UNet call of size 2N (Perp-Neg: one more, of
        the K·N negatives).

        Args:
            x_t: ``[N, C, h, w]``; t: long ``[N]`` or a scalar.
            cond, uncond: text embeddings ``[N, L, D]`` (prompt, negative/empty prompt).
            guidance_scale: s, a float or a ``[N]`` tensor (one scale per sample).
            perp_neg: K negative views per item (``PromptBatch.perp_neg``); None = plain CFG.
        Returns:
            ``(eps_cfg, eps_cond, eps_uncond)``, each ``[N, C, h, w]``, with
            eps_cfg = eps_uncond + s · :meth:`guided_direction` (= s (eps_cond − eps_uncond) without Perp-Neg).
        """
        n = x_t.shape[0]
        t = self.timesteps(t, n)
        eps = self.predict_noise(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond, uncond]))
        eps_cond, eps_uncond = eps.chunk(2)
        scale = torch.as_tensor(guidance_scale, dtype=eps.dtype, device=eps.device)
        if scale.ndim == 1:
            scale = scale.view(-1, *(1,) * (x_t.ndim - 1))
        return eps_uncond + scale * self.guided_direction(x_t, t, eps_cond, eps_uncond, perp_neg), eps_cond, eps_uncond

    def guided_direction(self, x_t: Tensor, t: Tensor, eps_cond: Tensor, eps_uncond: Tensor,
                         perp_neg: Optional[PerpNegBatch] = None) -> Tensor:
        """The direction that CFG scales, ``[N, C, h, w]``: eps_cond − eps_uncond, or with
        ``perp_neg`` Perp-Neg's e_pos + Σ_k w_k ⊥(e_k, e_pos) (:mod:`scorestudio.priors.perp_neg`),
        whose negatives' ε at ``x_t`` ``[N, C, h, w]``, long ``t`` ``[N]`` take one UNet call of K·N."""
        if perp_neg is None:
            return eps_cond - eps_uncond
        n, k = x_t.shape[0], perp_neg.weights.shape[1]
        negatives = perp_neg.embeddings.transpose(0, 1).flatten(0, 1)        # [K·N, L, D], negative-major
        eps = self.predict_noise(torch.cat([x_t] * k), torch.cat([t] * k), negatives)
        eps_neg = eps.view(k, n, *x_t.shape[1:]).transpose(0, 1)              # [N, K, C, h, w]
        return guided_direction(eps_cond, eps_uncond, eps_neg, perp_neg.weights)
