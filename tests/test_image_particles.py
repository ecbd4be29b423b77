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
            "system.n_particles=3", "trainer.val_check_interval=2", *overrides]
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
        return {k: v for k, v in ckpt.items() if "lora_" in k or k == "particles" or "camera_embedding" in k}

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


def build(tiny, *overrides):
    """An image-particles system on the tiny prior, built directly (no trainer)."""
    from scorestudio.systems.image_particles import ImageParticlesSystem
    from scorestudio.utils.config import load_config
    from scorestudio.utils.run import RunContext

    prior, probe = tiny
    cfg = load_config(ROOT / "configs" / "image-particles-sds.yaml",
                      [f"system.prior.pretrained_model_name_or_path={prior}", f"system.probe_path={probe}",
                       "system.n_particles=3", *overrides])
    return ImageParticlesSystem(cfg.system, run=RunContext(Path("unused"), 0))


def test_pixel_space_particles_are_images_optimised_through_the_encoder(tiny):
    grey = build(tiny, "system.space=pixel", "system.init=grey", "system.grey_level=0.3")
    size = grey.prior.image_size
    assert grey.particles.shape == (3, 3, size, size)
    assert torch.allclose(grey.decoded(), torch.full((3, 3, size, size), 0.3), atol=1e-6)

    seen = {}
    encode = grey.prior.encode_images
    def spy(images):   # the guidance must encode the images itself (rgb_as_latents off)
        seen["images"] = images
        return encode(images)
    grey.prior.encode_images = spy
    before = grey.particles.detach().clone()
    optimizer = grey.configure_optimizers()
    out = grey.distill_step(0)
    out["loss"].backward()
    assert seen["images"].shape == (3, 3, size, size)
    assert grey.particles.grad is not None and grey.particles.grad.abs().sum() > 0
    optimizer.step()
    assert not torch.equal(grey.particles, before)
    assert torch.allclose(grey.decoded(), torch.sigmoid(grey.particles.detach()))


def test_pixel_space_random_init_is_per_particle(tiny):
    three, two = build(tiny, "system.space=pixel"), build(tiny, "system.space=pixel", "system.n_particles=2")
    assert torch.equal(three.particles[:2], two.particles)         # a particle's init comes from its own stream
    assert not torch.equal(three.particles[0], three.particles[1])
    assert (three.decoded() > 0).all() and (three.decoded() < 1).all()


def test_bad_space_or_grey_level_is_one_clear_error(tiny):
    import pytest

    from scorestudio.utils.config import ConfigError

    with pytest.raises(ConfigError, match="system.space='pixels'.*latent, pixel"):
        build(tiny, "system.space=pixels")
    with pytest.raises(ConfigError, match="grey_level"):
        build(tiny, "system.space=pixel", "system.init=grey", "system.grey_level=1.0")
