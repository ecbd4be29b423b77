"""NeRF particles: analytic rendering, particle independence, cameras, mesh export, CLI runs."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import json  # noqa: E402
import re  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from scorestudio.cli import parse_args, run  # noqa: E402
from scorestudio.data.cameras import CameraDistribution, cameras_from_angles, get_rays  # noqa: E402
from scorestudio.export.mesh import ExportConfig, extract_meshes, mesh_report, save_mesh  # noqa: E402
from scorestudio.renderers.nerf import ParticleGeometry, VolumeRenderer  # noqa: E402
from scorestudio.renderers.nerf.encodings import GridTotalVariation, sample_grid  # noqa: E402
from scorestudio.renderers.nerf.volume import pack, ray_sphere_interval  # noqa: E402
from scorestudio.generators.nerf import EMPTY_SPACE_KEY  # noqa: E402
from scorestudio.systems.distillation import particle_cameras  # noqa: E402
from scorestudio.systems.dreamfusion import DreamFusionSystem  # noqa: E402
from scorestudio.utils.config import ConfigError  # noqa: E402
from scorestudio.utils.run import RunContext  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "dreamfusion-embedded.yaml")


def small_system_cfg(tiny, n_particles=2, **extra) -> dict:
    cfg = {"n_particles": n_particles, "prior": {"pretrained_model_name_or_path": tiny[0]},
           "prompt_processor": {"prompt": "a red cube"}, "resolutions": [12],
           "renderer": {"num_samples_per_ray": 12},
           "geometry": {"grid": {"resolution": 12, "n_features": 4}, "hidden_dim": 8},
           "material": {"ambient_only_steps": 0, "albedo_prob": 0.0, "lambertian_prob": 0.5, "textureless_prob": 0.5},
           "background": {"type": "mlp"}, "probe_path": tiny[1],
           "loss": {"lambda_sparsity": 1.0, "lambda_orient": 1.0, "lambda_opaque": 0.1, "lambda_tv": 0.1}}
    cfg.update(extra)
    return cfg


# ---- volume rendering --------------------------------------------------------------------------


def test_analytic_sphere_opacity_matches_closed_form():
    """Constant density σ inside radius r: opacity = 1 − exp(−σ · chord) per ray."""
    sigma, r = 3.0, 0.5
    cams = cameras_from_angles(torch.tensor([0.0, 30.0, -10.0]), torch.tensor([0.0, 90.0, -135.0]), 2.5, 40.0)
    origins, dirs = get_rays(cams, 16, 16)
    origins, dirs = origins.reshape(1, -1, 3), dirs.reshape(1, -1, 3)
    near, far = ray_sphere_interval(origins, dirs, r)
    expected = 1 - torch.exp(-sigma * (far - near))
    assert 0.2 < (far > near).float().mean() < 0.8    # many rays cross the sphere, many miss it

    def field_fn(points, samples):
        return {"density": sigma * (points.norm(dim=-1) < r).float()}

    errors = {}
    for n_samples in (32, 256):
        renderer = VolumeRenderer({"num_samples_per_ray": n_samples, "estimator": "dense"}, 1, radius=1.0)
        opacity = renderer(field_fn, origins, dirs)["opacity"]
        # each of the two boundary crossings misplaces at most one bin (≤ 2 / S scene units)
        assert (opacity - expected).abs().max() <= 2 * sigma * 2 / n_samples
        errors[n_samples] = (opacity - expected).abs().mean()
    assert errors[256] < errors[32] / 3


def test_translucent_fraction_tells_fog_from_a_surface():
    """The fog metric of the test orbit on analytic balls: it matches the closed-form opacity's,
    is about the silhouette's share for an opaque ball and most of the ball's pixels for fog."""
    from scorestudio.metrics.opacity import translucent_fraction

    r = 0.5
    cams = cameras_from_angles(torch.tensor([0.0, 40.0]), torch.tensor([0.0, 120.0]), 2.5, 40.0)
    origins, dirs = get_rays(cams, 32, 32)
    origins, dirs = origins.reshape(1, -1, 3), dirs.reshape(1, -1, 3)
    near, far = ray_sphere_interval(origins, dirs, r)
    covered = (far > near).float().mean()
    renderer = VolumeRenderer({"num_samples_per_ray": 256, "estimator": "dense"}, 1, radius=1.0)
    fractions = {}
    for name, sigma in (("surface", 200.0), ("fog", 1.5)):
        opacity = renderer(lambda points, samples: {"density": sigma * (points.norm(dim=-1) < r).float()},
                           origins, dirs)["opacity"]
        fractions[name] = float(translucent_fraction(opacity))
        expected = float(translucent_fraction(1 - torch.exp(-sigma * (far - near))))
        assert abs(fractions[name] - expected) < 0.02, name
    assert fractions["surface"] < 0.2 * covered < fractions["fog"]
    assert fractions["fog"] > 0.8 * covered
    assert translucent_fraction(torch.tensor([[0.0, 0.05, 0.5, 0.95, 1.0]])).item() == pytest.approx(3 / 5)


def test_empty_space_skipping_renders_and_differentiates_like_dense_sampling():
    """estimator=occupancy: the field is evaluated only in occupied cells, and where the density is 0
    elsewhere the image and the gradients equal those of dense sampling."""
    radii = torch.tensor([0.3, 0.45])                         # two particles: off-centre balls, so that
    centres = torch.tensor([[0.4, 0.0, 0.0], [0.0, -0.3, 0.2]])   # a mix-up of the mask's axes shows
    cams = cameras_from_angles(torch.tensor([10.0, 40.0]), torch.tensor([20.0, -70.0]), 2.5, 40.0)
    origins, dirs = get_rays(cams, 12, 12)
    origins, dirs = origins.reshape(2, -1, 3), dirs.reshape(2, -1, 3)
    scale = torch.tensor([3.0, 5.0], requires_grad=True)     # density parameter of each particle
    evaluated = []

    def density_fn(points, particles=None):
        inside = ((points - centres[:, None]).norm(dim=-1) < radii[:, None]).float()
        return scale[:, None] * inside * (1 + points[..., 0])

    def field_fn(points, samples):
        evaluated.append(points.shape[1])
        return {"density": density_fn(points), "rgb": (points + 1) / 2}

    results = {}
    for estimator in ("dense", "occupancy"):
        renderer = VolumeRenderer({"num_samples_per_ray": 32, "estimator": estimator,
                                   "occupancy": {"resolution": 16, "dilation": 1}}, 2, radius=1.0)
        renderer.update(0, density_fn, torch.device("cpu"))
        evaluated.clear()
        out = renderer(field_fn, origins, dirs, torch.rand(2, origins.shape[1], 32, generator=torch.Generator().manual_seed(0)))
        grad, = torch.autograd.grad((out["rgb"] * torch.linspace(0, 1, 3)).sum() + out["opacity"].sum(), scale)
        results[estimator] = (out["rgb"].detach(), out["opacity"].detach(), grad, evaluated[0])
    dense, skipped = results["dense"], results["occupancy"]
    for a, b in zip(dense[:3], skipped[:3]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert dense[1].max() > 0.5                               # the balls are seen
    assert skipped[3] < 0.5 * dense[3]                        # and most samples were skipped
    # in eval mode (test orbits, validation) the renderer samples densely
    renderer.eval()
    evaluated.clear()
    renderer(field_fn, origins, dirs)
    assert evaluated[0] == dense[3]


def test_evaluation_renders_skip_only_empty_space_and_keep_faint_fog():
    """Evaluation renders skip the cells whose density · step ≤ eval_skip_threshold (a grid of
    their own, estimated once per trained step): a ball inside a faint fog (density · step 5e-3,
    below the training grid's 0.01) renders exactly as with every sample, with fewer samples; the
    training grid's threshold would have dropped the fog."""
    cams = cameras_from_angles(torch.tensor([10.0, 40.0]), torch.tensor([20.0, -70.0]), 2.5, 40.0)
    origins, dirs = get_rays(cams, 12, 12)
    origins, dirs = origins.reshape(2, -1, 3), dirs.reshape(2, -1, 3)
    calls = []

    def density_fn(points, particles=None):
        calls.append(particles)
        r = points.norm(dim=-1)
        return torch.where(r < 0.3, 20.0, torch.where(r < 0.6, 0.08, 0.0))   # step 1/16: fog 5e-3

    def field_fn(points, samples):
        calls.append(points.shape[1])
        return {"density": density_fn(points), "rgb": (points + 1) / 2}

    def render(threshold):
        renderer = VolumeRenderer({"num_samples_per_ray": 32, "estimator": "dense", "eval_skip_threshold": threshold,
                                   "occupancy": {"resolution": 16, "dilation": 1}}, 2, radius=1.0).eval()
        for step in (7, 7):                                  # one estimate per trained step
            renderer.prepare_evaluation(step, density_fn, torch.device("cpu"))
        calls.clear()
        out = renderer(field_fn, origins, dirs)
        return out, calls[0]

    (every, n_every), (skipped, n_skipped), (training_grid, _) = render(0.0), render(1e-5), render(0.01)
    for key in ("rgb", "opacity"):
        torch.testing.assert_close(every[key], skipped[key], rtol=0, atol=1e-6)
    assert n_skipped < 0.6 * n_every
    assert (every["opacity"] - training_grid["opacity"]).max() > 0.05      # the fog a coarser grid hides


@pytest.mark.parametrize("items", [1, 2, 3, 11, 20])
def test_grid_sampled_in_several_batch_items_equals_one_grid_sample(items):
    """sample_grid cuts each particle's points into batch items (to use every CPU thread): same
    features and grid gradients as one trilinear grid_sample, whatever the cut and the padding."""
    gen = torch.Generator().manual_seed(0)
    grid = torch.randn(2, 3, 5, 6, 7, dtype=torch.float64, generator=gen, requires_grad=True)
    x = torch.rand(2, 11, 3, dtype=torch.float64, generator=gen) * 2.2 - 1.1      # some beyond the border
    weights = torch.randn(2, 11, 3, dtype=torch.float64, generator=gen)
    ref = torch.nn.functional.grid_sample(grid, x.view(2, 11, 1, 1, 3), align_corners=True,
                                          padding_mode="border").view(2, 3, 11).transpose(1, 2)
    out = sample_grid(grid, x, items)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    grad_ref, = torch.autograd.grad((ref * weights).sum(), grid)
    grad, = torch.autograd.grad((out * weights).sum(), grid)
    torch.testing.assert_close(grad, grad_ref, rtol=0, atol=1e-12)


def test_pack_lists_each_rows_kept_entries_in_order():
    keep = torch.rand(5, 300, generator=torch.Generator().manual_seed(0)) < torch.tensor([0.0, 0.05, 0.3, 0.9, 1.0])[:, None]
    index, valid = pack(keep)
    counts = [int(row.sum()) for row in keep]
    assert index.shape == valid.shape == (5, max(counts))
    for row, count, idx, ok in zip(keep, counts, index, valid):
        assert idx[:count].tolist() == row.nonzero()[:, 0].tolist()        # kept entries, in order
        assert ok.tolist() == [True] * count + [False] * (len(ok) - count)
        assert ((idx >= 0) & (idx < 300)).all()                             # padding indexes a real entry
    index, valid = pack(torch.zeros(2, 7, dtype=torch.bool))               # nothing kept: one padding column
    assert index.shape == (2, 1) and not valid.any()


@pytest.mark.parametrize("bad, match", [({"estimator": "occupied"}, "estimator='occupied': use one of auto, dense, occupancy, nerfacc"),
                                        ({"occupancy": {"update_every": 0}}, "occupancy.update_every=0: must be ≥ 1"),
                                        ({"occupancy": {"dilation": -1}}, "occupancy.dilation=-1: must be ≥ 0")])
def test_renderer_config_errors_name_the_key(bad, match):
    with pytest.raises(ConfigError, match=re.escape(match)):
        VolumeRenderer(bad, 1)


def test_nerfacc_estimator_on_the_cpu_says_what_to_use_instead():
    renderer = VolumeRenderer({"estimator": "nerfacc"}, 1)
    with pytest.raises(ConfigError, match="estimator=nerfacc needs CUDA.*use occupancy"):
        renderer.update(0, lambda points, particles: points[..., 0], torch.device("cpu"))


def test_batched_particles_equal_single_particle_evaluation():
    points = torch.rand(3, 500, 3) * 2 - 1
    for encoding in ("grid", "hashgrid"):
        cfg = {"encoding": encoding, "grid": {"resolution": 10, "n_features": 4},
               "hashgrid": {"n_levels": 4, "log2_hashmap_size": 10, "base_resolution": 4, "backend": "torch"}}
        geometry = ParticleGeometry({**cfg, "chunk_points": 0}, n_particles=3, seed=7)
        batched = geometry(points)
        for i in range(3):
            alone = geometry(points[i:i + 1], torch.tensor([i]))
            for key in ("density", "albedo"):
                torch.testing.assert_close(batched[key][i:i + 1], alone[key], rtol=1e-6, atol=1e-6)
        # particle 1 of a 3-particle field is particle 1 of a 5-particle field (own init streams)
        bigger = ParticleGeometry(cfg, n_particles=5, seed=7)
        torch.testing.assert_close(bigger(points[1:2], torch.tensor([1]))["density"], batched["density"][1:2])
        # evaluating in chunks of points changes nothing
        chunked = ParticleGeometry({**cfg, "chunk_points": 100}, n_particles=3, seed=7)(points)
        torch.testing.assert_close(chunked["density"], batched["density"], rtol=1e-6, atol=1e-6)


def test_tcnn_backend_reports_how_to_install():
    if torch.cuda.is_available():
        pytest.skip("CUDA present: tiny-cuda-nn may legitimately load")
    cfg = {"encoding": "hashgrid", "hashgrid": {"backend": "tcnn"}}
    with pytest.raises((ImportError, RuntimeError), match="tiny-cuda-nn|backend=torch"):
        ParticleGeometry(cfg, n_particles=1, seed=0)


def test_grid_total_variation_is_its_definition_with_autograd_gradients():
    """The hand-written backward against autograd on the plain expression, and finite differences."""
    g = torch.randn(2, 3, 4, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0),
                    requires_grad=True)
    plain = sum((g.narrow(d, 1, g.shape[d] - 1) - g.narrow(d, 0, g.shape[d] - 1)).abs().flatten(1).mean(1)
                for d in (2, 3, 4)) / 3
    tv = GridTotalVariation.apply(g)
    assert tv.shape == (2,) and torch.allclose(tv, plain)
    weights = torch.tensor([0.7, -1.3], dtype=torch.float64)
    expected, = torch.autograd.grad((plain * weights).sum(), g)
    got, = torch.autograd.grad((tv * weights).sum(), g)
    assert torch.allclose(got, expected)
    assert torch.autograd.gradcheck(GridTotalVariation.apply, (g,))


