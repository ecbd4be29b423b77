"""3-D Gaussian splat particles: closed-form renders, gradients, adaptive control, PLY files, CLI runs."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import json  # noqa: E402
import re  # noqa: E402
from dataclasses import fields  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from scorestudio.cli import parse_args, run  # noqa: E402
from scorestudio.data.cameras import CameraBatch, cameras_from_angles, get_rays  # noqa: E402
from scorestudio.generators.gaussians import STATS_KEY, GaussianGenerator  # noqa: E402
from scorestudio.renderers.gaussians import RasterizerConfig, Splats, rasterize, read_splat_ply  # noqa: E402
from scorestudio.renderers.gaussians.projection import focal_length  # noqa: E402
from scorestudio.utils.config import ConfigError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "gaussians-embedded.yaml")


def as_double(cameras: CameraBatch) -> CameraBatch:
    return CameraBatch(**{f.name: getattr(cameras, f.name).double() for f in fields(CameraBatch)})


def one_splat(centre, sigma: float, opacity: float, color, dtype=torch.float32) -> Splats:
    return Splats(means=torch.tensor([[centre]], dtype=dtype), quats=torch.tensor([[[1.0, 0, 0, 0]]], dtype=dtype),
                  scales=torch.full((1, 1, 3), sigma, dtype=dtype), opacities=torch.tensor([[opacity]], dtype=dtype),
                  colors=torch.tensor([[color]], dtype=dtype), active=torch.ones(1, 1, dtype=torch.bool))


# ---- rasterizer ----------------------------------------------------------------------------------


@pytest.mark.parametrize("tile_size", [4, 8, 0])
def test_one_isotropic_gaussian_renders_its_closed_form_image(tile_size):
    """An isotropic splat of std σ at the origin, seen from distance d: alpha = o·exp(−r²/2s²) with
    s² = (f σ / d)² + 0.3 px² around the image centre, 0 where that is below 1/255."""
    size, sigma, opacity, distance = 33, 0.06, 0.8, 2.5          # odd size: the centre is a pixel centre
    camera = cameras_from_angles(20.0, -35.0, distance, 40.0)
    out = rasterize(one_splat([0.0, 0.0, 0.0], sigma, opacity, [1.0, 0.2, 0.0]), camera, size, size,
                    torch.tensor([0.0, 0.0, 1.0]), RasterizerConfig(tile_size=tile_size))
    s = float(((focal_length(torch.tensor(40.0), size) * sigma / distance) ** 2 + 0.3).sqrt())
    centre = torch.arange(size, dtype=torch.float64) + 0.5 - size / 2
    r2 = centre[:, None] ** 2 + centre[None, :] ** 2
    expected = opacity * torch.exp(-0.5 * r2 / s ** 2)
    expected = torch.where(expected >= 1 / 255, expected, torch.zeros_like(expected))
    alpha = out.alpha[0].double()
    assert (alpha - expected).abs().max() <= 1e-4
    assert abs(float(alpha[size // 2, size // 2]) - opacity) <= 1e-4                  # the peak
    rgb = out.rgb[0, :, size // 2, size // 2].double()
    torch.testing.assert_close(rgb, torch.tensor([0.8, 0.16, 0.2], dtype=torch.float64), rtol=0, atol=1e-4)
    # σ in pixels from the image alone: log alpha is linear in r² with slope −1 / 2s²
    seen = alpha > 0.02
    x, y = r2[seen], alpha[seen].log()
    slope = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
    assert abs(float((-0.5 / slope).sqrt()) - s) <= 1e-4
    assert abs(float(out.depth[0, size // 2, size // 2]) - distance) <= 1e-4


def test_a_splat_lands_on_the_pixel_whose_ray_passes_through_it():
    """Projection and get_rays share the camera conventions: an off-centre splat peaks at the pixel
    whose ray points most nearly at it."""
    cameras = cameras_from_angles(torch.tensor([10.0, 45.0]), torch.tensor([30.0, -120.0]), 2.5, 40.0)
    point = torch.tensor([0.3, -0.2, 0.25])
    out = rasterize(one_splat(point.tolist(), 0.01, 0.9, [1.0, 1.0, 1.0]), cameras, 24, 24, torch.zeros(3),
                    RasterizerConfig(tile_size=8, eps2d=0.0))
    origins, dirs = get_rays(cameras, 24, 24)
    towards = torch.nn.functional.normalize(point - origins, dim=-1)
    for view in range(2):
        nearest = (dirs[view] * towards[view]).sum(-1).flatten().argmax()
        assert out.alpha[view].flatten().argmax() == nearest


def random_scene(k: int, g: int, dtype=torch.float32, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [0.35 * torch.randn(k, g, 3, generator=gen, dtype=dtype),                  # means
            torch.randn(k, g, 4, generator=gen, dtype=dtype),                         # quaternions
            (0.03 + 0.1 * torch.rand(k, g, 3, generator=gen, dtype=dtype)).log(),   # log-scales
            0.3 + 0.6 * torch.rand(k, g, generator=gen, dtype=dtype),                 # opacities
            torch.rand(k, g, 3, generator=gen, dtype=dtype)]                          # colours


def test_gradients_match_central_differences():
    """float64, 2 scenes × 7 splats, 2 views each: autograd against central differences for every
    parameter of every splat (cosine ≥ 0.999 per attribute)."""
    params = [p.requires_grad_(True) for p in random_scene(2, 7, torch.float64)]
    cameras = as_double(cameras_from_angles(torch.tensor([10.0, 40.0, -5.0, 25.0]),
                                            torch.tensor([0.0, 100.0, -60.0, 170.0]), 2.5, 40.0))
    weights = torch.rand(4, 3, 12, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def loss(means, quats, log_scales, opacities, colors):
        splats = Splats(means, quats, log_scales.exp(), opacities, colors, torch.ones(2, 7, dtype=torch.bool))
        out = rasterize(splats, cameras, 12, 12, torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64),
                        RasterizerConfig(tile_size=4))
        return (out.rgb * weights).sum() + 0.5 * out.alpha.sum() + 0.1 * (out.depth * out.alpha).sum()

    grads = torch.autograd.grad(loss(*params), params)
    eps = 1e-6
    for name, p, grad in zip(("means", "rotations", "scales", "opacities", "colours"), params, grads):
        numeric = torch.zeros_like(p)
        with torch.no_grad():
            for idx in range(p.numel()):
                flat = p.view(-1)
                old = flat[idx].item()
                flat[idx] = old + eps
                up = loss(*params)
                flat[idx] = old - eps
                down = loss(*params)
                flat[idx] = old
                numeric.view(-1)[idx] = (up - down) / (2 * eps)
        cosine = torch.nn.functional.cosine_similarity(grad.flatten(), numeric.flatten(), dim=0)
        assert cosine >= 0.999, f"{name}: cosine {cosine:.6f}"
        assert grad.abs().max() > 0, name


def test_tiles_of_any_size_render_like_one_dense_tile_and_respect_inactive_slots():
    means, quats, log_scales, opacities, colors = random_scene(2, 40)
    active = torch.rand(2, 40, generator=torch.Generator().manual_seed(2)) > 0.3
    cameras = cameras_from_angles(torch.tensor([5.0, 35.0, 60.0, -10.0]), torch.tensor([0.0, 45.0, 90.0, -150.0]), 2.5, 40.0)
    renders = {}
    for tile in (0, 2, 8, 16):
        splats = Splats(means, quats, log_scales.exp(), opacities, colors, active)
        renders[tile] = rasterize(splats, cameras, 30, 26, torch.ones(3), RasterizerConfig(tile_size=tile, chunk_elements=4096))
    for tile in (2, 8, 16):
        torch.testing.assert_close(renders[tile].rgb, renders[0].rgb, rtol=0, atol=1e-4)
        torch.testing.assert_close(renders[tile].alpha, renders[0].alpha, rtol=0, atol=1e-4)
    # inactive slots are not drawn: the same image as a scene of the active splats alone
    alone = Splats(means[1:, active[1]], quats[1:, active[1]], log_scales[1:, active[1]].exp(),
                   opacities[1:, active[1]], colors[1:, active[1]], torch.ones(1, int(active[1].sum()), dtype=torch.bool))
    torch.testing.assert_close(rasterize(alone, cameras.index(slice(2, 4)), 30, 26, torch.ones(3), RasterizerConfig()).rgb,
                               renders[8].rgb[2:], rtol=0, atol=1e-5)
    assert not renders[8].visible[~active.repeat_interleave(2, dim=0)].any()


def test_rasterizer_matches_gsplat():
    """The PyTorch rasterizer against gsplat's CUDA kernels on random scenes (mean abs error ≤ 1/255)."""
    from scorestudio.renderers.gaussians import gsplat_backend

    if not (torch.cuda.is_available() and gsplat_backend.available()):
        pytest.skip("needs CUDA and gsplat (pip install gsplat)")
    cameras = cameras_from_angles(torch.tensor([10.0, 40.0]), torch.tensor([0.0, 130.0]), 2.5, 40.0).to("cuda")
    for seed in range(3):
        means, quats, log_scales, opacities, colors = (t.cuda() for t in random_scene(1, 300, seed=seed))
        splats = Splats(means, quats, 0.3 * log_scales.exp(), opacities, colors, torch.ones(1, 300, dtype=torch.bool, device="cuda"))
        ours, theirs = (rasterize(splats, cameras, 64, 64, torch.ones(3, device="cuda"), RasterizerConfig(backend=b))
                        for b in ("torch", "gsplat"))
        assert (ours.rgb - theirs.rgb).abs().mean() <= 1 / 255
        assert (ours.alpha - theirs.alpha).abs().mean() <= 1 / 255


