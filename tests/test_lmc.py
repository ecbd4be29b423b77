"""LMC-SDS on tiny random priors: SDS decomposition, the corrective term against closed forms,
fixed-ε mode, b̂ψ (loss, folder format, training command) and the three LMC configs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

import scorestudio
from scorestudio.cli import parse_args, run
from scorestudio.guidance.manifold_corrective import (CorrectiveConfig, CorrectiveWeightsNotFound, ManifoldCorrective,
                                                      load_corrective, match_statistics, normalized_corrective_loss,
                                                      save_corrective)
from tests.test_prior_training import fake_encode_captions

ROOT = Path(__file__).resolve().parents[1]
OMEGA = 4.0


@pytest.fixture(scope="module")
def prior(tiny):
    return scorestudio.find("embedded")({"pretrained_model_name_or_path": str(tiny[0])})


def random_corrective(seed: int = 0, channels=(8, 16), latent_channels: int = 4) -> ManifoldCorrective:
    """A tiny b̂ψ, default init plus a random output head (the shipped init zeroes the head, which
    would make b̂ψ the identity)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = ManifoldCorrective(CorrectiveConfig(latent_channels=latent_channels, channels=list(channels),
                                                  time_frequencies=3))
        with torch.no_grad():
            net.out.weight.normal_(0.0, 0.5)
            net.out.bias.normal_(0.0, 0.5)
    return net.eval()


@pytest.fixture(scope="module")
def corrective_dir(tmp_path_factory):
    return save_corrective(random_corrective(), tmp_path_factory.mktemp("bhat") / "manifold_corrective",
                           dtype=torch.float32)


def prompts_for(prior, n, prompt="a red cube"):
    return scorestudio.find("prompt-processor")({"prompt": prompt})(prior, batch_size=n)


