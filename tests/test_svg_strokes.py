"""Strokes, gradients, opacity and clip paths of the SVG rasterizer, against resvg and finite
differences. Scenes are built by hand next to the SVG markup resvg draws."""

from __future__ import annotations

import io

import pytest
import torch

from scorestudio.renderers.svg import (
    CAPS,
    JOINS,
    LINEAR,
    RADIAL,
    SPREADS,
    Clip,
    Gradient,
    RasterizerConfig,
    Stroke,
    SvgScene,
    circle_points,
    polygon_points,
    render,
)

resvg_py = pytest.importorskip("resvg_py")


def resvg(svg: str) -> torch.Tensor:
    """resvg's rendering ``[3, H, W]`` of SVG markup, on white."""
    import numpy as np
    from PIL import Image

    png = bytes(resvg_py.svg_to_bytes(svg_string=svg, background="#ffffff"))
    return torch.from_numpy(np.array(Image.open(io.BytesIO(png)).convert("RGB"))).permute(2, 0, 1).float() / 255


def mae255(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a * 255).round() - b * 255).abs().mean())


def document(body: str, size: int, defs: str = "") -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}">'
            f"<defs>{defs}</defs>{body}</svg>")


def hexcolor(rgb) -> str:
    return "#" + "".join(f"{round(float(c) * 255):02x}" for c in rgb)


def polyline_path(vertices: list, closed: bool) -> tuple[torch.Tensor, list, str]:
    """Points ``[3V, 2]`` of a polygon, which segments are stroked (the closing one only when
    ``closed``) and its path data."""
    v = torch.tensor(vertices, dtype=torch.float64)
    d = "M " + " L ".join(f"{x} {y}" for x, y in vertices) + (" Z" if closed else "")
    return polygon_points(v), [True] * (len(vertices) - 1) + [closed], d


STROKES = [  # vertices, closed, join, cap, width, RGBA, dash
    ([[10, 10], [40, 21], [15, 40]], False, "miter", "butt", 6.0, (0.8, 0.1, 0.1, 1.0)),
    ([[52, 9], [86, 15.5], [60, 41]], False, "round", "round", 7.0, (0.1, 0.5, 0.1, 0.8)),
    ([[10.5, 55], [40, 61], [12.5, 86]], False, "bevel", "square", 8.0, (0.1, 0.1, 0.8, 1.0)),
    ([[55, 55], [88, 61], [70, 88]], True, "miter", "butt", 5.0, (0.3, 0.3, 0.3, 1.0)),
    ([[20, 70], [30, 48], [36, 70]], False, "miter", "butt", 3.0, (0.9, 0.6, 0.0, 0.6)),   # beyond the miter limit
]


def stroke_scene(dtype=torch.float64) -> tuple[SvgScene, str]:
    points, stroked, body = [], [], []
    for vertices, closed, join, cap, width, rgba in STROKES:
        pts, mask, d = polyline_path(vertices, closed)
        points.append(pts)
        stroked.append(mask)
        body.append(f'<path d="{d}" fill="none" stroke="{hexcolor(rgba[:3])}" stroke-opacity="{rgba[3]}" '
                    f'stroke-width="{width}" stroke-linejoin="{join}" stroke-linecap="{cap}"/>')
    stroke = Stroke(torch.tensor([[s[5] for s in STROKES]], dtype=dtype),
                    torch.tensor([[s[4] for s in STROKES]], dtype=dtype), stroked=torch.tensor(stroked),
                    join=torch.tensor([JOINS.index(s[2]) for s in STROKES]),
                    cap=torch.tensor([CAPS.index(s[3]) for s in STROKES]))
    scene = SvgScene(torch.stack(points)[None].to(dtype), torch.zeros(1, len(STROKES), 4, dtype=dtype), 96, 96,
                     stroke=stroke)
    return scene, document("".join(body), 96)


