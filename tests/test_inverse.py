"""Inverse-problem solvers (RLSD and variants) and the `inverse` system on a tiny random prior."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from scorestudio.cli import main, parse_args, run
from scorestudio.priors.embedded import EmbeddedPrior
from scorestudio.data.problems import build_problem, measurement_image
from scorestudio.solvers.rlsd import InverseSolver
from scorestudio.systems.inverse import InverseSystem
from scorestudio.utils.config import ConfigError
from scorestudio.utils.registry import RegistryError
from scorestudio.utils.seeding import generator
from tests.tiny_models import make_tiny_embedded, make_tiny_probe

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(prior folder, probe folder, loaded prior): 32x32 images, latents [4, 4, 4]."""
    base = tmp_path_factory.mktemp("tiny")
    folder, probe = make_tiny_embedded(base / "prior"), make_tiny_probe(base / "probe")
    return folder, probe, EmbeddedPrior({"pretrained_model_name_or_path": str(folder)})


def make_solver(tiny, operator="box-inpaint", operator_cfg=None, n=3, sigma_y=0.001, **solver):
    """A solver on held-out procedural image #0 with repulsion features from the tiny probe."""
    _, probe, prior = tiny
    problem = build_problem({"procedural_index": 0, "operator": operator, "operator_cfg": operator_cfg or {},
                             "sigma_y": sigma_y}, prior.image_size)
    repulsion = {"gamma": 0.0, "feature_net_path": str(probe), **solver.pop("repulsion", {})}
    return InverseSolver({**solver, "repulsion": repulsion}, prior, problem.operator, problem.y, n, seed=0)


def pairwise_distances(features: torch.Tensor) -> torch.Tensor:
    """Distances between rows i < j of ``features [N, D]``: ``[N(N−1)/2]``."""
    i, j = torch.triu_indices(len(features), len(features), offset=1)
    return (features[i] - features[j]).norm(dim=1)


# ------------------------------------------------------------------------------ the prior term


@pytest.mark.parametrize("method", ["rlsd", "rlsd-nonaug"])
def test_unet_is_never_differentiated(tiny, method):
    solver = make_solver(tiny, method=method, repulsion={"gamma": 50.0})
    unet = solver.prior.unet
    grad_modes = []
    handle = unet.register_forward_pre_hook(lambda module, args: grad_modes.append(torch.is_grad_enabled()))
    try:
        for step in range(2):
            solver.step(step, 2)
    finally:
        handle.remove()
    assert grad_modes == [False, False]          # one ε̂ per step, always under no_grad
    assert all(p.grad is None for p in unet.parameters())
    assert solver.z.grad is None                # the solver leaves no gradient behind


@pytest.mark.parametrize("method", ["rlsd", "rlsd-nonaug"])
def test_z_gradient_is_data_term_plus_weighted_noise_residual(tiny, method):
    solver = make_solver(tiny, method=method, lam=0.5)
    prior, t, step = solver.prior, 640, 3
    loss, _ = solver.z_loss(t, step)
    loss.backward()

    # By hand: the keyed noise, the noisy latents, ε̂ and λ_t = λ σ_t/α_t.
    z = solver.z.detach().clone().requires_grad_(True)
    eps = torch.stack([torch.randn(z.shape[1:], generator=generator(0, "noise", step, i)) for i in range(3)])
    abar = prior.alphas_cumprod[t]
    z_t = abar.sqrt() * z.detach() + (1 - abar).sqrt() * eps
    with torch.no_grad():
        eps_hat = prior.predict_noise(z_t, torch.full((3,), t), prior.encode_text([""] * 3))
    lam_t = 0.5 * (1 - abar).sqrt() / abar.sqrt()
    image = 2 * prior.decode_latents(z) - 1
    if method == "rlsd":
        data = (solver.x.detach() - image).pow(2).sum()
    else:
        data = (solver.y - solver.operator(image)).pow(2).sum()
    data.backward()
    expected = z.grad + lam_t * (eps_hat - eps)
    assert torch.allclose(solver.z.grad, expected, rtol=1e-5, atol=1e-6)
    assert solver.x is None or solver.x.grad is None   # the z-step never touches x


