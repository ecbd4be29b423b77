"""Training pipeline of the embedded prior and the probe (tiny architectures, a few steps)."""

from __future__ import annotations

import csv
import hashlib
import json

import pytest
import torch

from scorestudio.metrics.probe import Probe, diversity, load_probe
from scorestudio.tools import train_prior as train
from scorestudio.tools import training
from scorestudio.priors.embedded_arch import SIZES, TEXT_DIM, TEXT_MAX_LENGTH

TINY = ["--size", "tiny", "--cache-images", "16", "--test-images", "8", "--chunk", "8", "--batch-size", "4", "--threads", "1"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """Rendered images shared by every run of this module (rendering dominates tiny runs)."""
    return tmp_path_factory.mktemp("cache")


def fake_encode_captions(captions: list[str]) -> torch.Tensor:
    """Deterministic stand-in for MiniLM ``[N, 32, 384]`` (keeps the tests fast)."""
    rows = []
    for c in captions:
        seed = int.from_bytes(hashlib.blake2b(c.encode(), digest_size=4).digest(), "little")
        rows.append(torch.randn(TEXT_MAX_LENGTH, TEXT_DIM, generator=torch.Generator().manual_seed(seed)))
    return torch.stack(rows)


@pytest.fixture(scope="module")
def shipped_vae(tmp_path_factory, cache_dir):
    """An exported tiny VAE (1 step) for the UNet stage."""
    root = tmp_path_factory.mktemp("vae")
    _run("vae", 1, root / "work", root / "out", cache_dir)
    return root / "out"


def _run(stage: str, steps: int, work, out, cache_dir, resume: bool = False) -> None:
    train.main(["--stage", stage, "--steps", str(steps), "--work-dir", str(work), "--out", str(out),
                "--cache-dir", str(cache_dir), *TINY, *(["--resume"] if resume else [])])


def _losses(work, stage: str) -> list[float]:
    with (work / stage / "loss.csv").open() as handle:
        return [float(row["loss"]) for row in csv.DictReader(handle)]


@pytest.mark.parametrize("stage", ["probe", "vae", "unet"])
def test_resumed_run_matches_uninterrupted(stage, tmp_path, shipped_vae, cache_dir, monkeypatch):
    monkeypatch.setattr(training, "encode_captions", fake_encode_captions)
    outs = {}
    for name in ("split", "whole"):
        out = tmp_path / name / "out"
        if stage == "unet":
            (out / "vae").mkdir(parents=True)
            for f in (shipped_vae / "vae").iterdir():
                (out / "vae" / f.name).write_bytes(f.read_bytes())
        outs[name] = out
    split, whole = tmp_path / "split" / "work", tmp_path / "whole" / "work"
    _run(stage, 2, split, outs["split"], cache_dir)
    with pytest.raises(SystemExit, match="--resume"):
        _run(stage, 3, split, outs["split"], cache_dir)  # never silently overwrite a checkpoint
    _run(stage, 3, split, outs["split"], cache_dir, resume=True)
    _run(stage, 3, whole, outs["whole"], cache_dir)

    a, b = torch.load(split / stage / "ckpt.pt"), torch.load(whole / stage / "ckpt.pt")
    assert a["step"] == b["step"] == 3
    for key, value in b["model"].items():
        torch.testing.assert_close(a["model"][key], value, atol=1e-6, rtol=0)
    if stage == "unet":
        for key, value in b["ema"].items():
            torch.testing.assert_close(a["ema"][key], value, atol=1e-6, rtol=0)
        scheduler = json.loads((outs["whole"] / "scheduler" / "scheduler_config.json").read_text())
        assert scheduler["clip_sample"] is False  # DDIM built from it must not clip unit-std latents
    assert _losses(split, stage) == pytest.approx(_losses(whole, stage), abs=1e-6)
    assert len(_losses(split, stage)) == 3


def test_exported_folder_layout(tmp_path, shipped_vae, cache_dir):
    vae_config = (shipped_vae / "vae" / "config.json").read_text()
    assert '"scaling_factor"' in vae_config
    probe_out = tmp_path / "out"
    _run("probe", 1, tmp_path / "work", probe_out, cache_dir)
    probe = load_probe(probe_out / "probe")
    assert all(p.dtype == torch.float32 for p in probe.parameters())
    assert not any(p.requires_grad for p in probe.parameters())


def test_drawn_captions_are_all_encoded(tmp_path):
    cache = train.image_cache(tmp_path, "train", 48, 16, seed=0, chunk=16)
    known = set(training.all_captions())
    gen = torch.Generator().manual_seed(0)
    drawn = set()
    for _ in range(20):
        drawn |= set(train.draw_captions(cache, torch.arange(len(cache)), gen, train.ProceduralConfig()))
    assert drawn <= known
    assert "" in drawn and any(", " in c and " view" in c for c in drawn)


def _tiny_probe() -> Probe:
    return train.seeded_init(0, lambda: Probe(train.probe_config(SIZES["tiny"])))


def test_probe_outputs_and_differentiable_features():
    probe = _tiny_probe().eval()
    images = torch.rand(5, 3, 40, 40, requires_grad=True)  # any size: resized to the probe's input
    logits = probe(images)
    assert {k: tuple(v.shape) for k, v in logits.items()} == {"shape": (5, 13), "color": (5, 8), "kind": (5, 2),
                                                              "view": (5, 4)}
    feats = probe.features(images)
    assert feats.shape == (5, SIZES["tiny"].probe.feature_dim)
    (grad,) = torch.autograd.grad(feats.square().sum(), images)
    assert grad.shape == images.shape and grad.abs().sum() > 0 and torch.isfinite(grad).all()
    rows = probe.classify(images.detach())
    assert len(rows) == 5
    for row in rows:
        assert row["shape"] in probe.cfg.shapes and row["color"] in probe.cfg.colors
        assert (row["view"] is None) == (row["kind"] == "icon")
        assert sum(row["probabilities"]["shape"].values()) == pytest.approx(1.0, abs=1e-3)


def test_probe_export_roundtrip(tmp_path):
    probe = _tiny_probe().eval()
    train.export_probe(probe, tmp_path)
    loaded = load_probe(tmp_path)
    x = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(loaded.features(x), probe.features(x), atol=2e-2, rtol=2e-2)  # fp16 weights


def test_augment_is_seeded_and_in_range():
    images = torch.rand(4, 3, 32, 32)
    a = train.augment(images, torch.Generator().manual_seed(1))
    b = train.augment(images, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == images.shape
    assert a.min() >= 0 and a.max() <= 1


def test_diversity_closed_form():
    assert diversity(torch.ones(4, 3)) == pytest.approx(0.0, abs=1e-6)
    assert diversity(torch.eye(5)) == pytest.approx(1.0, abs=1e-6)
    # Two unit vectors 60 degrees apart: cosine 0.5.
    assert diversity(torch.tensor([[1.0, 0.0], [0.5, 3**0.5 / 2]])) == pytest.approx(0.5, abs=1e-6)
    # Scale-invariant; opposite vectors have cosine -1.
    assert diversity(torch.tensor([[2.0, 0.0], [-7.0, 0.0]])) == pytest.approx(2.0, abs=1e-6)
    with pytest.raises(ValueError):
        diversity(torch.ones(1, 3))


def test_lr_cooldown_only_in_last_fifth_of_budget():
    assert training.lr_multiplier(10_000, 0.5) == 1.0
    assert training.lr_multiplier(10_000, 0.8) == 1.0
    assert training.lr_multiplier(10_000, 1.0) == pytest.approx(training.COOLDOWN_FLOOR)
    assert training.lr_multiplier(0, 0.0) == pytest.approx(1 / training.WARMUP_STEPS)


@pytest.mark.parametrize("module, argv", [("scorestudio.tools.train_prior", ["--stage", "probe", "--steps", "1"]),
                                          ("scorestudio.tools.train_corrective", ["--steps", "1"]),
                                          ("scorestudio.tools.train_latent_probe", ["--steps", "1"])])
def test_trainers_need_an_explicit_out(module, argv, capsys):
    """No default output folder: a trial run can never overwrite the shipped weights."""
    import importlib

    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(module).main(argv)
    assert exit_info.value.code == 2 and "--out" in capsys.readouterr().err