def test_misspelt_encoding_is_named_with_a_suggestion():
    with pytest.raises(ConfigError, match="encoding='hashgrd'.*Did you mean 'hashgrid'"):
        ParticleGeometry({"encoding": "hashgrd"}, n_particles=1, seed=0)


# ---- cameras -----------------------------------------------------------------------------------


def test_camera_sampler_ranges_and_per_particle_determinism():
    dist = CameraDistribution()
    cams = particle_cameras(torch.arange(4), 3, dist, seed=0, step=5)
    assert len(cams) == 12
    for name, (lo, hi) in [("elevation", dist.elevation_range), ("distance", dist.distance_range),
                           ("fovy", dist.fovy_range)]:
        values = getattr(cams, name)
        assert values.min() >= lo and values.max() <= hi, name
    light = cams.light_position.norm(dim=-1)
    assert light.min() >= dist.light_distance_range[0] - 1e-5 and light.max() <= dist.light_distance_range[1] + 1e-5
    # particle p's cameras do not depend on how many particles run
    for p, fewer in ((1, 2), (2, 3)):
        alone = particle_cameras(torch.arange(fewer), 3, dist, seed=0, step=5)
        assert torch.equal(alone.c2w[3 * p: 3 * p + 3], cams.c2w[3 * p: 3 * p + 3])
    assert not torch.equal(cams.c2w[0:3], cams.c2w[3:6])                              # particles differ
    assert not torch.equal(cams.c2w, particle_cameras(torch.arange(4), 3, dist, seed=0, step=6).c2w)  # steps differ