def test_timesteps_descend_from_T_to_zero(tiny):
    solver = make_solver(tiny)
    ts = [solver.timestep(s, 200) for s in range(200)]
    assert ts[0] == 995 and ts[-1] == 0 and all(a > b for a, b in zip(ts, ts[1:]))


# ------------------------------------------------------------------------------ the x-step


@pytest.mark.parametrize("operator", ["box-inpaint", "gaussian-blur"])
def test_x_step_without_prior_is_least_squares(tiny, operator):
    solver = make_solver(tiny, operator=operator, sigma_y=0.0, lam=0.0, rho=0.0, lr_x=0.05)

    def rms_residual():
        with torch.no_grad():
            return (solver.y - solver.operator(solver.x)).pow(2).mean().sqrt()

    start = rms_residual()
    for _ in range(200):
        solver.x_step()
    assert rms_residual() < 0.01 < 0.5 < start      # A(x) ≈ y (the blur is ill-conditioned: slower)
    if operator == "box-inpaint":   # the observed pixels of every particle equal y
        observed = solver.operator.mask_for(solver.y).bool().expand_as(solver.x)
        assert torch.allclose(solver.x.detach()[observed], solver.y.expand_as(solver.x)[observed], atol=1e-3)


@pytest.mark.parametrize("operator", ["box-inpaint", "gaussian-blur", "super-resolution"])
def test_exact_x_step_solves_the_normal_equations(tiny, operator):
    """x_step=exact: the gradient of ‖y − A(x)‖² + ρ̃‖x − D̃(z)‖² vanishes at the CG solution; for
    a mask it is the closed form (y + ρ̃·D̃)/(1 + ρ̃) on observed pixels and D̃ on hidden ones; the
    step then clamps x to [−1, 1]."""
    solver = make_solver(tiny, operator=operator, rho=0.075, x_step="exact", cg_iterations=100)
    with torch.no_grad():
        target = solver.decoded(solver.z)
    x = solver.exact_x(target).requires_grad_(True)
    loss = (solver.y - solver.operator(x)).pow(2).sum() + 0.075 * (x - target).pow(2).sum()
    grad = torch.autograd.grad(loss, x)[0]
    assert grad.abs().max() < 1e-4 * max(1.0, float(target.abs().max()))
    if operator == "box-inpaint":
        mask = solver.operator.mask_for(target).expand_as(target).bool()
        expected = torch.where(mask, (solver.operator.pseudo_inverse(solver.y) + 0.075 * target) / 1.075, target)
        torch.testing.assert_close(x.detach(), expected, atol=1e-5, rtol=0)
    solver.x_step()
    torch.testing.assert_close(solver.x.detach(), x.detach().clamp(-1, 1), atol=1e-5, rtol=0)


def test_exact_x_step_needs_a_linear_operator(tiny):
    with pytest.raises(ConfigError, match="x_step=exact needs a linear operator"):
        make_solver(tiny, operator="phase-retrieval", x_step="exact")


# ------------------------------------------------------------------------------ repulsion


@pytest.mark.parametrize("features, lr", [("latent", 0.5), ("probe", 0.01)])
def test_repulsion_alone_pushes_particles_apart(tiny, monkeypatch, features, lr):
    """ε̂ = ε and x = D̃(z) zero the noise residual and the data gradient: only the repulsion moves z."""
    t, step = 700, 0

    def moved(gamma):
        solver = make_solver(tiny, lam=1.0, lr_z=lr, repulsion={"gamma": gamma, "features": features})
        with torch.no_grad():
            solver.x.copy_(solver.decoded(solver.z))
        eps = solver.noise(step)
        monkeypatch.setattr(solver.prior, "predict_noise", lambda x_t, t, text: eps)
        ts = solver.prior.timesteps(t, 3)
        feature_fn = solver.repulsion.feature_fn(solver.prior)

        def distances():
            with torch.no_grad():
                return pairwise_distances(feature_fn(solver.prior.add_noise(solver.z, eps, ts)).flatten(1))

        before = distances()
        solver.z_step(t, step)
        return before, distances()

    before, after = moved(gamma=50.0)
    assert (after > before).all(), (before, after)
    before, after = moved(gamma=0.0)
    assert torch.equal(before, after)            # nothing else moves the particles


