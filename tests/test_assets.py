"""Assets people can open: y-up meshes with normals, textures baked from the albedo, GLB
materials, output folders that never replace each other, labelled grids, readable turntables."""

from __future__ import annotations

import hashlib
import json
import os
import struct

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from scorestudio.export.mesh import (  # noqa: E402
    ExportConfig, extract_meshes, save_mesh, srgb_to_linear, texture_mesh,
)
from scorestudio.utils.images import labelled_grid  # noqa: E402
from tests.test_nerf import cli_train  # noqa: E402

RED, YELLOW = (0.8, 0.1, 0.1), (0.9, 0.8, 0.1)


def cone_density(points):
    """A cone along the scene's up axis z: base radius 0.4 at z = −0.5, apex at z = 0.6. ``[N, P]``."""
    z, r = points[..., 2], points[..., :2].norm(dim=-1)
    return 10.0 * ((z > -0.5) & (z < 0.6) & (r < 0.4 * (0.6 - z) / 1.1)).float()


def two_tone(points):
    """Red below z = 0, yellow above: ``[..., 3]``."""
    return torch.where(points[..., 2:] > 0, torch.tensor(YELLOW), torch.tensor(RED))


def export_cone(folder: Path, name: str = "cone", **settings) -> tuple[list[Path], object, object]:
    cfg = ExportConfig(resolution=40, texture_size=128, **settings)
    ((mesh, _),) = extract_meshes(cone_density, lambda p, ids: two_tone(p), 1, 1.0, cfg)
    textured = texture_mesh(mesh, lambda points, normals: two_tone(points), cfg) if cfg.texture else None
    return save_mesh(mesh, folder / name, list(cfg.formats), cfg.up_axis, textured), mesh, textured


def glb_json(path: Path) -> dict:
    """The JSON chunk of a GLB file."""
    data = path.read_bytes()
    length, kind = struct.unpack_from("<II", data, 12)
    assert kind == 0x4E4F534A
    return json.loads(data[20: 20 + length])


def glb_colors(path: Path) -> np.ndarray:
    """COLOR_0 of a GLB's first primitive, uint8 ``[V, 4]``."""
    data, gltf = path.read_bytes(), glb_json(path)
    json_length = struct.unpack_from("<I", data, 12)[0]
    binary = data[20 + json_length + 8:]
    accessor = gltf["accessors"][gltf["meshes"][0]["primitives"][0]["attributes"]["COLOR_0"]]
    view = gltf["bufferViews"][accessor["bufferView"]]
    assert accessor["componentType"] == 5121 and accessor["type"] == "VEC4"
    start = view.get("byteOffset", 0) + accessor.get("byteOffset", 0)
    return np.frombuffer(binary[start: start + 4 * accessor["count"]], dtype=np.uint8).reshape(-1, 4)


def test_files_are_y_up_with_normals_texture_and_a_diffuse_material(tmp_path):
    import trimesh

    paths, mesh, textured = export_cone(tmp_path)
    assert sorted(p.name for p in paths) == ["cone.glb", "cone.mtl", "cone.obj", "cone.ply", "cone.png"]
    for suffix in (".obj", ".glb", ".ply"):
        loaded = trimesh.load(tmp_path / f"cone{suffix}", force="mesh", process=False)
        lo, hi = loaded.bounds
        assert hi[1] - lo[1] > 1.0 > max(hi[0] - lo[0], hi[2] - lo[2]), suffix      # tall along y
        assert lo[1] == pytest.approx(-0.5, abs=0.06) and hi[1] > 0.4, suffix                 # base down
        top = loaded.vertices[loaded.vertices[:, 1] > hi[1] - 0.1]
        assert np.hypot(top[:, 0], top[:, 2]).max() < 0.15, suffix                           # apex up
        # scene (x, y, z) -> file (y, z, x): the scene's front (+x) faces the file's +z
        written = np.unique(loaded.vertices.round(4), axis=0)         # textured files: split along seams
        np.testing.assert_allclose(written, np.unique(mesh.vertices[:, [1, 2, 0]].round(4), axis=0), atol=2e-4)
    gltf = glb_json(tmp_path / "cone.glb")
    primitive = gltf["meshes"][0]["primitives"][0]
    assert {"POSITION", "NORMAL", "TEXCOORD_0"} <= set(primitive["attributes"]) and "COLOR_0" not in primitive["attributes"]
    pbr = gltf["materials"][primitive["material"]]["pbrMetallicRoughness"]
    assert pbr["metallicFactor"] == 0 and pbr["roughnessFactor"] == 1 and "baseColorTexture" in pbr
    obj = (tmp_path / "cone.obj").read_text()
    assert "mtllib cone.mtl" in obj and "\nvn " in obj and "\nvt " in obj
    assert "map_Kd cone.png" in (tmp_path / "cone.mtl").read_text()
    # normals point out of the cone: away from its axis on the side
    loaded = trimesh.load(tmp_path / "cone.glb", force="mesh", process=False)
    side = np.abs(loaded.vertices[:, 1]) < 0.3
    outward = (loaded.vertex_normals[side][:, [0, 2]] * loaded.vertices[side][:, [0, 2]]).sum(1)
    assert (outward > 0).mean() > 0.95