def latents_for(prior, n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shape = (n, prior.latent_channels, prior.latent_size, prior.latent_size)
    return torch.randn(shape, generator=gen).requires_grad_(True)


def grad_of(guidance, prior, z, pb, ids, step, seed=3):
    """∂loss/∂z × B = g (the base's loss has ∂/∂z = g / B)."""
    z = z.detach().clone().requires_grad_(True)
    guidance(prior, z, pb, ids, step, seed=seed)[guidance.loss_name].backward()
    return z.grad * z.shape[0]


def lmc(**cfg):
    base = {"rgb_as_latents": True, "guidance_scale": OMEGA, "weighting": "uniform", "timestep_per_particle": True}
    return scorestudio.find("lmc-sds")({**base, **cfg})


def draws(guidance, prior, z, ids, step, seed=3):
    """The base's t ``[B]`` and ε of this call, and the noisy latents, recomputed independently."""
    t = guidance.sample_timesteps(prior, ids, step, seed)
    eps = guidance.sample_noise(z, ids, step, seed)
    return t, eps, prior.add_noise(z.detach(), eps, t)


# ---- the decomposition of SDS (paper Eqs. 5-7) ---------------------------------------------


def test_sds_equals_cond_plus_projection(prior):
    """SDS's g = ω(ε_y − ε_∅) + (ε_∅ − ε): L_cond from lmc-sds with the corrective off, L_proj in
    closed form."""
    z, ids, pb = latents_for(prior, 3), torch.arange(3), prompts_for(prior, 3)
    sds = scorestudio.find("sds")({"rgb_as_latents": True, "guidance_scale": OMEGA, "weighting": "uniform",
                                   "timestep_per_particle": True})
    g_sds = grad_of(sds, prior, z, pb, ids, step=5)
    cond_only = lmc(lmc_weight=0.0, scale_by_inverse_omega=False, corrective_path="identity")
    g_cond = grad_of(cond_only, prior, z, pb, ids, 5)
    t, eps, noisy = draws(sds, prior, z, ids, 5)
    assert len(set(t.tolist())) > 1   # per-item weights below are really exercised
    with torch.no_grad():
        eps_u = prior.predict_noise(noisy, t, pb.uncond)
        eps_y = prior.predict_noise(noisy, t, pb.cond)
    assert torch.allclose(g_cond, OMEGA * (eps_y - eps_u), atol=1e-5)
    assert torch.allclose(g_sds, g_cond + (eps_u - eps), atol=1e-5)
    # Eq. 7: the projection term in x0 space, ε_∅ − ε = (α_t / σ_t)(z − ẑ_t)
    z_hat = prior.denoised(noisy, eps_u, t)
    ratio = (prior.alpha(t) / prior.sigma(t)).view(-1, 1, 1, 1)
    assert torch.allclose(eps_u - eps, ratio * (z.detach() - z_hat), atol=1e-4)


def test_identity_corrective_is_the_projection_term_times_sigma_over_alpha(prior):
    """With b̂(z, t) = z (no normalisation), L_lmc = z − ẑ_t = (σ_t/α_t) × SDS's projection term."""
    z, ids, pb = latents_for(prior, 3, seed=1), torch.arange(3), prompts_for(prior, 3)
    common = {"corrective_path": "identity", "normalize_corrective": False, "scale_by_inverse_omega": False}
    g_full = grad_of(lmc(**common), prior, z, pb, ids, step=2)
    g_cond = grad_of(lmc(**common, lmc_weight=0.0), prior, z, pb, ids, step=2)
    guidance = lmc(**common)
    t, eps, noisy = draws(guidance, prior, z, ids, 2)
    with torch.no_grad():
        proj = prior.predict_noise(noisy, t, pb.uncond) - eps                      # SDS's L_proj
    weight = (prior.sigma(t) / prior.alpha(t)).view(-1, 1, 1, 1)
    assert torch.allclose(g_full - g_cond, weight * proj, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(g_full - g_cond, proj, atol=1e-3)    # the weight is not 1


def test_lmc_gradient_matches_closed_form_with_learned_corrective(prior, corrective_dir):
    """g = (1/ω)[ω(ε_y − ε_∅) + (match(b̂ψ(z, t), ẑ_t) − ẑ_t)], with w(t) = 1 − ᾱ_t on top."""
    z, ids, pb = latents_for(prior, 2, seed=2), torch.arange(2), prompts_for(prior, 2)
    guidance = lmc(corrective_path=str(corrective_dir), weighting="sds")
    g = grad_of(guidance, prior, z, pb, ids, step=4)
    t, eps, noisy = draws(guidance, prior, z, ids, 4)
    net = load_corrective(corrective_dir)
    with torch.no_grad():
        eps_y, eps_u = prior.predict_noise(noisy, t, pb.cond), prior.predict_noise(noisy, t, pb.uncond)
        z_hat = prior.denoised(noisy, eps_u, t)
        b = match_statistics(net(z.detach(), t.float() / prior.num_train_timesteps), z_hat)
    w = (1 - prior.alphas_cumprod[t]).view(-1, 1, 1, 1)
    expected = w * (OMEGA * (eps_y - eps_u) + (b - z_hat)) / OMEGA
    assert torch.allclose(g, expected, atol=1e-5)


def test_repulsion_wrapper_adds_on_top_of_lmc(prior, corrective_dir):
    from scorestudio.guidance.repulsion import kernel_log_density_grad

    z, ids, pb = latents_for(prior, 3, seed=4), torch.arange(3), prompts_for(prior, 3)
    common = {"corrective_path": str(corrective_dir), "timestep_per_particle": False}
    plain = grad_of(lmc(**common), prior, z, pb, ids, step=1)
    rep = grad_of(lmc(**common, repulsion={"gamma": 2.0, "features": "latent", "scale": "one"}), prior, z, pb, ids, 1)
    _, _, noisy = draws(lmc(**common), prior, z, ids, 1)
    expected = 2.0 * kernel_log_density_grad(noisy.flatten(1)).view_as(z)
    assert torch.allclose(rep - plain, expected, atol=1e-5)


# ---- fixed ε ----------------------------------------------------------------------------------


def test_fixed_epsilon_reuses_one_noise_per_particle(prior, corrective_dir):
    z0 = latents_for(prior, 1, seed=5).detach()
    z = z0.expand(3, -1, -1, -1).clone()           # identical particles (a grey init)
    ids, pb = torch.arange(3), prompts_for(prior, 3)
    fixed_t = {"min_step_percent": 0.5, "max_step_percent": 0.5}    # isolate ε: t is the same every step
    cond_fixed = lmc(corrective_path=str(corrective_dir), fixed_epsilon=True, lmc_weight=0.0, **fixed_t)
    a, b = (grad_of(cond_fixed, prior, z, pb, ids, step) for step in (3, 8))
    assert torch.allclose(a, b, atol=1e-6)                          # L_cond: the same ε at every step
    assert not torch.allclose(a[0], a[1], atol=1e-4)                # ... but another one per particle
    cond_sampled = lmc(corrective_path=str(corrective_dir), fixed_epsilon=False, lmc_weight=0.0, **fixed_t)
    assert not torch.allclose(*(grad_of(cond_sampled, prior, z, pb, ids, s) for s in (3, 8)), atol=1e-4)

    # L_lmc keeps sampling: its part of g follows the step's fresh ε, not the fixed one.
    full = lmc(corrective_path=str(corrective_dir), fixed_epsilon=True, **fixed_t)
    for step in (3, 8):
        g_lmc = grad_of(full, prior, z, pb, ids, step) - grad_of(cond_fixed, prior, z, pb, ids, step)
        t, eps, noisy = draws(full, prior, z, ids, step)
        with torch.no_grad():
            z_hat = prior.denoised(noisy, prior.predict_noise(noisy, t, pb.uncond), t)
            b = match_statistics(full.corrective(prior)(z, t.float() / 1000), z_hat)
        assert torch.allclose(g_lmc, (b - z_hat) / OMEGA, atol=1e-5)

    # a particle's fixed ε comes from its own stream: the same alone or in a batch
    from scorestudio.guidance.base import GuidanceCall

    call = GuidanceCall(prior, z, z, z, torch.zeros(3, dtype=torch.long), pb, ids, 11, 3)
    alone = GuidanceCall(prior, z[2:], z[2:], z[2:], torch.zeros(1, dtype=torch.long), pb, ids[2:], 99, 3)
    assert torch.equal(full.fixed_noise(call)[2], full.fixed_noise(alone)[0])


# ---- b̂ψ: loss, folder, errors -----------------------------------------------------------------


def test_normalized_loss_closed_form_and_invariances():
    gen = torch.Generator().manual_seed(0)
    target = torch.randn(4, 4, 8, 8, generator=gen) * 1.7 + 0.3
    pred = target + 0.8 * torch.randn(target.shape, generator=gen)
    assert normalized_corrective_loss(target, target).item() < 1e-8                # perfect predictor
    assert normalized_corrective_loss(2.5 * target - 4.0, target).item() < 1e-8      # ... up to an affine map
    base = normalized_corrective_loss(pred, target, reduction="none")
    torch.testing.assert_close(normalized_corrective_loss(3.0 * pred + 2.0, target, reduction="none"), base)
    # L_k = 2 σ(ẑ)² (1 − corr(b̂, ẑ)) per sample
    p, q = pred.flatten(1), target.flatten(1)
    corr = ((p - p.mean(1, keepdim=True)) * (q - q.mean(1, keepdim=True))).mean(1) / (p.std(1, unbiased=False)
                                                                                      * q.std(1, unbiased=False))
    torch.testing.assert_close(base, 2 * q.var(1, unbiased=False) * (1 - corr), rtol=1e-4, atol=1e-5)
    assert (normalized_corrective_loss(-pred, target, reduction="none") > base).all()   # a flip is not free


def test_corrective_shapes_and_affine_invariant_input():
    net = random_corrective(channels=(8, 16, 32))
    z, t = torch.randn(3, 4, 7, 5), torch.tensor([0.1, 0.5, 0.9])      # odd sizes: pooling rounds up
    out = net(z, t)
    assert out.shape == z.shape and torch.isfinite(out).all()
    torch.testing.assert_close(net(2.0 * z + 1.0, t), out, rtol=1e-4, atol=1e-4)
    fresh = ManifoldCorrective(CorrectiveConfig(channels=[8, 16]))     # zero head: starts as the identity
    torch.testing.assert_close(normalized_corrective_loss(fresh(z[:, :4], t), z), torch.tensor(0.0), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="4-channel"):
        net(torch.randn(1, 3, 4, 4), t[:1])


def test_save_load_round_trip_and_errors(tmp_path):
    net = random_corrective(seed=1, latent_channels=3)
    z, t = torch.randn(2, 3, 8, 8), torch.tensor([0.2, 0.8])
    save_corrective(net, tmp_path / "fp32", dtype=torch.float32, extra={"trained": {"steps": 7}})
    loaded = load_corrective(tmp_path / "fp32", latent_channels=3)
    assert torch.equal(loaded(z, t), net(z, t)) and not any(p.requires_grad for p in loaded.parameters())
    assert json.loads((tmp_path / "fp32" / "config.json").read_text())["trained"]["steps"] == 7
    save_corrective(net, tmp_path / "fp16")
    size = {d: (tmp_path / d / "model.safetensors").stat().st_size for d in ("fp16", "fp32")}
    assert size["fp16"] < size["fp32"]
    torch.testing.assert_close(load_corrective(tmp_path / "fp16")(z, t), net(z, t), rtol=0, atol=2e-2)
    with pytest.raises(CorrectiveWeightsNotFound, match="train_manifold_corrective"):
        load_corrective(tmp_path / "missing")
    with pytest.raises(CorrectiveWeightsNotFound, match="3-channel latents but this prior has 4"):
        load_corrective(tmp_path / "fp32", latent_channels=4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_corrective(tmp_path / "empty")


def test_missing_weights_fail_at_attach_with_the_training_command(prior):
    guidance = scorestudio.find("lmc-sds")({"rgb_as_latents": True})     # the tiny prior ships no b̂ψ
    with pytest.raises(CorrectiveWeightsNotFound, match="scorestudio train-corrective"):
        guidance.attach(prior)


# ---- the training command ---------------------------------------------------------------------


def test_training_command_resumes_exactly_and_reports_heldout(tiny, tmp_path, monkeypatch):
    from scorestudio.tools import train_corrective as tmc
    from scorestudio.tools import training as train

    monkeypatch.setattr(train, "encode_captions", fake_encode_captions)   # MiniLM on 424 captions is slow
    common = ["--prior-path", str(tiny[0]), "--prior-work-dir", str(tmp_path / "prior-work"),
              "--cache-dir", str(tmp_path / "cache"), "--cache-images", "16", "--test-images", "8", "--chunk", "8",
              "--batch-size", "4", "--channels", "8", "16", "--threads", "1"]

    def states(name, *runs):
        for steps, resume in runs:
            tmc.main([*common, "--work-dir", str(tmp_path / name), "--out", str(tmp_path / f"{name}-out"),
                      "--steps", str(steps), *(["--resume"] if resume else [])])
        return torch.load(tmp_path / name / "ckpt.pt", weights_only=False)

    whole = states("whole", (4, False))
    split = states("split", (2, False), (4, True))
    assert whole["step"] == split["step"] == 4
    for key, value in whole["model"].items():
        assert torch.equal(value, split["model"][key]), key
    with (tmp_path / "whole" / "loss.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4] and all(float(r["loss_identity"]) > 0 for r in rows)
    metrics = json.loads((tmp_path / "whole-out" / "metrics.json").read_text())
    assert metrics["n_heldout"] == 8 and metrics["heldout_lk_identity"] > 0 and "accepted" in metrics
    ratio = metrics["heldout_lk"] / metrics["heldout_lk_identity"]
    assert metrics["improvement_vs_identity"] == pytest.approx(1 - ratio, rel=1e-3, abs=1e-6)
    load_corrective(tmp_path / "whole-out", latent_channels=4)
    with pytest.raises(SystemExit, match="--resume"):
        states("whole", (4, False))


def test_user_trained_corrective_for_stable_diffusion(tmp_path):
    """The same command trains b̂ψ for another prior (here a tiny SD folder), and LMC-SDS loads it."""
    from scorestudio.tools import train_corrective as tmc
    from tests.tiny_models import make_tiny_sd

    sd = make_tiny_sd(tmp_path / "sd")
    tmc.main(["--prior-type", "stable-diffusion", "--prior-path", str(sd), "--work-dir", str(tmp_path / "work"),
              "--out", str(tmp_path / "bhat"), "--cache-dir", str(tmp_path / "cache"), "--resolution", "16",
              "--cache-images", "8", "--test-images", "4", "--chunk", "4", "--batch-size", "4", "--steps", "2",
              "--channels", "8", "16", "--threads", "1"])
    prior = scorestudio.find("stable-diffusion")({"pretrained_model_name_or_path": str(sd)})
    with pytest.raises(CorrectiveWeightsNotFound, match="corrective_path"):    # nothing ships with SD
        scorestudio.find("lmc-sds")({}).attach(prior)
    guidance = scorestudio.find("lmc-sds")({"corrective_path": str(tmp_path / "bhat")})
    guidance.attach(prior)
    images = torch.rand(2, 3, 16, 16, requires_grad=True)
    guidance(prior, images, prompts_for(prior, 2), torch.arange(2), step=0)["loss_lmc_sds"].backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


# ---- configs ------------------------------------------------------------------------------------


def launch(tmp_path, tiny, corrective, config, *overrides):
    prior, probe = tiny
    argv = ["--config", str(ROOT / "configs" / config), "--train", f"exp_root_dir={tmp_path}", "tag=run",
            "use_timestamp=false", "trainer.enable_progress_bar=false", "trainer.max_steps=2",
            f"system.prior.pretrained_model_name_or_path={prior}", f"system.probe_path={probe}",
            f"system.guidance.corrective_path={corrective}", "system.guidance.fixed_epsilon=true", *overrides]
    return run(*parse_args(argv))


def test_image_particles_lmc_config_from_grey_with_prompts(tmp_path, tiny, corrective_dir):
    ctx = launch(tmp_path, tiny, corrective_dir, "image-particles-lmc.yaml", "system.n_particles=2",
                 "system.init=grey", "system.prompts=[a red cube,a blue sphere]", "trainer.val_check_interval=0",
                 "system.guidance.repulsion.gamma=1", "system.guidance.repulsion.features=latent")
    metrics = json.loads(ctx.metrics_path.read_text())
    assert metrics["step"] == 2 and 0.0 <= metrics["quality"] <= 1.0
    parsed = (ctx.root / "configs" / "parsed.yaml").read_text()
    assert "lmc-sds" in parsed and "fixed_epsilon: true" in parsed


def test_dreamfusion_lmc_config_runs(tmp_path, tiny, corrective_dir):
    ctx = launch(tmp_path, tiny, corrective_dir, "dreamfusion-lmc.yaml",
                 f"system.guidance.repulsion.feature_net_path={tiny[1]}", "system.n_particles=2",
                 "system.resolutions=[12,16]", "system.resolution_milestones=[1]",
                 "system.renderer.num_samples_per_ray=12", "system.geometry.grid.resolution=12",
                 "system.geometry.grid.n_features=4", "system.material.ambient_only_steps=1",
                 "system.loss.lambda_orient=1.0", "system.evaluation.resolution=16", "system.evaluation.n_views=2",
                 "system.export.after_test=false", "trainer.val_check_interval=0")
    assert json.loads(ctx.metrics_path.read_text())["step"] == 2


def test_text_to_svg_lmc_config_runs(tmp_path, tiny, corrective_dir):
    ctx = launch(tmp_path, tiny, corrective_dir, "text-to-svg-lmc.yaml", "system.n_particles=2",
                 "system.paths.num_paths=4", "trainer.val_check_interval=0")
    assert (ctx.save_dir).is_dir() and json.loads(ctx.metrics_path.read_text())
