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


# ---- hub layouts: folders exactly as `huggingface-cli download <repo> --local-dir DIR` leaves them ----

# What differs between the Stable Diffusion repos (tokenizer pad token, text encoder activation,
# the scheduler class and prediction type of scheduler/scheduler_config.json, linear attention
# projections and whether a safety checker ships).
SD_HUB_VERSIONS = {
    "1.5": dict(repo="stable-diffusion-v1-5/stable-diffusion-v1-5", pad="<|endoftext|>", act="quick_gelu",
                scheduler="PNDMScheduler", prediction_type="epsilon", linear_projection=False, safety_checker=True),
    "2.1-base": dict(repo="stabilityai/stable-diffusion-2-1-base", pad="!", act="gelu", scheduler="PNDMScheduler",
                     prediction_type="epsilon", linear_projection=True, safety_checker=False),
    "2.1": dict(repo="stabilityai/stable-diffusion-2-1", pad="!", act="gelu", scheduler="DDIMScheduler",
                prediction_type="v_prediction", linear_projection=True, safety_checker=False),
}
BPE_MERGES = [("r", "e"), ("re", "d</w>"), ("c", "u"), ("cu", "b"), ("cub", "e</w>")]


def _json(path: Path, data: dict) -> None:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def _added_token(content: str) -> dict:
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True, "rstrip": False,
            "single_word": False}


def _hub_clip_tokenizer(folder: Path, pad: str) -> int:
    """tokenizer/ as the SD repos ship it: vocab.json + merges.txt (byte-level BPE, no
    tokenizer.json), tokenizer_config.json and special_tokens_map.json. Returns the vocabulary size."""
    from tokenizers.pre_tokenizers import ByteLevel

    chars = sorted(ByteLevel.alphabet())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in BPE_MERGES] + ["<|startoftext|>", "<|endoftext|>"]
    _json(folder / "vocab.json", {t: i for i, t in enumerate(tokens)})
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in BPE_MERGES) + "\n")
    special = {"bos_token": _added_token("<|startoftext|>"), "eos_token": _added_token("<|endoftext|>"),
               "pad_token": pad, "unk_token": _added_token("<|endoftext|>")}
    _json(folder / "special_tokens_map.json", special)
    _json(folder / "tokenizer_config.json", {**special, "add_prefix_space": False, "do_lower_case": True,
                                             "errors": "replace", "model_max_length": 77,
                                             "special_tokens_map_file": "./special_tokens_map.json",
                                             "tokenizer_class": "CLIPTokenizer"})
    return len(tokens)


def _hub_extras(folder: Path, repo: str, pipeline: str, components: dict) -> None:
    """model_index.json, the repo's README/.gitattributes and the download cache folder that
    `huggingface-cli download --local-dir` writes next to the files."""
    _json(folder / "model_index.json", {"_class_name": pipeline, "_diffusers_version": "0.8.0", **components})
    (folder / "README.md").write_text(f"---\nlicense: other\n---\n# {repo} (tiny random stand-in)\n")
    (folder / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
    cache = folder / ".cache" / "huggingface"
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and cache not in p.parents):
        meta = cache / "download" / f"{path.relative_to(folder)}.metadata"
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text("0" * 40 + "\n" + "0" * 64 + "\n0.0\n")
    (cache / ".gitignore").write_text("*\n")


def make_hub_sd(folder: str | Path, version: str = "1.5", seed: int = 0) -> Path:
    """A tiny Stable Diffusion ``version`` ("1.5", "2.1-base" or "2.1") in its hub repo's layout:
    the repo's scheduler class and prediction type (2.1: DDIM, v-prediction), CLIP BPE tokenizer
    files, float16 ``variant`` weights beside the float32 ones, feature extractor (and SD 1.5's
    safety checker config), model_index.json, README and the download cache folder. Same sizes
    as :func:`make_tiny_sd`."""
    import diffusers
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    spec = SD_HUB_VERSIONS[version]
    folder = Path(folder)
    torch.manual_seed(seed)
    vocab = _hub_clip_tokenizer(folder / "tokenizer", spec["pad"])
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8, use_linear_projection=spec["linear_projection"])
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, hidden_act=spec["act"], bos_token_id=vocab - 2, eos_token_id=vocab - 1,
        pad_token_id=1 if spec["pad"] == "!" else vocab - 1))
    for name, model in (("unet", unet), ("vae", _tiny_vae()), ("text_encoder", text_encoder)):
        model.save_pretrained(folder / name)
        model.half().save_pretrained(folder / name, variant="fp16")
    scheduler = getattr(diffusers, spec["scheduler"])(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        steps_offset=1, set_alpha_to_one=False, prediction_type=spec["prediction_type"],
        **({"skip_prk_steps": True} if spec["scheduler"] == "PNDMScheduler" else {"clip_sample": False}))
    scheduler.save_pretrained(folder / "scheduler")
    _json(folder / "feature_extractor" / "preprocessor_config.json",
          {"crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
           "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.4815, 0.4578, 0.4082],
           "image_std": [0.2686, 0.2613, 0.2758], "resample": 3, "size": 224})
    components = {"feature_extractor": ["transformers", "CLIPImageProcessor"],
                  "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"] if spec["safety_checker"]
                  else [None, None], "requires_safety_checker": spec["safety_checker"],
                  "scheduler": ["diffusers", spec["scheduler"]], "text_encoder": ["transformers", "CLIPTextModel"],
                  "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
                  "vae": ["diffusers", "AutoencoderKL"]}
    if spec["safety_checker"]:
        _json(folder / "safety_checker" / "config.json", {"_name_or_path": "CompVis/stable-diffusion-safety-checker",
                                                         "architectures": ["StableDiffusionSafetyChecker"]})
    _hub_extras(folder, spec["repo"], "StableDiffusionPipeline", components)
    return folder


