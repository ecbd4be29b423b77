"""text-to-svg and svg-restoration on a tiny random prior: outputs (SVGs resvg renders like the
system does), input errors, the data term, the Xing loss, particle independence, resume."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from scorestudio.cli import parse_args, run
from scorestudio.data.procedural import ProceduralDataset
from scorestudio.metrics.image_quality import psnr
from scorestudio.renderers.svg import SvgScene, circle_scene, polygon_points
from scorestudio.renderers.svg import RasterizerConfig, render
from scorestudio.data.problems import load_problem
from scorestudio.generators.svg import SvgGenerator, fit_error, fit_to_images, prune_paths, xing_loss
from scorestudio.systems.text_to_svg import TextToSvgSystem
from scorestudio.utils.config import ConfigError
from scorestudio.utils.images import load_image, save_image
from scorestudio.utils.run import RunContext
from tests.test_svg import mae255, resvg

ROOT = Path(__file__).resolve().parents[1]


def launch(tmp_path, tiny, config, *overrides, tag="run"):
    prior, probe = tiny
    argv = ["--config", str(ROOT / "configs" / config), "--train", f"exp_root_dir={tmp_path}", f"tag={tag}",
            "use_timestamp=false", "trainer.enable_progress_bar=false",
            f"system.prior.pretrained_model_name_or_path={prior}", f"system.probe_path={probe}", *overrides]
    return run(*parse_args(argv))


# ------------------------------------------------------------------------------ Xing loss


def test_xing_loss_zero_for_a_circle_positive_for_a_bow_tie():
    circle = circle_scene(torch.tensor([[[32.0, 32.0]]]), torch.tensor([[20.0]]), torch.ones(1, 1, 4), 64, 64)
    assert float(xing_loss(circle)[0]) == 0.0
    # one cubic whose control polygon crosses itself (p0→p1 and p2→p3 intersect), closed by a line
    twisted = torch.tensor([[0.0, 0.0], [10.0, 10.0], [10.0, 0.0]])
    closing = polygon_points(torch.tensor([[0.0, 10.0], [0.0, 0.0]]))[:3]   # the line (0,10) → (0,0)
    bow_tie = SvgScene(torch.cat([twisted, closing])[None, None], torch.ones(1, 1, 4), 16, 16)
    assert float(xing_loss(bow_tie)[0]) == pytest.approx(0.5)   # the twisted cubic costs 1, the line 0


# ------------------------------------------------------------------------------ text-to-svg


def test_text_to_svg_writes_svgs_that_resvg_renders_alike(tmp_path, tiny):
    ctx = launch(tmp_path, tiny, "text-to-svg.yaml", "trainer.max_steps=3", "system.n_particles=2",
                 "system.frame_every=1", "system.paths.num_paths=8")
    save = ctx.save_dir
    for name in ("particle0.svg", "particle1.png", "particles.png", "optimisation.gif"):
        assert (save / name).is_file(), name
    assert len(iio.imread(save / "optimisation.gif", index=None)) == 4       # steps 0, 1, 2 and the result
    ours = load_image(save / "particle0.png")
    assert mae255(ours, resvg(save / "particle0.svg", tmp_path)) < 1.0
    metrics = json.loads(ctx.metrics_path.read_text())
    assert 0.0 <= metrics["quality"] <= 1.0 and len(metrics["classes"]) == 2


def system_for(tmp_path, tiny, **overrides) -> TextToSvgSystem:
    cfg = {"n_particles": 3, "prior": {"pretrained_model_name_or_path": str(tiny[0])},
           "prompt_processor": {"prompt": "a red star icon"}, "guidance_type": "dreamsampler",
           "guidance": {"num_steps": 10}, "paths": {"num_paths": 6}, "augment": {"enabled": True}, **overrides}
    return TextToSvgSystem(cfg, run=RunContext(tmp_path, seed=3))


def point_grads(system: TextToSvgSystem, step: int = 2) -> torch.Tensor:
    system.generator.points.grad = None
    out = system.distill_step(step)
    sum(v for k, v in out.items() if k.startswith("loss_")).backward()
    return system.generator.points.grad.clone()


@torch.no_grad()
def perturb_particle(system: TextToSvgSystem, i: int) -> None:
    system.generator.points[i] += 3 * torch.randn(system.generator.points[i].shape,
                                                  generator=torch.Generator().manual_seed(1))


def test_prompt_suffix_is_appended(tmp_path, tiny):
    system = system_for(tmp_path, tiny, prompt_suffix=", flat vector icon")
    assert system.prompt_processor.cfg.prompt == "a red star icon, flat vector icon"
    assert system.generator.points.shape == (3, 6, 12, 2) and system.generator.colors.shape == (3, 6, 4)


def test_particles_are_independent_without_repulsion(tmp_path, tiny):
    """Moving particle 1 changes no other particle's gradient (guidance state, noise, timesteps and
    augmentation are per particle); with repulsion it does. Fresh systems, as the guidance is stateful."""
    reference, moved = system_for(tmp_path, tiny), system_for(tmp_path, tiny)
    perturb_particle(moved, 1)
    before, after = point_grads(reference), point_grads(moved)
    assert torch.equal(before[0], after[0]) and torch.equal(before[2], after[2])
    assert not torch.equal(before[1], after[1])

    repulsion = {"num_steps": 10, "repulsion": {"gamma": 10.0, "features": "latent", "scale": "one"}}
    reference, moved = system_for(tmp_path, tiny, guidance=repulsion), system_for(tmp_path, tiny, guidance=repulsion)
    perturb_particle(moved, 1)
    assert not torch.allclose(point_grads(reference)[0], point_grads(moved)[0])


def test_text_to_svg_resume_is_exact(tmp_path, tiny):
    """DreamSampler's carried noise, Adam and the lr schedule all come back from the checkpoint."""
    common = ("text-to-svg-dreamsampler.yaml", "system.n_particles=2", "system.paths.num_paths=6",
              "system.lr.warmup_steps=2", "system.lr.total_steps=4", "system.guidance.num_steps=4",
              "checkpoint.every_n_train_steps=2")

    def final(ctx):
        state = torch.load(ctx.ckpt_dir / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
        return {k: v for k, v in state.items() if k.startswith(("generator.", "guidance."))}

    full = final(launch(tmp_path, tiny, *common, "trainer.max_steps=4", tag="full"))
    assert "guidance.prev_eps" in full and bool(full["guidance.prev_valid"].all())
    part = launch(tmp_path, tiny, *common, "trainer.max_steps=2", tag="part")
    resumed = final(launch(tmp_path, tiny, *common, "trainer.max_steps=4", f"resume={part.ckpt_dir / 'last.ckpt'}",
                           tag="part"))
    assert full.keys() == resumed.keys()
    for key in full:
        assert torch.equal(full[key], resumed[key]), key


def test_fit_to_images_vectorises_icons(tmp_path):
    """The raster-to-vector stage of the sample initialisation: 32 random circles fitted to
    two procedural icons come within a few grey levels of them, each particle to its own target."""
    data = ProceduralDataset(split="test")
    targets = torch.cat([data.render("star", "yellow", 1, torch.Generator().manual_seed(0)),
                         data.render("heart", "blue", 1, torch.Generator().manual_seed(1))])
    svg = SvgGenerator({"paths": {"num_paths": 32}, "canvas_size": 64}, n_particles=2, seed=0)
    renderer = RasterizerConfig(samples_per_segment=8)
    with torch.no_grad():
        before = psnr(render(svg.scene(), renderer), targets)
    fit_to_images(svg, targets, steps=150, lr=0.5, color_ratio=0.05, renderer=renderer, xing_weight=0.01)
    with torch.no_grad():
        after = psnr(render(svg.scene(), renderer), targets)
        torch.testing.assert_close(-10 * fit_error(svg.scene(), targets, renderer).log10(), after, atol=1e-4, rtol=0)
    print(f"PSNR before {before.tolist()}, after {after.tolist()}")
    assert (after > 35).all() and (after > before + 20).all(), (before, after)
    assert svg.points.grad is None and svg.colors.grad is None                # nothing leaks into the run's step

    # Pruning hides the paths the fit does not need and costs at most P · tolerance of MSE.
    tolerance = 1e-4
    before_prune = fit_error(svg.scene(), targets, renderer)
    prune_paths(svg, targets, renderer, tolerance)
    visible = svg.visible.sum(1)
    print(f"visible paths after pruning: {visible.tolist()}")
    assert (visible < 32).all() and (visible >= 3).all()
    assert (fit_error(svg.scene(), targets, renderer) - before_prune < 32 * tolerance).all()
    hidden = svg.visible == 0
    assert (svg.scene().fill[..., 3][hidden] == 0).all()
    loss = render(svg.scene(), renderer).sum()
    loss.backward()
    assert (svg.points.grad[hidden] == 0).all() and (svg.colors.grad[hidden] == 0).all()   # frozen


def test_sample_initialisation_draws_per_particle_samples_and_survives_resume(tmp_path, tiny):
    """init_from_sample fits each particle to its own DDIM sample before step 0 (and only then:
    a resumed run equals the uninterrupted one); particle i's sample does not depend on N."""
    common = ("text-to-svg.yaml", "system.paths.num_paths=6", "system.init_from_sample.enabled=true",
              "system.init_from_sample.ddim_steps=3", "system.init_from_sample.fit_steps=5",
              "checkpoint.every_n_train_steps=2", "system.n_particles=2")

    def final(ctx):
        state = torch.load(ctx.ckpt_dir / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
        return {k: v for k, v in state.items() if k.startswith(("generator.", "samples"))}

    full_ctx = launch(tmp_path, tiny, *common, "trainer.max_steps=4", tag="full")
    metrics = json.loads(full_ctx.metrics_path.read_text())
    assert len(metrics["init_fit_psnr"]) == 2 and (full_ctx.save_dir / "init_samples.png").is_file()
    part = launch(tmp_path, tiny, *common, "trainer.max_steps=2", tag="part")
    resumed = final(launch(tmp_path, tiny, *common, "trainer.max_steps=4", f"resume={part.ckpt_dir / 'last.ckpt'}",
                           tag="part"))
    full = final(full_ctx)
    for key in full:
        assert torch.equal(full[key], resumed[key]), key

    def samples(n):
        system = system_for(tmp_path, tiny, n_particles=n, init_from_sample={"enabled": True, "ddim_steps": 3})
        return system.prompt_samples()

    two, three = samples(2), samples(3)
    assert two.shape == (2, 3, 64, 64) and torch.equal(two, three[:2])
    assert not torch.equal(three[0], three[1])


def test_anchor_term_is_the_squared_distance_to_the_samples(tmp_path, tiny):
    """loss_anchor = λ Σ_pixels (render − sample)², averaged over particles; λ = 0 drops it."""
    renderer = RasterizerConfig(samples_per_segment=8)
    for weight in (0.0, 2.5):
        system = system_for(tmp_path, tiny, n_particles=2, guidance_type="sds", guidance={},
                            init_from_sample={"enabled": True, "ddim_steps": 3, "fit_steps": 5, "anchor_weight": weight})
        system.fit_to_samples()
        assert system.samples.abs().sum() > 0                       # the buffer holds the samples
        out = system.distill_step(1)
        if weight == 0:
            assert "loss_anchor" not in out
            continue
        with torch.no_grad():
            expected = weight * 3 * 64 * 64 * fit_error(system.generator.scene(), system.samples, renderer).mean()
        torch.testing.assert_close(out["loss_anchor"].detach(), expected, rtol=1e-5, atol=1e-6)


def test_sample_initialisation_applies_the_guidance_repulsion(tmp_path, tiny):
    """With γ > 0 the DDIM samples repel each other (further apart than the independent ones), the
    kernel on x_t or on x̂0 as init_from_sample.repulsion says, whatever the guidance's own
    repulsion.on; "off" samples independently whatever γ is; a bad placement is a ConfigError."""
    def samples(gamma, placement="clean", guidance_on="noisy"):
        guidance = {"num_steps": 10, "repulsion": {"gamma": gamma, "features": "latent", "scale": "one",
                                                   "on": guidance_on}}
        init = {"enabled": True, "ddim_steps": 4, "repulsion": placement}
        return system_for(tmp_path, tiny, n_particles=4, guidance=guidance, init_from_sample=init).prompt_samples()

    def spread(images):
        return torch.pdist(images.flatten(1)).mean()

    independent = samples(0.0)
    assert torch.equal(samples(5.0, placement="off"), independent)
    repelled = {}
    for on in ("noisy", "clean"):          # the kernel on x_t, or on the predicted x̂0
        repelled[on] = samples(100.0 if on == "noisy" else 400.0, placement=on)
        print(f"{on}: mean pairwise distance independent {spread(independent):.3f}, repelled {spread(repelled[on]):.3f}")
        assert spread(repelled[on]) > 1.1 * spread(independent)
    assert torch.equal(samples(400.0, placement="clean", guidance_on="clean"), repelled["clean"])
    assert not torch.equal(samples(400.0, placement="noisy"), repelled["clean"])
    with pytest.raises(ConfigError, match="init_from_sample.repulsion='both'"):
        samples(1.0, placement="both")


# ------------------------------------------------------------------------------ svg-restoration


def test_restoration_writes_all_outputs(tmp_path, tiny):
    ctx = launch(tmp_path, tiny, "svg-restoration.yaml", "trainer.max_steps=3", "system.paths.num_paths=8",
                 "system.distillation=true")
    for name in ("particle0.svg", "particle0.png", "measurement.png", "ground_truth.png", "comparison.png",
                 "optimisation.gif"):
        assert (ctx.save_dir / name).is_file(), name
    shape = iio.imread(ctx.save_dir / "comparison.png").shape   # measurement | restoration | truth, labelled
    assert shape[1:] == (200, 3) and shape[0] > 68
    metrics = json.loads(ctx.metrics_path.read_text())
    for key in ("psnr_mean", "ssim_mean", "consistency_mean", "psnr_measurement", "probe_shape_agreement"):
        assert np.isfinite(metrics[key]), key
    assert metrics["operator"] == "gaussian-blur" and metrics["distillation"] is True
    assert set(metrics["classes"][0]) == {"shape", "color"}
    assert "prompt: a yellow square icon" in (ctx.root / "configs" / "parsed.yaml").read_text()  # the icon's caption


def write_png(path: Path, array: np.ndarray) -> str:
    iio.imwrite(path, array)
    return str(path)


def test_restoration_input_errors_and_conversions(tmp_path):
    with pytest.raises(ConfigError, match="image not found"):
        load_problem({"image": str(tmp_path / "missing.png")})
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ConfigError, match="data.image: cannot read .*notes.png as an image"):
        load_problem({"image": str(tmp_path / "notes.png")})
    with pytest.raises(ConfigError, match="square"):
        load_problem({"image": write_png(tmp_path / "wide.png", np.zeros((16, 24, 3), np.uint8))})
    with pytest.raises(ConfigError, match="svg-restoration restores"):
        load_problem({"image": write_png(tmp_path / "ok.png", np.zeros((16, 16, 3), np.uint8)),
                      "operator": "box-inpaint"})
    # downsampling: the canvas is scale × the input, so the ground truth must be divisible by it
    with pytest.raises(ConfigError, match="not divisible"):
        load_problem({"procedural_index": 0, "resolution": 66, "operator": "downsample", "scale": 4})
    with pytest.raises(ConfigError, match="canvas is data.scale=4"):
        load_problem({"image": str(tmp_path / "ok.png"), "operator": "downsample", "scale": 4}, canvas_size=66)
    problem = load_problem({"image": str(tmp_path / "ok.png"), "operator": "downsample", "scale": 4})
    assert problem.canvas == 64 and problem.operator.name == "super-resolution"
    # grey → 3 equal channels; RGBA → composited on white (transparent pixels become white, y = +1)
    grey = load_problem({"image": write_png(tmp_path / "grey.png", np.full((16, 16), 64, np.uint8))}).y
    assert grey.shape == (1, 3, 16, 16) and torch.allclose(grey, torch.full_like(grey, 2 * 64 / 255 - 1))
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[4:12, 4:12] = (255, 0, 0, 255)
    y = load_problem({"image": write_png(tmp_path / "rgba.png", rgba)}).y
    assert torch.equal(y[0, :, 0, 0], torch.ones(3)) and torch.equal(y[0, :, 8, 8], torch.tensor([1.0, -1.0, -1.0]))


def test_data_term_alone_sharpens_a_blurred_circle(tmp_path, tiny):
    """Distillation off: fitting ‖y − A(render)‖² alone beats the blurry input by a wide margin."""
    truth = ProceduralDataset(split="test").render("circle", "blue", 1, torch.Generator().manual_seed(0))
    from scorestudio.data.operators import build_operator

    blur = build_operator("gaussian-blur", {"kernel_size": 11, "sigma": 1.5, "sigma_y": 0.0})
    blurry = ((blur(2 * truth - 1) + 1) / 2).clamp(0, 1)
    save_image(blurry[0], tmp_path / "blurry.png")
    ctx = launch(tmp_path, tiny, "svg-restoration.yaml", f"data.image={tmp_path / 'blurry.png'}",
                 "system.distillation=false", "trainer.max_steps=200", "system.paths.num_paths=24",
                 "system.prompt_processor.prompt=a blue circle icon")
    restored = load_image(ctx.save_dir / "particle0.png")[None]
    quantised = load_image(tmp_path / "blurry.png")[None]
    gain = float(psnr(restored, truth) - psnr(quantised, truth))
    print(f"PSNR gain over the blurry input: {gain:.1f} dB")
    assert gain > 5.0, gain
    assert json.loads(ctx.metrics_path.read_text())["consistency_mean"] < 0.03


def test_distillation_weight_schedule_scales_the_distillation_loss(tmp_path, tiny):
    """``distillation_weight: [0, 2, 0, 10]``: twice the unweighted DreamSampler loss at step 0, none at step 10."""
    from scorestudio.systems.svg_restoration import SvgRestorationSystem

    def system(weight):
        cfg = {"prior": {"pretrained_model_name_or_path": str(tiny[0])}, "probe_path": str(tiny[1]),
               "guidance": {"num_steps": 10}, "paths": {"num_paths": 4}, "distillation_weight": weight}
        data = {"procedural_index": 0, "resolution": 32}
        return SvgRestorationSystem(cfg, run=RunContext(tmp_path, seed=0), data=data)

    plain, scheduled = system(1.0), system([0, 2.0, 0.0, 10])
    first, weighted = plain.distill_step(0), scheduled.distill_step(0)
    assert torch.allclose(weighted["loss_dreamsampler"], 2 * first["loss_dreamsampler"])
    assert torch.allclose(weighted["loss_dc"], first["loss_dc"])
    assert scheduled.distill_step(10)["loss_dreamsampler"].item() == 0.0
