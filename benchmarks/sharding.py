"""Split a benchmark's independent runs over processes (and a device), then merge their rows.

Every sweep benchmark is a list of independent jobs. ``--shard I/K`` runs jobs I, I+K, I+2K, …
and writes their rows to ``--out`` (the summary of a shard covers only its rows);
``--merge A.json B.json …`` reads the rows of finished shards and writes the summary, tables and
plots of the whole sweep to ``--out`` without running anything. ``--device cuda`` runs the
models there (results are the same runs, so shards may mix devices; timings then differ).

    for i in 0 1 2 3; do python benchmarks/bench_inverse.py --shard $i/4 --out /tmp/inv$i.json & done; wait
    python benchmarks/bench_inverse.py --merge /tmp/inv?.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable, Optional, Sequence, TypeVar

import torch
from tqdm import tqdm

from scorestudio.utils.io import write_json

T = TypeVar("T")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="torch device of the models (cpu, cuda, cuda:1)")
    parser.add_argument("--shard", default="0/1", help="I/K: run every K-th job starting at I")
    parser.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                        help="summarize the rows of these finished shard files instead of running")


def add_launch_arguments(parser: argparse.ArgumentParser, work_dir: Path) -> None:
    """The options :func:`launch` reads: ``--prior``, ``--probe``, ``--threads``, ``--work-dir``, ``--overrides``."""
    parser.add_argument("--prior", default=None, help="prior folder (default: the shipped embedded prior)")
    parser.add_argument("--probe", default=None, help="probe folder for metrics and repulsion (default: shipped)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--work-dir", default=str(work_dir), help="run folders")
    parser.add_argument("--overrides", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides for every run (give each variant its own --work-dir)")


def configure_launches(args: argparse.Namespace) -> None:
    """Threads from ``--threads``; Lightning's per-run banners silenced (many runs in one process)."""
    import logging

    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)


def device(args: argparse.Namespace) -> torch.device:
    """``--device``, checked: a CUDA device that is not there is an error, not a silent CPU run."""
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available on this machine")
    return dev


def shard(jobs: Sequence[T], spec: str) -> list[T]:
    """The jobs of shard ``spec`` = "I/K" (0 ≤ I < K)."""
    try:
        index, count = (int(v) for v in spec.split("/"))
    except ValueError:
        raise SystemExit(f"--shard {spec!r}: expected I/K, e.g. 0/4") from None
    if not 0 <= index < count:
        raise SystemExit(f"--shard {spec}: I must be in [0, K)")
    return list(jobs[index::count])


def run_shard(jobs: Sequence[tuple], run_one: Callable[[tuple], dict], args: argparse.Namespace) -> list[dict]:
    """Rows of this shard's jobs. After each job the rows so far are written to ``args.out``
    (atomically, ``"partial": true``), and jobs already in that file are skipped: a killed or
    timed-out shard keeps its finished runs, and rerunning it (on any device) continues."""
    path = Path(args.out)
    rows = json.loads(path.read_text()).get("rows", []) if path.is_file() else []
    done = {json.dumps(r["job"]) for r in rows if "job" in r}
    for job in tqdm(shard(jobs, args.shard), desc=f"shard {args.shard}"):
        if json.dumps(list(job)) in done:
            continue
        rows.append({"job": list(job), **run_one(job)})
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {"partial": True, "args": vars(args), "rows": rows})
    return rows


def merged(files: Sequence[str], key: str = "rows", jobs: Optional[Sequence[tuple]] = None) -> list:
    """The concatenated ``key`` lists of the shard files (missing files are an error); a job found
    in several files (a shard extended into a new file) counts once, from the first file. With
    ``jobs``, only the rows of those jobs are kept (a balanced sweep out of larger shard files)."""
    wanted = None if jobs is None else {json.dumps(list(job)) for job in jobs}
    out, seen = [], set()
    for name in files:
        path = Path(name)
        if not path.is_file():
            raise SystemExit(f"--merge: {path} not found")
        for row in json.loads(path.read_text()).get(key) or []:
            job = json.dumps(row.get("job"))
            if ("job" in row and job in seen) or (wanted is not None and job not in wanted):
                continue
            seen.add(job)
            out.append(row)
    return out


def launch(config: str, args: argparse.Namespace, tag: str, *overrides: str) -> dict:
    """One ``launch.py --train`` run of ``configs/<config>`` (in-process) → its metrics.json + time_s.

    Uses ``args.work_dir`` (run folders), ``args.prior`` / ``args.probe`` (folders or None) and
    ``--device``.
    """
    from scorestudio.cli import parse_args, run

    root = Path(__file__).resolve().parents[1]
    argv = ["--config", str(root / "configs" / config), "--train", f"exp_root_dir={args.work_dir}", f"tag={tag}",
            "use_timestamp=false", "trainer.enable_progress_bar=false", "checkpoint.every_n_train_steps=0",
            *overrides, *args.overrides]
    if args.prior:
        argv.append(f"system.prior.pretrained_model_name_or_path={args.prior}")
    if args.probe:
        argv += [f"system.probe_path={args.probe}", f"system.guidance.repulsion.feature_net_path={args.probe}"]
    dev = device(args)
    if dev.type == "cuda":
        argv += ["--gpu", str(dev.index or 0)]
    start = time.perf_counter()
    ctx = run(*parse_args(argv))
    return {**json.loads(ctx.metrics_path.read_text()), "time_s": time.perf_counter() - start}
