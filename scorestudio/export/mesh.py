"""Density fields → meshes people can open: marching cubes, floaters removed, optional decimation,
vertex normals, a baked albedo texture, written y-up as OBJ + MTL + PNG, GLB and PLY.

    meshes = extract_meshes(density_fn, color_fn, n_particles, radius, cfg)   # [(trimesh.Trimesh, removed)]
    textured = texture_mesh(meshes[0][0], lambda points, normals: albedo(points), cfg)
    paths = save_mesh(meshes[0][0], "save/it500-export/particle0", ["obj", "glb", "ply"], textured=textured)
    mesh_report(meshes[0][0])   # {"watertight": ..., "boundary_edges": ..., ...}

The density is sampled on a ``resolution``³ lattice over [−radius, radius]³ (one zero-density
voxel of padding around it, so surfaces that touch the box still close), the ``threshold``
isosurface is extracted by PyMCubes (scikit-image as a fallback), small disconnected pieces are
dropped, and vertex colours come from the albedo at the vertices.

What each file holds (docs/assets.md):

* axes: the scene is z-up and its front faces +x (the azimuth-0 camera). Files are written in
  ``up_axis`` coordinates: ``"y"`` (default) maps scene (x, y, z) to file (y, z, x), so y is up
  and the front faces +z, as glTF requires and OBJ / PLY viewers assume; ``"z"`` keeps scene
  coordinates. 1 file unit = 1 scene unit (glTF reads it as a metre); the scene ball has radius
  ``geometry.radius``.
* normals: per vertex, area-weighted over the faces around it (GLB NORMAL, OBJ ``vn``, PLY
  nx ny nz), computed before the atlas splits vertices along seams so shading shows no seams.
* colour: the albedo, i.e. the renders' colour before the light (an albedo render shows the
  same values): what a ray along the inward normal composites near each surface point
  (the generator's ``surface_albedo``), not the field's value at the isosurface itself, which
  lies in the thin low-density rim whose colour the renders barely see. OBJ and GLB carry it as a texture when ``texture`` (a UV atlas, the albedo
  baked per texel: OBJ ``map_Kd`` in the MTL, GLB ``baseColorTexture`` of a metallic 0 /
  roughness 1 PBR material), PLY as vertex colours. Textures and OBJ / PLY vertex colours hold
  the renders' sRGB values; GLB ``COLOR_0`` (vertex colours without texture) is linear by the
  glTF spec, so it holds the linearised values (sRGB values there show washed out). Every GLB
  gets a diffuse material: glTF's default one is a rough metal (metallic 1), lit by the
  environment as a metal rather than as the diffuse surface the renders show.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

from scorestudio.utils.config import ConfigError

FORMATS = ("obj", "glb", "ply")
# file coordinates = UP_AXES[up_axis] @ scene coordinates (rotations: handedness and winding kept)
UP_AXES = {"y": np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]), "z": np.eye(3)}


@dataclass
class ExportConfig:
    resolution: int = 96                # marching-cubes lattice points per axis over [-radius, radius]
    threshold: float = 5.0              # density of the isosurface (scene units⁻¹)
    min_component_fraction: float = 0.1  # keep pieces with ≥ this fraction of the largest piece's faces
    max_faces: int = 0                  # decimate to at most this many faces (fast-simplification); 0 = all
    formats: list = field(default_factory=lambda: ["obj", "glb", "ply"])
    # Up axis of the files: "y" writes scene (x, y, z) as (y, z, x) (y up, front towards +z: glTF,
    # OBJ, PLY viewers); "z" writes scene coordinates (z up, front towards +x). 1 unit = 1 scene unit.
    up_axis: str = "y"
    texture: bool = True                # OBJ / GLB: UV atlas (xatlas) with the albedo baked; false: vertex colours
    texture_size: int = 1024            # texels per side of the texture
    chunk: int = 262144                 # points per field evaluation
    after_test: bool = False            # also export at the end of --test (and so of --train)


@dataclass
class TexturedMesh:
    """A mesh cut along its UV charts: ``vertices [V', 3]`` (scene frame), ``faces [F, 3]``,
    ``normals [V', 3]``, ``uv [V', 2]`` (v up) and the albedo ``texture [3, T, T]`` in [0, 1];
    ``mean_color`` is the mean albedo of the texels inside the charts, ``[3]`` in [0, 1]."""

    vertices: np.ndarray
    faces: np.ndarray
    normals: np.ndarray
    uv: np.ndarray
    texture: Tensor
    mean_color: Tensor


def check_export_config(cfg: ExportConfig, key: str) -> None:
    bad = [f for f in cfg.formats if f not in FORMATS]
    if bad:
        raise ConfigError(f"{key}.formats: unknown mesh formats {bad}: use {list(FORMATS)}")
    if cfg.up_axis not in UP_AXES:
        raise ConfigError(f"{key}.up_axis={cfg.up_axis!r}: use 'y' (glTF, most viewers) or 'z' (scene coordinates)")
    if cfg.max_faces < 0 or cfg.texture_size < 16:
        raise ConfigError(f"{key}: max_faces ≥ 0 (0 = no decimation) and texture_size ≥ 16, got "
                          f"{cfg.max_faces}, {cfg.texture_size}")


def lattice(resolution: int, radius: float) -> Tensor:
    """Lattice points ``[resolution³, 3]`` over [−radius, radius]³, x slowest (index order i, j, k)."""
    axis = torch.linspace(-radius, radius, resolution)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)


def marching_cubes(volume: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Vertices ``[V, 3]`` (in index units of ``volume``) and faces ``[F, 3]`` of the isosurface."""
    try:
        import mcubes

        return mcubes.marching_cubes(volume, threshold)
    except ImportError:
        from skimage.measure import marching_cubes as skimage_mc

        if not volume.min() < threshold < volume.max():
            return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
        verts, faces, _, _ = skimage_mc(volume, level=threshold)
        return verts, faces


def largest_components(mesh, min_fraction: float):
    """``mesh`` without connected pieces smaller than ``min_fraction`` × the largest (in faces);
    returns (mesh, number of pieces removed)."""
    import trimesh

    parts = mesh.split(only_watertight=False)
    if len(parts) <= 1:
        return mesh, 0
    biggest = max(len(p.faces) for p in parts)
    kept = [p for p in parts if len(p.faces) >= min_fraction * biggest]
    return trimesh.util.concatenate(kept), len(parts) - len(kept)


def decimate(mesh, max_faces: int):
    """``mesh`` with at most ``max_faces`` faces (quadric edge collapses), or itself when it has
    no more already or ``max_faces`` is 0."""
    if not max_faces or len(mesh.faces) <= max_faces:
        return mesh
    try:
        import fast_simplification
    except ImportError as err:
        raise ImportError("export.max_faces needs fast-simplification (pip install fast-simplification), "
                          "or set it to 0") from err
    import trimesh

    verts, faces = fast_simplification.simplify(np.asarray(mesh.vertices, dtype=np.float64),
                                                np.asarray(mesh.faces, dtype=np.int64), target_count=max_faces)
    return trimesh.Trimesh(verts, faces, process=True)


@torch.no_grad()
def extract_meshes(density_fn: Callable[[Tensor], Tensor], color_fn: Optional[Callable[[Tensor, Tensor], Tensor]],
                   n_particles: int, radius: float, cfg: ExportConfig) -> list[tuple]:
    """One mesh per particle, in scene coordinates, with vertex colours when ``color_fn``.

    density_fn: points ``[N, P, 3]`` → density ``[N, P]`` (all particles at once);
    color_fn: (points ``[1, P, 3]``, particle ids ``[1]``) → colours ``[1, P, 3]`` in [0, 1].
    Returns ``(trimesh.Trimesh, pieces removed)`` per particle (an empty mesh when the field
    never reaches the threshold).
    """
    import trimesh

    res = cfg.resolution
    points = lattice(res, radius)
    density = torch.cat([density_fn(chunk[None].expand(n_particles, -1, -1).contiguous()).cpu()
                         for chunk in points.split(cfg.chunk)], dim=1)                  # [N, res³]
    volumes = np.pad(density.view(n_particles, res, res, res).numpy(), ((0, 0), (1, 1), (1, 1), (1, 1)))
    out = []
    for i, volume in enumerate(volumes):
        verts, faces = marching_cubes(volume.astype(np.float64), cfg.threshold)
        verts = (np.asarray(verts) - 1) / (res - 1) * 2 * radius - radius     # index → scene units
        mesh = trimesh.Trimesh(verts, np.asarray(faces, dtype=np.int64), process=True)
        if len(mesh.faces) == 0:
            out.append((mesh, 0))
            continue
        if mesh.volume < 0:   # density grows inwards: make the normals point out
            mesh.invert()
        mesh, removed = largest_components(mesh, cfg.min_component_fraction)
        mesh = decimate(mesh, cfg.max_faces)
        if color_fn is not None:
            vertices = torch.as_tensor(mesh.vertices, dtype=torch.float32)
            colors = torch.cat([color_fn(chunk[None], torch.tensor([i]))[0].cpu() for chunk in vertices.split(cfg.chunk)])
            set_vertex_colors(mesh, colors.numpy())
        out.append((mesh, removed))
    return out


def texture_mesh(mesh, color_fn: Callable[[Tensor, Tensor], Tensor], cfg: ExportConfig) -> TexturedMesh:
    """``mesh`` (scene frame) cut along a UV atlas, with ``color_fn`` (points, unit normals
    ``[P, 3]`` → albedo ``[P, 3]``) baked into a ``texture_size``² texture
    (:mod:`scorestudio.export.texture`)."""
    from scorestudio.export.texture import bake_texture, uv_atlas

    vertices, faces = np.asarray(mesh.vertices), np.asarray(mesh.faces)
    atlas = uv_atlas(vertices, faces, cfg.texture_size)
    split, normals = vertices[atlas.vmapping], np.asarray(mesh.vertex_normals)[atlas.vmapping]
    image, covered = bake_texture(atlas, split, normals, color_fn, cfg.texture_size, cfg.chunk)
    mean = image[:, covered].mean(1) if covered.any() else image.mean((1, 2))
    return TexturedMesh(split, atlas.faces, normals, atlas.uv, image, mean)


def set_vertex_colors(mesh, colors: np.ndarray) -> None:
    """Give ``mesh`` the vertex colours ``[V, 3]`` in [0, 1]."""
    import trimesh

    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=rgba8(colors))


