"""Cameras, procedural renderers, captions and the data set of ``scorestudio.data``."""

from __future__ import annotations

import math

import pytest
import torch

from scorestudio.data import (
    ALL_SHAPES,
    COLOR_NAMES,
    COLORS,
    ICON_SHAPES,
    KINDS,
    SHAPES_3D,
    VIEW_NAMES,
    CameraDistribution,
    ProceduralConfig,
    ProceduralDataset,
    caption_for,
    cameras_from_angles,
    get_rays,
    orbit_cameras,
    render_icons,
    render_objects,
    sample_cameras,
    view_index,
)
from scorestudio.data.procedural import _object_pose


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def headlight_render(shape: str, elevation, azimuth, rgb=(0.9, 0.1, 0.1), resolution=64, **kw):
    """Images and coverage of one red shape at fixed cameras (distance 2.5, fovy 40)."""
    cams = cameras_from_angles(elevation, azimuth, 2.5, 40.0)
    n = len(cams)
    idx = torch.full((n,), ALL_SHAPES.index(shape))
    return render_objects(idx, torch.tensor([rgb]).expand(n, 3), cams, resolution,
                          return_alpha=True, **kw)


# ------------------------------------------------------------------------------ data set


def test_batch_is_deterministic_per_index_and_split():
    data = ProceduralDataset(ProceduralConfig(resolution=32))
    a, b, c = data.batch(16, 3), data.batch(16, 3), data.batch(16, 4)
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    for name in ("shape", "color", "kind", "view"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.images, c.images)
    test = ProceduralDataset(ProceduralConfig(resolution=32), split="test").batch(16, 3)
    assert not torch.equal(a.images, test.images)
    with pytest.raises(ValueError):
        ProceduralDataset(split="val")


def test_batch_fields_are_consistent():
    batch = ProceduralDataset(ProceduralConfig(resolution=32)).batch(48, 0)
    assert batch.images.shape == (48, 3, 32, 32) and batch.images.dtype == torch.float32
    assert 0.0 <= batch.images.min() and batch.images.max() <= 1.0
    is_icon = batch.kind == KINDS.index("icon")
    assert (batch.shape[is_icon] >= len(SHAPES_3D)).all()
    assert (batch.shape[~is_icon] < len(SHAPES_3D)).all()
    assert (batch.view[is_icon] == -1).all() and (batch.view[~is_icon] >= 0).all()
    # Every image has white corners (background) and some non-white foreground.
    assert (batch.images[:, :, 0, 0] == 1.0).all()
    assert ((batch.images < 0.9).flatten(1).any(1)).all()


def test_render_named_shape_and_color():
    data = ProceduralDataset(ProceduralConfig(resolution=32))
    for shape, color in (("house", "yellow"), ("star", "yellow"), ("torus", "cyan")):
        images = data.render(shape, color, 3, gen(1))
        assert images.shape == (3, 3, 32, 32)
        darkest = images.flatten(2).min(-1).values  # [3, 3]
        # The blue channel of yellow / red channel of cyan is far below white somewhere.
        assert (darkest.min(-1).values < 0.5).all()


# ------------------------------------------------------------------------------ cameras


def test_sampled_cameras_respect_ranges():
    dist = CameraDistribution()
    cams = sample_cameras(2000, dist, gen(0))
    ranges = ((cams.elevation, dist.elevation_range), (cams.distance, dist.distance_range),
              (cams.fovy, dist.fovy_range),
              (cams.light_position.norm(dim=-1), dist.light_distance_range))
    for values, (lo, hi) in ranges:
        assert values.min() >= lo - 1e-4 and values.max() <= hi + 1e-4
        assert values.max() - values.min() > 0.9 * (hi - lo)  # fills the range
    assert cams.azimuth.min() >= -180.0 and cams.azimuth.max() < 180.0
    assert torch.allclose(cams.camera_position.norm(dim=-1), cams.distance, atol=1e-4)
    assert torch.equal(sample_cameras(5, dist, gen(3)).c2w, sample_cameras(5, dist, gen(3)).c2w)
    narrow = sample_cameras(100, CameraDistribution(azimuth_range=(170.0, 190.0)), gen(0))
    assert narrow.azimuth.min() >= -180.0 and narrow.azimuth.max() < 180.0