# ---- particle independence in the system -------------------------------------------------------


def test_gradient_of_one_particle_never_reaches_another(tiny, tmp_path):
    system = DreamFusionSystem(small_system_cfg(tiny, n_particles=3), run=RunContext(tmp_path))
    cameras, out = system.render_step(0)
    assert "detail" in out.aux                           # normals and point light are in the graph
    ids = torch.arange(3).repeat_interleave(system.cfg.views_per_particle)
    weights = torch.rand(out.images.shape, generator=torch.Generator().manual_seed(0))
    trainable = {n.removeprefix("generator."): p for n, p in system.named_parameters() if p.requires_grad and p.shape[0] == 3}
    assert any(n.startswith("background") for n in trainable) and any(n.startswith("geometry") for n in trainable)
    for i in range(3):
        loss = (out.images[ids == i] * weights[ids == i]).sum()
        loss = loss + sum(w * v[i] for w, v in system.generator.regularizer_terms(out, 0).values())
        grads = torch.autograd.grad(loss, list(trainable.values()), retain_graph=True, allow_unused=True)
        for (name, _), grad in zip(trainable.items(), grads):
            assert grad is not None, name
            others = torch.cat([grad[j].flatten() for j in range(3) if j != i])
            assert torch.count_nonzero(others) == 0, f"{name}: particle {i}'s loss moved another particle"
            if name.startswith("geometry"):
                assert torch.count_nonzero(grad[i]) > 0, name


