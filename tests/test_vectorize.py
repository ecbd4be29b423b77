"""Clean paths (scorestudio.generators.svg_paths) and the vectorize system: grown paths fit a
two-shape image with few paths, the written SVG is what resvg draws and what the system scores,
and the clean-up's path dropping and merging do exactly what they say."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from scorestudio.cli import parse_args, run
from scorestudio.generators.svg_paths import (
    CleanPathConfig,
    clean_scene,
    compact_segments,
    drop_unseen,
    merge_same_colour,
    oriented,
    path_report,
    region_masks,
)
from scorestudio.metrics.image_quality import psnr
from scorestudio.renderers.svg import RasterizerConfig, SvgScene, circle_points, polygon_points, render
from scorestudio.utils.config import ConfigError
from scorestudio.utils.images import load_image, save_image
from tests.test_svg import mae255, resvg

ROOT = Path(__file__).resolve().parents[1]
FINE = RasterizerConfig(flatten_tolerance=0.05, max_samples_per_segment=64)


def square(x0: float, y0: float, side: float) -> torch.Tensor:
    return polygon_points(torch.tensor([[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side]]))


def scene_of(paths: list[torch.Tensor], fills: list[list[float]], size: int = 32) -> SvgScene:
    """One scene of equally long paths ``[3S, 2]`` with RGBA ``fills``."""
    return SvgScene(torch.stack(paths)[None], torch.tensor(fills, dtype=torch.float32)[None], size, size)


def two_shapes(size: int = 48) -> torch.Tensor:
    """A red disc and a blue square (with a white hole) on white, ``[1, 3, size, size]``."""
    ring = torch.cat([square(26, 8, 16), square(30, 12, 8)])
    disc = circle_points(torch.tensor([16.0, 30.0]), torch.tensor(10.0), 8)
    disc_img = render(SvgScene(disc[None, None], torch.tensor([[[0.9, 0.1, 0.1, 1.0]]]), size, size), FINE)
    ring_scene = SvgScene(ring[None, None], torch.tensor([[[0.1, 0.2, 0.8, 1.0]]]), size, size, fill_rule="evenodd",
                          contour=torch.tensor([[0] * 4 + [1] * 4]))
    ring_alpha = render(ring_scene, FINE, return_alpha=True)[1]
    return disc_img * (1 - ring_alpha) + torch.tensor([0.1, 0.2, 0.8])[:, None, None] * ring_alpha


# ------------------------------------------------------------------------------ clean-up units


def test_drop_unseen_keeps_exactly_the_paths_that_show():
    a = square(4, 4, 10)
    fills = [[1, 0, 0, 1], [0, 1, 0, 1], [0, 0, 1, 0], [0, 0, 1, 1], [1, 1, 1, 1]]
    paths = [a, square(2, 2, 14),          # covers path 0 entirely (painted after it)
             square(20, 20, 6),            # transparent
             square(40, 40, 5),            # off the 32 px canvas
             square(20, 4, 6)]             # white on the white background
    kept = drop_unseen(scene_of(paths, fills), FINE)
    assert kept.num_paths == 1
    assert torch.equal(kept.fill[0, 0], torch.tensor([0.0, 1, 0, 1]))


def test_merge_same_colour_merges_only_what_leaves_the_picture():
    left, right, middle = square(2, 2, 8), square(20, 2, 8), square(11, 2, 8)
    scene = scene_of([left, middle, right], [[0, 0, 0, 1], [1, 0, 0, 1], [0, 0, 0, 1]])
    reference = render(scene, FINE)[0]
    merged = merge_same_colour(scene, FINE, reference, budget=1e-8, tolerance=0.01)
    assert merged.num_paths == 2                              # the two black squares as one path
    assert torch.allclose(render(merged, FINE)[0], reference, atol=1e-6)
    assert sorted(merged.contour.max(1).values.tolist()) == [0, 1]      # one path of two contours
    # The red square overlaps the black one that would have to move over it: no merge.
    over = scene_of([left, square(6, 2, 8), square(9, 2, 8)], [[0, 0, 0, 1], [1, 0, 0, 1], [0, 0, 0, 1]])
    assert merge_same_colour(over, FINE, render(over, FINE)[0], 1e-8, 0.01).num_paths == 3
    # Colours further apart than the tolerance stay apart.
    apart = scene_of([left, right], [[0, 0, 0, 1], [0.2, 0, 0, 1]])
    assert merge_same_colour(apart, FINE, render(apart, FINE)[0], 1.0, 0.1).num_paths == 2


def test_oriented_turns_holes_against_their_outer_contour():
    outer, hole = square(4, 4, 20), square(10, 10, 6)                 # same direction: nonzero fills the hole
    points, contour = torch.cat([outer, hole]), torch.tensor([0] * 4 + [1] * 4)
    evenodd = SvgScene(points[None, None], torch.tensor([[[0.0, 0, 0, 1]]]), 32, 32, "evenodd", contour[None])
    turned = SvgScene(oriented(points, contour)[None, None], evenodd.fill, 32, 32, "nonzero", contour[None])
    naive = SvgScene(points[None, None], evenodd.fill, 32, 32, "nonzero", contour[None])
    assert torch.allclose(render(turned, FINE), render(evenodd, FINE), atol=1e-5)
    assert not torch.allclose(render(naive, FINE), render(evenodd, FINE), atol=0.1)


def test_compact_segments_drops_collapsed_segments_without_changing_the_picture():
    real = square(4, 4, 12)
    collapsed = real[:1].repeat(6, 1)                                  # two segments on the start point
    hidden = real[:1].repeat(12, 1)                                    # a collapsed contour
    points = torch.cat([real, collapsed, hidden])
    contour = torch.tensor([0] * 6 + [1] * 4)
    scene = SvgScene(points[None, None], torch.tensor([[[0.0, 0, 1, 1]]]), 24, 24, "evenodd", contour[None])
    compact = compact_segments(scene)
    assert compact.contour.tolist() == [[0, 0, 0, 0]]
    assert torch.equal(render(compact, FINE), render(scene, FINE))


def test_path_report_counts_what_a_designer_would_find():
    paths = [square(2, 2, 10), square(4, 4, 4), square(40, 40, 4), square(14, 14, 6)]
    fills = [[0, 0, 0, 1], [1, 1, 1, 1], [1, 0, 0, 1], [0, 1, 0, 0.0]]
    report = path_report(scene_of(paths, fills), FINE)
    # The white square over black is an eraser; the off-canvas and the transparent one are invisible.
    assert (report.paths, report.invisible, report.off_canvas, report.erasers) == (4, 2, 1, 1)


def test_regions_are_traced_on_flat_colours_without_erasers():
    image = two_shapes()[0]
    masks = region_masks(image, torch.ones_like(image), torch.ones(3), CleanPathConfig(), 4)
    colours = sorted(tuple(round(float(v), 1) for v in color) for _, color in masks)
    assert colours == [(0.1, 0.2, 0.8), (0.9, 0.1, 0.1)]              # no white region: no eraser
    ring = next(mask for mask, color in masks if color[2] > 0.5)
    assert not ring[16, 34] and ring[10, 28]                          # the ring's hole is a hole


def test_blurred_edge_bands_and_washed_out_holes_get_no_path():
    """A blurred ring: the pale band where its hole was is a blend of the ring's colour and the
    background, so it is a hole of the ring's path, not a path of its own (an eraser)."""
    from scorestudio.data.problems import RestorationDataConfig, restoration_operator

    ring = torch.cat([square(8, 8, 32), square(20, 20, 8)])
    scene = SvgScene(ring[None, None], torch.tensor([[[1.0, 0.45, 0.2, 1.0]]]), 48, 48, fill_rule="evenodd",
                     contour=torch.tensor([[0] * 4 + [1] * 4]))
    blur = restoration_operator(RestorationDataConfig(sigma=2.0, kernel_size=13, sigma_y=0.0))
    blurry = ((blur(2 * render(scene, FINE) - 1) + 1) / 2).clamp(0, 1)[0]
    masks = region_masks(blurry, torch.ones_like(blurry), torch.ones(3), CleanPathConfig(), 4)
    assert len(masks) == 1                                            # the ring only
    mask, color = masks[0]
    assert abs(float(color[1]) - 0.45) < 0.1
    assert not mask[24, 24] and mask[12, 12]                          # its hole stays a hole