def test_c2w_is_a_rotation_looking_at_the_origin():
    cams = sample_cameras(256, CameraDistribution(elevation_range=(-90.0, 90.0)), gen(1))
    rot = cams.c2w[:, :3, :3]
    eye = torch.eye(3).expand_as(rot)
    assert torch.allclose(rot.transpose(1, 2) @ rot, eye, atol=1e-5)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(256), atol=1e-5)
    forward = -rot[:, :, 2]  # the camera looks along its -z axis
    assert torch.allclose(forward, -cams.camera_position / cams.distance[:, None], atol=1e-5)
    assert torch.equal(cams.c2w[:, :3, 3], cams.camera_position)
    assert (rot[:, 2, 1] >= -1e-6).all()  # camera up never points below the horizon


def test_camera_position_convention():
    cams = cameras_from_angles(torch.tensor([0.0, 0.0, 90.0]), torch.tensor([0.0, 90.0, 0.0]), 2.0, 40.0)
    expected = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]])
    assert torch.allclose(cams.camera_position, expected, atol=1e-5)
    assert torch.equal(cams.light_position, cams.camera_position)  # headlight by default
    orbit = orbit_cameras(8)
    assert len(orbit) == 8 and orbit.azimuth[0] == -180.0
    assert torch.allclose(orbit.azimuth.diff(), torch.full((7,), 45.0))
    assert len(orbit.index(torch.tensor([1, 3]))) == 2


def test_get_rays_centre_and_orientation():
    cams = sample_cameras(4, CameraDistribution(), gen(2))
    origins, dirs = get_rays(cams, 33, 33)
    assert origins.shape == dirs.shape == (4, 33, 33, 3)
    assert torch.allclose(dirs.norm(dim=-1), torch.ones(4, 33, 33), atol=1e-5)
    to_origin = -cams.camera_position / cams.distance[:, None]
    assert torch.allclose(dirs[:, 16, 16], to_origin, atol=1e-5)
    up, right = cams.c2w[:, :3, 1], cams.c2w[:, :3, 0]
    assert ((dirs[:, 0, 16] * up).sum(-1) > 0).all()  # row 0 is the top
    assert ((dirs[:, 16, -1] * right).sum(-1) > 0).all()
    # Top and bottom rows span the vertical field of view.
    angle = torch.rad2deg(torch.acos((dirs[:, 0, 16] * dirs[:, -1, 16]).sum(-1)))
    assert torch.allclose(angle, cams.fovy * 32 / 33, atol=0.2)


def test_view_index_hand_cases():
    elevation = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 80.0, 30.0, 30.0])
    azimuth = torch.tensor([0.0, 90.0, 180.0, -90.0, -180.0, 0.0, 44.0, -136.0])
    expected = ["front", "side", "back", "side", "back", "overhead", "front", "back"]
    assert [VIEW_NAMES[i] for i in view_index(elevation, azimuth)] == expected


# ------------------------------------------------------------------------------ 3D renderer


def test_sphere_coverage_matches_the_pinhole_projection():
    images, alpha = headlight_render("sphere", 20.0, 30.0)
    radius, distance, fovy = 0.55, 2.5, 40.0  # the sphere's radius in its SDF
    tan_half_angle = radius / math.sqrt(distance**2 - radius**2)  # silhouette cone
    disc_radius_px = tan_half_angle * 32 / math.tan(math.radians(fovy / 2))
    expected = math.pi * disc_radius_px**2 / 64**2
    assert alpha.mean().item() == pytest.approx(expected, rel=0.03)
    background = alpha[:, 0] == 0
    assert background.any() and (images.permute(1, 0, 2, 3)[:, background] == 1.0).all()
    # Under a headlight the brightest point faces the light: shading = albedo there.
    foreground = images[0][:, alpha[0, 0] == 1.0]  # [3, P]
    assert torch.allclose(foreground.amax(-1), torch.tensor([0.9, 0.1, 0.1]), atol=0.03)
    # Half the size at scale 0.5.
    _, small = headlight_render("sphere", 20.0, 30.0, scale=torch.tensor([0.5]))
    tan_small = 0.5 * radius / math.sqrt(distance**2 - (0.5 * radius) ** 2)
    assert small.mean().item() == pytest.approx(expected * (tan_small / tan_half_angle) ** 2, rel=0.05)


