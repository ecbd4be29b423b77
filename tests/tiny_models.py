"""Tiny random model folders in the layouts the priors load (offline, seconds on a CPU).

``make_tiny_sd(folder)``, ``make_tiny_if(folder)`` and ``make_tiny_embedded(folder)`` each write a
complete diffusers-style folder with ``save_pretrained`` and return it; pass it as
``pretrained_model_name_or_path``. Weights are random (seeded), so outputs are meaningless but
deterministic. Sizes:

* SD: 16x16 images ↔ 8x8x4 latents (VAE factor 2), CLIP text [B, 77, 32].
* IF: 16x16 pixels, UNet with 6 output channels (ε + learned variance), T5 text [B, 77, 24].
* embedded: the trainer's "tiny" preset (16x16 images ↔ 2x2x4 latents), real MiniLM text [B, 32, 384],
  UNet stored in float16 like the shipped weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

# A word-level vocabulary big enough for the prompts used in the tests.
WORDS = ("a red blue green cube sphere cone photo of an the front side back overhead view "
         "dog cat chair").split()


def _ddpm_scheduler(folder: Path, **kwargs) -> None:
    from diffusers import DDPMScheduler

    DDPMScheduler(num_train_timesteps=1000, **kwargs).save_pretrained(folder / "scheduler")


def _sd_scheduler(folder: Path) -> None:
    """Stable Diffusion's schedule: scaled-linear betas 0.00085 → 0.012, ε-prediction."""
    _ddpm_scheduler(folder, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    clip_sample=False, steps_offset=1, prediction_type="epsilon")


def _tiny_vae(latent_channels: int = 4):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(16, 32),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         latent_channels=latent_channels, norm_num_groups=8, layers_per_block=1, sample_size=16)


def _clip_tokenizer():
    """A CLIP BPE tokenizer over the 256 byte-level characters (no merges): one token per letter."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    chars = sorted(ByteLevel.alphabet())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=77)


def _t5_tokenizer():
    """A sentencepiece-free T5 (Unigram) tokenizer: whole words of ``WORDS`` plus single letters."""
    from transformers import T5Tokenizer

    letters = "abcdefghijklmnopqrstuvwxyz,."
    vocab = ([("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("▁" + w, -1.0) for w in WORDS]
             + [("▁", -2.0)] + [(c, -5.0) for c in letters])
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)


def make_tiny_sd(folder: str | Path, seed: int = 0) -> Path:
    """A tiny Stable Diffusion folder: unet/ vae/ text_encoder/ (CLIP) tokenizer/ scheduler/."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer = _clip_tokenizer()
    UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    ).save_pretrained(folder / "unet")
    _tiny_vae().save_pretrained(folder / "vae")
    CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )).save_pretrained(folder / "text_encoder")
    tokenizer.save_pretrained(folder / "tokenizer")
    _sd_scheduler(folder)
    return folder


def make_tiny_if(folder: str | Path, seed: int = 0) -> Path:
    """A tiny DeepFloyd IF stage I folder: unet/ (IF block types, 6 output channels),
    text_encoder/ (T5EncoderModel), tokenizer/, scheduler/ (IF's cosine schedule)."""
    from diffusers import UNet2DConditionModel
    from transformers import T5Config, T5EncoderModel

    folder = Path(folder)
    torch.manual_seed(seed)
    tokenizer = _t5_tokenizer()
    t5_dim = 24
    UNet2DConditionModel(
        sample_size=16, in_channels=3, out_channels=6, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", cross_attention_dim=32, attention_head_dim=8,
        encoder_hid_dim=t5_dim, encoder_hid_dim_type="text_proj", addition_embed_type="text",
        addition_embed_type_num_heads=2, norm_num_groups=8, act_fn="gelu", resnet_time_scale_shift="scale_shift",
        resnet_skip_time_act=True, resnet_out_scale_factor=1.414,
    ).save_pretrained(folder / "unet")
    T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=t5_dim, d_ff=37, d_kv=8, num_layers=2, num_heads=3,
        relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )).save_pretrained(folder / "text_encoder")
    tokenizer.save_pretrained(folder / "tokenizer")
    _ddpm_scheduler(folder, beta_schedule="squaredcos_cap_v2", variance_type="learned_range",
                    thresholding=True, dynamic_thresholding_ratio=0.95, sample_max_value=1.5,
                    clip_sample=True, prediction_type="epsilon")
    return folder


def make_tiny_embedded(folder: str | Path, seed: int = 0) -> Path:
    """A tiny embedded-prior folder: vae/ and unet/ from the trainer's "tiny" architecture
    (UNet saved in float16), scheduler/, and text_encoder.json naming MiniLM (32 tokens)."""
    from scorestudio.priors.embedded import MiniLMTextEncoder
    from scorestudio.priors.embedded_arch import SIZES, build_unet, build_vae

    folder = Path(folder)
    torch.manual_seed(seed)
    build_vae(SIZES["tiny"]).save_pretrained(folder / "vae")
    build_unet(SIZES["tiny"]).half().save_pretrained(folder / "unet")
    _sd_scheduler(folder)
    MiniLMTextEncoder.write_spec(folder, max_length=32)
    return folder


def make_tiny_probe(folder: str | Path, seed: int = 0) -> Path:
    """A tiny random probe folder (config.json + probe.safetensors) in the shipped layout."""
    import json

    from safetensors.torch import save_file

    from scorestudio.data.cameras import VIEW_NAMES
    from scorestudio.data.procedural import ALL_SHAPES, COLOR_NAMES, KINDS
    from scorestudio.priors.embedded_arch import ProbeConfig, ProbeNet

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    cfg = ProbeConfig(resolution=32, channels=(8, 16), feature_dim=16, norm_num_groups=4,
                      shapes=ALL_SHAPES, colors=COLOR_NAMES, kinds=KINDS, views=VIEW_NAMES)
    (folder / "config.json").write_text(json.dumps(cfg.to_dict()))
    save_file({k: v.contiguous() for k, v in ProbeNet(cfg).state_dict().items()}, str(folder / "probe.safetensors"))
    return folder
