"""The SVG scene, its differentiable rasterizer (checked against resvg), SVG I/O and the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from scorestudio.renderers.svg import (
    RasterizerConfig,
    SvgError,
    SvgScene,
    circle_points,
    circle_scene,
    polygon_points,
    random_scene,
    read_svg,
    render,
    star_points,
    svg_string,
    write_svg,
)
from scorestudio.utils.images import load_image

resvg_py = pytest.importorskip("resvg_py")

# ------------------------------------------------------------------------------ helpers


def resvg(svg: str | Path, tmp_path: Path, width: int | None = None) -> torch.Tensor:
    """resvg's rendering ``[3, H, W]`` of SVG markup or of a file, on white."""
    source = {"svg_path": str(svg)} if isinstance(svg, Path) else {"svg_string": svg}
    png = tmp_path / "resvg.png"
    png.write_bytes(bytes(resvg_py.svg_to_bytes(**source, width=width, background="#ffffff")))
    return load_image(png)


def mae255(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean absolute error in 1/255 units, ``a`` quantised to 8 bits like resvg's output."""
    return float(((a * 255).round() - b * 255).abs().mean())


# ------------------------------------------------------------------------------ accuracy vs resvg


def test_matches_resvg_on_random_scenes(tmp_path):
    gen = torch.Generator().manual_seed(0)
    errors = []
    for _ in range(20):
        scene = random_scene(24, 224, gen)
        ours = render(scene)[0]
        reference = resvg(svg_string(scene), tmp_path)
        errors.append(mae255(ours, reference))
        # The check can fail: the same scene shifted by 1 px is far off.
        if len(errors) == 1:
            shifted = SvgScene(scene.points + 1.0, scene.fill, 224, 224, scene.fill_rule, scene.contour)
            assert mae255(render(shifted)[0], reference) > 2 * 1.5
    print(f"MAE vs resvg at 224²: mean {sum(errors) / len(errors):.3f}/255, max {max(errors):.3f}/255")
    assert max(errors) <= 1.5, errors                                   # the target
    assert sum(errors) / len(errors) <= 0.5, errors                     # what it achieves (0.22)


def test_edges_through_pixel_centres(tmp_path):
    """Integer vertices put pixel centres exactly on edges (slope 1/3): each must get half
    coverage, whether or not the straight edges are cut into several (K = 12)."""
    quad = polygon_points(torch.tensor([[20.0, 10.0], [50.0, 20.0], [40.0, 50.0], [10.0, 40.0]]))
    scene = SvgScene(quad[None, None], torch.tensor([[[0.0, 0.0, 0.0, 1.0]]]), 64, 64)
    reference = resvg(svg_string(scene), tmp_path)
    for k in (1, 12):
        image = render(scene, RasterizerConfig(samples_per_segment=k))[0]
        assert float((image - reference).abs().max()) * 255 < 24          # 16.5 measured


def test_fill_rules_and_winding(tmp_path):
    """Holes by fill rule and contour orientation, a pentagram (winding 2 at its centre), and no
    seam along the inner edges of a nonzero path; each as resvg draws it."""
    center = torch.tensor([32.3, 31.7])
    outer, inner = circle_points(center, torch.tensor(24.0)), circle_points(center, torch.tensor(11.0))
    angles = [-math.pi / 2 + k * 4 * math.pi / 5 for k in range(5)]
    vertices = center + 26 * torch.tensor([[math.cos(a), math.sin(a)] for a in angles])
    shapes = {  # name: (points, contour ids, centre filled under nonzero)
        "ring, hole of the same orientation": (torch.cat([outer, inner]), [0] * 4 + [1] * 4, True),
        "ring, reversed hole": (torch.cat([outer, inner.flip(0).roll(1, 0)]), [0] * 4 + [1] * 4, False),
        "pentagram": (polygon_points(vertices), [0] * 5, True),
    }
    color = torch.tensor([0.1, 0.2, 0.9])
    fill = torch.cat([color, torch.ones(1)])[None, None]
    for name, (points, contour, nonzero_fills) in shapes.items():
        for rule in ("nonzero", "evenodd"):
            scene = SvgScene(points[None, None], fill, 64, 64, fill_rule=rule, contour=torch.tensor([contour]))
            image = render(scene)[0]
            centre = color if nonzero_fills and rule == "nonzero" else torch.ones(3)
            assert torch.allclose(image[:, 32, 32], centre, atol=1e-6), (name, rule)
            assert torch.allclose(image[:, 11, 32], color, atol=1e-6), (name, rule)  # ring / top spike
            assert mae255(image, resvg(svg_string(scene), tmp_path)) < 1.0, (name, rule)
    points, contour, _ = shapes["pentagram"]
    image = render(SvgScene(points[None, None], fill, 64, 64, contour=torch.tensor([contour])))[0]
    for x, y in ((vertices + vertices.roll(-1, 0)) / 2).tolist():      # edge midpoints: winding 2 | 1
        assert torch.allclose(image[:, int(y), int(x)], color, atol=1e-6)


def test_chunks_tiles_and_sampling_agree():
    """Chunk and tile sizes only change how the work is cut; results are identical."""
    scene = random_scene(12, 96, torch.Generator().manual_seed(1))
    base = render(scene, RasterizerConfig(samples_per_segment=8))
    for cfg in (RasterizerConfig(samples_per_segment=8, chunk_elements=500),
                RasterizerConfig(samples_per_segment=8, tile_size=16),
                RasterizerConfig(samples_per_segment=8, tile_size=5, chunk_elements=3000)):
        assert torch.allclose(render(scene, cfg), base, atol=1e-5), cfg
    hard, alpha = render(scene, {"antialias": False}, return_alpha=True)
    assert alpha.shape == (1, 1, 96, 96) and 0 < alpha.mean() < 1
    assert (render(scene) - hard).abs().max() > 0.1                     # anti-aliasing does something


def test_batch_of_particles_equals_single_renders():
    """Same K (the adaptive K is chosen per call, from the whole batch): identical images."""
    gen = torch.Generator().manual_seed(2)
    batch = random_scene(6, 64, gen, batch=3)
    batch.background = torch.rand(3, 3, generator=gen)
    cfg = RasterizerConfig(samples_per_segment=12)
    images, alpha = render(batch, cfg, return_alpha=True)
    for i in range(3):
        one, one_alpha = render(batch.index(i), cfg, return_alpha=True)
        assert torch.allclose(images[i: i + 1], one, atol=1e-6)
        assert torch.allclose(alpha[i: i + 1], one_alpha, atol=1e-6)
        assert float((render(batch.index(i))[0] - render(batch)[i]).abs().mean()) * 255 < 0.2


# ------------------------------------------------------------------------------ gradients


def test_gradients_match_finite_differences():
    """Autograd vs central differences (float64) on control points, colours and background."""
    gen = torch.Generator().manual_seed(3)
    centers = torch.tensor([[[11.3, 12.6], [20.4, 18.2], [14.7, 22.1]]], dtype=torch.float64)
    points = circle_points(centers, torch.tensor([[7.2, 6.3, 5.1]], dtype=torch.float64))
    points[0, 2] = star_points(centers[0, 2], torch.tensor(6.0), torch.tensor(0.3), spikes=2)  # straight edges
    points = points + 0.6 * torch.randn(points.shape, generator=gen, dtype=torch.float64)
    fill = torch.tensor([[[0.9, 0.2, 0.1, 0.8], [0.1, 0.7, 0.3, 0.6], [0.2, 0.3, 0.9, 1.0]]], dtype=torch.float64)
    background = torch.tensor([0.9, 0.95, 0.8], dtype=torch.float64)
    weights = torch.rand(1, 3, 32, 32, generator=gen, dtype=torch.float64)
    cfg = RasterizerConfig(samples_per_segment=8)

    def loss(p, f, b):
        return (render(SvgScene(p, f, 32, 32, background=b), cfg) * weights).sum()

    params = [t.clone().requires_grad_() for t in (points, fill, background)]
    grads = torch.autograd.grad(loss(*params), params)
    cosines = []
    for which, grad in enumerate(grads):
        numeric = torch.zeros_like(grad).view(-1)
        for i in range(numeric.numel()):
            plus = [t.clone() for t in (points, fill, background)]
            minus = [t.clone() for t in (points, fill, background)]
            plus[which].view(-1)[i] += 1e-5
            minus[which].view(-1)[i] -= 1e-5
            numeric[i] = (loss(*plus) - loss(*minus)) / 2e-5
        cosines.append(float(torch.nn.functional.cosine_similarity(numeric, grad.view(-1), dim=0)))
    print(f"gradient cosine (points, fill, background): {cosines}")
    assert min(cosines) >= 0.98, cosines
    assert grads[0].abs().sum() > 0


def test_no_gradient_to_padding_and_hard_mode():
    scene = random_scene(4, 48, torch.Generator().manual_seed(4))
    points = scene.points.clone().requires_grad_()
    render(SvgScene(points, scene.fill, 48, 48, scene.fill_rule, scene.contour)).sum().backward()
    padding = (scene.contour < 0).repeat_interleave(3, 1)                 # [P, 3S]
    assert points.grad[0][padding].abs().max() == 0
    assert points.grad[0][~padding].abs().max() > 0
    hard = render(SvgScene(points, scene.fill, 48, 48, scene.fill_rule, scene.contour), {"antialias": False})
    assert not hard.requires_grad


# ------------------------------------------------------------------------------ scene helpers


def test_circle_scene_and_scene_helpers():
    centers = torch.tensor([[[50.0, 40.0]], [[20.0, 30.0]]])
    scene = circle_scene(centers, torch.tensor([[10.0], [5.0]]), torch.rand(2, 1, 4), 100, 80)
    assert scene.points.shape == (2, 1, 12, 2) and scene.num_segments == 4
    cubic = scene.points[0, 0, :4]                                        # midpoint of the first arc
    mid = (cubic[0] + 3 * cubic[1] + 3 * cubic[2] + cubic[3]) / 8
    assert abs(float((mid - centers[0, 0]).norm()) - 10.0) < 0.003
    two = SvgScene(torch.zeros(1, 1, 15, 2), torch.zeros(1, 1, 4), 8, 8, contour=torch.tensor([[0, 0, 1, 1, -1]]))
    assert two.segment_ends().tolist() == [[3, 0, 9, 6, 12]]
    assert two.segments_per_path().tolist() == [4]
    one = scene.index(1)
    assert one.batch_size == 1 and torch.equal(one.points, scene.points[1:])
    assert scene.to(dtype=torch.float64).points.dtype == torch.float64
    assert not scene.detach().points.requires_grad
    with pytest.raises(ValueError, match="fill rules"):
        SvgScene(torch.zeros(1, 1, 12, 2), torch.zeros(1, 1, 4), 8, 8, fill_rule="winding")
    with pytest.raises(ValueError, match="NaN"):
        render(SvgScene(torch.full((1, 1, 12, 2), float("nan")), torch.zeros(1, 1, 4), 8, 8))


# ------------------------------------------------------------------------------ SVG files

ROUND_TRIP_SVG = """<svg xmlns="http://www.w3.org/2000/svg" width="160" height="120" viewBox="0 0 80 60">
  <g transform="translate(40 30) rotate(25)">
    <ellipse cx="0" cy="0" rx="20" ry="9" fill="#3366cc" transform="scale(1 1.4) skewX(15)"/>
    <path d="M -30 -20 Q -20 -35 -5 -22 A 8 5 30 1 1 -12 -8 Z" fill="rgb(200,40,60)" fill-opacity="0.7"/>
  </g>
  <g transform="matrix(0.9 0.2 -0.1 1.1 5 2)">
    <rect x="50" y="35" width="20" height="15" rx="4" fill="#22aa55"/>
    <path fill-rule="evenodd" fill="#ffaa00" d="M 10 35 h 25 v 20 h -25 z M 16 40 h 12 v 10 h -12 z"/>
  </g>
  <g opacity="0.5"><polygon points="60,5 75,10 70,25 55,20" fill="purple"/></g>
  <circle cx="8" cy="8" r="5" fill="none"/>
</svg>
"""


def test_svg_round_trip_matches_resvg(tmp_path):
    original = tmp_path / "original.svg"
    original.write_text(ROUND_TRIP_SVG)
    for width in (None, 224):
        reference = resvg(original, tmp_path, width)
        scene = read_svg(original, width=width)
        assert (scene.width, scene.height) == ((160, 120) if width is None else (224, 168))
        assert scene.num_paths == 5 and scene.fill_rules().count("evenodd") == 1
        rewritten = write_svg(scene, tmp_path / "rewritten.svg")
        again = read_svg(rewritten)
        assert mae255(render(scene)[0], reference) <= 1.0
        assert mae255(render(again)[0], reference) <= 1.0
        assert mae255(resvg(rewritten, tmp_path), reference) <= 1.0
    # The hole of the even-odd frame and group opacity (0.5 of purple over white) survive.
    image = render(read_svg(original))[0]
    assert torch.allclose(image[:, 111, 40], torch.ones(3), atol=1e-6)
    assert torch.allclose(image[:, 30, 130], torch.tensor([0.75, 0.5, 0.75]), atol=0.01)


def test_clear_errors_for_bad_svg_files(tmp_path):
    with pytest.raises(SvgError, match="missing.svg: SVG file not found"):
        read_svg(tmp_path / "missing.svg")
    broken = tmp_path / "broken.svg"
    broken.write_text("<svg xmlns='http://www.w3.org/2000/svg'><rect width='3'")
    with pytest.raises(SvgError, match="broken.svg: not a valid SVG file"):
        read_svg(broken)
    empty = tmp_path / "text.svg"
    empty.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
                     '<text x="1" y="9">A</text><circle r="3" fill="none"/></svg>')
    with pytest.raises(SvgError, match=r"text.svg: no shapes to draw \(not drawn: 1 × text\)"):
        read_svg(empty)