def _spiece_model(path: Path) -> None:
    """A tiny SentencePiece unigram model trained offline on caption-like text, with T5's special
    ids (pad 0, eos 1, unk 2, no bos): the ``spiece.model`` of IF's tokenizer folder."""
    import io

    import sentencepiece as spm

    text = [" ".join(WORDS)] + ["a red cube, front view", "a photo of a blue sphere", "a green cone, back view",
                                "an overhead view of a dog", "a cat on a chair, side view"] * 4
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_writer=model, vocab_size=64,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   character_coverage=1.0, hard_vocab_limit=False, minloglevel=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.getvalue())


def make_hub_if(folder: str | Path, seed: int = 0) -> Path:
    """A tiny DeepFloyd/IF-I-XL-v1.0 in its hub repo's layout: ``tokenizer/`` holds only
    ``spiece.model`` (SentencePiece, trained here), special_tokens_map.json and
    tokenizer_config.json (100 extra ids, 77 tokens); the T5 encoder in safetensors shards with
    their index; float16 ``variant`` weights; safety checker, feature extractor and
    watermarker configs; model_index.json, README and the download cache folder. UNet and
    scheduler as in :func:`make_tiny_if`."""
    from transformers import AutoTokenizer, T5Config, T5EncoderModel

    folder = Path(folder)
    make_tiny_if(folder, seed)   # unet/ and scheduler/ as the tiny IF; tokenizer and encoder replaced below
    for stale in ("tokenizer", "text_encoder"):
        for path in (folder / stale).iterdir():
            path.unlink()
    from diffusers import UNet2DConditionModel

    UNet2DConditionModel.from_pretrained(folder / "unet").half().save_pretrained(folder / "unet", variant="fp16")
    _spiece_model(folder / "tokenizer" / "spiece.model")
    extra = [f"<extra_id_{i}>" for i in range(100)]
    special = {"additional_special_tokens": extra, "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    _json(folder / "tokenizer" / "special_tokens_map.json", special)
    _json(folder / "tokenizer" / "tokenizer_config.json", {**special, "extra_ids": 100, "model_max_length": 77,
                                                           "sp_model_kwargs": {}, "tokenizer_class": "T5Tokenizer"})
    vocab = len(AutoTokenizer.from_pretrained(folder / "tokenizer"))
    torch.manual_seed(seed + 1)
    encoder = T5EncoderModel(T5Config(vocab_size=vocab, d_model=24, d_ff=37, d_kv=8, num_layers=2, num_heads=3,
                                      relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1))
    encoder.save_pretrained(folder / "text_encoder", max_shard_size="20KB")
    encoder.half().save_pretrained(folder / "text_encoder", variant="fp16", max_shard_size="20KB")
    for name, config in (("safety_checker", {"architectures": ["IFSafetyChecker"]}),
                         ("feature_extractor", {"feature_extractor_type": "CLIPFeatureExtractor", "size": 224}),
                         ("watermarker", {"_class_name": "IFWatermarker"})):
        _json(folder / name / ("preprocessor_config.json" if name == "feature_extractor" else "config.json"), config)
    components = {"feature_extractor": ["transformers", "CLIPImageProcessor"],
                  "safety_checker": ["deepfloyd_if", "IFSafetyChecker"], "requires_safety_checker": True,
                  "scheduler": ["diffusers", "DDPMScheduler"], "text_encoder": ["transformers", "T5EncoderModel"],
                  "tokenizer": ["transformers", "T5Tokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
                  "watermarker": ["deepfloyd_if", "IFWatermarker"]}
    _hub_extras(folder, "DeepFloyd/IF-I-XL-v1.0", "IFPipeline", components)
    return folder
