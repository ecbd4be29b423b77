"""image-particles end to end on a tiny random prior: outputs, repulsion wiring, VSD resume."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from scorestudio.cli import parse_args, run

ROOT = Path(__file__).resolve().parents[1]


def launch(tmp_path, tiny, method, *overrides, tag="run"):
    prior, probe = tiny
    argv = ["--config", str(ROOT / "configs" / f"image-particles-{method}.yaml"), "--train",
            f"exp_root_dir={tmp_path}", f"tag={tag}", "use_timestamp=false", "trainer.enable_progress_bar=false",
            f"system.prior.pretrained_model_name_or_path={prior}", f"system.probe_path={probe}",
            "system.n_particles=3", "trainer.val_check_interval=2",
            "system.guidance.repulsion.features=probe", *overrides]   # the shipped latent probe reads the embedded prior only
    args, extra = parse_args(argv)
    return run(args, extra)


def test_sds_with_repulsion_writes_particles_and_metrics(tmp_path, tiny):
    ctx = launch(tmp_path, tiny, "sds", "trainer.max_steps=3", "system.guidance.repulsion.gamma=20",
                 f"system.guidance.repulsion.feature_net_path={tiny[1]}")
    save = ctx.save_dir
    for name in ("particles.png", "particle0.png", "particle2.png", "it2-val.png"):
        assert (save / name).is_file(), name
    metrics = json.loads(ctx.metrics_path.read_text())
    assert 0.0 <= metrics["diversity"] <= 2.0 and 0.0 <= metrics["quality"] <= 1.0
    assert 1 <= metrics["distinct_colors"] <= 3


def test_vsd_resume_restores_lora(tmp_path, tiny):
    def state(ctx):
        ckpt = torch.load(ctx.ckpt_dir / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
        return {k: v for k, v in ckpt.items() if "lora_" in k or k == "latents" or "camera_embedding" in k}

    full = state(launch(tmp_path, tiny, "vsd", "trainer.max_steps=4", tag="full"))
    assert any("lora_" in k for k in full) and not any("conv_in.weight" == k.split("unet.")[-1] for k in full)
    part = launch(tmp_path, tiny, "vsd", "trainer.max_steps=2", tag="part")
    resumed = state(launch(tmp_path, tiny, "vsd", "trainer.max_steps=4",
                           f"resume={part.ckpt_dir / 'last.ckpt'}", tag="part"))
    assert full.keys() == resumed.keys()
    for key in full:
        assert torch.allclose(full[key], resumed[key], atol=1e-6), key
    lora = [v for k, v in full.items() if "lora_B" in k]
    assert any(v.abs().sum() > 0 for v in lora)   # the LoRA actually trained
