"""Time per training step of the demo with its particles in one process or sharded over several
(``launch.py --processes N`` on the CPU, ``--gpu 0,1`` on GPUs; see utils/distributed.py).

Each setting is launched twice through ``launch.py``, for ``--short`` and ``--long`` steps; the
difference of the two wall times over the difference of steps is the time per step, free of the
start-up, the test orbit and the export (the same in both launches). On the CPU the threads per
process are the cores / processes, so every setting uses the whole machine.

    python benchmarks/bench_particle_processes.py                        # 1 and 2 CPU processes
    python benchmarks/bench_particle_processes.py --processes 1 2 4 --long 80
    python benchmarks/bench_particle_processes.py --gpus 0 0,1           # on a machine with 2 GPUs

Prints a table and writes benchmarks/results/particle_processes.json (or ``--out``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# The demo's particles at the prior's resolution from the start, with small test / export outputs.
DEMO = ["--config", "configs/dreamfusion-embedded.yaml", "--train", "use_timestamp=false",
        "trainer.enable_progress_bar=false", "trainer.val_check_interval=0", "system.resolutions=[64]",
        "system.resolution_milestones=[]", "system.material.ambient_only_steps=0", "system.evaluation.n_views=2",
        "system.export.after_test=false", "checkpoint.every_n_train_steps=0"]


def wall_time(argv: list[str], threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "launch.py", *argv], cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"launch.py {' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    from scorestudio.utils.io import write_json

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="CPU processes to compare")
    parser.add_argument("--gpus", nargs="+", default=None, help="GPU lists to compare instead, e.g. 0 0,1")
    parser.add_argument("--particles", type=int, default=4)
    parser.add_argument("--short", type=int, default=10, help="steps of the short launch")
    parser.add_argument("--long", type=int, default=50, help="steps of the long launch")
    parser.add_argument("--overrides", nargs="*", default=[], help="more config overrides")
    parser.add_argument("--out", default=str(RESULTS / "particle_processes.json"))
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    settings = ([(f"--gpu {g}", ["--gpu", g], cores) for g in args.gpus] if args.gpus else
                [(f"--processes {p}", ["--processes", str(p)], max(1, cores // p)) for p in args.processes])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, flags, threads in settings:
            base = [*DEMO, f"exp_root_dir={tmp}", f"system.n_particles={args.particles}", *flags, *args.overrides]
            times = {steps: wall_time([*base, f"tag={name.replace(' ', '')}-{steps}", f"trainer.max_steps={steps}"],
                                      threads) for steps in (args.short, args.long)}
            per_step = (times[args.long] - times[args.short]) / (args.long - args.short)
            rows.append({"setting": name, "threads_per_process": threads, "step_s": per_step,
                         "wall_s": {str(k): v for k, v in times.items()}})
            print(f"{name:16s} {threads} thread(s) each: {per_step:.3f} s/step", flush=True)
    for row in rows:
        row["speedup_vs_first"] = rows[0]["step_s"] / row["step_s"]
    write_json(args.out, {"particles": args.particles, "cpu_count": cores, "short": args.short, "long": args.long,
                          "overrides": args.overrides, "rows": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
