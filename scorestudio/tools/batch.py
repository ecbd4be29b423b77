"""Many runs of one config on a Ray cluster: prompts × seeds, one Ray task per run.

    pip install "scorestudio[ray]"
    scorestudio batch --config configs/image-particles-sds.yaml --prompts prompts.txt --seeds 0,1,2 \\
        --out outputs/batch [--cpus-per-task 1] [--gpus-per-task 0] [--max-retries 2] [--address auto] \\
        [key=value ...]

``--prompts`` is a text file, one prompt per line (blank lines and ``#`` lines skipped), or a CSV
file whose header names its columns: ``prompt``, optionally ``seed``, and config keys::

    prompt,seed,system.guidance.repulsion.gamma,trainer.max_steps
    a red cube,,20,
    a blue sphere,3,0,800

An empty cell keeps the batch's value; a row without a seed runs with every seed of ``--seeds``.
Without ``--prompts`` the config's own prompt runs with every seed. ``key=value`` arguments
override the config for every run (a CSV cell for its row).

Each run is an ordinary run folder ``OUT/<name>/<slug>``, the slug made of the prompt, the seed
and a hash of the run's overrides, so that a rerun finds it. A run is trained by ``python -m
scorestudio train`` in a subprocess of its task: a crash ends the run, not the Ray worker, and a
worker that dies takes its run down with it. A rerun skips the finished runs (``metrics.json``
and a checkpoint at ``trainer.max_steps``) and resumes the others from their last checkpoint. A
task whose run fails or whose worker dies is retried up to ``--max-retries`` times, then listed
as failed (exit status 1). At the end ``OUT/index.json`` and ``OUT/index.html`` list every run:
thumbnail, prompt, seed, metrics and links to its GIF / MP4 / mesh / SVG files. Logs of each
run's attempts: ``OUT/batch/logs/<slug>.log``.

Without ``--address`` the batch starts a Ray cluster on this machine (``--num-cpus`` /
``--num-gpus``, default all); ``--address auto`` or ``HOST:PORT`` joins a running one, whose
workers must have scorestudio installed and see ``--out`` (a shared file system).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import html
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from scorestudio.utils.cli_args import positive_int
from scorestudio.utils.config import ConfigError, config_path, load_config, parse_structured
from scorestudio.utils.io import write_json
from scorestudio.utils.run import ExperimentConfig, _safe_tag

PROMPT_KEY = "system.prompt_processor.prompt"
# Test-only: the first task to create this file kills its own Ray worker once its run has written
# a checkpoint, as a node failure would (tests/test_distributed_batch.py).
KILL_ONCE_ENV = "SCORESTUDIO_BATCH_KILL_ONCE"
ASSET_SUFFIXES = (".gif", ".mp4", ".obj", ".ply", ".glb", ".svg")
# The first picture of these that a run has is its thumbnail (2-D particles, then toy plots).
THUMBNAILS = ("particles.png", "comparison.png", "grid.png", "collapse_vs_gamma.png")


# ---- the runs of a batch ---------------------------------------------------------------------
@dataclass
class Run:
    """One run of the batch: a prompt (None: the config's own) and a seed, with its overrides."""

    prompt: Optional[str]
    seed: int
    row_overrides: list[str]          # the CSV row's config keys
    slug: str = ""
    folder: str = ""                  # OUT/<name>/<slug>
    max_steps: int = 0
    status: str = "pending"           # pending | finished | skipped | failed
    attempts: int = 0                 # training attempts, counted in its log over every batch that ran it
    error: str = ""
    seconds: float = 0.0              # wall time of its training subprocesses

    def overrides(self, prompt_key: str) -> list[str]:
        prompt = [f"{prompt_key}={json.dumps(self.prompt)}"] if self.prompt is not None else []
        return [*prompt, *self.row_overrides]


def parse_seeds(text: str) -> list[int]:
    """``0,1,5`` or ``0-7`` (inclusive) or both: ``0-3,10``."""
    seeds: list[int] = []
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            lo, _, hi = part.partition("-")
            seeds += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds look like 0,1,2 or 0-7, got {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError("give at least one seed")
    return seeds


def read_rows(path: Path) -> list[tuple[Optional[str], Optional[int], list[str]]]:
    """``(prompt, seed or None, overrides)`` per prompt of a text or CSV file (module docstring)."""
    if not path.is_file():
        raise ConfigError(f"--prompts {path}: file not found")
    if path.suffix.lower() != ".csv":
        lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
        return [(line, None, []) for line in lines if line and not line.startswith("#")]
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if "prompt" not in (reader.fieldnames or []):
            raise ConfigError(f"--prompts {path}: the CSV header must name a 'prompt' column, got {reader.fieldnames}")
        return [_csv_row(path, n, row) for n, row in enumerate(reader, start=2)]


def _csv_row(path: Path, line: int, row: dict) -> tuple[Optional[str], Optional[int], list[str]]:
    if None in row:
        raise ConfigError(f"--prompts {path}, line {line}: more cells than the header has columns")
    cells = {k.strip(): (v or "").strip() for k, v in row.items()}
    seed = cells.pop("seed", "")
    try:
        seed_value = int(seed) if seed else None
    except ValueError:
        raise ConfigError(f"--prompts {path}, line {line}: seed {seed!r} is not a whole number") from None
    prompt = cells.pop("prompt")
    return prompt or None, seed_value, [f"{k}={v}" for k, v in cells.items() if v]


def plan_runs(args: argparse.Namespace, overrides: list[str]) -> list[Run]:
    """Every run of the batch with its folder and max_steps, its config checked before any starts."""
    rows = read_rows(Path(args.prompts)) if args.prompts else [(None, None, [])]
    runs = [Run(prompt, seed, row_overrides) for prompt, seed_or_none, row_overrides in rows
            for seed in ([seed_or_none] if seed_or_none is not None else args.seeds)]
    if not runs:
        raise ConfigError(f"--prompts {args.prompts}: no prompt in it")
    out = Path(args.out).resolve()
    for run in runs:
        if run.prompt is not None and "${" in run.prompt:
            raise ConfigError(f"prompt {run.prompt!r}: '${{' would be read as a config interpolation")
        run.slug = slug(run, overrides)
        cfg = load_config(args.config, [*overrides, *run.overrides(args.prompt_key), *placement(run, out)])
        exp = parse_structured(ExperimentConfig, cfg)
        run.folder, run.max_steps = str(out / exp.name / run.slug), exp.trainer.max_steps
    taken: dict[str, Run] = {}
    for run in runs:
        if run.folder in taken:
            raise ConfigError(f"the prompts list the run {run.prompt!r} with seed {run.seed} twice")
        taken[run.folder] = run
    return runs


def slug(run: Run, overrides: list[str]) -> str:
    """The run's folder name: readable prompt and seed, and a hash of everything that makes the run."""
    key = json.dumps([run.prompt, run.seed, sorted(overrides), sorted(run.row_overrides)])
    digest = hashlib.sha1(key.encode()).hexdigest()[:8]
    # Within the tag's bytes (utils.run.TAG_MAX_BYTES), so launch keeps the seed and the hash.
    readable = _safe_tag(run.prompt or "config").encode()[:80].decode(errors="ignore")
    return f"{readable}-s{run.seed}-{digest}"


def placement(run: Run, out: Path) -> list[str]:
    """The overrides that put the run in its batch folder, under its own seed."""
    return [f"exp_root_dir={out}", f"tag={run.slug}", "use_timestamp=false", f"seed={run.seed}"]


# ---- state of a run folder -------------------------------------------------------------------
def last_checkpoint(folder: Path) -> Optional[Path]:
    path = folder / "ckpts" / "last.ckpt"
    return path if path.is_file() else None


def is_finished(folder: Path, max_steps: int) -> bool:
    """Whether the run folder holds a finished run: metrics of its test at ``max_steps`` (metrics
    written earlier, e.g. of a sample-fitted start, have no step) and a checkpoint of that step."""
    metrics = read_metrics(folder)
    ckpt = last_checkpoint(folder)
    if ckpt is None or not isinstance(metrics.get("step"), int) or metrics["step"] < max_steps:
        return False
    import torch

    # weights_only, as utils.checkpoint.load_checkpoint reads (which would import Lightning here).
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    except Exception:   # noqa: BLE001  (a damaged checkpoint: the run is not finished)
        return False
    return isinstance(state, dict) and int(state.get("global_step", -1)) >= max_steps


def read_metrics(folder: Path) -> dict:
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}
    return metrics if isinstance(metrics, dict) else {}


# ---- one task: one run in a subprocess -------------------------------------------------------
# Started before the training command, which it becomes (exec): asks Linux for SIGKILL when the
# Ray worker dies (PR_SET_PDEATHSIG, kept across exec), so that no orphaned run goes on writing
# the folder its retry trains in. Elsewhere prctl is missing and the run is not tied to its worker.
# (Not a preexec_fn: a Ray worker has threads, and code between fork and exec may deadlock.)
DIE_WITH_PARENT = """
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)
except (OSError, AttributeError):
    pass
if os.getppid() != int(sys.argv[1]):   # the worker died before prctl
    sys.exit(137)
os.execv(sys.argv[2], sys.argv[2:])
"""


class RunFailed(RuntimeError):
    """The training subprocess of a run ended with a non-zero status (retried by Ray)."""


def train_command(task: dict) -> list[str]:
    """``python -m scorestudio train`` of the run, resuming its last checkpoint if it has one."""
    folder = Path(task["folder"])
    cmd = [sys.executable, "-m", "scorestudio", "train", "--config", task["config"], *task["overrides"]]
    gpus = task["gpus"]
    if gpus:   # Ray limits the task to its GPUs (CUDA_VISIBLE_DEVICES): they are 0, 1, ... here
        cmd += ["--gpu", ",".join(str(i) for i in range(max(1, int(gpus))))]
    ckpt = last_checkpoint(folder)
    if ckpt is not None:
        cmd.append(f"resume={ckpt}")
    elif folder.exists():   # an attempt that died before its first checkpoint: nothing to keep
        shutil.rmtree(folder)
    return cmd


def run_task(task: dict) -> dict:
    """Train one run (the body of a Ray task); ``{"attempts", "seconds"}``. A run that is already
    finished (a retry after the run ended) is not trained again."""
    folder, log = Path(task["folder"]), Path(task["log"])
    log.parent.mkdir(parents=True, exist_ok=True)
    attempt = count_attempts(log) + 1
    if is_finished(folder, task["max_steps"]):
        return {"attempts": attempt - 1, "seconds": 0.0}
    cmd = train_command(task)
    env = {**os.environ, "OMP_NUM_THREADS": str(task["threads"])}
    start = time.time()
    with open(log, "a") as handle:
        handle.write(f"=== attempt {attempt}: {' '.join(cmd)}\n")
        handle.flush()
        proc = subprocess.Popen([sys.executable, "-c", DIE_WITH_PARENT, str(os.getpid()), *cmd], stdout=handle,
                                stderr=subprocess.STDOUT, env=env,
                                cwd=task["cwd"] if Path(task["cwd"]).is_dir() else None)
        if task.get("kill_once"):
            _kill_worker_once(Path(task["kill_once"]), proc, folder)
        status = proc.wait()
    if status != 0:
        raise RunFailed(f"attempt {attempt}: the run exited with status {status}; see {log}")
    return {"attempts": attempt, "seconds": time.time() - start}


def count_attempts(log: Path) -> int:
    if not log.is_file():
        return 0
    return sum(line.startswith("=== attempt ") for line in log.read_text(errors="replace").splitlines())


def _kill_worker_once(marker: Path, proc: subprocess.Popen, folder: Path) -> None:
    """Test-only (``KILL_ONCE_ENV``): the first task to create ``marker`` kills its run and its Ray
    worker as soon as the run has a checkpoint, mid-run."""
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    while proc.poll() is None and last_checkpoint(folder) is None:
        time.sleep(0.02)
    marker.write_text(f"killed {folder.name}\n")
    proc.kill()
    os.kill(os.getpid(), signal.SIGKILL)


# ---- the batch on Ray ------------------------------------------------------------------------
def import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError('scorestudio batch runs on Ray: pip install "scorestudio[ray]"') from None
    return ray


def start_ray(ray, args: argparse.Namespace) -> None:
    """Join ``--address``'s cluster, or start one on this machine with ``--num-cpus`` / ``--num-gpus``."""
    if args.address:
        ray.init(address=args.address, log_to_driver=False)
    else:
        ray.init(num_cpus=args.num_cpus, num_gpus=args.num_gpus, include_dashboard=False, log_to_driver=False)


def task_of(run: Run, args: argparse.Namespace, overrides: list[str], out: Path) -> dict:
    return {"config": str(config_path(args.config).resolve()), "folder": run.folder, "max_steps": run.max_steps,
            "overrides": [*overrides, *run.overrides(args.prompt_key), *placement(run, out),
                          "trainer.enable_progress_bar=false"],
            "log": str(out / "batch" / "logs" / f"{run.slug}.log"), "cwd": os.getcwd(),
            "gpus": args.gpus_per_task, "threads": max(1, int(args.cpus_per_task)),
            "kill_once": os.environ.get(KILL_ONCE_ENV)}


def run_on_ray(runs: list[Run], args: argparse.Namespace, overrides: list[str], out: Path) -> None:
    """One Ray task per run, retried on failure; fills in each run's status, attempts and error."""
    ray = import_ray()
    from tqdm import tqdm

    start_ray(ray, args)
    try:
        remote = ray.remote(run_task).options(
            num_cpus=args.cpus_per_task, num_gpus=args.gpus_per_task, max_retries=args.max_retries,
            retry_exceptions=[RunFailed])
        pending = {remote.remote(task_of(run, args, overrides, out)): run for run in runs}
        with tqdm(total=len(runs), desc="runs", unit="run") as bar:
            while pending:
                [ref], _ = ray.wait(list(pending), num_returns=1)
                run = pending.pop(ref)
                try:
                    result = ray.get(ref)
                    run.status, run.attempts, run.seconds = "finished", result["attempts"], result["seconds"]
                except Exception as err:   # noqa: BLE001  (a RunFailed, a dead worker, ...: reported below)
                    run.status, run.error = "failed", _last_line(err)
                    run.attempts = count_attempts(out / "batch" / "logs" / f"{run.slug}.log")
                bar.update()
                bar.set_postfix(failed=sum(r.status == "failed" for r in runs))
    finally:
        ray.shutdown()


def _last_line(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


# ---- index -----------------------------------------------------------------------------------
def index_entry(run: Run, out: Path) -> dict:
    """What the index shows of a run: thumbnail, scalar metrics, links, relative to ``out``."""
    folder = Path(run.folder)
    save = folder / "save"
    thumb = thumbnail(save, out / "batch" / "thumbs" / f"{run.slug}.png")
    assets = sorted(p for p in save.rglob("*") if p.suffix.lower() in ASSET_SUFFIXES) if save.is_dir() else []
    metrics = {k: v for k, v in read_metrics(folder).items() if isinstance(v, (int, float, str)) or v is None}

    def rel(p: Path) -> str:
        return os.path.relpath(p, out)

    return {**{k: v for k, v in asdict(run).items() if k != "row_overrides"},
            "overrides": run.row_overrides, "folder": rel(folder),
            "thumbnail": rel(thumb) if thumb else None, "metrics": metrics,
            "files": [rel(p) for p in assets]}


def thumbnail(save: Path, gif_frame: Path) -> Optional[Path]:
    """A picture of the run: its particles or plots, else the first frame of its last orbit GIF
    (written to ``gif_frame``), else any picture it saved."""
    for name in THUMBNAILS:
        if (save / name).is_file():
            return save / name
    orbits = sorted(save.glob("it*-test/all.gif"), key=lambda p: int(p.parent.name[2:].split("-")[0]))
    if orbits:
        import imageio.v3 as iio

        gif_frame.parent.mkdir(parents=True, exist_ok=True)
        iio.imwrite(gif_frame, iio.imread(orbits[-1], index=0)[..., :3])
        return gif_frame
    pictures = sorted(save.glob("*.png")) if save.is_dir() else []
    return pictures[0] if pictures else None


def write_index(runs: list[Run], out: Path, args: argparse.Namespace) -> list[dict]:
    entries = [index_entry(run, out) for run in runs]
    write_json(out / "index.json", {"config": str(config_path(args.config).resolve()), "runs": entries})
    (out / "index.html").write_text(index_html(entries, args.config), encoding="utf-8")
    return entries


def index_html(entries: list[dict], config: str) -> str:
    esc = html.escape
    rows = []
    for e in entries:
        thumb = f'<img src="{esc(e["thumbnail"])}" width="256">' if e["thumbnail"] else ""
        metrics = "<br>".join(f"{esc(k)}: {esc(_short(v))}" for k, v in sorted(e["metrics"].items()))
        links = " ".join(f'<a href="{esc(f)}">{esc(f.split("/save/", 1)[-1])}</a>' for f in e["files"])
        status = esc(e["status"]) + (f'<br><small>{esc(e["error"])}</small>' if e["error"] else "")
        rows.append(f'<tr><td>{thumb}</td><td>{esc(e["prompt"] or "(config)")}</td><td>{e["seed"]}</td>'
                    f'<td>{status}</td><td><small>{metrics}</small></td>'
                    f'<td><a href="{esc(e["folder"])}/">folder</a> {links}</td></tr>')
    return ("<!doctype html><meta charset=utf-8><title>scorestudio batch</title><style>td{vertical-align:top;"
            "padding:4px}table{border-collapse:collapse}tr{border-top:1px solid #ccc}</style>"
            f"<h1>scorestudio batch</h1><p>{esc(config)}: {len(entries)} runs</p>"
            "<table><tr><th></th><th>prompt</th><th>seed</th><th>status</th><th>metrics</th><th>files</th></tr>"
            + "\n".join(rows) + "</table>\n")


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# ---- command ---------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scorestudio batch",
                                     description="Runs of one config for prompts × seeds, one Ray task per run")
    parser.add_argument("--config", required=True, help="YAML config of every run")
    parser.add_argument("--prompts", default=None, help="text file (a prompt per line) or CSV (prompt,seed,key...)")
    parser.add_argument("--prompt-key", default=PROMPT_KEY, help=f"the config key of the prompt (default {PROMPT_KEY})")
    parser.add_argument("--seeds", type=parse_seeds, default=[0], help="seeds of every prompt: 0,1,2 or 0-7")
    parser.add_argument("--out", default="outputs/batch", help="the batch folder: its runs, index.json, index.html")
    parser.add_argument("--cpus-per-task", type=float, default=1, help="CPUs Ray reserves for each run")
    parser.add_argument("--gpus-per-task", type=float, default=0, help="GPUs Ray reserves for each run")
    parser.add_argument("--max-retries", type=int, default=2, help="retries of a failed or killed run")
    parser.add_argument("--address", default=None, help="a running Ray cluster (auto or HOST:PORT)")
    parser.add_argument("--num-cpus", type=positive_int, default=None, help="CPUs of the local cluster")
    parser.add_argument("--num-gpus", type=int, default=None, help="GPUs of the local cluster")
    return parser


def parse_args(argv: Optional[list[str]]) -> tuple[argparse.Namespace, list[str]]:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    unknown = [e for e in extras if "=" not in e or e.startswith("-")]
    if unknown:
        parser.error(f"unrecognised arguments {unknown}; config overrides look like key=value")
    if args.max_retries < 0:
        parser.error("--max-retries must be ≥ 0")
    return args, extras


def batch(args: argparse.Namespace, overrides: list[str]) -> list[Run]:
    """Plan the runs, skip the finished ones, run the others on Ray, write the index."""
    out = Path(args.out).resolve()
    runs = plan_runs(args, overrides)
    todo = []
    for run in runs:
        if is_finished(Path(run.folder), run.max_steps):
            run.status = "skipped"
        else:
            todo.append(run)
    print(f"[scorestudio] batch of {len(runs)} runs in {out}: {len(runs) - len(todo)} finished (skipped), "
          f"{len(todo)} to run")
    if todo:
        run_on_ray(todo, args, overrides, out)
    write_index(runs, out, args)
    print(f"[scorestudio] index: {out / 'index.html'}")
    return runs


def main(argv: Optional[list[str]] = None) -> int:
    args, overrides = parse_args(argv)
    try:
        runs = batch(args, overrides)
    except ConfigError as err:
        print(f"scorestudio batch: error: {err}", file=sys.stderr)
        return 2
    failed = [r for r in runs if r.status == "failed"]
    for run in failed:
        print(f"[scorestudio] FAILED after {run.attempts} attempt(s): {run.prompt!r} seed {run.seed}: {run.error} "
              f"({run.folder})", file=sys.stderr)
    return 1 if failed else 0
