"""The 3DGS splat PLY (what splat viewers and 3DGS tools read), written and read with numpy.

One binary little-endian ``vertex`` element of float32 properties, in 3DGS's order::

    x y z nx ny nz f_dc_0 f_dc_1 f_dc_2 [f_rest_0 … f_rest_{3·(K−1)−1}] opacity scale_0 scale_1 scale_2 rot_0 rot_1 rot_2 rot_3

``f_dc`` / ``f_rest`` are spherical-harmonic coefficients (``f_rest`` channel-major: the K − 1
higher coefficients of red, then green, then blue), ``opacity`` the logit, ``scale_*`` the log of
the axis standard deviations and ``rot_*`` the quaternion (w, x, y, z). The normals are zeros.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def field_names(sh_coefficients: int) -> list[str]:
    """Property names for spherical harmonics with ``sh_coefficients`` coefficients per channel."""
    rest = [f"f_rest_{i}" for i in range(3 * (sh_coefficients - 1))]
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", *rest, "opacity",
             "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def write_splat_ply(path: Path, means: np.ndarray, sh: np.ndarray, opacity_logits: np.ndarray,
                    log_scales: np.ndarray, quats: np.ndarray) -> Path:
    """Write ``means [n, 3]``, ``sh [n, K, 3]``, ``opacity_logits [n]``, ``log_scales [n, 3]`` and
    ``quats [n, 4]`` to ``path``; returns it."""
    n, k = sh.shape[0], sh.shape[1]
    names = field_names(k)
    columns = [means, np.zeros((n, 3)), sh[:, 0, :], sh[:, 1:, :].transpose(0, 2, 1).reshape(n, -1),
               opacity_logits.reshape(n, 1), log_scales, quats]
    data = np.concatenate([np.asarray(c, dtype=np.float32).reshape(n, -1) for c in columns], axis=1)
    records = np.empty(n, dtype=[(name, "<f4") for name in names])
    for i, name in enumerate(names):
        records[name] = data[:, i]
    header = "\n".join(["ply", "format binary_little_endian 1.0", f"element vertex {n}",
                        *(f"property float {name}" for name in names), "end_header"]) + "\n"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.write(header.encode("ascii"))
        f.write(records.tobytes())
    return path


def read_splat_ply(path: Path) -> dict[str, np.ndarray]:
    """The float32 vertex properties of a binary little-endian PLY, by name (a plain parser of the
    header: it reads what :func:`write_splat_ply` and 3DGS write)."""
    raw = Path(path).read_bytes()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    lines = raw[:end].decode("ascii").splitlines()
    if lines[0] != "ply" or lines[1] != "format binary_little_endian 1.0":
        raise ValueError(f"{path}: not a binary little-endian PLY")
    count = next(int(line.split()[2]) for line in lines if line.startswith("element vertex"))
    names = [line.split()[2] for line in lines if line.startswith("property float")]
    records = np.frombuffer(raw, dtype=[(name, "<f4") for name in names], count=count, offset=end)
    return {name: np.array(records[name]) for name in names}
