"""What a step costs with an SD-sized prior: step time and peak memory of dreamfusion (NeRF
generator) and image-particles (latent generator) with full-size Stable Diffusion 1.5, SD 2.1-base
and DeepFloyd IF-I-XL architectures, for N particles, float32 vs float16, and each low-memory switch.

No download: the networks are built from the architecture dicts below with random weights (the
cost of a step does not depend on the weights). Prompts come from a file of random text embeddings,
so no text encoder is built either (as with ``system.prior.text_embeddings``); the text encoders'
sizes are reported from their parameter counts (what ``free_text_encoder`` or precomputed
embeddings keep off the GPU). Repulsion uses a random DINOv2-small, as the shipped GPU configs use
DINOv2 features.

    python benchmarks/bench_gpu_prior.py --out benchmarks/results/gpu_prior.json            # CUDA: the sweep
    python benchmarks/bench_gpu_prior.py --out /tmp/smoke.json                              # CPU: 1-step smoke, tiny models
    python benchmarks/bench_gpu_prior.py --models sd15 --tasks dreamfusion --n 4 --dtypes float16 --switches none vae_slicing

The IF-I-XL dict is a reconstruction (IF block types, 4 levels of 704·k channels, 3 layers per
level: 4.43 B parameters against the published 4.3 B); give the real one with
``--unet-config if-i-xl=FOLDER/unet/config.json`` (a config file only, no weights needed).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# ---- architectures (diffusers / transformers config dicts of the published models) ----------------

SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[128, 256, 512, 512],
              down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
              layers_per_block=2, norm_num_groups=32, sample_size=512, scaling_factor=0.18215)
SD_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    clip_sample=False, steps_offset=1, prediction_type="epsilon")
IF_SCHEDULER = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", variance_type="learned_range",
                    thresholding=True, dynamic_thresholding_ratio=0.95, sample_max_value=1.5, prediction_type="epsilon")
IF_BLOCKS = dict(down_block_types=["ResnetDownsampleBlock2D"] + ["SimpleCrossAttnDownBlock2D"] * 3,
                 up_block_types=["SimpleCrossAttnUpBlock2D"] * 3 + ["ResnetUpsampleBlock2D"],
                 mid_block_type="UNetMidBlock2DSimpleCrossAttn", act_fn="gelu", time_embedding_act_fn="gelu",
                 resnet_time_scale_shift="scale_shift", resnet_skip_time_act=True, resnet_out_scale_factor=1.414,
                 encoder_hid_dim_type="text_proj", addition_embed_type="text", cross_attention_norm="group_norm",
                 in_channels=3, out_channels=6)
ARCHS = {
    "sd15": dict(prior="stable-diffusion", text_dim=768, scheduler=SD_SCHEDULER, vae=SD_VAE,
                 unet=dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8),
                 text_encoder=("clip", dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                            num_attention_heads=12, vocab_size=49408, hidden_act="quick_gelu"))),
    "sd21-base": dict(prior="stable-diffusion", text_dim=1024, scheduler=SD_SCHEDULER, vae=SD_VAE,
                      unet=dict(sample_size=64, cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20],
                                use_linear_projection=True),
                      text_encoder=("clip", dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                                                 num_attention_heads=16, vocab_size=49408, hidden_act="gelu"))),
    "if-i-xl": dict(prior="deepfloyd-if", text_dim=4096, scheduler=IF_SCHEDULER, vae=None,
                    unet=dict(IF_BLOCKS, sample_size=64, block_out_channels=[704, 1408, 2112, 2816], layers_per_block=3,
                              attention_head_dim=64, addition_embed_type_num_heads=64, cross_attention_dim=4096,
                              encoder_hid_dim=4096),
                    text_encoder=("t5", dict(d_model=4096, d_ff=10240, d_kv=64, num_layers=24, num_heads=64,
                                             vocab_size=32128, feed_forward_proj="gated-gelu"))),
}
# The CPU smoke: the same code path on tiny networks.
TINY = {
    "sd15": dict(ARCHS["sd15"], text_dim=32,
                 vae=dict(SD_VAE, block_out_channels=[16, 32], down_block_types=["DownEncoderBlock2D"] * 2,
                          up_block_types=["UpDecoderBlock2D"] * 2, layers_per_block=1, norm_num_groups=8,
                          sample_size=16),
                 unet=dict(sample_size=8, cross_attention_dim=32, attention_head_dim=8, block_out_channels=[16, 32],
                           layers_per_block=1, norm_num_groups=8, down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                           up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"])),
    "if-i-xl": dict(ARCHS["if-i-xl"], text_dim=24,
                    unet=dict(IF_BLOCKS, sample_size=16, block_out_channels=[16, 32], layers_per_block=1,
                              down_block_types=["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"],
                              up_block_types=["SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"],
                              attention_head_dim=8, addition_embed_type_num_heads=2, cross_attention_dim=32,
                              encoder_hid_dim=24, norm_num_groups=8)),
}
SWITCHES = {
    "none": {},
    "attention_slicing": {"attention_slicing": "max"},
    "attention_classic": {"attention_backend": "classic"},
    "vae_slicing": {"vae_slicing": True},
    "vae_tiling": {"vae_tiling": True},
    "unet_batch_size_1": {"unet_batch_size": 1},
    "channels_last": {"channels_last": True},
}
TASKS = {"dreamfusion": "dreamfusion-{}.yaml", "image-particles": "image-particles-sds-sd.yaml"}
PROMPT = "a DSLR photo of an ice cream sundae"
_MODULES: dict = {}   # built networks, reused across measurements (switches are undone after each)


def text_encoder_params(kind: str, config: dict) -> int:
    """Parameters of a text encoder architecture, counted on the meta device (nothing allocated)."""
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    with torch.device("meta"):
        model = CLIPTextModel(CLIPTextConfig(**config)) if kind == "clip" else T5EncoderModel(T5Config(**config))
    return sum(p.numel() for p in model.parameters())


def bench_prior_class(arch: dict, device: str):
    """A registered subclass of the architecture's prior whose components are built from ``arch``."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from scorestudio import find
    from scorestudio.utils.registry import register

    base = find(arch["prior"], kind="priors")

    def load(self, cls, source, subfolder, **kwargs):
        if subfolder == "scheduler":
            return DDPMScheduler(**arch["scheduler"])
        key = (source, subfolder, self.torch_dtype)
        if key not in _MODULES:
            builder = {"unet": UNet2DConditionModel, "vae": AutoencoderKL}[subfolder]
            with torch.device(device):
                _MODULES[key] = builder(**arch[subfolder]).to(self.torch_dtype).eval()
        return _MODULES[key]

    cls = type(f"Bench{base.__name__}", (base,), {"load": load, "registry_kind": "priors"})
    return register(f"bench-{arch['prior']}")(cls)