def test_hybrid_particles_beyond_k_feel_no_repulsion(tiny):
    def direction(gamma, **kernel):
        solver = make_solver(tiny, n=4, method="hybrid", repulsion={"gamma": gamma, "kernel": kernel})
        return solver.prior_direction(900, 0)[0]

    for k, kernel in ((3, {}), (2, {"interacting": 2})):    # default k = N − 1
        diff = (direction(50.0, **kernel) - direction(0.0, **kernel)).flatten(1).abs().amax(1)
        assert (diff[:k] > 0).all() and (diff[k:] == 0).all(), (k, diff)
    with pytest.raises(ConfigError, match="hybrid needs 2 ≤ k < n_particles"):
        make_solver(tiny, n=2, method="hybrid")


def test_pixel_red_diff_on_a_pixel_prior(tmp_path):
    from scorestudio.priors.deepfloyd_if import DeepFloydIFPrior
    from tests.tiny_models import make_tiny_if

    prior = DeepFloydIFPrior({"pretrained_model_name_or_path": str(make_tiny_if(tmp_path / "if"))})
    problem = build_problem({"procedural_index": 0, "operator": "box-inpaint"}, prior.image_size)
    solver = InverseSolver({"method": "pixel-red-diff", "lam": 0.0, "lr_z": 0.05}, prior, problem.operator,
                           problem.y, 2)
    assert solver.z.shape == (2, 3, 16, 16) and solver.x is None      # z are the pixels, in [-1, 1]

    def residual():
        with torch.no_grad():
            return (solver.y - solver.operator(solver.decoded(solver.z))).pow(2).mean()

    start = residual()
    images = solver.run(20)
    assert images.shape == (2, 3, 16, 16) and residual() < 0.5 * start
    with pytest.raises(ConfigError, match="needs a latent prior"):
        InverseSolver({"method": "latent-red-diff"}, prior, problem.operator, problem.y, 2)


# ------------------------------------------------------------------------------ problems and init


def test_pseudo_inverse_init_and_measurement_images(tiny):
    solver = make_solver(tiny, operator="super-resolution", operator_cfg={"scale": 4}, init="pseudo-inverse")
    expected = solver.operator.pseudo_inverse(solver.y).clamp(-1, 1)
    assert torch.equal(solver.x.detach(), expected.expand_as(solver.x))
    size = tiny[2].image_size
    for name, shape in (("box-inpaint", size), ("super-resolution", size), ("phase-retrieval", 2 * size)):
        image = measurement_image(build_problem({"procedural_index": 1, "operator": name}, size))
        assert image.shape == (1, 3, shape, shape) and 0 <= image.min() and image.max() <= 1
    with pytest.raises(ConfigError, match="phase-retrieval has no pseudo-inverse"):
        make_solver(tiny, operator="phase-retrieval", init="pseudo-inverse")
    with pytest.raises(ConfigError, match="needs a pixel prior"):
        make_solver(tiny, method="pixel-red-diff")
    with pytest.raises(ConfigError, match="system.solver.method='rlds'"):
        make_solver(tiny, method="rlds")