def test_guided_step_of_a_particle_ignores_the_others_without_repulsion(tiny, tmp_path):
    """Full SDS loss, repulsion off: particle 0's gradient is the same whatever particle 1 is."""
    system = DreamFusionSystem(small_system_cfg(tiny), run=RunContext(tmp_path))

    def particle0_grads():
        system.zero_grad()
        system.distill_step(3)["loss"].backward()
        return [p.grad[0].clone() for p in system.generator.geometry.parameters()]

    before = particle0_grads()
    with torch.no_grad():
        for p in system.generator.geometry.parameters():
            p[1].add_(torch.randn(p[1].shape, generator=torch.Generator().manual_seed(1)))
    after = particle0_grads()
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_a_particle_renders_the_same_in_any_ensemble(tiny, tmp_path):
    """Particle 1's initialisation, cameras, jitter and shading are its own: N = 2 and N = 4 agree."""
    renders = {}
    for n in (2, 4):
        system = DreamFusionSystem(small_system_cfg(tiny, n_particles=n), run=RunContext(tmp_path, seed=3))
        with torch.no_grad():
            renders[n] = system.render_step(2)[1].images[1]
    torch.testing.assert_close(renders[2], renders[4], rtol=1e-5, atol=1e-6)


# ---- export ------------------------------------------------------------------------------------