def test_texture_and_vertex_colours_hold_the_albedo_without_darkening(tmp_path):
    import trimesh

    paths, mesh, textured = export_cone(tmp_path)
    # the texture, read back where each vertex maps, is the albedo at that vertex
    loaded = trimesh.load(tmp_path / "cone.obj", force="mesh", process=False)
    colors = loaded.visual.to_color().vertex_colors[:, :3] / 255
    scene = loaded.vertices[:, [2, 0, 1]]                          # file (y, z, x) -> scene (x, y, z)
    away = np.abs(scene[:, 2]) > 0.05                              # off the colour boundary
    np.testing.assert_allclose(colors[away], two_tone(torch.as_tensor(scene[away])).numpy(), atol=1.5 / 255)
    # the texture's mean over the charts lies between the two albedos, weighted by area
    assert RED[0] <= textured.mean_color[0] <= YELLOW[0] and RED[1] < textured.mean_color[1] < YELLOW[1]
    ply = trimesh.load(tmp_path / "cone.ply", force="mesh", process=False)
    ply_scene = ply.vertices[:, [2, 0, 1]]
    expected = np.round(two_tone(torch.as_tensor(ply_scene)).numpy() * 255)
    np.testing.assert_array_equal(ply.visual.vertex_colors[:, :3], expected)     # sRGB values as rendered


def test_vertex_colour_glb_is_linear_and_has_a_material(tmp_path):
    paths, mesh, _ = export_cone(tmp_path, texture=False, formats=["glb", "obj"])
    assert sorted(p.name for p in paths) == ["cone.glb", "cone.obj"]
    gltf = glb_json(tmp_path / "cone.glb")
    primitive = gltf["meshes"][0]["primitives"][0]
    assert "COLOR_0" in primitive["attributes"] and "NORMAL" in primitive["attributes"]
    assert gltf["materials"][primitive["material"]]["pbrMetallicRoughness"]["metallicFactor"] == 0
    stored = glb_colors(tmp_path / "cone.glb")[:, :3].astype(float)
    red, yellow = (np.round(srgb_to_linear(np.array(c)) * 255) for c in (RED, YELLOW))
    assert all(min(np.abs(c - red).max(), np.abs(c - yellow).max()) <= 1 for c in stored)
    assert (np.abs(stored - red).max(1) <= 1).any() and (np.abs(stored - yellow).max(1) <= 1).any()
    assert "\nvn " in (tmp_path / "cone.obj").read_text()


def test_up_axis_z_keeps_scene_coordinates_and_decimation_meets_the_budget(tmp_path):
    import trimesh

    _, mesh, _ = export_cone(tmp_path, up_axis="z", texture=False, formats=["ply"])
    loaded = trimesh.load(tmp_path / "cone.ply", force="mesh", process=False)
    np.testing.assert_allclose(loaded.vertices, mesh.vertices, atol=1e-6)
    _, small, _ = export_cone(tmp_path, name="small", max_faces=400, texture=False, formats=["ply"])
    assert 0 < len(small.faces) <= 400 < len(mesh.faces)


def test_labelled_grid_puts_text_above_each_picture():
    images = torch.zeros(4, 3, 64, 64)
    grid = labelled_grid(images, [f"particle {i}" for i in range(4)], ncol=2, title="a red cone")
    assert grid.shape[0] == 3 and grid.shape[1] > 2 * 64 + 2 * 12 and grid.shape[2] == 2 * 66 + 2
    strip = grid[:, :14]                        # the title: dark text on white
    assert strip.min() < 0.3 and strip.mean() > 0.8


def hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def glb_vertices(path: Path) -> int:
    gltf = glb_json(path)
    return gltf["accessors"][gltf["meshes"][0]["primitives"][0]["attributes"]["POSITION"]]["count"]


def test_export_then_test_then_export_never_replace_files_of_other_settings(tiny, tmp_path):
    """--export, then --test and --export at other resolutions, then --export again: each goes
    to its own folder (named by step, mode and the settings that differ from the run's), no file
    written before changes, and the repeated export rewrites its meshes at the same lattice."""
    from PIL import Image

    from scorestudio.cli import parse_args, run

    root = cli_train(tmp_path, tiny, "run", "trainer.max_steps=2", "system.export.after_test=false",
                     "trainer.val_check_interval=0", "system.export.texture_size=32").root
    save = root / "save"
    assert {p.name for p in save.iterdir()} == {"it2-test"}            # turntables only
    assert Image.open(save / "it2-test" / "all.gif").n_frames == 4

    def again(mode, *overrides):   # as a user would: the run's recorded config and its checkpoint
        args, extra = parse_args(["--config", str(root / "configs" / "parsed.yaml"), f"--{mode}",
                                  f"resume={root / 'ckpts' / 'last.ckpt'}", *overrides])
        run(args, extra)
        return hashes(save)

    seen = hashes(save)
    steps = [("export",),
             ("test", "system.evaluation.resolution=24", "system.generator.export.resolution=20",
              "system.generator.export.after_test=true"),
             ("export", "system.generator.export.resolution=20")]
    for mode, *overrides in steps:
        now = again(mode, *overrides)
        changed = [rel for rel, digest in seen.items() if now.get(rel) != digest]
        assert not changed, f"--{mode} {overrides} replaced {changed}"
        seen = now
    folders = sorted(p.name for p in save.iterdir())
    assert folders == ["it2-export", "it2-export-mc20", "it2-test", "it2-test-res24-mc20"], folders
    assert Image.open(save / "it2-test-res24-mc20" / "particle0.gif").size[1] > 24
    sizes = {name: glb_vertices(save / name / "particle0.glb") for name in ("it2-export", "it2-test-res24-mc20")}
    again("export")                                                   # the run's settings again
    assert glb_vertices(save / "it2-export" / "particle0.glb") == sizes["it2-export"] != sizes["it2-test-res24-mc20"]
