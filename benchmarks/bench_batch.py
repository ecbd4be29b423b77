"""Throughput of ``scorestudio batch`` on Ray: N runs with K concurrent tasks against the same N
runs one after another, and Ray's cost per task.

Three ways of training the same runs (toy-particles, seeds 0..N-1, one thread per run), each in a
fresh folder: a plain loop of ``python -m scorestudio train`` (no Ray), the batch on a local
1-CPU Ray cluster (one task at a time), and the batch on a K-CPU cluster (``--cpus-per-task 1``:
K runs at once). On a machine whose load changes (shared cores), the three are run in rounds in
palindromic order (loop, 1, K, K, 1, loop, ...) so that a steady drift cancels in the means.

Ray's overhead per task is measured inside each batch, under the load of that batch: the batch's
wall time minus the wall time of its training subprocesses (``seconds`` in index.json, 1-CPU
batch: one after another), over N. It includes starting and stopping the local cluster
(measured apart as well), planning and the index.

    python benchmarks/bench_batch.py                       # 8 runs, 2 concurrent, 2 rounds
    python benchmarks/bench_batch.py --runs 8 --concurrent 2 --rounds 1 --overrides trainer.max_steps=100

Prints the figures and writes benchmarks/results/batch_throughput.json (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CONFIG = "configs/toy-particles.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
RAY_START_STOP = "import ray; ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False); ray.shutdown()"


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def loop(out: Path, runs: int, overrides: list[str]) -> dict:
    """The runs one after another without Ray, as a shell loop would train them."""
    wall = sum(timed([sys.executable, "-m", "scorestudio", "train", "--config", CONFIG, f"exp_root_dir={out}",
                      f"tag=s{seed}", "use_timestamp=false", f"seed={seed}", "trainer.enable_progress_bar=false",
                      *overrides]) for seed in range(runs))
    return {"wall": wall}


def batch(out: Path, runs: int, cpus: int, overrides: list[str]) -> dict:
    """The batch on a local ``cpus``-CPU cluster: its wall time and its runs' subprocess seconds."""
    wall = timed([sys.executable, "-m", "scorestudio", "batch", "--config", CONFIG, "--seeds", f"0-{runs - 1}",
                  "--out", str(out), "--num-cpus", str(cpus), "--cpus-per-task", "1", *overrides])
    index = json.loads((out / "index.json").read_text())["runs"]
    assert len(index) == runs and all(r["status"] == "finished" for r in index)
    return {"wall": wall, "run_seconds": sum(r["seconds"] for r in index)}


def main() -> None:
    from scorestudio.utils.io import write_json

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--concurrent", type=int, default=2, help="CPUs of the local cluster (tasks at once)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the three ways, in palindromic order")
    parser.add_argument("--overrides", nargs="*", default=["trainer.max_steps=300", "trainer.val_check_interval=0"],
                        help="config overrides of every run")
    parser.add_argument("--out", default=str(RESULTS / "batch_throughput.json"))
    args = parser.parse_args()
    k = args.concurrent
    ways = {"loop": lambda out: loop(out, args.runs, args.overrides),
            "ray_1_cpu": lambda out: batch(out, args.runs, 1, args.overrides),
            f"ray_{k}_cpus": lambda out: batch(out, args.runs, k, args.overrides)}
    order = [name for r in range(args.rounds) for name in (list(ways) if r % 2 == 0 else list(ways)[::-1])]
    measured: dict[str, list[dict]] = {name: [] for name in ways}
    with tempfile.TemporaryDirectory() as tmp:
        start_stop = timed([sys.executable, "-c", RAY_START_STOP])
        for i, name in enumerate(order):
            result = ways[name](Path(tmp) / f"{i}-{name}")
            result["load_average_after"] = os.getloadavg()[0]
            measured[name].append(result)
            print(f"{name}: {result['wall']:.1f} s (load {result['load_average_after']:.1f})", flush=True)
    wall = {name: statistics.mean(m["wall"] for m in ms) for name, ms in measured.items()}
    overhead = statistics.mean((m["wall"] - m["run_seconds"]) / args.runs for m in measured["ray_1_cpu"])
    summary = {"runs": args.runs, "concurrent": k, "rounds": args.rounds, "config": CONFIG,
               "overrides": args.overrides, "cores": os.cpu_count(), "mean_wall_s": wall, "measured": measured,
               "ray_start_stop_s": start_stop,
               f"throughput_ratio_{k}_concurrent_vs_loop": wall["loop"] / wall[f"ray_{k}_cpus"],
               f"throughput_ratio_{k}_concurrent_vs_ray_1_cpu": wall["ray_1_cpu"] / wall[f"ray_{k}_cpus"],
               "ray_overhead_per_task_s": overhead}
    write_json(args.out, summary)
    print(f"{args.runs} runs, means of {args.rounds} round(s): loop {wall['loop']:.1f} s, Ray 1 CPU "
          f"{wall['ray_1_cpu']:.1f} s, Ray {k} CPUs {wall[f'ray_{k}_cpus']:.1f} s (Ray start + stop {start_stop:.1f} s)")
    print(f"throughput ×{wall['loop'] / wall[f'ray_{k}_cpus']:.2f} with {k} concurrent tasks against the loop "
          f"(×{wall['ray_1_cpu'] / wall[f'ray_{k}_cpus']:.2f} against Ray with 1 CPU); Ray overhead "
          f"{overhead:.2f} s per task; {args.out}")


if __name__ == "__main__":
    main()