# ---- the generator -------------------------------------------------------------------------------


def small_generator(n: int = 2, **cfg) -> GaussianGenerator:
    base = {"budget": 32, "init": {"points": 12, "radius": 0.4},
            "densify": {"start": 0, "every": 1, "grad_threshold": 0.5, "percent_dense": 0.02, "extent": 1.0}}
    for key, value in cfg.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return GaussianGenerator(base, n_particles=n, seed=3)


def test_a_particle_is_the_same_in_any_ensemble():
    two, four = small_generator(2), small_generator(4)
    camera = cameras_from_angles(20.0, 40.0, 2.5, 40.0)
    for name in ("means", "log_scales", "colors", "opacity_logits"):
        torch.testing.assert_close(getattr(two, name)[1], getattr(four, name)[1], rtol=0, atol=0)
    with torch.no_grad():
        images = [g.render(torch.tensor([1]), camera, 0, resolution=16, training=False).images for g in (two, four)]
    torch.testing.assert_close(images[0], images[1])
    assert not torch.equal(two.means[0], two.means[1])


@pytest.mark.parametrize("elevation", [90.0, 30.0])
def test_lit_splat_is_its_albedo_times_ambient_plus_lambert(elevation):
    """A flat splat (normal +z) at the origin under the camera's headlight: colour = albedo ·
    (0.3 + 0.7 · sin(elevation)) at its centre, whichever side the camera sees."""
    material = {"ambient_light_color": 0.3, "diffuse_light_color": 0.7, "ambient_only_steps": 0,
                "albedo_prob": 0.0, "lambertian_prob": 1.0, "eval_shading": "lambertian"}
    gen = small_generator(1, budget=1, init={"points": 1}, material=material)
    albedo = torch.tensor([0.8, 0.4, 0.2])
    with torch.no_grad():
        gen.means.zero_()
        gen.log_scales.copy_(torch.tensor([0.2, 0.2, 0.002]).log())
        gen.opacity_logits.fill_(float(torch.logit(torch.tensor(0.9))))
        gen.colors.copy_(torch.logit(albedo))
    for flip in (1.0, -1.0):                      # from above and from below
        camera = cameras_from_angles(flip * elevation, 20.0, 2.5, 40.0)
        with torch.no_grad():
            image = gen.render(torch.tensor([0]), camera, 5, resolution=33, training=False).images[0, :, 16, 16]
        lit = albedo * (0.3 + 0.7 * torch.sin(torch.deg2rad(torch.tensor(elevation))))
        torch.testing.assert_close(image, 0.9 * lit + 0.1, rtol=0, atol=1e-3)


