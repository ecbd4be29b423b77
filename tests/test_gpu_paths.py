"""What GPU users run, checked on the CPU with tiny random models: hub folder layouts, precomputed
text embeddings, float16 storage (VSD's LoRA, LMC-SDS, DreamSampler, repulsion), VSD with its own
LoRA base model, the low-memory switches."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from scorestudio import find  # noqa: E402
from scorestudio.data.cameras import cameras_from_angles  # noqa: E402
from scorestudio.utils.config import ConfigError  # noqa: E402
from tests.tiny_models import SD_HUB_VERSIONS, make_hub_if, make_hub_sd  # noqa: E402

PRIOR_OF = {**{f"sd-{v}": "stable-diffusion" for v in SD_HUB_VERSIONS}, "if": "deepfloyd-if"}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """Hub-layout folders: ``sd-1.5``, ``sd-2.1-base``, ``sd-2.1`` and ``if``."""
    root = tmp_path_factory.mktemp("hub")
    folders = {f"sd-{v}": make_hub_sd(root / f"sd-{v}", v) for v in SD_HUB_VERSIONS}
    folders["if"] = make_hub_if(root / "if")
    return folders


def build(hub, name, **cfg):
    return find(PRIOR_OF[name])({"pretrained_model_name_or_path": str(hub[name]), **cfg}, path="system.prior")


@pytest.fixture
def half_storage(monkeypatch):
    """float16 weights on the CPU (torch has the kernels; the prior's dtype check would keep float32)."""
    import scorestudio.priors.base as base

    monkeypatch.setattr(base, "resolve_dtype", lambda name, key: torch.float16 if name == "float16" else torch.float32)


# ---- hub layouts ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PRIOR_OF))
def test_hub_folders_load_and_predict(hub, name):
    prior = build(hub, name)
    assert prior.prediction_type == ("v_prediction" if name == "sd-2.1" else "epsilon")
    text = prior.encode_text(["a red cube", ""])
    assert text.shape[:2] == (2, 77) and torch.isfinite(text).all()
    x = torch.randn(2, prior.latent_channels, prior.latent_size, prior.latent_size)
    eps = prior.predict_noise(x, torch.tensor([10, 900]), text)
    assert eps.shape == x.shape and torch.isfinite(eps).all()


def test_sd_tokenizer_reads_the_repos_bpe_files(hub):
    assert not (hub["sd-1.5"] / "tokenizer" / "tokenizer.json").exists()   # vocab.json + merges.txt only
    tokenizer = build(hub, "sd-1.5").tokenizer
    assert tokenizer.convert_ids_to_tokens(tokenizer("a red cube").input_ids) == [
        "<|startoftext|>", "a</w>", "red</w>", "cube</w>", "<|endoftext|>"]


def test_if_folder_with_only_a_sentencepiece_model_loads(hub):
    files = {p.name for p in (hub["if"] / "tokenizer").iterdir()}
    assert files == {"spiece.model", "special_tokens_map.json", "tokenizer_config.json"}
    prior = build(hub, "if")
    assert type(prior.tokenizer).__name__ == "T5Tokenizer" and prior.text_max_length == 77
    ids = prior.tokenizer("a red cube").input_ids
    assert ids[-1] == prior.tokenizer.eos_token_id and prior.tokenizer.unk_token_id not in ids
    assert not torch.equal(*prior.encode_text(["a red cube", "a blue sphere"]))


@pytest.mark.parametrize("name", ["sd-2.1-base", "if"])
def test_precomputed_embeddings_never_construct_tokenizer_or_text_encoder(hub, name, tmp_path, monkeypatch):
    import transformers

    from scorestudio.priors.text_embeddings import save_text_embeddings

    prompts = ["", "a red cube"]
    reference = build(hub, name)
    file = tmp_path / "emb.pt"
    save_text_embeddings(file, dict(zip(prompts, reference.encode_text(prompts))), PRIOR_OF[name], str(hub[name]))

    def refuse(*args, **kwargs):
        raise AssertionError("a tokenizer or text encoder was constructed")

    for cls in ("CLIPTokenizer", "CLIPTextModel", "AutoTokenizer", "T5Tokenizer", "T5EncoderModel"):
        monkeypatch.setattr(getattr(transformers, cls), "from_pretrained", refuse)
        monkeypatch.setattr(getattr(transformers, cls), "__init__", refuse)
    prior = build(hub, name, text_embeddings=str(file))
    assert prior.tokenizer is None and prior.text_encoder is None and prior.text_max_length == 77
    assert torch.equal(prior.encode_text(prompts), reference.encode_text(prompts))
    with pytest.raises(ConfigError, match="text embeddings file"):
        prior.encode_text(["a dog"])


# ---- float16 --------------------------------------------------------------------------------------


def vsd_steps(prior, steps, seed=0, **cfg):
    """``steps`` VSD steps on 2 image particles seen by 2 cameras; asserts each step's gradient."""
    vsd = find("vsd")({"camera_dropout": 0.5, **cfg}, path="system.guidance")
    vsd.attach(prior)
    assert all(p.dtype == torch.float32 for p in vsd.lora_parameters)
    images = torch.nn.Parameter(torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(seed)))
    optimizer = torch.optim.Adam([{"params": [images], "lr": 0.01}, *vsd.param_groups()])
    cameras = cameras_from_angles(15.0, torch.tensor([0.0, 150.0]), 2.5, 40.0)
    processor = find("prompt-processor")({"prompt": "a red cube"})
    camera_grads = []
    for step in range(steps):
        optimizer.zero_grad()
        out = vsd(prior, images, processor(prior, cameras.elevation, cameras.azimuth), torch.arange(2), step,
                  seed=seed, cameras=cameras)
        (out["loss_vsd"] + out["loss_lora"]).backward()
        assert int(out["n_nonfinite"]) == 0, step
        assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0, step
        assert all(torch.isfinite(p.grad).all() for p in vsd.lora_parameters if p.grad is not None), step
        camera_grads.append(sum(float(p.grad.abs().sum()) for p in vsd.camera_embedding.parameters()))
        optimizer.step()
        assert all(torch.isfinite(p).all() for p in vsd.lora_parameters), step
    return vsd, optimizer, camera_grads