def undo_switches(prior) -> None:
    """Put the cached networks back as built (default attention, no slicing/tiling, contiguous)."""
    from diffusers.models.attention_processor import AttnAddedKVProcessor2_0, AttnProcessor2_0

    added_kv = "SimpleCrossAttn" in "".join(prior.unet.config.down_block_types)
    prior.unet.set_attn_processor(AttnAddedKVProcessor2_0() if added_kv else AttnProcessor2_0())
    prior.unet.to(memory_format=torch.contiguous_format)
    vae = getattr(prior, "vae", None)
    if vae is not None:
        vae.use_slicing = vae.use_tiling = False
        vae.to(memory_format=torch.contiguous_format)


def embeddings_file(folder: Path, text_dim: int) -> Path:
    """Random text embeddings [P, 77, D] of every prompt a run asks for (no text encoder)."""
    from scorestudio.priors.text_embeddings import save_text_embeddings

    views = [f"{PROMPT}, {v} view" for v in ("front", "side", "back", "overhead")]
    gen = torch.Generator().manual_seed(0)
    path = folder / f"text-{text_dim}.pt"
    save_text_embeddings(path, {p: torch.randn(77, text_dim, generator=gen) for p in ["", PROMPT, *views]},
                         "bench", "random")
    return path


def dinov2_folder(folder: Path) -> Path:
    """A random DINOv2-small (the repulsion features of the GPU configs)."""
    from transformers import Dinov2Config, Dinov2Model

    path = folder / "dinov2-small"
    if not path.is_dir():
        Dinov2Model(Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                                 intermediate_size=1536, patch_size=14, image_size=518)).save_pretrained(path)
    return path