def test_densification_clones_small_splits_large_prunes_faint_and_zeroes_new_moments():
    gen = small_generator(2)
    optimizer = torch.optim.Adam([p for p in gen.parameters()], lr=0.1)
    for p in gen.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()                                              # Adam state exists, the generator notes the optimizer
    with torch.no_grad():
        gen.log_scales[0, 0] = torch.tensor(0.01).log()           # small: cloned
        gen.log_scales[0, 1] = torch.tensor(0.10).log()           # large: split in two
        gen.opacity_logits[1, 5] = -8.0                           # faint: pruned
    before = {n: p.detach().clone() for n, p in gen.named_parameters()}
    gen.grad_sum[0, :3] = torch.tensor([1.0, 3.0, 0.2])            # splat 2 stays under the threshold (0.5)
    gen.grad_count[0, :3] = 1.0
    gen.grad_sum[1, :] = 0.9                                       # particle 1: every splat a candidate...
    gen.grad_count[1, :] = 1.0
    gen.update(0)
    assert gen.active[0].sum() == 14 and gen.active[0, 12:14].all()     # two new splats, in the first free slots
    # the larger gradient went first: slot 12 holds the split half of splat 1, slot 13 the clone of splat 0
    torch.testing.assert_close(gen.log_scales[0, 13].detach(), before["log_scales"][0, 0])
    torch.testing.assert_close(gen.means[0, 13].detach(), before["means"][0, 0])
    for slot in (1, 12):
        torch.testing.assert_close(gen.log_scales[0, slot].detach().exp(), torch.full((3,), 0.1 / 1.6))
        assert not torch.equal(gen.means[0, slot], before["means"][0, 1])
    assert torch.equal(gen.means[0, 2], before["means"][0, 2])
    # 20 free slots for 12 candidates: all are split (slot 5 into slot 17), then the faint pair is pruned
    assert gen.active[1].sum() == 12 + 12 - 2 and not gen.active[1, 5] and not gen.active[1, 17]
    exp_avg = optimizer.state[gen.means]["exp_avg"]
    assert (exp_avg[0, [1, 12, 13]] == 0).all() and (exp_avg[0, [0, 2]] != 0).all()   # the clone's source keeps its moments
    assert gen.grad_sum.abs().sum() == 0 and gen.grad_count.sum() == 0    # statistics restart
    # a second pass with no free slot left changes nothing
    gen.grad_sum[1, :] = 5.0
    gen.grad_count[1, :] = 1.0
    with torch.no_grad():
        gen.active[1] = True
        gen.opacity_logits[1] = 0.0
    means = gen.means.detach().clone()
    gen.update(1)
    assert gen.active[1].all() and torch.equal(gen.means.detach(), means)


