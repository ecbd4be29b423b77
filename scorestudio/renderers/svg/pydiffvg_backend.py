"""Optional diffvg backend for :func:`scorestudio.renderers.svg.render` (``backend: pydiffvg``).

diffvg (Li et al. 2020) is the reference differentiable vector rasterizer, but it is not on PyPI:
it has to be compiled from source, so scorestudio's default is its own PyTorch rasterizer. Users
who have built diffvg get the same interface here; ``pydiffvg`` is imported on first use only.
Not exercised by the test suite (it cannot be installed there).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

INSTALL_HINT = """\
the 'pydiffvg' rasterizer backend needs diffvg, which is not pip-installable. Build it from source:
    git clone --recursive https://github.com/BachiLi/diffvg && cd diffvg
    pip install svgwrite svgpathtools cssutils torch-tools   # its Python build dependencies
    python setup.py install                                   # needs CMake and a C++ compiler (CUDA optional)
Known issues: the bundled pybind11 submodule is too old for Python >= 3.11 (update it to pybind11
>= 2.10 before building), and a CUDA build needs a matching nvcc. Or use the built-in rasterizer:
set backend: torch (the default)."""


def _pydiffvg() -> Any:
    try:
        import pydiffvg
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err
    return pydiffvg


def render(scene, cfg) -> tuple[Tensor, Tensor]:
    """Render an :class:`~scorestudio.renderers.svg.SvgScene` with diffvg: RGB ``[N, 3, H, W]``
    over the scene's background and coverage ``[N, 1, H, W]``, differentiable like the torch
    backend. ``cfg.antialias`` picks 2×2 (True) or 1 sample per pixel."""
    if not scene.is_fill_only():
        raise ValueError("the pydiffvg backend draws flat fills only; this scene has strokes, gradients, opacity "
                         "or clip paths: render it with backend: torch")
    pydiffvg = _pydiffvg()
    pydiffvg.set_use_gpu(scene.points.is_cuda)
    samples = 2 if cfg.antialias else 1
    background = scene.backgrounds()
    rgb, alpha = [], []
    for n in range(scene.batch_size):
        shapes, groups = _shapes(pydiffvg, scene, n)
        args = pydiffvg.RenderFunction.serialize_scene(scene.width, scene.height, shapes, groups)
        img = pydiffvg.RenderFunction.apply(scene.width, scene.height, samples, samples, 0, None, *args)
        a = img[..., 3:].permute(2, 0, 1)                                  # straight alpha [1, H, W]
        rgb.append(img[..., :3].permute(2, 0, 1) * a + background[n, :, None, None] * (1 - a))
        alpha.append(a)
    return torch.stack(rgb), torch.stack(alpha)


def _shapes(pydiffvg, scene, n: int) -> tuple[list, list]:
    """diffvg shapes of scene ``n``: one closed ``Path`` per contour, one ``ShapeGroup`` per path
    (the group applies the fill rule to all its contours, like one SVG ``<path>``)."""
    shapes, groups = [], []
    contour = scene.contour.cpu()
    for p in range(scene.num_paths):
        ids = []
        for c in contour[p].unique().tolist():
            if c < 0:
                continue
            segs = (contour[p] == c).nonzero(as_tuple=True)[0]
            idx = (3 * segs[:, None] + torch.arange(3)).reshape(-1).to(scene.points.device)
            shapes.append(pydiffvg.Path(num_control_points=torch.full((len(segs),), 2, dtype=torch.int32),
                                        points=scene.points[n, p, idx].float().contiguous(),
                                        is_closed=True, stroke_width=torch.tensor(0.0)))
            ids.append(len(shapes) - 1)
        if ids:
            groups.append(pydiffvg.ShapeGroup(shape_ids=torch.tensor(ids), fill_color=scene.fill[n, p].float(),
                                              use_even_odd_rule=bool(scene.fill_rule[p])))
    return shapes, groups