def build_system(task: str, model: str, arch: dict, n: int, dtype: str, switch: str, work: Path, smoke: bool):
    from scorestudio import find
    from scorestudio.utils.config import load_config, parse_structured
    from scorestudio.utils.run import ExperimentConfig, RunContext

    config = TASKS[task].format("if" if arch["prior"] == "deepfloyd-if" else "sd")
    prior = {"pretrained_model_name_or_path": model, "dtype": dtype,
             "text_embeddings": str(embeddings_file(work, arch["text_dim"])), **SWITCHES[switch]}
    overrides = [f"system.prior_type=bench-{arch['prior']}", f"system.n_particles={n}",
                 f"system.prompt_processor.prompt={PROMPT}",
                 "system.guidance.repulsion.features=dinov2" if task == "dreamfusion" else
                 "system.guidance.repulsion.features=pixel", f"system.guidance.repulsion.feature_net_path={dinov2_folder(work)}",
                 "system.guidance.repulsion.gamma=10.0"]
    overrides += [f"system.prior.{k}={v}" for k, v in prior.items()]
    if smoke and task == "dreamfusion":
        overrides += ["system.generator.renderer.num_samples_per_ray=32", "system.resolutions=[16]",
                      "system.generator.geometry.hashgrid.log2_hashmap_size=12"]
    exp = parse_structured(ExperimentConfig, load_config(ROOT / "configs" / config, overrides))
    system = find(exp.system_type, kind="systems")(exp.system, run=RunContext(work / "run", exp.seed), data=exp.data)
    system.prepare_sharding(1)
    return system


def measure(system, device: str, steps: int, warmup: int) -> dict:
    """Mean step time (ms) over ``steps`` after ``warmup`` steps, and the peak memory of the steps."""
    system.to(device)
    optimizer = system.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    cuda = device.startswith("cuda")
    times = []
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for step in range(warmup + steps):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        system.distill_step(step)["loss"].backward()
        optimizer.step()
        system.generator.after_optimizer_step()
        if cuda:
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return {"step_ms": 1000 * sum(times) / len(times), "peak_gib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", nargs="+", default=list(ARCHS))
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--n", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float16"])
    parser.add_argument("--switches", nargs="+", default=list(SWITCHES))
    parser.add_argument("--switch-n", type=int, default=4, help="N of the switch sweep (float16)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--unet-config", action="append", default=[], metavar="MODEL=CONFIG.json",
                        help="a published unet/config.json instead of the dict of MODEL")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    smoke = device == "cpu"
    archs = TINY if smoke else dict(ARCHS)
    for item in args.unet_config:
        name, path = item.split("=", 1)
        archs[name] = dict(archs[name], unet={k: v for k, v in json.loads(Path(path).read_text()).items()
                                              if not k.startswith("_")})
    if smoke:   # one step of each task with the tiny networks, float32, no switch
        args.models, args.n, args.dtypes, args.switches, args.steps, args.warmup = list(TINY), [1], ["float32"], ["none"], 1, 0
    plan = [(m, t, n, d, "none") for m in args.models for t in args.tasks for n in args.n for d in args.dtypes]
    plan += [(m, t, args.switch_n, "float16", s) for m in args.models for t in args.tasks for s in args.switches
             if s != "none" and not smoke]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model, task, n, dtype, switch in plan:
            arch = archs[model]
            bench_prior_class(arch, device)
            row = {"model": model, "task": task, "n": n, "dtype": dtype, "switch": switch}
            if switch.startswith("vae") and arch["vae"] is None:
                continue
            system = build_system(task, model, arch, n, dtype, switch, Path(tmp), smoke)
            try:
                row.update(measure(system, device, args.steps, args.warmup))
            except torch.cuda.OutOfMemoryError:
                row["error"] = "out of memory"
            undo_switches(system.prior)
            del system
            if device == "cuda":
                torch.cuda.empty_cache()
            rows.append(row)
            print(json.dumps(row), flush=True)
    unets = {src: mod for (src, sub, _), mod in _MODULES.items() if sub == "unet"}
    unet_params = {m: sum(p.numel() for p in unets[m].parameters()) for m in args.models if m in unets}
    text_params = {m: text_encoder_params(*ARCHS[m]["text_encoder"]) for m in args.models}
    report = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke, tiny networks)",
              "torch": torch.__version__, "smoke": smoke, "unet_params": unet_params,
              "text_encoder_params": text_params,
              "text_encoder_fp16_gib": {m: 2 * p / 2**30 for m, p in text_params.items()}, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