def test_opacity_reset_caps_every_splat():
    gen = small_generator(1, densify={"opacity_reset_every": 2, "opacity_reset_value": 0.05, "min_opacity": 0.0})
    with torch.no_grad():
        gen.opacity_logits[0, :4] = 3.0
    gen.update(1)
    assert torch.sigmoid(gen.opacity_logits[0, 0]) > 0.9
    gen.update(2)
    assert torch.sigmoid(gen.opacity_logits).max() <= 0.05 + 1e-6


def test_ply_files_load_with_a_generic_reader(tmp_path):
    import trimesh

    for color, degree, rest in (("rgb", 0, 0), ("sh", 1, 9)):
        gen = small_generator(2, color=color, sh_degree=degree, export={"formats": [], "splat_up_axis": "z"})
        with torch.no_grad():
            gen.active[1, 3] = False
        paths, report = gen.export(torch.tensor([0, 1]), tmp_path / color)
        assert [p.name for p in paths] == ["particle0-gaussians.ply", "particle1-gaussians.ply"]
        assert report["export/particle1/splats"] == 11
        names = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(rest)]
                 + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
        cloud = trimesh.load(paths[1])
        vertex = cloud.metadata["_ply_raw"]["vertex"]["data"]
        assert list(vertex.dtype.names) == names and len(vertex) == 11
        slots = gen.active[1]
        torch.testing.assert_close(torch.as_tensor(cloud.vertices, dtype=torch.float32), gen.means[1, slots].detach())
        torch.testing.assert_close(torch.tensor(vertex["opacity"]), gen.opacity_logits[1, slots].detach())
        torch.testing.assert_close(torch.tensor(vertex["scale_2"]), gen.log_scales[1, slots, 2].detach())
        rgb = 0.28209479177387814 * torch.tensor(vertex["f_dc_1"]) + 0.5
        torch.testing.assert_close(rgb, gen.base_colors(1)[slots, 1].detach(), rtol=0, atol=1e-6)
        ours = read_splat_ply(paths[1])
        assert list(ours) == names and all((ours[k] == vertex[k]).all() for k in names)


@pytest.mark.parametrize("up, turn", [("-y", [[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]]),
                                      ("y", [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])])