def test_strokes_match_resvg():
    """Joins (miter, round, bevel, miter beyond its limit), caps (butt, round, square), open and
    closed paths, stroke opacity; a curved stroke over a filled circle with an even-odd hole."""
    scene, svg = stroke_scene(torch.float32)
    error = mae255(render(scene)[0], resvg(svg))
    shifted = SvgScene(scene.points + 1.0, scene.fill, 96, 96, stroke=scene.stroke)
    print(f"strokes MAE vs resvg {error:.3f}/255")
    assert error <= 1.0
    assert mae255(render(shifted)[0], resvg(svg)) > 3 * error              # the check can fail
    center = torch.tensor([32.0, 30.0])
    ring = torch.cat([circle_points(center, torch.tensor(20.0)), circle_points(center, torch.tensor(9.0))])
    curved = SvgScene(ring[None, None], torch.tensor([[[0.9, 0.7, 0.2, 1.0]]]), 64, 64, fill_rule="evenodd",
                      contour=torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]]),
                      stroke=Stroke(torch.tensor([[[0.2, 0.2, 0.6, 0.7]]]), torch.tensor([[4.0]])))
    d = ("M 52 30 A 20 20 0 0 1 12 30 A 20 20 0 0 1 52 30 Z M 41 30 A 9 9 0 0 1 23 30 A 9 9 0 0 1 41 30 Z")
    ref = resvg(document(f'<path d="{d}" fill="#e6b333" fill-rule="evenodd" stroke="#333399" '
                         f'stroke-opacity="0.7" stroke-width="4"/>', 64))
    error = mae255(render(curved)[0], ref)
    print(f"curved stroke MAE vs resvg {error:.3f}/255")
    assert error <= 1.0


def gradient_case(kind: int, spread: str, dtype=torch.float64) -> tuple[SvgScene, str]:
    """A square filled with a 3-stop gradient under a gradientTransform (userSpaceOnUse)."""
    square = polygon_points(torch.tensor([[8.0, 8.0], [56.0, 8.0], [56.0, 56.0], [8.0, 56.0]]))
    stops = torch.tensor([[0.1, 0.9, 0.1, 0.1, 1.0], [0.5, 0.1, 0.8, 0.2, 0.6], [0.8, 0.1, 0.2, 0.9, 1.0]])
    stops_svg = "".join(f'<stop offset="{s[0]:.2f}" stop-color="{hexcolor(s[1:4])}" stop-opacity="{s[4]:.2f}"/>'
                        for s in stops.tolist())
    transform = torch.tensor([[0.9, 0.3, 6.0], [-0.2, 1.1, 2.0]])                 # [[a c e], [b d f]]
    matrix = "matrix(0.9 -0.2 0.3 1.1 6 2)"
    if kind == LINEAR:
        geometry = torch.tensor([20.0, 20.0, 36.0, 30.0, 0.0, 0.0])
        defs = (f'<linearGradient id="g" gradientUnits="userSpaceOnUse" x1="20" y1="20" x2="36" y2="30" '
                f'spreadMethod="{spread}" gradientTransform="{matrix}">{stops_svg}</linearGradient>')
    else:
        geometry = torch.tensor([30.0, 28.0, 14.0, 26.0, 24.0, 0.0])
        defs = (f'<radialGradient id="g" gradientUnits="userSpaceOnUse" cx="30" cy="28" r="14" fx="26" fy="24" '
                f'spreadMethod="{spread}" gradientTransform="{matrix}">{stops_svg}</radialGradient>')
    paint = Gradient(torch.tensor([kind]), geometry[None, None].to(dtype), transform[None, None].to(dtype),
                     stops[None, None].to(dtype), torch.tensor([SPREADS.index(spread)]))
    scene = SvgScene(square[None, None].to(dtype), torch.tensor([[[0.0, 0.0, 0.0, 1.0]]], dtype=dtype), 64, 64,
                     fill_paint=paint)
    return scene, document('<path d="M 8 8 H 56 V 56 H 8 Z" fill="url(#g)"/>', 64, defs)


@pytest.mark.parametrize("kind", [LINEAR, RADIAL])
def test_gradients_match_resvg(kind):
    for spread in SPREADS:
        scene, svg = gradient_case(kind, spread, torch.float32)
        error = mae255(render(scene)[0], resvg(svg))
        print(f"gradient kind {kind} {spread}: MAE vs resvg {error:.3f}/255")
        assert error <= 1.5, (spread, error)