def test_exported_sphere_has_the_right_radius_and_files_load(tmp_path):
    import trimesh

    radius, res, scene = 0.5, 48, 1.0
    cfg = ExportConfig(resolution=res, threshold=5.0, min_component_fraction=0.1)

    def density_fn(points):          # [N, P, 3]; particle 1 has a floater besides its sphere
        sphere = (points.norm(dim=-1) < radius).float()
        floater = ((points - torch.tensor([0.8, 0.8, 0.8])).norm(dim=-1) < 0.08).float()
        return 10.0 * torch.maximum(sphere, floater * torch.tensor([0.0, 1.0])[:, None])

    def color_fn(points, ids):
        return torch.tensor([0.9, 0.1, 0.1]).expand(*points.shape[:-1], 3)

    meshes = extract_meshes(density_fn, color_fn, 2, scene, cfg)
    voxel = 2 * scene / (res - 1)
    for i, (mesh, removed) in enumerate(meshes):
        r = torch.as_tensor(mesh.vertices).norm(dim=-1)
        assert abs(float(r.mean()) - radius) < voxel and float(r.max()) < radius + voxel
        assert mesh.volume > 0                                     # normals point outwards
        assert removed == i                                        # the floater of particle 1 is gone
        report = mesh_report(mesh, removed)
        assert report["watertight"] and report["boundary_edges"] == 0
    paths = save_mesh(meshes[0][0], tmp_path / "particle0", ["obj", "glb", "ply"])
    for path in paths:
        loaded = trimesh.load(path, force="mesh")
        assert len(loaded.faces) == len(meshes[0][0].faces), path
    colors = trimesh.load(tmp_path / "particle0.ply", force="mesh").visual.vertex_colors
    assert (colors[:, 0] > 200).all() and (colors[:, 1] < 60).all()