def boundary_edges(mesh) -> int:
    """Edges used by exactly one face (the rims of holes); 0 for a closed surface."""
    import trimesh

    if len(mesh.faces) == 0:
        return 0
    return int(len(trimesh.grouping.group_rows(mesh.edges_sorted, require_count=1)))


def mesh_report(mesh, removed: int = 0) -> dict:
    """Scalar facts about a mesh for metrics.json."""
    return {"vertices": int(len(mesh.vertices)), "faces": int(len(mesh.faces)),
            "watertight": bool(len(mesh.faces) > 0 and mesh.is_watertight),
            "boundary_edges": boundary_edges(mesh), "components_removed": int(removed)}


# ---- colours ---------------------------------------------------------------------------------------
def srgb_to_linear(color: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0, 1] → linear light (IEC 61966-2-1)."""
    color = np.clip(color, 0, 1)
    return np.where(color <= 0.04045, color / 12.92, ((color + 0.055) / 1.055) ** 2.4)


def rgba8(colors: np.ndarray) -> np.ndarray:
    """Colours ``[V, 3]`` in [0, 1] → opaque RGBA ``[V, 4]`` uint8."""
    rgb = np.round(np.clip(colors, 0, 1) * 255).astype(np.uint8)
    return np.concatenate([rgb, np.full((len(rgb), 1), 255, dtype=np.uint8)], axis=1)


def texture_image(texture: Tensor):
    """The texture ``[3, T, T]`` in [0, 1] as an RGB PIL image (row 0 at the top)."""
    from PIL import Image

    return Image.fromarray(texture.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy(), "RGB")


# ---- files ---------------------------------------------------------------------------------------
def save_mesh(mesh, stem: str | Path, formats: list[str], up_axis: str = "y",
              textured: Optional[TexturedMesh] = None) -> list[Path]:
    """Write ``stem.<format>`` for each of ``formats`` (obj, glb, ply; see the module docstring)
    of ``mesh`` (scene frame, albedo vertex colours) and, for OBJ and GLB, of its ``textured``
    version when given (OBJ then also writes ``stem.mtl`` and ``stem.png``); returns the paths."""
    bad = [f for f in formats if f not in FORMATS]
    if bad or up_axis not in UP_AXES:
        raise ValueError(f"formats {list(formats)}, up_axis {up_axis!r}: use formats of {FORMATS} and an up axis of {tuple(UP_AXES)}")
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    rotation = UP_AXES[up_axis]
    vertices = np.asarray(mesh.vertices) @ rotation.T
    normals = np.asarray(mesh.vertex_normals) @ rotation.T
    faces = np.asarray(mesh.faces)
    colors = np.asarray(mesh.visual.vertex_colors)[:, :3] / 255.0 if mesh.visual.kind == "vertex" else None
    note = (f"scorestudio mesh: {up_axis} up, front towards {'+z' if up_axis == 'y' else '+x'}, "
            "1 unit = 1 scene unit, colours = albedo (sRGB)")
    paths = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        if fmt == "ply":
            paths.append(write_ply(path, vertices, faces, normals, colors))
        elif textured is not None:
            split = (textured.vertices @ rotation.T, textured.faces, textured.normals @ rotation.T)
            write = write_obj if fmt == "obj" else write_glb
            paths += write(path, *split, uv=textured.uv, texture=textured.texture, note=note)
        else:
            write = write_obj if fmt == "obj" else write_glb
            paths += write(path, vertices, faces, normals, colors=colors, note=note)
    return paths


def write_ply(path: Path, vertices, faces, normals, colors) -> Path:
    """Binary PLY with vertex normals and (sRGB) vertex colours."""
    import trimesh

    mesh = trimesh.Trimesh(vertices, faces, vertex_normals=normals, process=False)
    if colors is not None:
        mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=rgba8(colors))
    path.write_bytes(trimesh.exchange.ply.export_ply(mesh, vertex_normal=True))
    return path


def write_obj(path: Path, vertices, faces, normals, *, uv=None, texture=None, colors=None, note: str = "") -> list[Path]:
    """OBJ with ``vn`` normals, and either ``vt`` + an MTL whose ``map_Kd`` is ``<stem>.png``
    (``uv``, ``texture``) or ``v x y z r g b`` vertex colours (``colors``). Returns the files."""
    lines = [f"# {note}"] if note else []
    written = [path]
    if texture is not None:
        mtl, png = path.with_suffix(".mtl"), path.with_suffix(".png")
        texture_image(texture).save(png)
        # Diffuse only: the albedo is the whole colour (no specular, ambient = diffuse).
        mtl.write_text(f"newmtl {path.stem}\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nillum 1\nmap_Kd {png.name}\n")
        lines += [f"mtllib {mtl.name}", f"usemtl {path.stem}"]
        written += [mtl, png]
    v = np.column_stack([vertices, colors]) if colors is not None else vertices
    lines += [("v" + " {:.6f}" * v.shape[1]).format(*row) for row in v]
    if uv is not None:
        lines += ["vt {:.6f} {:.6f}".format(*row) for row in uv]
    lines += ["vn {:.6f} {:.6f} {:.6f}".format(*row) for row in normals]
    corner = "{0}/{0}/{0}" if uv is not None else "{0}//{0}"
    lines += ["f " + " ".join(corner.format(i) for i in tri) for tri in (np.asarray(faces) + 1).tolist()]
    path.write_text("\n".join(lines) + "\n")
    return written


def write_glb(path: Path, vertices, faces, normals, *, uv=None, texture=None, colors=None, note: str = "") -> list[Path]:
    """GLB with NORMAL and a PBR material (metallic 0, roughness 1): ``baseColorTexture`` from
    ``uv`` + ``texture``, or linear ``COLOR_0`` from sRGB ``colors``. Returns the file."""
    import trimesh
    from trimesh.visual.material import PBRMaterial

    image = texture_image(texture) if texture is not None else None
    material = PBRMaterial(name=path.stem, baseColorFactor=[255, 255, 255, 255], baseColorTexture=image,
                           metallicFactor=0.0, roughnessFactor=1.0)
    visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    if colors is not None:
        visual.vertex_attributes["color"] = rgba8(srgb_to_linear(colors))
    mesh = trimesh.Trimesh(vertices, faces, vertex_normals=normals, visual=visual, process=False,
                           metadata={"scorestudio": note})
    path.write_bytes(trimesh.exchange.gltf.export_glb(mesh, include_normals=True))
    return [path]