def test_opacity_and_clip_match_resvg():
    """Element opacity over a stroke and fill; a clip region of two paths (one even-odd) and a
    nested clip intersecting it."""
    square = polygon_points(torch.tensor([[6.0, 6.0], [58.0, 6.0], [58.0, 58.0], [6.0, 58.0]]))
    disc = circle_points(torch.tensor([40.0, 42.0]), torch.tensor(14.0))
    points = torch.stack([torch.cat([square, square[:3]]), torch.cat([disc, disc[:3]])])     # [2, 15, 2]
    contour = torch.tensor([[0, 0, 0, 0, -1], [0, 0, 0, 0, -1]])
    clip_a = circle_points(torch.tensor([24.0, 24.0]), torch.tensor(18.0))
    clip_b = polygon_points(torch.tensor([[30.0, 30.0], [62.0, 34.0], [50.0, 62.0]]))
    clip_c = polygon_points(torch.tensor([[0.0, 10.0], [64.0, 10.0], [64.0, 50.0], [0.0, 50.0]]))
    clip_points = torch.stack([torch.cat([clip_a]), torch.cat([clip_b, clip_b[:3]]), torch.cat([clip_c])])
    clip = Clip(SvgScene(clip_points[None], torch.ones(1, 3, 4), 64, 64,
                         contour=torch.tensor([[0, 0, 0, 0], [0, 0, 0, -1], [0, 0, 0, 0]])),
                region=torch.tensor([0, 0, 1]), path_regions=torch.tensor([[0, 1], [-1, -1]]))
    scene = SvgScene(points[None], torch.tensor([[[0.2, 0.5, 0.9, 1.0], [0.9, 0.3, 0.1, 1.0]]]), 64, 64,
                     contour=contour, opacity=torch.tensor([[1.0, 0.6]]),
                     stroke=Stroke(torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.1, 0.1, 0.1, 1.0]]]),
                                   torch.tensor([[0.0, 3.0]])),
                     clip=clip)
    svg = document('<g clip-path="url(#b)"><path d="M 6 6 H 58 V 58 H 6 Z" fill="#3380e6" '
                   'clip-path="url(#a)"/></g>'
                   '<circle cx="40" cy="42" r="14" fill="#e64d1a" stroke="#1a1a1a" stroke-width="3" opacity="0.6"/>', 64,
                   '<clipPath id="a"><circle cx="24" cy="24" r="18"/><path d="M 30 30 L 62 34 L 50 62 Z"/></clipPath>'
                   '<clipPath id="b"><rect x="0" y="10" width="64" height="40"/></clipPath>')
    ours, ref = render(scene)[0], resvg(svg)
    error = mae255(ours, ref)
    # Where the disc's fill and stroke overlap SVG composites the element first (the documented
    # approximation): compare away from the stroke's inner half.
    print(f"opacity + clip MAE vs resvg {error:.3f}/255")
    assert error <= 1.5
    unclipped = SvgScene(points[None], scene.fill, 64, 64, contour=contour, opacity=scene.opacity, stroke=scene.stroke)
    assert mae255(render(unclipped)[0], ref) > 5 * error


def test_stroke_and_gradient_gradients_match_finite_differences():
    """Autograd vs central differences (float64): stroke widths, stroke colours and points of the
    stroke scene; gradient stop colours, offsets and geometry of a radial gradient fill."""
    scene, _ = stroke_scene()
    gen = torch.Generator().manual_seed(0)
    weights = torch.rand(1, 3, 96, 96, generator=gen, dtype=torch.float64)
    cfg = RasterizerConfig(samples_per_segment=1)

    def stroke_loss(points, width, color):
        stroke = Stroke(color, width, stroked=scene.stroke.stroked, join=scene.stroke.join, cap=scene.stroke.cap)
        return (render(SvgScene(points, scene.fill, 96, 96, stroke=stroke), cfg) * weights).sum()

    cosines = _fd_cosines(stroke_loss, [scene.points + 0.13, scene.stroke.width, scene.stroke.color], eps=1e-4)
    print(f"stroke gradient cosines (points, width, colour): {cosines}")
    assert min(cosines) >= 0.99, cosines
    grad_scene, _ = gradient_case(RADIAL, "reflect")
    paint = grad_scene.fill_paint
    weights = torch.rand(1, 3, 64, 64, generator=gen, dtype=torch.float64)

    def gradient_loss(stops, geometry):
        g = Gradient(paint.kind, geometry, paint.transform, stops, paint.spread)
        return (render(SvgScene(grad_scene.points, grad_scene.fill, 64, 64, fill_paint=g)) * weights).sum()

    cosines = _fd_cosines(gradient_loss, [paint.stops, paint.geometry], eps=1e-5)
    print(f"gradient paint cosines (stops, geometry): {cosines}")
    assert min(cosines) >= 0.99, cosines