def test_objects_fit_the_view():
    elevation = torch.tensor([-10.0, 20.0, 60.0, 60.0])
    azimuth = torch.tensor([0.0, 90.0, 180.0, -45.0])
    for shape in SHAPES_3D:
        _, alpha = headlight_render(shape, elevation, azimuth, resolution=32)
        border = torch.cat([alpha[..., 0, :], alpha[..., -1, :], alpha[..., 0], alpha[..., -1]], -1)
        assert border.max() == 0, shape
        assert (alpha.flatten(1).mean(1) > 0.1).all(), shape


def test_mug_handle_breaks_front_back_and_side_symmetry():
    azimuth = torch.tensor([0.0, 180.0, 90.0])
    images, alpha = headlight_render("mug", 10.0, azimuth)
    changed = ((images[0] - images[1]).abs().amax(0) > 0.1).sum()
    assert changed > 20  # the handle shows in the back view only
    side = alpha[2, 0] > 0.5
    assert (side != side.flip(-1)).sum() > 20  # handle sticks out on one side
    front = alpha[0, 0] > 0.5
    assert (front != front.flip(-1)).sum() <= 4
    # Control: a plain cylinder looks the same from the front and the back.
    cyl, _ = headlight_render("cylinder", 10.0, azimuth[:2])
    assert ((cyl[0] - cyl[1]).abs().amax(0) > 0.1).sum() == 0


def test_house_door_faces_the_front():
    red = 0.9
    images, alpha = headlight_render("house", 10.0, torch.tensor([0.0, 180.0]), rgb=(red, 0.1, 0.1))
    dark = (images[:, 0] < 0.5 * red) & (alpha[:, 0] == 1.0)
    assert dark[0].sum() > 20 and dark[1].sum() == 0


def test_asymmetric_objects_are_never_rotated():
    shape = torch.arange(len(SHAPES_3D)).repeat(50)
    yaw, scale = _object_pose(shape, gen(0))
    fixed = (shape == ALL_SHAPES.index("mug")) | (shape == ALL_SHAPES.index("house"))
    assert (yaw[fixed] == 0).all() and (yaw[shape == ALL_SHAPES.index("cube")] != 0).all()
    assert (scale > 0.8).all() and (scale <= 1.0).all()


# ------------------------------------------------------------------------------ icons


def icon_alpha(shape: str, rgb=(0.1, 0.2, 0.9), resolution=64, scale=0.5, angle=0.0,
               offset=(0.0, 0.0)):
    idx = torch.tensor([ALL_SHAPES.index(shape)])
    image = render_icons(idx, torch.tensor([rgb]), gen(0), resolution, scale=torch.tensor([scale]),
                         offset=torch.tensor([offset]), angle=torch.tensor([angle]))
    return image[0], (1.0 - image[0, 0]) / (1.0 - rgb[0])  # coverage from the red channel


@pytest.mark.parametrize("offset", [(0.0, 0.0), (0.13, -0.07)])
def test_circle_coverage_matches_its_area(offset):
    _, alpha = icon_alpha("circle", scale=0.5, offset=offset)
    # Canvas is [-1, 1]^2 (area 4); the unit circle scaled by 0.5.
    assert alpha.mean().item() == pytest.approx(math.pi * 0.5**2 / 4, rel=0.03)


@pytest.mark.parametrize("shape", ICON_SHAPES)
def test_every_icon_has_a_foreground_of_its_colour(shape):
    rgb = (0.95, 0.8, 0.05)
    image, _ = icon_alpha(shape, rgb=rgb)
    inside = (image - torch.tensor(rgb)[:, None, None]).abs().amax(0) < 1e-5
    assert inside.sum() > 100
    assert (image[:, 0, 0] == 1.0).all()  # white background


def test_star_has_five_points_and_heart_two_lobes():
    _, star = icon_alpha("star", resolution=128, scale=0.7)
    theta = torch.linspace(0, 2 * math.pi, 121)[:-1]
    radius = 0.6  # between the star's inner (~0.36) and outer (~0.8) radii, canvas units
    col = ((radius * theta.cos() + 1) * 64).long()
    row = ((1 - radius * theta.sin()) * 64).long()
    on = star[row, col] > 0.5
    assert (on != on.roll(1)).sum() == 10
    _, heart = icon_alpha("heart", resolution=128, scale=0.7)
    mask = heart > 0.5
    assert torch.equal(mask, mask.flip(-1))
    top_row = mask[mask.any(1).nonzero()[0, 0] + 4]
    assert (top_row != top_row.roll(1)).sum() == 4  # two separate lobes
    assert mask.any(1).nonzero()[-1, 0] > 64 + 30  # tip reaches far below the centre


