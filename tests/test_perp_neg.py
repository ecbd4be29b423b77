"""Janus mitigations: Perp-Neg (view mixture, weights, perpendicular gradient, every guidance),
prompt debiasing, and the view evaluator that measures them."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from scorestudio import find
from scorestudio.priors.perp_neg import F_FS, F_FSB, F_SB, F_SF, decay, perpendicular_component, view_mixture
from scorestudio.utils.config import ConfigError


@pytest.fixture(scope="module")
def prior(tiny):
    return find("embedded")({"pretrained_model_name_or_path": str(tiny[0])})


def processor(**cfg):
    return find("prompt-processor")({"prompt": "a red mug", "use_perp_neg": True, **cfg}, path="system.prompt_processor")


def test_view_mixture_on_hand_cases():
    azimuth = torch.tensor([0.0, 90.0, -45.0, 180.0, -135.0, 30.0])
    overhead = torch.tensor([False, False, False, False, False, True])
    mix, negatives, weights = view_mixture(azimuth, overhead)
    front, side, back, over = torch.eye(4)
    assert torch.equal(mix[0], front) and torch.equal(mix[1], side) and torch.equal(mix[3], back)
    assert torch.allclose(mix[2], 0.5 * front + 0.5 * side) and torch.allclose(mix[4], 0.5 * side + 0.5 * back)
    assert torch.equal(mix[5], over) and torch.equal(weights[5], torch.zeros(2))
    # A full view is never its own negative; the others push with threestudio's weights.
    assert negatives[0].tolist() == [0, 1] and weights[0, 0].abs() < 1e-3
    assert weights[0, 1] == pytest.approx(-(4 * math.exp(0) - 2.426))
    assert negatives[3].tolist() == [1, 0] and weights[3].tolist() == pytest.approx([-(1 - 0.606), -(1 + 0.967)])
    assert negatives[1].tolist() == [1, 0] and weights[1, 0].abs() < 1e-3   # side: front pushes, side does not
    assert (weights <= 1e-3).all()
    assert decay(F_SB, torch.tensor(1.0)).abs() < 1e-3 and decay(F_FS, torch.tensor(1.0)).abs() < 1e-3
    assert F_SF == F_FS and decay(F_FSB, torch.tensor(0.0)) > decay(F_SB, torch.tensor(0.0))


def test_perpendicular_component_is_orthogonal():
    x, y = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    perp = perpendicular_component(x, y)
    assert torch.allclose((perp * y).sum((1, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(perpendicular_component(y, y), torch.zeros_like(y), atol=1e-5)
    assert torch.equal(perpendicular_component(x, torch.zeros_like(x)), x)


def test_perp_neg_batch_mixes_views_and_carries_negatives(prior):
    proc = processor()
    batch = proc(prior, torch.tensor([15.0, 15.0, 80.0]), torch.tensor([0.0, -45.0, 100.0]))
    views = prior.encode_text(proc.view_prompts())
    assert torch.equal(batch.cond[0], views[0]) and torch.equal(batch.cond[2], views[3])
    assert torch.allclose(batch.cond[1], 0.5 * views[0] + 0.5 * views[1])
    assert batch.perp_neg.embeddings.shape == (3, 2, *views.shape[1:]) and batch.perp_neg.weights.shape == (3, 2)
    assert torch.equal(batch.perp_neg.embeddings[0, 1], views[1])
    picked = batch.index(torch.tensor([2, 0]))
    assert torch.equal(picked.perp_neg.weights, batch.perp_neg.weights[[2, 0]])
    assert proc(prior, batch_size=2).perp_neg is None   # 2-D: no cameras, plain prompts


def test_perp_neg_cfg_matches_the_formula(prior):
    batch = processor()(prior, torch.tensor([15.0, 15.0]), torch.tensor([170.0, 20.0]))
    x, t = torch.randn(2, 4, 4, 4), torch.tensor([300, 600])
    eps_cfg, eps_c, eps_u = prior.predict_noise_cfg(x, t, batch.cond, batch.uncond, 7.5, perp_neg=batch.perp_neg)
    assert torch.allclose(eps_c, prior.predict_noise(x, t, batch.cond), atol=1e-5)
    direction = eps_c - eps_u
    for k in range(2):
        e_k = prior.predict_noise(x, t, batch.perp_neg.embeddings[:, k]) - eps_u
        direction = direction + batch.perp_neg.weights[:, k].view(-1, 1, 1, 1) * perpendicular_component(e_k, eps_c - eps_u)
    assert torch.allclose(eps_cfg, eps_u + 7.5 * direction, atol=1e-4)
    zero = type(batch.perp_neg)(batch.perp_neg.embeddings, torch.zeros(2, 2))
    plain = prior.predict_noise_cfg(x, t, batch.cond, batch.uncond, 7.5)[0]
    assert torch.allclose(prior.predict_noise_cfg(x, t, batch.cond, batch.uncond, 7.5, perp_neg=zero)[0], plain, atol=1e-5)


@pytest.mark.parametrize("method, cfg", [("sds", {}), ("nfsd", {}), ("vsd", {}), ("dreamsampler", {"num_steps": 4}),
                                         ("lmc-sds", {"corrective_path": "identity"})])
def test_every_guidance_runs_with_perp_neg(prior, method, cfg, monkeypatch):
    from scorestudio.data.cameras import cameras_from_angles

    cameras = cameras_from_angles(15.0, torch.tensor([0.0, 120.0]), 2.5, 40.0)
    guidance = find(method)({"rgb_as_latents": True, **cfg}, path="system.guidance")
    guidance.attach(prior)
    z = torch.randn(2, 4, 4, 4, requires_grad=True)
    calls = []
    original = type(prior).guided_direction
    monkeypatch.setattr(type(prior), "guided_direction",
                        lambda self, *args: calls.append(args[-1] is not None) or original(self, *args))
    out = guidance(prior, z, processor()(prior, cameras.elevation, cameras.azimuth), torch.arange(2), 0, cameras=cameras)
    out[guidance.loss_name].backward()
    assert calls == [True] and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_perp_neg_config_errors():
    with pytest.raises(ConfigError, match="view_dependent_prompting"):
        processor(view_dependent_prompting=False)
    with pytest.raises(ConfigError, match="perp_neg_f_sb"):
        processor(perp_neg_f_sb=[1.0, 0.5])


# ---- prompt debiasing -----------------------------------------------------------------------------


def test_debiasing_drops_view_implying_words_from_the_other_views():
    from scorestudio.priors.prompt_debiasing import debiased_prompts

    def scorer(prompt):   # "smiling" implies the front; the rest says nothing about views
        return torch.tensor([0.7, 0.1, 0.1, 0.1]) if "smiling" in prompt else torch.full((4,), 0.25)

    prompts = debiased_prompts("a smiling dog", scorer, 4)
    assert prompts == ["a smiling dog", "a dog", "a dog", "a dog"]
    assert debiased_prompts("a smiling dog", scorer, 4, mask_ids=[0, 2]) == ["a smiling dog"] * 4
    with pytest.raises(ConfigError, match="mask_ids"):
        debiased_prompts("a dog", scorer, 4, mask_ids=[5])


def test_debiasing_with_a_masked_language_model_folder(tmp_path, prior):
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "this", "image", "is", "depicting", "a", "view", "of",
             "front", "side", "back", "overhead", "red", "mug", "smiling", "dog"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizer(str(tmp_path / "vocab.txt")).save_pretrained(tmp_path)
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=24, max_position_embeddings=64)).save_pretrained(tmp_path)
    proc = processor(prompt_debiasing=True, pretrained_model_name_or_path_prompt_debiasing=str(tmp_path))
    prompts = proc.view_prompts()
    assert [p.split(", ")[1] for p in prompts] == ["front view", "side view", "back view", "overhead view"]
    assert all(set(p.split(", ")[0].split()) <= {"a", "red", "mug"} for p in prompts)
    from scorestudio.priors.prompt_debiasing import ViewScorer

    probs = ViewScorer(str(tmp_path), ["front", "side", "back", "overhead"], key="k")("a red mug")
    assert probs.shape == (4,) and torch.allclose(probs.sum(), torch.tensor(1.0))
    with pytest.raises(ConfigError, match="view word"):
        ViewScorer(str(tmp_path), ["frontal"], key="k")


# ---- the view evaluator ---------------------------------------------------------------------------


def fake_system(tiny, prior_type="embedded"):
    from scorestudio.systems.distillation import EvalConfig

    probe = str(tiny[1]) if prior_type == "embedded" else None
    cfg = SimpleNamespace(prior_type=prior_type, probe_path=probe, evaluation=EvalConfig(n_views=8))
    return SimpleNamespace(cfg=cfg, prompt_processor=processor())


def test_view_evaluator_scores_orbits_and_skips_images(tiny):
    evaluator = find("view", kind="metrics")()
    metrics = evaluator(fake_system(tiny), torch.rand(2, 8, 3, 32, 32), None)
    assert 0.0 <= metrics["view_agreement"] <= 1.0 and {"particle0/view_agreement", "particle1/view_agreement",
                                                         "view_agreement_front", "view_agreement_side",
                                                         "view_agreement_back", "back_seen_as_front"} <= set(metrics)
    side = metrics["view_agreement_side"] * 6 / 8   # 8 orbit views: 1 front, 6 side, 1 back
    assert metrics["view_agreement"] == pytest.approx(
        side + (metrics["view_agreement_front"] + metrics["view_agreement_back"]) / 8)
    assert evaluator(fake_system(tiny), torch.rand(2, 1, 3, 32, 32), None)["view_agreement"] is None
    skipped = evaluator(fake_system(tiny, "stable-diffusion"), torch.rand(2, 8, 3, 32, 32), None)
    assert skipped["view_agreement"] is None and "embedded" in skipped["null_reasons"]["view_agreement"]


def test_view_metrics_on_a_hand_case():
    from scorestudio.metrics.evaluators import view_metrics

    front, side, back = 0, 1, 2
    seen = torch.tensor([[front, side, back, front], [back, side, back, side]])
    metrics = view_metrics(seen, torch.tensor([front, side, back, back]))
    assert metrics["particle0/view_agreement"] == 0.75 and metrics["particle1/view_agreement"] == 0.5
    assert metrics["view_agreement"] == 0.625 and metrics["view_agreement_front"] == 0.5
    assert metrics["view_agreement_side"] == 1.0 and metrics["view_agreement_back"] == 0.5
    assert metrics["back_seen_as_front"] == 0.25 and "view_agreement_overhead" not in metrics