def _fd_cosines(loss, values: list, eps: float) -> list:
    params = [v.clone().requires_grad_() for v in values]
    grads = torch.autograd.grad(loss(*params), params)
    cosines = []
    for which, grad in enumerate(grads):
        numeric = torch.zeros_like(grad).view(-1)
        for i in range(numeric.numel()):
            plus, minus = [v.clone() for v in values], [v.clone() for v in values]
            plus[which].view(-1)[i] += eps
            minus[which].view(-1)[i] -= eps
            numeric[i] = (loss(*plus) - loss(*minus)) / (2 * eps)
        cosines.append(float(torch.nn.functional.cosine_similarity(numeric, grad.reshape(-1), dim=0)))
    return cosines


DASHED = ('<path d="M 8 10 L 56 14 L 40 40" fill="none" stroke="#c02020" stroke-width="4" stroke-dasharray="9 4"/>'
          '<path d="M 8 50 C 20 30 40 70 58 48" fill="none" stroke="#2040c0" stroke-width="3" '
          'stroke-dasharray="6 3 1 3" stroke-dashoffset="2" stroke-linecap="round"/>'
          '<rect x="10" y="22" width="20" height="16" fill="none" stroke="#208020" stroke-width="2.5" '
          'stroke-dasharray="4 4" stroke-linecap="square"/>'
          '<circle cx="46" cy="30" r="7" fill="none" stroke="#000" stroke-width="2" stroke-dasharray="0 4" '
          'stroke-linecap="round"/>')


def test_dashes_match_resvg(tmp_path):
    """Dash arrays with offsets over a miter corner, a cubic, a closed rect and zero-length dashes
    (round dots), each dash capped; drawn solid they are far off."""
    from scorestudio.renderers.svg import read_svg

    path = tmp_path / "dashes.svg"
    path.write_text(document(DASHED, 64))
    scene, ref = read_svg(path), resvg(document(DASHED, 64))
    error = mae255(render(scene)[0], ref)
    print(f"dashes MAE vs resvg {error:.3f}/255")
    assert error <= 1.5
    scene.stroke.dash = torch.zeros_like(scene.stroke.dash)
    assert mae255(render(scene)[0], ref) > 4 * error


def test_dash_gradients_match_finite_differences():
    """Autograd vs central differences (float64) through the cut points of a dashed polyline:
    its points and stroke width."""
    vertices = [[8.5, 10.0], [40.0, 14.0], [22.0, 36.0]]
    points, stroked, _ = polyline_path(vertices, closed=False)
    gen = torch.Generator().manual_seed(1)
    weights = torch.rand(1, 3, 48, 48, generator=gen, dtype=torch.float64)
    color = torch.tensor([[[0.2, 0.3, 0.8, 1.0]]], dtype=torch.float64)

    def loss(pts, width):
        stroke = Stroke(color, width, stroked=torch.tensor([stroked]), join=torch.tensor([JOINS.index("round")]),
                        cap=torch.tensor([CAPS.index("round")]), dash=torch.tensor([[7.0, 3.5]]),
                        dash_offset=torch.tensor([1.5]))
        scene = SvgScene(pts, torch.zeros(1, 1, 4, dtype=torch.float64), 48, 48, stroke=stroke)
        return (render(scene, RasterizerConfig(samples_per_segment=1)) * weights).sum()

    cosines = _fd_cosines(loss, [points[None, None].to(torch.float64), torch.tensor([[3.0]], dtype=torch.float64)],
                          eps=1e-4)
    print(f"dash gradient cosines (points, width): {cosines}")
    assert min(cosines) >= 0.99, cosines
