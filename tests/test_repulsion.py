"""Repulsion math: closed form vs finite differences, sign, N = 2, hybrid, VJP pull-back; the
:class:`Repulsion` module on its own and inside a guidance."""

from __future__ import annotations

import math

import pytest
import torch

import scorestudio
from scorestudio.guidance.base import GuidanceCall
from scorestudio.guidance.repulsion import (
    Repulsion,
    kernel_log_density_grad,
    median_bandwidth,
    pairwise_sq_dists,
    repulsion_gradient,
)
from scorestudio.utils.config import ConfigError
from tests.tiny_models import make_tiny_embedded, make_tiny_probe


def log_density(features: torch.Tensor, i: int, h: float) -> torch.Tensor:
    """log Σ_j exp(-‖f_i − f_j‖²/h), the quantity whose gradient w.r.t. f_i is r_i."""
    d = (features[i] - features).pow(2).sum(-1)
    return torch.logsumexp(-d / h, dim=0)


@pytest.mark.parametrize("n", [2, 3, 6])
def test_gradient_matches_central_finite_differences(n):
    gen = torch.Generator().manual_seed(n)
    feats = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    h = float(median_bandwidth(pairwise_sq_dists(feats)))
    analytic = kernel_log_density_grad(feats, bandwidth=h)
    step = 1e-6
    for i in range(n):
        for d in range(5):
            plus, minus = feats.clone(), feats.clone()
            plus[i, d] += step
            minus[i, d] -= step
            numeric = (log_density(plus, i, h) - log_density(minus, i, h)) / (2 * step)
            assert analytic[i, d].item() == pytest.approx(numeric.item(), rel=1e-6, abs=1e-8)


def test_median_heuristic_uses_off_diagonal_pairs_and_log_n():
    feats = torch.tensor([[0.0, 0.0], [3.0, 4.0]])  # one pair at distance 5
    h = median_bandwidth(pairwise_sq_dists(feats))
    assert h.item() == pytest.approx(25.0 / math.log(2))


def test_two_particles_repel_with_finite_bandwidth():
    feats = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    r = kernel_log_density_grad(feats)
    # k_12 = exp(-1 / (1/log 2)) = 1/2; r_1 = (k_12 · -2(f_1 − f_2)/h) / (1 + k_12).
    expected = (0.5 * -2.0 * (0.0 - 1.0) * math.log(2)) / 1.5
    assert torch.isfinite(r).all() and r[0, 0].item() == pytest.approx(expected, rel=1e-5)
    assert r[1, 0].item() == pytest.approx(-expected, rel=1e-5)


def test_descent_step_increases_every_pairwise_distance():
    gen = torch.Generator().manual_seed(0)
    for n in (2, 4, 8):
        feats = torch.randn(n, 32, generator=gen)
        before = pairwise_sq_dists(feats)
        after = pairwise_sq_dists(feats - 1e-3 * kernel_log_density_grad(feats))  # zero base gradient
        off = ~torch.eye(n, dtype=torch.bool)
        assert (after[off] > before[off]).all()


def test_coincident_particles_stay_finite():
    r = kernel_log_density_grad(torch.zeros(3, 4))
    assert torch.isfinite(r).all()


def test_single_particle_gets_no_repulsion():
    assert kernel_log_density_grad(torch.randn(1, 3)).abs().sum() == 0


def test_hybrid_mode_only_first_k_interact():
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(6, 3, generator=gen)
    r = kernel_log_density_grad(feats, interacting=3)
    assert r[3:].abs().sum() == 0
    assert torch.allclose(r[:3], kernel_log_density_grad(feats[:3]))


def test_leading_batch_dims_are_independent_ensembles():
    gen = torch.Generator().manual_seed(2)
    feats = torch.randn(4, 5, 3, generator=gen)
    batched = kernel_log_density_grad(feats)
    for b in range(4):
        assert torch.allclose(batched[b], kernel_log_density_grad(feats[b]), atol=1e-6)


def test_per_row_bandwidth_matches_row_medians():
    feats = torch.tensor([[0.0], [1.0], [3.0]])
    h = median_bandwidth(pairwise_sq_dists(feats), mode="per_row")
    # off-diagonal distances per row: {1, 3}, {1, 2}, {3, 2} → medians (lower) 1, 1, 2
    assert torch.allclose(h.squeeze(-1), torch.tensor([1.0, 1.0, 4.0]) / math.log(3))


def test_pullback_through_a_feature_map_is_the_vjp():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 2, 3, generator=gen)
    weight = torch.randn(6, 5, generator=gen)
    feature_fn = lambda z: torch.tanh(z.reshape(4, 6) @ weight)  # noqa: E731
    grad = repulsion_gradient(x, feature_fn)
    feats = feature_fn(x)
    r = kernel_log_density_grad(feats)
    # Chain rule by hand: J^T r with J of tanh(z W).
    expected = ((1 - feats.pow(2)) * r) @ weight.T
    assert torch.allclose(grad, expected.reshape(4, 2, 3), atol=1e-6)


