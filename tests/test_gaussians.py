"""3-D Gaussian splats: closed-form renders, gradients, tiles, the gsplat backend."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from dataclasses import fields  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from scorestudio.data.cameras import CameraBatch, cameras_from_angles, get_rays  # noqa: E402
from scorestudio.renderers.gaussians import RasterizerConfig, Splats, rasterize  # noqa: E402
from scorestudio.renderers.gaussians.projection import focal_length  # noqa: E402


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