# ---- command line ------------------------------------------------------------------------------


def cli_train(tmp_path, tiny, tag, *overrides):
    small = [f"system.prior.pretrained_model_name_or_path={tiny[0]}", f"system.probe_path={tiny[1]}",
             f"system.guidance.repulsion.feature_net_path={tiny[1]}", "system.guidance.repulsion.gamma=1.0",
             "system.n_particles=2", "system.resolutions=[12,16]", "system.resolution_milestones=[2]",
             "system.renderer.num_samples_per_ray=12", "system.geometry.grid.resolution=12",
             "system.geometry.grid.n_features=4", "system.material.ambient_only_steps=1",
             "system.loss.lambda_orient=1.0", "system.evaluation.resolution=16", "system.evaluation.n_views=4",
             "system.export.resolution=16", "trainer.enable_progress_bar=false", "use_timestamp=false",
             "checkpoint.every_n_train_steps=2", "trainer.val_check_interval=2",
             "system.renderer.occupancy.resolution=16", "system.renderer.occupancy.update_every=3"]
    args, extra = parse_args(["--config", CONFIG, "--train", f"exp_root_dir={tmp_path}", f"tag={tag}", *small, *overrides])
    return run(args, extra)


def state(ckpt: Path) -> dict:
    """The checkpoint's state, named as the generator's modules (``geometry.*``, ``background.*``)."""
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    return {k.removeprefix("generator."): v for k, v in saved.items()}


def test_cli_run_outputs_and_resume_equals_uninterrupted_run(tiny, tmp_path, capsys):
    full = cli_train(tmp_path, tiny, "full", "trainer.max_steps=4").root
    save = full / "save"
    printed = capsys.readouterr().out
    for rel in ("it2-val.png", "it4-val.png", "it4-test/particle0.gif", "it4-test/particle1.mp4",
                "it4-test/all.gif", "it4-test/particle0.obj", "it4-test/particle1.glb", "it4-test/particle1.ply"):
        assert (save / rel).is_file(), rel
        if rel.startswith(("it4-test", "it4-export")):   # turntables and meshes are announced with their paths
            assert f"[scorestudio] wrote {save / rel}" in printed, rel
    assert (full / "ckpts" / "last.ckpt").is_file()
    metrics = json.loads((full / "metrics.json").read_text())
    assert metrics["step"] == 4 and "distinct_majority_colors" in metrics and "particle1/color_fraction" in metrics
    assert 0 <= metrics["particle1/translucent_fraction"] <= 1
    assert "export/particle0/watertight" in metrics

    part = cli_train(tmp_path, tiny, "part", "trainer.max_steps=2", "system.export.after_test=false").root
    cli_train(tmp_path, tiny, "ignored", "trainer.max_steps=4", f"resume={part / 'ckpts' / 'last.ckpt'}")
    # the empty-space mask (built at step 0, next at 3) travels with the checkpoint of step 2
    masks = [torch.load(p / "ckpts" / "last.ckpt", map_location="cpu", weights_only=False)[EMPTY_SPACE_KEY]
             for p in (full, part)]
    assert masks[0].shape == (2, 16 ** 3) and masks[0].any() and not masks[0].all()
    a, b = state(full / "ckpts" / "last.ckpt"), state(part / "ckpts" / "last.ckpt")
    assert a.keys() == b.keys() and any(k.startswith("geometry.") for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
