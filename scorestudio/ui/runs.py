"""Run folders under the app's outputs folder: found, described, and their results listed.

Any run folder shows up, whether the app or the command line made it (``configs/parsed.yaml``
marks one; ``scorestudio batch`` folders one level deeper too). The page names a run by its path
relative to the outputs folder; :func:`run_folder` maps such a name back and refuses anything
that does not resolve to a run folder inside it, and every file the app hands to the page passes
:func:`inside` (resolved, symbolic links followed), so no path from the browser reaches the file
system elsewhere.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

MARKER = Path("configs") / "parsed.yaml"
MAX_DEPTH = 4          # outputs/<name>/<run>, outputs/<batch>/<name>/<run>
NOT_RUNS = {"ckpts", "save", "csv_logs", "tb_logs", "configs", "frames", "node_modules"}
STEP = re.compile(r"^it(\d+)")
PICTURES = ("particles.png", "comparison.png", "collapse_vs_gamma.png", "particle_paths.png", "grid.png",
            "init_samples.png")
DOWNLOADS = (".svg", ".glb", ".obj", ".ply", ".gif", ".mp4", ".png")


def inside(root: Path, path: Path) -> Optional[Path]:
    """``path`` resolved, if it is a file under ``root`` (resolved too); else None."""
    try:
        resolved = Path(path).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    return resolved if resolved.is_file() and resolved.is_relative_to(root.resolve()) else None


def run_folder(root: Path, name: str) -> Optional[Path]:
    """The run folder the page calls ``name`` (relative to ``root``), or None when ``name`` is
    not one: absolute, ``..``, a link out of ``root``, or a folder without ``configs/parsed.yaml``."""
    if not isinstance(name, str) or not name or "\x00" in name or Path(name).is_absolute() or ".." in Path(name).parts:
        return None
    folder = (root / name).resolve()
    if not folder.is_relative_to(root.resolve()) or inside(root, folder / MARKER) is None:
        return None
    return folder


def find_runs(root: Path) -> list[Path]:
    """Run folders under ``root``, newest first (by their last change)."""
    found: list[Path] = []

    def walk(folder: Path, depth: int) -> None:
        if (folder / MARKER).is_file():
            found.append(folder)
            return
        if depth == MAX_DEPTH:
            return
        try:
            children = [c for c in folder.iterdir() if c.is_dir() and not c.is_symlink()]
        except OSError:
            return
        for child in children:
            if child.name not in NOT_RUNS and not child.name.startswith("."):
                walk(child, depth + 1)

    if root.is_dir():
        walk(root, 0)
    return sorted(found, key=last_change, reverse=True)


def last_change(folder: Path) -> float:
    marks = (folder, folder / "metrics.json", folder / "ckpts" / "last.ckpt", folder / "save")
    times = [p.stat().st_mtime for p in marks if p.exists()]
    return max(times)


@dataclass
class RunInfo:
    """What the run browser shows of a run folder."""

    folder: Path
    name: str                     # relative to the outputs folder: the page's name for the run
    system: str
    prompt: str
    detail: str                   # generator · guidance · prior, or the operator
    max_steps: int
    step: Optional[int]           # the step of its final metrics (None: not finished)
    has_checkpoint: bool

    @property
    def status(self) -> str:
        if self.step is not None and self.step >= self.max_steps:
            return "finished"
        return "stopped (resumable)" if self.has_checkpoint else "incomplete"

    @property
    def label(self) -> str:
        prompt = f" · “{self.prompt}”" if self.prompt else ""
        return f"{self.name} · {self.system}{prompt} · {self.status}"


def describe_run(root: Path, folder: Path) -> RunInfo:
    """A run folder's system, prompt, steps and state, from its ``parsed.yaml`` and metrics."""
    try:
        cfg = yaml.safe_load((folder / MARKER).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        cfg = {}
    system = cfg.get("system") or {}
    prompt = (system.get("prompt_processor") or {}).get("prompt") or (system.get("solver") or {}).get("prompt") or ""
    data = cfg.get("data") or {}
    parts = [system.get(k) for k in ("generator_type", "guidance_type", "prior_type")] + [data.get("operator")]
    metrics = read_metrics(folder)
    step = metrics.get("step")
    return RunInfo(folder=folder, name=folder.relative_to(root.resolve()).as_posix(),
                   system=str(cfg.get("system_type", "?")),
                   prompt=str(prompt), detail=" · ".join(str(p) for p in parts if isinstance(p, str)),
                   max_steps=int((cfg.get("trainer") or {}).get("max_steps") or 0),
                   step=step if isinstance(step, int) else None,
                   has_checkpoint=(folder / "ckpts" / "last.ckpt").is_file())


def browse(root: Path) -> list[RunInfo]:
    """Every run under ``root``, newest first."""
    root = root.resolve()
    return [describe_run(root, f) for f in find_runs(root)]


def matching(infos: list[RunInfo], system: str = "", text: str = "") -> list[RunInfo]:
    """The runs of ``system`` (empty: any) whose prompt or folder name holds ``text``."""
    text = (text or "").strip().lower()
    return [i for i in infos if (not system or i.system == system)
            and (not text or text in i.prompt.lower() or text in i.name.lower())]


def read_metrics(folder: Path) -> dict:
    """``metrics.json`` of the training run; {} when absent or unreadable."""
    try:
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return metrics if isinstance(metrics, dict) else {}


def step_of(path: Path) -> int:
    """The step in an ``it{step}...`` name (-1 when it has none)."""
    found = STEP.match(path.name) or STEP.match(path.parent.name)
    return int(found.group(1)) if found else -1


def latest_preview(root: Path, folder: Path) -> Optional[Path]:
    """The newest picture a run wrote while training: a validation grid ``save/it{N}-val.png``
    (``it{N}-val/*.png`` for the toy) or a progress frame ``save/frames/it{N}.png``."""
    save = folder / "save"
    candidates = [*save.glob("it*-val.png"), *save.glob("it*-val/*.png"), *save.glob("frames/it*.png")]
    candidates = [p for p in candidates if inside(root, p)]
    return max(candidates, key=lambda p: (step_of(p), p.stat().st_mtime)) if candidates else None


@dataclass
class Results:
    """A run's outputs, each path checked to be inside the outputs folder."""

    info: RunInfo
    pictures: list[Path] = field(default_factory=list)      # particles, comparisons, plots, last preview
    turntables: list[Path] = field(default_factory=list)    # per-particle orbit GIFs of the last test
    videos: list[Path] = field(default_factory=list)        # the same as MP4
    meshes: list[Path] = field(default_factory=list)        # GLB files (the 3-D viewer), last test/export
    svgs: list[Path] = field(default_factory=list)
    before_after: Optional[tuple[Path, Path]] = None        # the input and the first restoration
    metrics: dict = field(default_factory=dict)
    downloads: list[Path] = field(default_factory=list)


def newest_step_folder(save: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """The files with ``suffixes`` of the latest ``save/it{N}-test`` / ``-export`` folder holding any."""
    folders = sorted((d for d in save.glob("it*-*") if d.is_dir()), key=step_of, reverse=True)
    for folder in folders:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes)
        if files:
            return files
    return []


def results(root: Path, folder: Path) -> Results:
    """The outputs of the run in ``folder`` (a checked run folder, :func:`run_folder`)."""
    root = root.resolve()
    save = folder / "save"
    res = Results(info=describe_run(root, folder), metrics=read_metrics(folder))
    if not save.is_dir():
        return res

    def keep(paths) -> list[Path]:
        return [p for p in (inside(root, q) for q in paths) if p is not None]

    res.pictures = keep(save / name for name in PICTURES)
    preview = latest_preview(root, folder)
    if preview is not None and preview not in res.pictures:
        res.pictures.append(preview)
    res.turntables = keep(p for p in newest_step_folder(save, (".gif",)))
    res.videos = keep(newest_step_folder(save, (".mp4",)))
    res.meshes = keep(newest_step_folder(save, (".glb",)))
    res.svgs = keep(sorted(save.glob("particle*.svg")))
    restored = keep([save / "particle0.png"])
    measured = keep([save / "measurement.png"])
    if restored and measured:
        res.before_after = (measured[0], restored[0])
    extra = keep([save / "optimisation.gif"])
    res.turntables += [p for p in extra if p not in res.turntables]
    listed = {*res.turntables, *res.videos, *res.meshes, *res.svgs}
    others = keep(p for p in newest_step_folder(save, (".obj", ".ply")))
    res.downloads = sorted(listed | set(others), key=lambda p: p.name) + keep(
        [folder / "metrics.json", folder / MARKER])
    return res


def loss_rows(root: Path, folder: Path) -> list[tuple[int, str, float]]:
    """``(step, name, value)`` of every logged loss in the run's CSV logs (all its launches)."""
    rows: list[tuple[int, str, float]] = []
    for path in sorted((folder / "csv_logs").glob("*/metrics.csv")):
        if inside(root, path) is None:
            continue
        with open(path, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                try:
                    step = int(float(row.get("step") or ""))
                except ValueError:
                    continue
                for key, value in row.items():
                    if key and "loss" in key and value not in (None, ""):
                        try:
                            rows.append((step, key, float(value)))
                        except ValueError:
                            pass
    return rows