def test_ply_written_with_an_up_axis_holds_the_same_splats_turned(tmp_path, up, turn):
    """export.splat_up_axis: -y (3DGS's convention, the default: scene (x, y, z) → file
    (−y, −z, x), up along −y) or y (as the meshes: (y, z, x)): positions, covariances and
    degree-1 colours of the PLY are the scene's turned."""
    from scorestudio.renderers.gaussians.projection import covariance_3d, sh_to_rgb

    gen = small_generator(1, color="sh", sh_degree=1, export={"formats": [], "splat_up_axis": up})
    with torch.no_grad():
        gen.quats.normal_(generator=torch.Generator().manual_seed(0))
        gen.log_scales.uniform_(-3, -1, generator=torch.Generator().manual_seed(1))
        gen.colors.normal_(generator=torch.Generator().manual_seed(2))
    path, = gen.export(torch.tensor([0]), tmp_path)[0]
    ply = {k: torch.tensor(v) for k, v in read_splat_ply(path).items()}
    turn = torch.tensor(turn)
    slots = gen.active[0]
    means, quats, scales = (gen.means[0, slots].detach(), gen.quats[0, slots].detach(), gen.log_scales[0, slots].detach().exp())
    cols = lambda *names: torch.stack([ply[n] for n in names], dim=-1)      # noqa: E731
    torch.testing.assert_close(cols("x", "y", "z"), means @ turn.T)
    torch.testing.assert_close(covariance_3d(cols("scale_0", "scale_1", "scale_2").exp(), cols("rot_0", "rot_1", "rot_2", "rot_3")),
                               turn @ covariance_3d(scales, quats) @ turn.T, rtol=1e-4, atol=1e-6)
    dirs = torch.nn.functional.normalize(torch.randn(len(means), 3, generator=torch.Generator().manual_seed(3)), dim=-1)
    rest = cols(*[f"f_rest_{i}" for i in range(9)]).view(-1, 3, 3).transpose(1, 2)   # [g, coefficient, channel]
    sh = torch.cat([cols("f_dc_0", "f_dc_1", "f_dc_2")[:, None], rest], dim=1)
    torch.testing.assert_close(sh_to_rgb(sh, dirs @ turn.T), sh_to_rgb(gen.colors[0, slots].detach(), dirs), rtol=1e-5, atol=1e-5)


def test_density_mesh_of_one_round_splat_is_a_sphere(tmp_path):
    """Export's density field: one isotropic splat of std σ, opacity o has the isosurface
    o·exp(−r²/2σ²) = threshold at r = σ·sqrt(2 ln(o / threshold))."""
    gen = small_generator(1, budget=4, init={"points": 1},
                          export={"resolution": 48, "threshold": 0.3, "formats": ["obj"], "texture": False})
    with torch.no_grad():
        gen.means.zero_()
        gen.log_scales.fill_(torch.tensor(0.2).log())
        gen.opacity_logits.fill_(4.0)
    paths, report = gen.export(torch.tensor([0]), tmp_path)
    import trimesh

    mesh = trimesh.load(tmp_path / "particle0.obj", force="mesh")
    radius = 0.2 * (2 * torch.log(torch.sigmoid(torch.tensor(4.0)) / 0.3)).sqrt()
    assert abs(float(torch.as_tensor(mesh.vertices).norm(dim=-1).mean()) - float(radius)) < 2 / 47
    assert report["export/particle0/watertight"]


@pytest.mark.parametrize("bad, match", [({"init": {"shape": "cube"}}, "init.shape='cube': use one of sphere, blob"),
                                        ({"sh_degree": 1}, "sh_degree=1: 0 or 1, and 1 needs color: sh"),
                                        ({"rasterizer": {"backend": "cuda"}}, "rasterizer.backend='cuda': use one of auto, torch, gsplat"),
                                        ({"init": {"points": 40}}, "init.points=40 must be in \\[1, budget=32\\]"),
                                        ({"export": {"splat_up_axis": "x"}}, "export.splat_up_axis='x': use '-y'")])
def test_config_errors_name_the_key(bad, match):
    with pytest.raises(ConfigError, match=match):
        small_generator(1, **bad)


# ---- command line ---------------------------------------------------------------------------------


def cli_train(tmp_path, tiny, tag, *overrides):
    small = [f"system.prior.pretrained_model_name_or_path={tiny[0]}", f"system.probe_path={tiny[1]}",
             f"system.guidance.repulsion.feature_net_path={tiny[1]}", "system.guidance.repulsion.gamma=1.0",
             "system.n_particles=2", "system.resolutions=[12,16]", "system.resolution_milestones=[2]",
             "system.generator.budget=48", "system.generator.init.points=16",
             "system.generator.densify.start=1", "system.generator.densify.every=1",
             "system.generator.densify.grad_threshold=0", "system.generator.densify.opacity_reset_every=2",
             "system.generator.densify.opacity_reset_value=0.05",
             "system.generator.export.resolution=16", "system.generator.export.threshold=0.05",
             "system.generator.export.formats=[obj]", "system.generator.export.texture_size=64",
             "system.generator.material.ambient_only_steps=2",
             "system.evaluation.resolution=16", "system.evaluation.n_views=4",
             "trainer.enable_progress_bar=false", "use_timestamp=false", "checkpoint.every_n_train_steps=2",
             "trainer.val_check_interval=2"]
    args, extra = parse_args(["--config", CONFIG, "--train", f"exp_root_dir={tmp_path}", f"tag={tag}", *small, *overrides])
    return run(args, extra)


