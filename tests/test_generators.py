"""A new renderer is one generator plus a config: a coloured-disc generator defined and registered
here, trained with repulsion, validated, tested and exported by the distillation system."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor

from scorestudio.cli import parse_args, run
from scorestudio.generators.base import BaseGenerator, RenderOut
from scorestudio.utils.registry import register
from scorestudio.utils.seeding import per_particle_rand


@register("test-disc")
class DiscGenerator(BaseGenerator):
    """N soft discs on white: centre ``[N, 2]`` and log-radius ``[N]`` in canvas units, colour
    logits ``[N, 3]``; export writes ``particle{i}.json`` with the disc's parameters."""

    exports_assets = True

    @dataclass
    class Config:
        canvas: int = 16        # px
        softness: float = 0.05  # edge width, canvas units

    def configure(self) -> None:
        draws = per_particle_rand((6,), self.seed, range(self.n_particles), "disc-init")   # [N, 6]
        self.center = torch.nn.Parameter(0.3 + 0.4 * draws[:, :2])
        self.log_radius = torch.nn.Parameter((0.15 + 0.1 * draws[:, 2]).log())
        self.color = torch.nn.Parameter(4 * draws[:, 3:] - 2)

    def images(self, rows) -> Tensor:
        """``[K, 3, C, C]`` in [0, 1]: the discs of ``rows`` (None: all)."""
        pick = (lambda x: x) if rows is None else (lambda x: x[rows])
        c = self.cfg.canvas
        axis = (torch.arange(c, dtype=torch.float32) + 0.5) / c
        grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1)          # [C, C, 2] as (x, y)
        dist = (grid[None] - pick(self.center)[:, None, None]).norm(dim=-1)      # [K, C, C]
        inside = torch.sigmoid((pick(self.log_radius).exp()[:, None, None] - dist) / self.cfg.softness)
        color = torch.sigmoid(pick(self.color))[:, :, None, None]
        return 1 - inside[:, None] * (1 - color)

    def render(self, particle_ids, cameras=None, step=0, *, resolution=None, training=True) -> RenderOut:
        return RenderOut(images=self.images(self.rows(particle_ids)), particle_ids=particle_ids)

    def regularizers(self, out: RenderOut, step: int) -> dict[str, Tensor]:
        return {"loss_radius": 1e-3 * self.log_radius.exp().mean()}

    @torch.no_grad()
    def export(self, particle_ids, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i in particle_ids.tolist():
            path = folder / f"particle{i}.json"
            path.write_text(json.dumps({"center": self.center[i].tolist(), "radius": float(self.log_radius[i].exp()),
                                        "color": torch.sigmoid(self.color[i]).tolist()}))
            paths.append(path)
        return paths, {f"export/particle{i}/radius": float(self.log_radius[i].exp()) for i in particle_ids.tolist()}


CONFIG = """
name: discs
tag: run
use_timestamp: false
system_type: distillation
system:
  n_particles: 3
  generator_type: test-disc
  generator: {canvas: 16}
  prompt_processor: {prompt: a red circle icon}
  guidance_type: sds
  guidance:
    repulsion: {gamma: 20.0, features: pixel}
  optimizer: {name: Adam, args: {lr: 0.05}}
trainer: {max_steps: 4, val_check_interval: 2, enable_progress_bar: false}
checkpoint: {every_n_train_steps: 2}
"""


def launch(tmp_path: Path, tiny, mode: str, *overrides: str):
    prior, probe = tiny
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = tmp_path / "discs.yaml"
    config.write_text(CONFIG)
    args, extra = parse_args(["--config", str(config), f"--{mode}", f"exp_root_dir={tmp_path / 'out'}",
                              f"system.prior.pretrained_model_name_or_path={prior}", f"system.probe_path={probe}",
                              *overrides])
    return run(args, extra)


def final_centers(ctx) -> Tensor:
    state = torch.load(ctx.ckpt_dir / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    return state["generator.center"]


def test_a_generator_defined_outside_the_package_trains_validates_tests_and_exports(tmp_path, tiny):
    ctx = launch(tmp_path, tiny, "train")
    save = ctx.save_dir
    for name in ("it2-val.png", "it4-val.png", "particles.png", "particle2.png", "particle0.json"):
        assert (save / name).is_file(), name
    exported = json.loads((save / "particle1.json").read_text())
    assert 0 < exported["radius"] < 1 and len(exported["color"]) == 3
    metrics = json.loads(ctx.metrics_path.read_text())
    assert metrics["step"] == 4 and 1 <= metrics["distinct_colors"] <= 3

    launch(tmp_path, tiny, "export", f"resume={ctx.ckpt_dir / 'last.ckpt'}")
    assert sorted(p.name for p in (save / "it4-export").iterdir()) == [f"particle{i}.json" for i in range(3)]


def test_repulsion_reaches_a_generator_defined_outside_the_package(tmp_path, tiny):
    """Same seeds, same steps: with γ > 0 the discs end elsewhere than with γ = 0."""
    repelled = final_centers(launch(tmp_path / "a", tiny, "train"))
    free = final_centers(launch(tmp_path / "b", tiny, "train", "system.guidance.repulsion.gamma=0"))
    assert repelled.shape == free.shape == (3, 2)
    assert not torch.allclose(repelled, free)


def test_unknown_generator_names_the_known_ones(tmp_path, tiny):
    from scorestudio.utils.registry import RegistryError

    with pytest.raises(RegistryError, match="unknown generators module name 'test-dsc'. Did you mean 'test-disc'"):
        launch(tmp_path, tiny, "train", "system.generator_type=test-dsc")
