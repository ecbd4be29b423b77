"""DreamSampler guidance on a tiny random prior: reverse schedule, carried noise, per-particle
state in checkpoints, the base class's gradient identity."""

from __future__ import annotations

import math

import pytest
import torch

from scorestudio.guidance.base import BaseGuidance
from scorestudio.guidance.dreamsampler import DreamSamplerGuidance
from scorestudio.priors.embedded import EmbeddedPrior
from scorestudio.priors.prompt_processor import PromptProcessor
from scorestudio.utils.config import ConfigError
from tests.tiny_models import make_tiny_embedded


@pytest.fixture(scope="module")
def prior(tmp_path_factory):
    return EmbeddedPrior({"pretrained_model_name_or_path": str(make_tiny_embedded(tmp_path_factory.mktemp("p")))})


def guidance(**cfg) -> DreamSamplerGuidance:
    return DreamSamplerGuidance({"rgb_as_latents": True, "num_steps": 10, **cfg})


def latents(prior, n, seed=0):
    shape = (n, prior.latent_channels, prior.latent_size, prior.latent_size)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).requires_grad_(True)


def prompts(prior, n):
    return PromptProcessor({"prompt": "a red cube"})(prior, batch_size=n)


def uncond_estimate(prior, z, ids, guide, step, seed, noise):
    """ε̂_uncond(z_t, t_k) recomputed outside the guidance."""
    t = guide.sample_timesteps(prior, ids, step, seed)
    with torch.no_grad():
        pb = prompts(prior, len(ids))
        return prior.predict_noise(prior.add_noise(z.detach(), noise, t), t, pb.uncond)


def test_timesteps_decrease_with_the_step(prior):
    ids = torch.arange(3)
    g = guidance(min_step_percent=0.02, max_step_percent=0.98)
    ts = [int(g.sample_timesteps(prior, ids, step, seed=0)[0]) for step in range(10)]
    assert ts[0] == 980 and ts[-1] == 20
    assert all(a > b for a, b in zip(ts, ts[1:]))
    assert int(g.sample_timesteps(prior, ids, 25, seed=0)[0]) == 20          # after the run: t_min
    assert (g.sample_timesteps(prior, ids, 4, seed=0) == ts[4]).all()        # the same t for every item
    levels = guidance(nfe=5, min_step_percent=0.02, max_step_percent=0.98)
    held = [int(levels.sample_timesteps(prior, ids, step, 0)[0]) for step in range(10)]
    assert held == [980, 980, 740, 740, 500, 500, 260, 260, 20, 20]


def test_first_step_and_eta_one_use_fresh_keyed_noise(prior):
    z, ids, pb = latents(prior, 3), torch.arange(3), prompts(prior, 3)
    for eta in (0.0, 1.0):
        g = guidance(eta=eta)
        assert torch.equal(g.sample_noise(z, ids, 0, 5), BaseGuidance.sample_noise(z, ids, 0, 5))
    g = guidance(eta=1.0)
    g(prior, z, pb, ids, 0, seed=5)
    assert bool(g.prev_valid.all())
    assert torch.equal(g.sample_noise(z, ids, 1, 5), BaseGuidance.sample_noise(z, ids, 1, 5))


def test_eta_zero_carries_the_previous_estimate(prior):
    z, ids, pb = latents(prior, 3), torch.arange(3), prompts(prior, 3)
    g = guidance(eta=0.0)
    g(prior, z, pb, ids, 0, seed=5)
    expected = uncond_estimate(prior, z, ids, g, 0, 5, BaseGuidance.sample_noise(z, ids, 0, 5))
    assert torch.allclose(g.prev_eps[:, 0], expected, atol=1e-6)
    assert torch.equal(g.sample_noise(z, ids, 1, 5), g.prev_eps[:, 0])
    half = guidance(eta=0.6)
    half.load_state_dict(g.state_dict())
    mix = 0.8 * g.prev_eps[:, 0] + 0.6 * BaseGuidance.sample_noise(z, ids, 1, 5)
    assert torch.allclose(half.sample_noise(z, ids, 1, 5), mix, atol=1e-6)


