"""Guidance modules on tiny random priors: gradient identity, NFSD branches, repulsion wiring."""

from __future__ import annotations

import pytest
import torch

import scorestudio
from tests.tiny_models import make_tiny_embedded, make_tiny_if, make_tiny_sd


@pytest.fixture(scope="module")
def tiny_embedded(tmp_path_factory):
    folder = make_tiny_embedded(tmp_path_factory.mktemp("tiny-embedded"))
    return scorestudio.find("embedded")({"pretrained_model_name_or_path": str(folder)})


def prompts_for(prior, n, prompt="a red cube"):
    processor = scorestudio.find("prompt-processor")({"prompt": prompt})
    return processor(prior, batch_size=n)


def latents_for(prior, n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shape = (n, prior.latent_channels, prior.latent_size, prior.latent_size)
    return torch.randn(shape, generator=gen).requires_grad_(True)


def test_sds_gradient_identity(tiny_embedded):
    """∂loss/∂z = g / B with g = w(t)(ε̂_cfg − ε), recomputed here from the same draws."""
    prior = tiny_embedded
    guidance = scorestudio.find("sds")({"rgb_as_latents": True, "guidance_scale": 5.0, "weighting": "sds"})
    z = latents_for(prior, 4)
    ids = torch.arange(4)
    pb = prompts_for(prior, 4)
    out = guidance(prior, z, pb, ids, step=3, seed=7)
    out["loss_sds"].backward()
    t = guidance.sample_timesteps(prior, ids, 3, 7)
    eps = guidance.sample_noise(z, ids, 3, 7)
    with torch.no_grad():
        eps_cfg, _, _ = prior.predict_noise_cfg(prior.add_noise(z, eps, t), t, pb.cond, pb.uncond, 5.0)
        g = (1 - prior.alphas_cumprod[t]).view(-1, 1, 1, 1) * (eps_cfg - eps)
    assert torch.allclose(z.grad, g / 4, atol=1e-6)
    assert out["n_nonfinite"] == 0


def test_timesteps_shared_or_per_particle(tiny_embedded):
    prior = tiny_embedded
    ids = torch.tensor([0, 0, 1, 1, 2, 2])
    shared = scorestudio.find("sds")({"rgb_as_latents": True})
    t = shared.sample_timesteps(prior, ids, 5, 0)
    assert (t == t[0]).all()
    per = scorestudio.find("sds")({"rgb_as_latents": True, "timestep_per_particle": True,
                                   "min_step_percent": 0.02, "max_step_percent": 0.98})
    t = per.sample_timesteps(prior, ids, 5, 0)
    assert (t[0::2] == t[1::2]).all() and len(set(t.tolist())) > 1
    # a particle's timestep does not depend on which other particles are in the batch
    alone = per.sample_timesteps(prior, torch.tensor([2]), 5, 0)
    assert alone.item() == t[-1].item()


def test_scheduled_step_bounds(tiny_embedded):
    guidance = scorestudio.find("sds")({"rgb_as_latents": True, "max_step_percent": [0, 0.98, 0.5, 100]})
    assert guidance.step_bounds(tiny_embedded, 0)[1] == 980
    assert guidance.step_bounds(tiny_embedded, 100)[1] == 500


def test_noise_is_keyed_by_particle_not_batch(tiny_embedded):
    z = latents_for(tiny_embedded, 3)
    full = scorestudio.find("sds").sample_noise(z, torch.tensor([0, 1, 2]), 4, 1)
    one = scorestudio.find("sds").sample_noise(z[2:], torch.tensor([2]), 4, 1)
    assert torch.equal(full[2], one[0]) and not torch.equal(full[0], full[1])


def test_nonfinite_gradients_are_zeroed_and_counted(tiny_embedded):
    guidance = scorestudio.find("sds")({"rgb_as_latents": True})
    grad = torch.tensor([[1.0, float("nan")], [float("inf"), 2.0]])
    clean, n_bad = guidance.sanitize(grad)
    assert n_bad == 2 and torch.equal(clean, torch.tensor([[1.0, 0.0], [0.0, 2.0]]))


def test_grad_clip(tiny_embedded):
    guidance = scorestudio.find("sds")({"rgb_as_latents": True, "grad_clip": 0.5})
    clean, _ = guidance.sanitize(torch.tensor([-3.0, 0.2, 3.0]))
    assert torch.equal(clean, torch.tensor([-0.5, 0.2, 0.5]))


def test_nfsd_branch_at_t_switch(tiny_embedded, monkeypatch):
    prior = tiny_embedded
    guidance = scorestudio.find("nfsd")({"rgb_as_latents": True, "guidance_scale": 2.0})
    z = latents_for(prior, 2)
    pb = prompts_for(prior, 2)
    noisy = torch.randn_like(z)
    for t_value, uses_negative in ((199, False), (200, True)):
        t = torch.full((2,), t_value)
        from scorestudio.guidance.base import GuidanceCall

        call = GuidanceCall(prior, z, noisy, torch.zeros_like(z), t, pb, torch.arange(2), 0, 0)
        with torch.no_grad():
            delta, _ = guidance.noise_residual(call)
            empty = prior.encode_text([""]).expand(2, -1, -1)
            neg = prior.encode_text([guidance.cfg.negative_prompt]).expand(2, -1, -1)
            e_c = prior.predict_noise(noisy, t, pb.cond)
            e_u = prior.predict_noise(noisy, t, empty)
            e_n = prior.predict_noise(noisy, t, neg)
        expected = 2.0 * (e_c - e_u) + (e_u - e_n if uses_negative else e_u)
        assert torch.allclose(delta, expected, atol=1e-5), t_value


def test_repulsion_adds_kernel_gradient_on_latents(tiny_embedded):
    """With latent features and c(t)=1, the repulsion part of g is w(t)·γ·∇ log Σ k."""
    prior = tiny_embedded
    from scorestudio.guidance.repulsion import kernel_log_density_grad

    cfg = {"rgb_as_latents": True, "weighting": "uniform",
           "repulsion": {"gamma": 3.0, "features": "latent", "scale": "one"}}
    with_rep = scorestudio.find("sds")(cfg)
    without = scorestudio.find("sds")({"rgb_as_latents": True, "weighting": "uniform"})
    z = latents_for(prior, 3)
    ids, pb = torch.arange(3), prompts_for(prior, 3)
    with_rep(prior, z, pb, ids, 2, 0)["loss_sds"].backward()
    g_rep = z.grad.clone()
    z.grad = None
    without(prior, z, pb, ids, 2, 0)["loss_sds"].backward()
    t = with_rep.sample_timesteps(prior, ids, 2, 0)
    noisy = prior.add_noise(z.detach(), with_rep.sample_noise(z, ids, 2, 0), t)
    expected = 3.0 * kernel_log_density_grad(noisy.flatten(1)).view_as(z) / 3
    assert torch.allclose(g_rep - z.grad, expected, atol=1e-5)


def test_repulsion_on_clean_particles(tiny_embedded):
    """on="clean": the kernel acts on z_0, not on z_t; an unknown value is an error."""
    prior = tiny_embedded
    from scorestudio.guidance.base import GuidanceCall
    from scorestudio.guidance.repulsion import kernel_log_density_grad

    z = latents_for(prior, 3)
    noisy = torch.randn_like(z)
    call = GuidanceCall(prior, z, noisy, noisy, torch.full((3,), 500), None, torch.arange(3), 0, 0)
    rep = {"gamma": 2.0, "features": "latent", "scale": "one"}
    clean = scorestudio.find("sds")({"rgb_as_latents": True, "repulsion": {**rep, "on": "clean"}})
    expected = 2.0 * kernel_log_density_grad(z.detach().flatten(1)).view_as(z)
    assert torch.allclose(clean.repulsion_term(call), expected, atol=1e-6)
    noisy_rep = scorestudio.find("sds")({"rgb_as_latents": True, "repulsion": rep}).repulsion_term(call)
    assert not torch.allclose(noisy_rep, expected, atol=1e-3)
    with pytest.raises(ValueError, match="repulsion.on"):   # when the guidance is built
        scorestudio.find("sds")({"rgb_as_latents": True, "repulsion": {**rep, "on": "both"}})


def test_repulsion_on_rendered_images(tiny_embedded):
    """on="rendered": the kernel reads the rendered images themselves, and its gradient reaches them
    as loss_repulsion = w(t)·γ·c(t)·∇_{x_i} log Σ_j k(f(x_i), f(x_j)) / B (central finite differences
    of the log kernel density, features = pixels, fixed bandwidth); the SDS loss is the one without
    repulsion. Latent feature maps or latent particles are a config error."""
    prior = tiny_embedded
    base = {"weighting": "uniform", "guidance_scale": 3.0}
    rep = {"gamma": 2.0, "features": "pixel", "scale": "one", "on": "rendered", "kernel": {"bandwidth": 40.0}}
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(3, 3, 8, 8, generator=gen, dtype=torch.float64).float().requires_grad_(True)
    ids, pb = torch.arange(3), prompts_for(prior, 3)
    out = scorestudio.find("sds")({**base, "repulsion": rep})(prior, images, pb, ids, 4, 0)
    (grad_rep,) = torch.autograd.grad(out["loss_repulsion"], images)
    (grad_sds,) = torch.autograd.grad(out["loss_sds"], images)
    plain = scorestudio.find("sds")(base)(prior, images, pb, ids, 4, 0)
    assert "loss_repulsion" not in plain
    assert torch.allclose(grad_sds, torch.autograd.grad(plain["loss_sds"], images)[0], atol=1e-6)

    def log_density(x, i):   # log Σ_j exp(−‖x_i − x_j‖² / h), the others held fixed
        d = (x[i].flatten() - x.flatten(1)).pow(2).sum(1)
        return torch.logsumexp(-d / 40.0, dim=0)

    x64, eps = images.detach().double(), 1e-4
    for i, index in ((0, (1, 2, 3)), (2, (0, 7, 5))):
        plus, minus = x64.clone(), x64.clone()
        plus[(i, *index)] += eps
        minus[(i, *index)] -= eps
        fd = (log_density(plus, i) - log_density(minus, i)) / (2 * eps)
        assert abs(grad_rep[(i, *index)].item() - 2.0 * fd.item() / 3) < 1e-4 * max(1.0, abs(fd.item()))
    for bad in ({"repulsion": {**rep, "features": "latent"}}, {"repulsion": rep, "rgb_as_latents": True}):
        with pytest.raises(ValueError, match="on=rendered"):
            scorestudio.find("sds")(bad)
    from scorestudio.solvers.ddim import repulsion_correction

    with pytest.raises(ValueError, match="for a sampler"):   # a sampler has latents, no renders
        repulsion_correction(scorestudio.find("sds")({"repulsion": rep}), prior)


def test_repulsion_groups_views_of_a_particle(tiny_embedded):
    prior = tiny_embedded
    guidance = scorestudio.find("sds")({"rgb_as_latents": True,
                                        "repulsion": {"gamma": 1.0, "features": "latent", "scale": "one"}})
    z = latents_for(prior, 6)
    ids = torch.tensor([0, 1, 2, 0, 1, 2])   # 3 particles × 2 views, interleaved
    from scorestudio.guidance.base import GuidanceCall
    from scorestudio.guidance.repulsion import kernel_log_density_grad

    t = torch.full((6,), 500)
    noisy = torch.randn_like(z)
    call = GuidanceCall(prior, z, noisy, noisy, t, None, ids, 0, 0)
    rep = guidance.repulsion_term(call)
    feats = torch.stack([torch.cat([noisy[p].flatten(), noisy[p + 3].flatten()]) for p in range(3)])
    r = kernel_log_density_grad(feats).view(3, 2, *z.shape[1:])
    expected = torch.stack([r[0, 0], r[1, 0], r[2, 0], r[0, 1], r[1, 1], r[2, 1]])
    assert torch.allclose(rep, expected, atol=1e-6)


def test_repulsion_window_and_single_particle(tiny_embedded):
    prior = tiny_embedded
    guidance = scorestudio.find("sds")({"rgb_as_latents": True, "repulsion": {
        "gamma": 1.0, "features": "latent", "t_window": [0.5, 1.0]}})
    from scorestudio.guidance.base import GuidanceCall

    z = latents_for(prior, 2)
    low = GuidanceCall(prior, z, z.detach(), z.detach(), torch.full((2,), 100), None, torch.arange(2), 0, 0)
    assert guidance.repulsion_term(low) is None
    high = GuidanceCall(prior, z, z.detach(), z.detach(), torch.full((2,), 900), None, torch.arange(2), 0, 0)
    assert guidance.repulsion_term(high).abs().sum() > 0
    single = GuidanceCall(prior, z, z.detach(), z.detach(), torch.full((2,), 900), None, torch.zeros(2, dtype=torch.long), 0, 0)
    assert guidance.repulsion_term(single) is None


@pytest.mark.parametrize("maker", [make_tiny_sd, make_tiny_if])
def test_guidance_end_to_end_on_tiny_sd_and_if(maker, tmp_path):
    name = "stable-diffusion" if maker is make_tiny_sd else "deepfloyd-if"
    prior = scorestudio.find(name)({"pretrained_model_name_or_path": str(maker(tmp_path / name))})
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    for method in ("sds", "nfsd"):
        guidance = scorestudio.find(method)({"repulsion": {"gamma": 1.0, "features": "pixel"}})
        out = guidance(prior, images, prompts_for(prior, 2), torch.arange(2), step=0, seed=0)
        loss = out[guidance.loss_name]
        loss.backward()
        assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
        images.grad = None


@pytest.mark.parametrize("perp_neg", [False, True])
def test_vsd_lora_sees_the_prompt_without_its_view_and_the_prior_with_it(tmp_path, perp_neg):
    """With view-dependent prompts, the pretrained prediction is conditioned on each camera's view
    prompt (or Perp-Neg's mixture), the LoRA (given the camera itself) and its training step on the
    plain prompt, as in ProlificDreamer / threestudio."""
    prior = scorestudio.find("embedded")({"pretrained_model_name_or_path": str(make_tiny_embedded(tmp_path))})
    processor = scorestudio.find("prompt-processor")({"prompt": "a red cube", "use_perp_neg": perp_neg})
    pb = processor(prior, torch.tensor([10.0, 10.0]), torch.tensor([0.0, 180.0]))   # front, back
    plain = prior.encode_text(["a red cube"])
    assert torch.equal(pb.plain, plain.expand(2, -1, -1)) and not torch.allclose(pb.cond, pb.plain)
    vsd = scorestudio.find("vsd")({"rgb_as_latents": True, "guidance_scale_lora": 1.0})
    vsd.attach(prior)
    seen = {"prior": [], "lora": []}
    original = prior.denoiser_output

    def spy(x, t, text, *args, unet=None, **kwargs):
        seen["prior" if kwargs.get("class_labels") is None else "lora"].append(text.detach().clone())
        return original(x, t, text, *args, unet=unet, **kwargs)

    prior.denoiser_output = spy
    try:
        vsd(prior, latents_for(prior, 2), pb, torch.arange(2), step=0, seed=0)
    finally:
        del prior.denoiser_output
    assert seen["lora"] and all(torch.equal(text, pb.plain) for text in seen["lora"])
    assert any(torch.equal(text[:2], pb.cond) for text in seen["prior"])
    assert not any(torch.equal(text[:2], pb.plain) for text in seen["prior"])
    assert processor(prior, batch_size=2).plain is None                   # no cameras: no views


def test_vsd_trains_only_lora_and_disabled_adapter_is_the_prior(tmp_path):
    folder = make_tiny_embedded(tmp_path / "vsd-prior")
    prior = scorestudio.find("embedded")({"pretrained_model_name_or_path": str(folder)})
    z = latents_for(prior, 2)
    pb = prompts_for(prior, 2)
    t = torch.tensor([300, 700])
    with torch.no_grad():
        before = prior.predict_noise(z, t, pb.cond)
    vsd = scorestudio.find("vsd")({"rgb_as_latents": True})
    vsd.attach(prior)
    # perturb the LoRA so that "enabled" and "disabled" differ
    with torch.no_grad():
        for p in vsd.lora_parameters:
            p.add_(0.05 * torch.randn_like(p))
    with torch.no_grad(), vsd.pretrained(prior):
        disabled = prior.predict_noise(z, t, pb.cond)
    with torch.no_grad(), vsd.lora(prior):
        enabled = prior.predict_noise(z, t, pb.cond, class_labels=torch.zeros(2, 16))
    assert torch.allclose(disabled, before, atol=1e-6)
    assert not torch.allclose(enabled, before, atol=1e-4)
    assert prior.unet.class_embedding is None   # the camera embedding is only plugged in for LoRA calls

    out = vsd(prior, z, pb, torch.arange(2), step=0, seed=0)
    (out["loss_vsd"] + out["loss_lora"]).backward()
    trainable = {n for n, p in prior.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert trainable and all("lora_" in n for n in trainable)
    frozen = [p for n, p in prior.named_parameters() if "lora_" not in n]
    assert all(p.grad is None for p in frozen)
    assert z.grad is not None and z.grad.abs().sum() > 0
    groups = vsd.param_groups()
    assert groups[0]["lr"] == 1e-4 and len(groups[0]["params"]) == len(vsd.lora_parameters) + 4