def test_identity_features_default():
    x = torch.randn(3, 2, 2)
    assert torch.allclose(repulsion_gradient(x), kernel_log_density_grad(x.reshape(3, 4)).reshape(3, 2, 2))



# ------------------------------------------------------------------------------ the Repulsion module


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(tiny embedded prior, tiny probe folder)."""
    base = tmp_path_factory.mktemp("tiny-repulsion")
    folder, probe = make_tiny_embedded(base / "prior"), make_tiny_probe(base / "probe")
    return scorestudio.find("embedded")({"pretrained_model_name_or_path": str(folder)}), probe


@pytest.mark.parametrize("on", ["noisy", "clean"])
def test_repulsion_alone_equals_the_guidance_repulsion(tiny, on):
    """A Repulsion built from the config alone gives the guidance's repulsion tensor, bit for bit
    (decoded pixel features, c(t) = σ_t, 2 particles × 2 views, a t-window cutting one item)."""
    prior, _ = tiny
    cfg = {"gamma": [0, 1.0, 3.0, 10], "features": "pixel", "scale": "sigma", "on": on, "t_window": [0.3, 1.0]}
    gen = torch.Generator().manual_seed(4)
    shape = (4, prior.latent_channels, prior.latent_size, prior.latent_size)
    z, noisy = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    t, ids = torch.tensor([900, 500, 200, 700]), torch.tensor([0, 1, 0, 1])
    guidance = scorestudio.find("sds")({"rgb_as_latents": True, "repulsion": cfg})
    expected = guidance.repulsion_term(GuidanceCall(prior, z, noisy, noisy, t, None, ids, 5, 0))
    alone = Repulsion(cfg)(prior, noisy if on == "noisy" else z, t, ids, 5)
    assert torch.equal(alone, expected)
    assert alone[2].abs().sum() == 0 and alone[0].abs().sum() > 0   # t/T = 0.2 is outside the window


def test_repulsion_checks_its_config_and_keeps_its_network_out_of_state_dicts(tiny):
    prior, probe = tiny
    with pytest.raises(ConfigError, match="system.solver.repulsion.scale='sigma3'"):
        Repulsion({"scale": "sigma3"}, path="system.solver.repulsion")
    with pytest.raises(ConfigError, match="on=rendered"):
        Repulsion({"on": "rendered", "features": "latent"})
    with pytest.raises(ConfigError, match="feature_head='colour'"):
        Repulsion({"features": "latent_probe", "feature_head": "colour"})
    with pytest.raises(ConfigError, match="feature_head='color'.*features='dinov2'"):
        Repulsion({"features": "dinov2", "feature_head": "color"})
    repulsion = Repulsion({"gamma": [0, 0.0, 2.0, 10], "feature_net_path": str(probe)})
    assert not repulsion.is_active(0) and repulsion.is_active(5)
    guidance = scorestudio.find("sds")({"repulsion": {"gamma": 1.0, "feature_net_path": str(probe)}})
    keys = set(guidance.state_dict())
    guidance.repulsion.load_network(prior)
    assert guidance.repulsion.feature_network(prior) is not None and set(guidance.state_dict()) == keys


def test_clean_placement_reads_the_particles_not_their_noise(tiny):
    """on=clean: the kernel sees z_0, so two noise draws at the same t give the same repulsion;
    on=noisy: it sees z_t and the noise changes it (why the demo repels on z_0)."""
    prior, _ = tiny
    gen = torch.Generator().manual_seed(7)
    shape = (3, prior.latent_channels, prior.latent_size, prior.latent_size)
    z = torch.randn(shape, generator=gen)
    t, ids = torch.full((3,), 600), torch.arange(3)
    draws = [prior.add_noise(z, torch.randn(shape, generator=gen), t) for _ in range(2)]
    out = {}
    for on in ("clean", "noisy"):
        guidance = scorestudio.find("sds")({"rgb_as_latents": True,
                                            "repulsion": {"gamma": 1.0, "features": "pixel", "on": on}})
        out[on] = [guidance.repulsion_term(GuidanceCall(prior, z, noisy, noisy, t, None, ids, 0, 0)) for noisy in draws]
    assert torch.equal(*out["clean"]) and out["clean"][0].abs().sum() > 0
    assert not torch.allclose(*out["noisy"], rtol=0.1)


def test_demo_config_repels_on_latent_probe_features_of_z0():
    """configs/dreamfusion-demo.yaml parses into the repulsion it means (a YAML ``on:`` key
    would be read as the boolean True) and repels from the first step to the last."""
    from scorestudio.utils.config import config_path, load_config

    cfg = load_config(config_path("dreamfusion-demo"), [])
    guidance = scorestudio.find(cfg.system.guidance_type)(dict(cfg.system.guidance), path="system.guidance")
    repulsion = guidance.repulsion
    assert (repulsion.cfg.features, repulsion.cfg.on) == ("latent_probe", "clean")
    assert all(repulsion.is_active(step) for step in range(cfg.trainer.max_steps))