def test_cli_render_and_info(tmp_path, capsys):
    from scorestudio.tools.svg import main

    source = tmp_path / "in.svg"
    source.write_text(ROUND_TRIP_SVG)
    assert main(["render", str(source), str(tmp_path / "out.png"), "--width", "80"]) == 0
    image = load_image(tmp_path / "out.png")
    assert image.shape == (3, 60, 80)
    assert mae255(image, resvg(source, tmp_path, 80)) <= 1.5
    assert main(["info", str(source)]) == 0
    out = capsys.readouterr().out
    assert "canvas: 160 x 120 px" in out and "paths: 5 (6 contours" in out
    assert "segments per path: 4, " in out and "fill rules: nonzero 4, evenodd 1" in out
    assert main(["info", str(tmp_path / "nope.svg")]) == 2
    assert "nope.svg: SVG file not found" in capsys.readouterr().err


def test_pydiffvg_backend_missing_gives_install_instructions():
    try:
        import pydiffvg  # noqa: F401
        pytest.skip("pydiffvg is installed")
    except ImportError:
        pass
    scene = circle_scene(torch.tensor([[[8.0, 8.0]]]), torch.tensor([[4.0]]), torch.ones(1, 1, 4), 16, 16)
    with pytest.raises(ImportError, match="BachiLi/diffvg"):
        render(scene, RasterizerConfig(backend="pydiffvg"))