def test_bad_data_gives_clear_errors(tiny, tmp_path, capsys):
    size = tiny[2].image_size
    with pytest.raises(ConfigError, match="mask is 64x64 .* images are 32x32.*data.operator_cfg.resolution"):
        build_problem({"procedural_index": 0, "operator": "random-inpaint"}, size)
    with pytest.raises(RegistryError, match="unknown data module name 'box-inpiant'. Did you mean 'box-inpaint'"):
        build_problem({"procedural_index": 0, "operator": "box-inpiant"}, size)
    with pytest.raises(ConfigError, match="data.image=FILE or data.procedural_index"):
        build_problem({"operator": "box-inpaint"}, size)

    from scorestudio.utils.images import save_image

    photo = save_image(torch.rand(3, 48, 40), tmp_path / "photo.png")
    with pytest.raises(ConfigError, match="48x40 but the prior works at 32x32"):
        build_problem({"image": str(photo), "resize": "error"}, size)
    with pytest.warns(UserWarning, match="resizing it"):
        assert build_problem({"image": str(photo)}, size).ground_truth.shape == (1, 3, 32, 32)

    # Through the command line: one line on stderr, exit code 2.
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(ROOT / "configs" / "rlsd-random-inpaint.yaml"), "--train",
              f"exp_root_dir={tmp_path}", f"system.prior.pretrained_model_name_or_path={tiny[0]}"])
    assert exit_info.value.code == 2
    assert "mask is 64x64" in capsys.readouterr().err


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("rlsd-*.yaml")))
def test_every_rlsd_config_parses_and_builds_its_problem(config):
    from scorestudio.solvers.rlsd import SolverConfig
    from scorestudio.utils.config import load_config, parse_structured
    from scorestudio.utils.run import ExperimentConfig

    exp = parse_structured(ExperimentConfig, load_config(ROOT / "configs" / config))
    system = parse_structured(InverseSystem.Config, exp.system, "system")
    assert exp.system_type == "inverse" and isinstance(system.solver, SolverConfig)
    problem = build_problem(exp.data, 64)      # the embedded prior's image size
    assert problem.ground_truth.shape == (1, 3, 64, 64) and problem.operator.name == exp.data["operator"]


# ------------------------------------------------------------------------------ end to end


def launch(tmp_path, tiny, tag, *overrides):
    folder, probe, _ = tiny
    argv = ["--config", str(ROOT / "configs" / "rlsd-inpaint.yaml"), "--train", f"exp_root_dir={tmp_path}",
            f"tag={tag}", "use_timestamp=false", "trainer.enable_progress_bar=false", "trainer.max_steps=4",
            f"system.prior.pretrained_model_name_or_path={folder}", f"system.probe_path={probe}",
            f"system.solver.repulsion.feature_net_path={probe}", "system.n_particles=2", "system.frame_every=2",
            *overrides]
    return run(*parse_args(argv))


def particles(ctx) -> dict[str, torch.Tensor]:
    state = torch.load(ctx.ckpt_dir / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    return {k: state[k] for k in ("solver.z", "solver.x")}


def test_end_to_end_is_deterministic_per_seed_resumes_and_writes_outputs(tmp_path, tiny, monkeypatch):
    first = launch(tmp_path, tiny, "a")
    save = first.save_dir
    for name in ("ground_truth.png", "measurement.png", "particle0.png", "particle1.png", "grid.png",
                 "optimisation.gif", "frames/it000000.png", "frames/it000004.png"):
        assert (save / name).is_file(), name
    metrics = json.loads(first.metrics_path.read_text())
    assert metrics["step"] == 4 and metrics["method"] == "rlsd" and metrics["operator"] == "box-inpaint"
    assert metrics["psnr_best"] >= metrics["psnr_mean"] and metrics["ssim_best"] >= metrics["ssim_mean"]
    assert metrics["consistency_best"] <= metrics["consistency_mean"] and 0 <= metrics["diversity"] <= 2
    assert 0 <= metrics["probe_shape_agreement"] <= 1 and 0 <= metrics["probe_color_agreement"] <= 1

    again, other = particles(launch(tmp_path, tiny, "b")), particles(launch(tmp_path, tiny, "c", "seed=1"))

    # Stop a 4-step run after 2 steps (as Ctrl-C would), then resume it: z, x and Adam come back.
    def stop_after_two(self, batch, batch_idx):
        train_step(self, batch, batch_idx)
        self.trainer.should_stop = self.global_step == 2

    train_step = InverseSystem.training_step
    with monkeypatch.context() as patch:
        patch.setattr(InverseSystem, "training_step", stop_after_two)
        part = launch(tmp_path, tiny, "d")
    assert json.loads(part.metrics_path.read_text())["step"] == 2
    resumed = particles(launch(tmp_path, tiny, "d", f"resume={part.ckpt_dir / 'last.ckpt'}"))
    for key, value in particles(first).items():
        assert torch.equal(value, again[key]) and torch.equal(value, resumed[key]), key
        assert not torch.allclose(value, other[key]), key