# ------------------------------------------------------------------------------ the system


def test_vectorize_two_shapes(tmp_path):
    image_path = tmp_path / "shapes.png"
    truth = two_shapes()
    save_image(truth[0], image_path)
    argv = ["--config", str(ROOT / "configs" / "vectorize.yaml"), "--train", f"exp_root_dir={tmp_path}", "tag=run",
            "use_timestamp=false", "trainer.enable_progress_bar=false", f"data.image={image_path}",
            "trainer.max_steps=120", "system.generator.clean.add_every=40", "system.generator.clean.add_until=90",
            "system.generator.paths.num_paths=6", "system.frame_every=40"]
    run(*parse_args(argv))
    save = tmp_path / "vectorize" / "run" / "save"
    metrics = json.loads((tmp_path / "vectorize" / "run" / "metrics.json").read_text())
    assert metrics["particle0/paths"] <= 6
    assert metrics["particle0/invisible"] == 0 and metrics["particle0/off_canvas"] == 0
    assert metrics["particle0/erasers"] == 0
    assert metrics["psnr_mean"] > 30.0, metrics["psnr_mean"]
    for name in ("particle0.svg", "particle0.png", "comparison.png", "optimisation.gif"):
        assert (save / name).is_file(), name
    ours = load_image(save / "particle0.png")
    theirs = resvg(save / "particle0.svg", tmp_path)
    assert float(psnr(theirs[None], truth)[0]) > 30.0
    assert mae255(ours, theirs) <= 0.5                                # the file draws what was scored


def test_vectorize_needs_an_image(tmp_path):
    argv = ["--config", str(ROOT / "configs" / "vectorize.yaml"), "--train", f"exp_root_dir={tmp_path}"]
    with pytest.raises(ConfigError, match="data.image"):
        run(*parse_args(argv))


def test_clean_scene_of_a_fitted_scene_stays_within_its_budget():
    scene = scene_of([square(2, 2, 10), square(12, 2, 10), square(12, 2, 10)],
                     [[0, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 1]])
    cfg = CleanPathConfig(fidelity_psnr=60.0)
    cleaned, image = clean_scene(scene, cfg, RasterizerConfig())
    assert cleaned.num_paths == 1                                     # a duplicate dropped, the rest merged
    assert float((image - render(scene, FINE)[0]).pow(2).mean()) <= 10 ** (-6.0)
