"""The resvg-like render (:mod:`scorestudio.renderers.svg.tiny_skia`) against resvg itself, and its
straight-through use in training."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from scorestudio.renderers.svg import SvgScene, circle_points, polygon_points, random_scene, render, svg_string
from scorestudio.renderers.svg.tiny_skia import coverage, straight_through
from scorestudio.renderers.svg.tiny_skia import render as resvg_like

resvg_py = pytest.importorskip("resvg_py")


def resvg(scene: SvgScene) -> torch.Tensor:
    """resvg's drawing ``[3, H, W]`` of the scene's written SVG."""
    from PIL import Image

    png = bytes(resvg_py.svg_to_bytes(svg_string=svg_string(scene), width=scene.width, background="#ffffff"))
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), np.float32) / 255
    return torch.from_numpy(rgb).permute(2, 0, 1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10((a - b).pow(2).mean().clamp_min(1e-12)))


def curvy_scene(gen: torch.Generator, size: int = 96) -> SvgScene:
    """Three paths of random cubics (bent far from their chords) with a hole contour, opaque and
    translucent, nonzero and even-odd, inside the canvas."""
    n_seg = 6
    centre = torch.rand(3, 1, 2, generator=gen) * size * 0.4 + size * 0.3
    outer = circle_points(centre[:, 0], torch.full((3,), size * 0.25), n_seg)             # [3, 3S, 2]
    outer = outer + (torch.rand(outer.shape, generator=gen) - 0.5) * size * 0.15
    hole = circle_points(centre[:, 0], torch.full((3,), size * 0.08), n_seg).flip(1)
    points = torch.cat([outer, hole], 1)[None].clamp(1, size - 1)
    contour = torch.tensor([0] * n_seg + [1] * n_seg).expand(3, -1).clone()
    fill = torch.tensor([[[0.8, 0.2, 0.1, 1.0], [0.1, 0.5, 0.9, 1.0], [0.2, 0.7, 0.3, 0.6]]])
    return SvgScene(points, fill, size, size, fill_rule=torch.tensor([False, True, False]), contour=contour,
                    background=torch.tensor([[1.0, 1.0, 0.9]]))


def inside(scene: SvgScene) -> SvgScene:
    """``scene`` shrunk about the canvas centre so that every control point lies within 1 px of it."""
    pts, size = scene.points, scene.width
    scale = (size / 2 - 1) / float((pts - size / 2).abs().max())
    return SvgScene((pts - size / 2) * min(scale, 1.0) + size / 2, scene.fill, size, size, fill_rule=scene.fill_rule,
                    contour=scene.contour, background=scene.background)


def test_matches_resvg_on_curves_and_stars():
    """Cubics, holes, both fill rules, translucency and overlaps inside the canvas: within 60 dB of
    resvg, where the training coverage stays below 55 dB (so the check can fail)."""
    gen = torch.Generator().manual_seed(0)
    scenes = [curvy_scene(gen) for _ in range(4)] + [inside(random_scene(12, 128, gen)) for _ in range(2)]
    for scene in scenes:
        reference = resvg(scene)
        assert psnr(resvg_like(scene), reference) >= 60.0
        assert psnr(render(scene)[0], reference) < 55.0


def test_paths_across_the_canvas_border():
    """Paths cut by the canvas sides go through tiny-skia's edge clipper (its path-ops root search
    and coarse fallback cut included): within 60 dB of resvg, where leaving the clipper out is not."""
    import scorestudio.renderers.svg.tiny_skia as ts

    gen = torch.Generator().manual_seed(2)
    scenes = [random_scene(12, 128, gen) for _ in range(2)]
    for scene in scenes:
        assert psnr(resvg_like(scene), resvg(scene)) >= 60.0
    clip, ts._clip = ts._clip, lambda pieces, w, h: (pieces, np.zeros((0, 4), np.float32))
    try:
        assert min(psnr(resvg_like(scene), resvg(scene)) for scene in scenes) < 60.0
    finally:
        ts._clip = clip


def test_coverage_is_exact_on_pixel_aligned_square():
    """A square on pixel corners covers its pixels fully (255) and nothing else; half a pixel to
    the right, its side columns get two of the four sub-samples of every sub-row (2 × 16 × 4)."""
    square = polygon_points(torch.tensor([[2.0, 2.0], [6.0, 2.0], [6.0, 6.0], [2.0, 6.0]])).view(4, 3, 2)
    cubics = torch.cat([square, square.roll(-1, 0)[:, :1]], 1).numpy().astype(np.float32)
    alpha = coverage(cubics, False, 8, 8)
    expected = np.zeros((8, 8), np.int64)
    expected[2:6, 2:6] = 255
    assert (alpha == expected).all()
    shifted = coverage(cubics + np.float32([0.5, 0.0]), False, 8, 8)
    assert (shifted[2:6, 2] == 128).all() and (shifted[2:6, 6] == 128).all() and (shifted[2:6, 3:6] == 255).all()


def test_straight_through_forward_and_gradient():
    """Forward: the resvg-like image; backward: the differentiable render's gradient."""
    gen = torch.Generator().manual_seed(1)
    scene = curvy_scene(gen, 48)
    points = scene.points.clone().requires_grad_(True)
    live = SvgScene(points, scene.fill, 48, 48, fill_rule=scene.fill_rule, contour=scene.contour,
                    background=scene.background)
    soft = render(live)
    mixed = straight_through(soft, [live])
    assert torch.equal(mixed.detach(), resvg_like(live, as_written=False)[None])
    weights = torch.rand(soft.shape, generator=gen)
    (grad_mixed,) = torch.autograd.grad((mixed * weights).sum(), points, retain_graph=True)
    (grad_soft,) = torch.autograd.grad((soft * weights).sum(), points)
    assert torch.allclose(grad_mixed, grad_soft) and grad_soft.abs().sum() > 0


def test_rejects_strokes():
    from scorestudio.renderers.svg import Stroke

    scene = random_scene(2, 32, torch.Generator().manual_seed(0))
    stroked = SvgScene(scene.points, scene.fill, 32, 32, fill_rule=scene.fill_rule, contour=scene.contour,
                       stroke=Stroke(scene.fill, torch.ones(1, 2)))
    with pytest.raises(ValueError, match="flat fills only"):
        resvg_like(stroked)