@pytest.mark.parametrize("steps", [2, pytest.param(50, marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", ["sd-2.1-base", "if"])
def test_vsd_in_float16_keeps_float32_lora_and_finite_gradients(hub, name, steps, half_storage):
    prior = build(hub, name, dtype="float16")
    assert prior.unet.dtype == torch.float16
    vsd, optimizer, camera_grads = vsd_steps(prior, steps)
    assert prior.unet.dtype == torch.float16
    state = [optimizer.state[p] for p in vsd.lora_parameters]
    assert all(s["exp_avg"].dtype == s["exp_avg_sq"].dtype == torch.float32 for s in state)
    assert any(float(p.detach().abs().sum()) > 0 for n, p in prior.unet.named_parameters() if "lora_B" in n)   # trained
    assert all(g == g for g in camera_grads) and camera_grads[-1] > 0   # the camera path ran, finite


def test_float16_lmc_dreamsampler_and_repulsion_stay_finite(hub, half_storage, tmp_path):
    from scorestudio.guidance.manifold_corrective import save_corrective
    from tests.test_lmc import random_corrective

    prior = build(hub, "sd-1.5", dtype="float16")
    corrective = save_corrective(random_corrective(), tmp_path / "bhat")   # stored in float16, loaded float32
    processor = find("prompt-processor")({"prompt": "a red cube"})
    latents = torch.randn(2, 4, 8, 8, requires_grad=True)
    cases = [("lmc-sds", {"corrective_path": str(corrective)}), ("dreamsampler", {"num_steps": 4}),
             ("sds", {"repulsion": {"gamma": 10.0, "features": "latent_probe"}}),   # the shipped probe of 4x8x8 latents
             ("sds", {"repulsion": {"gamma": 10.0, "features": "pixel"}})]
    for name, cfg in cases:
        guidance = find(name)({"rgb_as_latents": True, **cfg}, path="system.guidance")
        guidance.attach(prior)
        for step in range(2):
            latents.grad = None
            out = guidance(prior, latents, processor(prior, batch_size=2), torch.arange(2), step, seed=0)
            out[guidance.loss_name].backward()
            assert int(out["n_nonfinite"]) == 0 and torch.isfinite(latents.grad).all(), name
            assert latents.grad.abs().sum() > 0, name
    assert guidance.repulsion is not None and float(out["repulsion_norm"]) > 0


# ---- VSD as ProlificDreamer runs it ---------------------------------------------------------------------


def test_vsd_with_its_own_v_prediction_lora_model(hub, tmp_path):
    prior = build(hub, "sd-2.1-base")
    before = {n: p.clone() for n, p in prior.unet.named_parameters()}
    vsd, _, _ = vsd_steps(prior, 2, pretrained_model_name_or_path_lora=str(hub["sd-2.1"]))
    assert vsd.lora_prediction_type == "v_prediction"
    assert not any("lora_" in n for n, _ in prior.unet.named_parameters())   # the prior's UNet is untouched
    assert all(torch.equal(p, before[n]) for n, p in prior.unet.named_parameters())
    kept = [k for k in torch.nn.ModuleDict({"prior": prior}).state_dict() if k.startswith("prior.")]
    assert kept and all(k.startswith("prior.unet_lora.") and "lora_" in k for k in kept)
    with pytest.raises(ConfigError, match="noise schedule"):
        find("vsd")({"pretrained_model_name_or_path_lora": str(hub["if"])}, path="system.guidance").attach(
            build(hub, "sd-1.5"))


def test_v_prediction_lora_trains_on_v(hub, monkeypatch):
    import torch.nn.functional as F

    prior = build(hub, "sd-2.1")   # one v-prediction model for both
    targets, velocities = [], []
    velocity = prior.velocity
    monkeypatch.setattr(prior, "velocity", lambda *args: velocities.append(velocity(*args)) or velocities[-1])
    monkeypatch.setattr(F, "mse_loss", lambda out, target: targets.append(target) or (out - target).pow(2).mean())
    vsd_steps(prior, 1)
    assert len(targets) == len(velocities) == 1 and targets[0] is velocities[0]
    z0 = prior.encode_images(torch.rand(2, 3, 16, 16))
    v = prior.velocity(z0, torch.ones_like(z0), torch.tensor([0, 999]))
    assert torch.allclose(v[0], prior.alpha(torch.tensor([0])) - prior.sigma(torch.tensor([0])) * z0[0], atol=1e-6)


# ---- low-memory switches --------------------------------------------------------------------------------------


@pytest.mark.parametrize("switches", [{"attention_slicing": "max"}, {"attention_backend": "classic"},
                                      {"unet_batch_size": 1}, {"channels_last": True},
                                      {"vae_slicing": True, "vae_tiling": True}])
def test_low_memory_switches_give_the_same_predictions(hub, switches):
    plain, low = build(hub, "sd-2.1-base"), build(hub, "sd-2.1-base", **switches)
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([5, 400, 990])
    text = plain.encode_text(["a red cube", "a blue sphere", ""])
    assert torch.allclose(low.predict_noise(x, t, text), plain.predict_noise(x, t, text), atol=1e-5)
    images = torch.rand(3, 3, 16, 16)
    assert torch.allclose(low.decode_latents(low.encode_images(images)),
                          plain.decode_latents(plain.encode_images(images)), atol=1e-5)


def test_unet_batch_size_splits_the_calls(hub):
    prior = build(hub, "sd-1.5", unet_batch_size=2)
    sizes = []
    prior.unet.register_forward_hook(lambda mod, args, out: sizes.append(args[0].shape[0]))
    prior.predict_noise_cfg(torch.randn(3, 4, 8, 8), 500, *prior.encode_text(["a", ""]).repeat_interleave(3, 0).chunk(2),
                            7.5)
    assert sizes == [2, 2, 2]


def test_free_text_encoder_after_the_first_unet_call(hub):
    prior = build(hub, "if", free_text_encoder=True)
    processor = find("prompt-processor")({"prompt": "a red cube"})
    text = processor(prior, batch_size=2).cond   # 2-D call first: the view prompts are embedded too
    assert prior.text_encoder is not None
    prior.predict_noise(torch.randn(2, 3, 16, 16), 100, text)
    assert prior.text_encoder is None and prior.tokenizer is None
    assert torch.equal(prior.encode_text(["a red cube"])[0], text[0])   # cached prompts still work
    views = processor(prior, torch.tensor([15.0, 15.0]), torch.tensor([0.0, 180.0]))
    assert views.prompts == ["a red cube, front view", "a red cube, back view"]
    with pytest.raises(ConfigError, match="free_text_encoder"):
        prior.encode_text(["a blue sphere"])


@pytest.mark.parametrize("bad, match", [({"attention_backend": "flash"}, "attention_backend"),
                                        ({"unet_batch_size": 0}, "unet_batch_size"),
                                        ({"attention_backend": "xformers", "attention_slicing": "auto"}, "xformers")])
def test_low_memory_config_errors(hub, bad, match):
    with pytest.raises(ConfigError, match=match):
        build(hub, "sd-1.5", **bad)


def test_vae_switches_need_a_vae(hub):
    with pytest.raises(ConfigError, match="no VAE"):
        build(hub, "if", vae_slicing=True)


def test_accumulate_grad_batches_draws_new_samples_per_batch(tmp_path, tiny, monkeypatch):
    """k = 2 training batches per optimizer step: each batch draws its own t (and cameras, noise);
    the first batch of every step draws what a run without accumulation draws at that step."""
    from scorestudio.systems.distillation import DistillationSystem
    from tests.test_image_particles import launch

    seen = []
    original = DistillationSystem.distill_step

    def spy(self, step):
        out = original(self, step)
        seen.append((self.global_step, self.trainer.accumulate_grad_batches, out["t"].tolist()))
        return out

    monkeypatch.setattr(DistillationSystem, "distill_step", spy)
    launch(tmp_path, tiny, "sds", "trainer.max_steps=2", "trainer.accumulate_grad_batches=2",
           "trainer.val_check_interval=0", "system.n_particles=2", tag="k2")
    accumulated, seen[:] = list(seen), []
    launch(tmp_path, tiny, "sds", "trainer.max_steps=2", "trainer.val_check_interval=0", "system.n_particles=2",
           tag="k1")
    assert [(step, k) for step, k, _ in accumulated] == [(0, 2), (0, 2), (1, 2), (1, 2)]
    t = [ts for _, _, ts in accumulated]
    assert t[0] != t[1] and t[2] != t[3]                       # two draws per optimizer step
    assert [t[0], t[2]] == [ts for _, _, ts in seen]          # the first is the run without accumulation's


def test_fp16_variant_files_alone_load(hub, tmp_path):
    import shutil

    folder = shutil.copytree(hub["sd-1.5"], tmp_path / "fp16-only")
    for path in folder.rglob("*.safetensors"):
        if ".fp16." not in path.name:
            path.unlink()
    with pytest.raises(FileNotFoundError):
        find("stable-diffusion")({"pretrained_model_name_or_path": str(folder)})
    prior = find("stable-diffusion")({"pretrained_model_name_or_path": str(folder), "variant": "fp16"})
    reference = build(hub, "sd-1.5")
    x = torch.randn(1, 4, 8, 8)
    text = reference.encode_text(["a red cube"])
    assert torch.allclose(prior.predict_noise(x, 300, text), reference.predict_noise(x, 300, text), atol=5e-2)