def test_icons_reject_object_indices():
    with pytest.raises(ValueError):
        render_icons(torch.tensor([0]), torch.ones(1, 3), gen(0), 16)
    with pytest.raises(ValueError):
        render_objects(torch.tensor([len(SHAPES_3D)]), torch.ones(1, 3), orbit_cameras(1), 16)


def test_colors_are_far_from_white_and_each_other():
    rgb = torch.tensor([COLORS[c] for c in COLOR_NAMES])
    assert len(COLOR_NAMES) == 8
    assert ((1 - rgb).norm(dim=-1) > 0.6).all()
    pairwise = torch.cdist(rgb, rgb) + 10 * torch.eye(8)
    assert pairwise.min() > 0.25


# ------------------------------------------------------------------------------ captions


def test_caption_grammar():
    assert caption_for("cube", "red") == "a red cube"
    assert caption_for("cube", "orange") == "an orange cube"
    assert caption_for("star", "yellow") == "a yellow star icon"
    assert caption_for("star", "orange") == "an orange star icon"
    assert caption_for("cube", None) == "a cube"
    assert caption_for(None, "red", kind="object") == "a red object"
    assert caption_for(None, None, kind="object") == "an object"
    assert caption_for(None, None, kind="icon") == "an icon"
    assert caption_for(None, "red", kind="icon") == "a red icon"
    assert caption_for("ring", None) == "a ring icon"
    assert caption_for("mug", "blue", view="back") == "a blue mug, back view"
    with pytest.raises(ValueError):
        caption_for("star", "red", kind="object")
    with pytest.raises(ValueError):
        caption_for("cube", "beige")


def test_caption_statistics_match_the_config():
    cfg = ProceduralConfig(resolution=4)  # statistics only; keep rendering cheap
    batch = ProceduralDataset(cfg).batch(4000, 0)
    n = len(batch.captions)

    def near(fraction: float, p: float, count: int) -> bool:
        return abs(fraction - p) < 4.5 * math.sqrt(p * (1 - p) / count)

    is_icon = batch.kind == KINDS.index("icon")
    assert near(is_icon.float().mean().item(), cfg.icon_fraction, n)
    has_color, has_shape, has_view = [], [], []
    rows = zip(batch.captions, batch.color.tolist(), batch.shape.tolist(), batch.view.tolist(),
               is_icon.tolist())
    for caption, color_idx, shape_idx, view_idx, icon in rows:
        body, _, view = caption.partition(", ")
        words = body.split()
        assert words[0] == ("an" if words[1][0] in "aeiou" else "a"), caption
        color, shape = COLOR_NAMES[color_idx], ALL_SHAPES[shape_idx]
        has_color.append(color in words)
        has_shape.append(shape in words)
        assert set(words[1:]) <= {color, shape, "icon", "object"}, caption
        if icon:
            assert words[-1] == "icon" and not view, caption
        else:
            assert words[-1] in (shape, "object"), caption
            has_view.append(bool(view))
            if view:
                assert view == f"{VIEW_NAMES[view_idx]} view", caption
    assert near(1 - sum(has_color) / n, cfg.p_drop_color, n)
    assert near(1 - sum(has_shape) / n, cfg.p_drop_shape, n)
    assert near(sum(has_view) / len(has_view), cfg.p_view_suffix, len(has_view))
    # Uniform azimuth with 45 degree thresholds: a quarter front, a quarter back, half side.
    views = batch.view[~is_icon]
    for name, p in (("front", 0.25), ("back", 0.25), ("side", 0.5)):
        assert near((views == VIEW_NAMES.index(name)).float().mean().item(), p, len(views))
    both_dropped = sum(c == "an icon" for c in batch.captions) / is_icon.sum().item()
    assert near(both_dropped, cfg.p_drop_color * cfg.p_drop_shape, int(is_icon.sum()))