def test_state_is_per_particle(prior):
    z, pb = latents(prior, 3), prompts(prior, 3)
    g = guidance(carry="cond")
    g(prior, z, pb, torch.tensor([0, 1, 2]), 0, seed=1)
    stored = g.prev_eps[:, 0].clone()
    # particle 2 alone, then with a new particle 4 in front of it: keyed by id, not batch position
    alone = g.sample_noise(z[:1], torch.tensor([2]), 1, 1)
    assert torch.equal(alone[0], stored[2])
    mixed = g.sample_noise(z[:2], torch.tensor([4, 2]), 1, 1)
    assert torch.equal(mixed[1], stored[2])
    assert torch.equal(mixed[0], BaseGuidance.sample_noise(z[:1], torch.tensor([4]), 1, 1)[0])
    # views of one particle (NeRF: B = particles × views) each keep their own estimate
    g(prior, latents(prior, 4), prompts(prior, 4), torch.tensor([0, 1, 0, 1]), 1, seed=1)
    assert tuple(g.prev_valid.shape) == (3, 2) and bool(g.prev_valid[:2].all()) and not bool(g.prev_valid[2, 1])
    assert not torch.equal(g.prev_eps[0, 0], g.prev_eps[0, 1])


def test_state_survives_a_checkpoint_round_trip(prior, tmp_path):
    z, ids, pb = latents(prior, 2), torch.arange(2), prompts(prior, 2)
    g = guidance()
    g(prior, z, pb, ids, 0, seed=3)
    torch.save(g.state_dict(), tmp_path / "state.pt")
    resumed = guidance()                                        # empty buffers, as a fresh run has
    resumed.load_state_dict(torch.load(tmp_path / "state.pt"))  # strict: shapes come from the file
    assert torch.equal(resumed.prev_eps, g.prev_eps) and torch.equal(resumed.prev_valid, g.prev_valid)
    a = g(prior, z, pb, ids, 1, seed=3)
    b = resumed(prior, z, pb, ids, 1, seed=3)
    assert torch.equal(a["loss_dreamsampler"], b["loss_dreamsampler"])
    assert not torch.equal(a["loss_dreamsampler"], guidance()(prior, z, pb, ids, 1, seed=3)["loss_dreamsampler"])


def test_gradient_identity(prior):
    """∂loss/∂z = w(t)(ε̂_cfg(α z + σ ε̃) − ε̃) / B, with ε̃ the carried noise."""
    z, ids, pb = latents(prior, 4), torch.arange(4), prompts(prior, 4)
    g = guidance(guidance_scale=5.0, weighting="sds", eta=0.3)
    g(prior, z, pb, ids, 0, seed=7)
    noise = g.sample_noise(z, ids, 1, 7)
    t = g.sample_timesteps(prior, ids, 1, 7)
    with torch.no_grad():
        eps_cfg, _, _ = prior.predict_noise_cfg(prior.add_noise(z, noise, t), t, pb.cond, pb.uncond, 5.0)
        expected = (1 - prior.alphas_cumprod[t]).view(-1, 1, 1, 1) * (eps_cfg - noise) / 4
    z.grad = None
    out = g(prior, z, pb, ids, 1, seed=7)
    out["loss_dreamsampler"].backward()
    assert torch.allclose(z.grad, expected, atol=1e-6) and out["n_nonfinite"] == 0
    assert math.isclose(float(out["t"]), float(t[0]))


@pytest.mark.parametrize("bad", [{"eta": 1.5}, {"carry": "fresh"}, {"nfe": 20}, {"num_steps": 0}])
def test_bad_settings_are_config_errors(bad):
    with pytest.raises(ConfigError):
        guidance(**bad)