def test_sketch_generator_draws_open_strokes_with_learnt_widths(tmp_path):
    """``generator.stroke.enabled``: the paths are drawn as open black strokes (no fill), the
    widths are a parameter with its lr group and a gradient, and the written SVG draws alike."""
    from scorestudio.generators.svg import SvgGenerator

    svg = SvgGenerator({"paths": {"num_paths": 6, "radius": 120.0}, "canvas_size": 96, "xing_weight": 0.0,
                        "renderer": {"samples_per_segment": 16},
                        "stroke": {"enabled": True, "width": 4.0}}, n_particles=2, seed=0)
    out = svg.render()
    image = out.images
    assert image.shape == (2, 3, 96, 96)
    ink = image.mean(1) < 0.5                                            # [N, H, W]
    assert 0.01 < float(ink.float().mean()) < 0.3                        # thin strokes, not filled discs
    assert float((image.max(1).values - image.min(1).values).max()) < 0.05   # black ink on white: grey levels only
    image.sum().backward()
    assert svg.widths.grad is not None and float(svg.widths.grad.abs().sum()) > 0
    assert "widths" in [g["name"] for g in svg.param_groups()]
    paths, _ = svg.export(svg.all_particles(), tmp_path)
    # Thin diagonal edges are where our distance coverage and resvg's area coverage differ most.
    assert mae255(image[0].detach(), resvg(paths[0], tmp_path)) < 1.5