def checkpoint(root: Path) -> dict:
    return torch.load(root / "ckpts" / "last.ckpt", map_location="cpu", weights_only=False)


def test_cli_run_writes_orbits_and_plys_and_resume_equals_uninterrupted_run(tiny, tmp_path):
    """Densification at steps 1, 2 and 3 (every visible splat a candidate: 16 → 32 → the full
    budget of 48), an opacity reset to 0.05 at step 2 and lit shading from step 2, so that step 3
    prunes the splats the last step moved under min_opacity = 0.05: resumed from the checkpoint
    after step 1 (densified once), the run ends bit for bit where the uninterrupted one does."""
    prune = "system.generator.densify.min_opacity=0.05"
    full = cli_train(tmp_path, tiny, "full", "trainer.max_steps=4", prune).root
    save = full / "save"
    for rel in ("it2-val.png", "it4-test/particle0.gif", "it4-test/particle1.gif", "it4-test/all.gif"):
        assert (save / rel).is_file(), rel
    exported = {p.name: p for p in save.glob("it4-*/particle*")}                # exports after the test
    assert {"particle0-gaussians.ply", "particle1-gaussians.ply", "particle0.obj"} <= set(exported)
    metrics = json.loads((full / "metrics.json").read_text())
    assert metrics["step"] == 4 and "particle1/color_fraction" in metrics and "particle0/translucent_fraction" in metrics
    assert metrics["export/particle1/splats"] == len(read_splat_ply(exported["particle1-gaussians.ply"])["x"])

    part = cli_train(tmp_path, tiny, "part", "trainer.max_steps=2", "system.generator.export.after_test=false", prune).root
    saved = checkpoint(part)
    assert saved[STATS_KEY]["grad_count"].sum() > 0               # statistics gathered at step 1 travel with it
    assert (saved["state_dict"]["generator.active"].sum(1) == 32).all()   # step 1 cloned all 16 before the resume
    cli_train(tmp_path, tiny, "ignored", "trainer.max_steps=4", f"resume={part / 'ckpts' / 'last.ckpt'}", prune)
    a, b = checkpoint(full), checkpoint(part)
    active = a["state_dict"]["generator.active"]
    assert (active.sum(1) > 0).all() and (active.sum(1) < 48).all()    # step 3 pruned the full budget
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    for key in a[STATS_KEY]:
        assert torch.equal(a[STATS_KEY][key], b[STATS_KEY][key]), key
    for state_a, state_b in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        for key in state_a:
            assert torch.equal(state_a[key], state_b[key]), key


def test_generator_section_of_the_config_is_checked(tiny, tmp_path):
    with pytest.raises(ConfigError, match=re.escape("system.generator.color='hsv': use one of rgb, sh")):
        cli_train(tmp_path, tiny, "bad", "trainer.max_steps=1", "system.generator.color=hsv")


def test_demo_config_repels_on_latent_probe_features_of_z0_all_run_long():
    """configs/gaussians-demo.yaml parses into the repulsion it means (a bare YAML ``on:`` key
    would be read as the boolean True), repels until the last step and guides against the
    negative prompt it inherits, at a lower CFG scale than its parent."""
    import scorestudio
    from scorestudio.utils.config import config_path, load_config

    cfg, parent = (load_config(config_path(name), []) for name in ("gaussians-demo", "gaussians-embedded"))
    assert cfg.system.generator_type == "gaussians" and cfg.system.prompt_processor.prompt == "a cube"
    assert cfg.system.prompt_processor.negative_prompt == parent.system.prompt_processor.negative_prompt == "an object"
    guidance = scorestudio.find(cfg.system.guidance_type)(dict(cfg.system.guidance), path="system.guidance")
    assert guidance.cfg.guidance_scale.at(0) < parent.system.guidance.guidance_scale
    repulsion = guidance.repulsion
    assert (repulsion.cfg.features, repulsion.cfg.on, repulsion.cfg.feature_head) == ("latent_probe", "clean", "color")
    assert min(repulsion.cfg.gamma.at(step) for step in range(cfg.trainer.max_steps)) > 0
