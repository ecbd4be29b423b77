"""The latent probe: the probe distilled onto a prior's latents, as the repulsion's feature map."""

from __future__ import annotations

import csv
import json

import pytest
import torch

import scorestudio
from scorestudio.guidance.base import GuidanceCall
from scorestudio.guidance.repulsion import repulsion_gradient
from scorestudio.metrics.features import load_feature_network
from scorestudio.metrics.probe import load_probe
from tests.test_lmc import fake_encode_captions


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    """(prior, image probe folder, latent probe folder, work dir) after a short distillation."""
    from scorestudio.tools import train_latent_probe as tlp
    from scorestudio.tools import training as train

    base = tmp_path_factory.mktemp("latent-probe")
    original = train.encode_captions
    train.encode_captions = fake_encode_captions   # MiniLM on 424 captions is slow
    try:
        tlp.main(["--prior-path", str(tiny[0]), "--probe", str(tiny[1]), "--prior-work-dir", str(base / "prior-work"),
                  "--cache-dir", str(base / "cache"), "--cache-images", "16", "--test-images", "8", "--chunk", "8",
                  "--pool-size", "48", "--test-pool-size", "16", "--pool-chunk", "16", "--eval-ensembles", "1",
                  "--batch-size", "16", "--channels", "8", "16", "--lr", "3e-3", "--steps", "60",
                  "--work-dir", str(base / "work"), "--out", str(base / "out"), "--threads", "1"])
    finally:
        train.encode_captions = original
    prior = scorestudio.find("embedded")({"pretrained_model_name_or_path": str(tiny[0])})
    return prior, tiny[1], base / "out", base / "work"


def test_distillation_fits_the_pool_and_reports_heldout(trained):
    _, _, out, work = trained
    with (work / "loss.csv").open() as handle:
        losses = [float(r["loss"]) for r in csv.DictReader(handle)]
    assert len(losses) == 60
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.7 * first, (first, last)   # 1 − R² on the training pool falls
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_heldout"] == 16 and -1 <= metrics["grad_cosine_latent_probe_mean"] <= 1
    assert set(metrics["grad_cosine_latent"]) == {"0.1", "0.3", "0.5", "0.7", "0.9"}
    assert 0 <= metrics["color_agreement"] <= 1


def test_pool_targets_are_the_probe_features_of_decoded_latents(trained):
    prior, probe_dir, _, work = trained
    chunk = torch.load(work / "pool-train" / "chunk_00000.pt")
    teacher = load_probe(probe_dir)
    with torch.no_grad():
        expected = teacher.features(prior.decode_latents(chunk["z"][:4]))
    assert torch.allclose(chunk["f"][:4], expected, atol=1e-5)


def test_latent_probe_is_the_repulsion_feature_map(trained):
    """γ c(t) r with features=latent_probe is the VJP of the kernel through the latent probe only."""
    prior, _, out, _ = trained
    guidance = scorestudio.find("sds")({"rgb_as_latents": True, "repulsion": {
        "gamma": 2.0, "features": "latent_probe", "feature_net_path": str(out), "scale": "one"}})
    z = torch.randn(3, prior.latent_channels, prior.latent_size, prior.latent_size)
    call = GuidanceCall(prior, z, z, z, torch.full((3,), 500), None, torch.arange(3), 0, 0)
    net = load_feature_network("latent_probe", str(out))
    assert net.cfg.space == "latent"
    expected = 2.0 * repulsion_gradient(z, net.features)
    assert torch.allclose(guidance.repulsion_term(call), expected, atol=1e-6)


def test_feature_head_repels_on_that_heads_logits(trained):
    """feature_head=color: the kernel reads the latent probe's colour logits [B, 8], not its features."""
    prior, _, out, _ = trained
    guidance = scorestudio.find("sds")({"rgb_as_latents": True, "repulsion": {
        "gamma": 2.0, "features": "latent_probe", "feature_net_path": str(out), "scale": "one",
        "feature_head": "color"}})
    z = torch.randn(3, prior.latent_channels, prior.latent_size, prior.latent_size)
    call = GuidanceCall(prior, z, z, z, torch.full((3,), 500), None, torch.arange(3), 0, 0)
    net = load_feature_network("latent_probe", str(out))
    term = guidance.repulsion_term(call)
    assert torch.allclose(term, 2.0 * repulsion_gradient(z, lambda x: net(x)["color"]), atol=1e-6)
    assert not torch.allclose(term, 2.0 * repulsion_gradient(z, net.features), atol=1e-3)


def test_probe_kinds_refuse_the_other_space(trained):
    prior, probe_dir, out, _ = trained
    with pytest.raises(ValueError, match="features='probe'"):
        load_feature_network("latent_probe", str(probe_dir))
    with pytest.raises(ValueError, match="features='latent_probe'"):
        load_feature_network("probe", str(out))
    with pytest.raises(ValueError, match=r"latents \[N, \d+, \d+, \d+\].*another prior"):
        load_probe(out).features(torch.rand(2, 3, 64, 64))


def test_shipped_latent_probe_loads_by_default():
    net = load_feature_network("latent_probe")
    assert net.cfg.space == "latent" and net.cfg.in_channels == 4
    assert net.features(torch.randn(2, 4, 8, 8)).shape == (2, net.cfg.feature_dim)


def test_trainers_end_with_one_message_when_the_prior_is_missing(tmp_path):
    """Both latent trainers (this one and b̂ψ's) share load_prior: no traceback for a wrong folder."""
    from scorestudio.tools.train_latent_probe import main

    with pytest.raises(SystemExit, match="(?s)not found at .*absent.*--prior-path FOLDER"):
        main(["--prior-path", str(tmp_path / "absent"), "--out", str(tmp_path / "out"), "--steps", "1",
              "--work-dir", str(tmp_path / "work")])
