#!/usr/bin/env python
"""Checks that a refactor changes nothing numeric: 20-step CPU runs of seven configs, before vs after.

    # before the refactor, from a pristine worktree of the old commit
    git worktree add --detach /work/baseline <old-commit>
    python benchmarks/compare_refactor.py run --out /work/refactor-baseline --repo /work/baseline
    # after it
    python benchmarks/compare_refactor.py run --out /tmp/after
    python benchmarks/compare_refactor.py compare /work/refactor-baseline /tmp/after \\
        [--map geometry.=generator.geometry. ...] [--json report.json]

``run`` trains every case through ``launch.py --train`` (with the code of ``--repo`` first on
PYTHONPATH, one thread, fixed seed) and keeps, per case, ``<case>.pt`` (the tensors of
``ckpts/last.ckpt``'s state_dict, plus its other top-level tensors as ``checkpoint.<key>``),
``<case>.params.json`` (which of them are parameters) and ``<case>.metrics.json``.

``compare`` matches tensors by name (``--map`` rewrites old prefixes; otherwise a unique
name-suffix match), prints one row per case and exits 1 when a matched tensor differs by more
than ``--tol`` or a parameter of the BEFORE run has no match (unmatched buffers and differing
metrics.json entries are listed, not failed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

# Overrides shared by every case: 20 steps, no validation, one checkpoint at the end, no progress bar.
COMMON = ["trainer.max_steps=20", "seed=0", "use_timestamp=false", "trainer.val_check_interval=0",
          "checkpoint.every_n_train_steps=20", "trainer.enable_progress_bar=false"]
CASES = {
    "toy-particles": ["configs/toy-particles.yaml"],
    "image-particles-sds-repulsion": ["configs/image-particles-sds.yaml", "system.guidance.repulsion.gamma=20"],
    "image-particles-vsd": ["configs/image-particles-vsd.yaml"],
    # Schedules moved into the 20 steps so that every NeRF path runs: both resolutions, shading,
    # the orientation / opacity losses and occupancy-mask refreshes.
    "dreamfusion-embedded": ["configs/dreamfusion-embedded.yaml", "system.n_particles=4",
                             "system.resolution_milestones=[10]", "system.material.ambient_only_steps=5",
                             "system.loss.lambda_orient=[5,0.0,10.0,20]", "system.loss.lambda_opaque=[5,0.0,100.0,20]",
                             "system.renderer.occupancy.update_every=5",
                             "system.evaluation.n_views=2", "system.export.after_test=false"],
    # Repulsion on, so the DDIM sampler's particle guidance runs too.
    "text-to-svg": ["configs/text-to-svg.yaml", "system.guidance.repulsion.gamma=20",
                    "system.init_from_sample.ddim_steps=4", "system.init_from_sample.fit_steps=10"],
    "svg-restoration": ["configs/svg-restoration.yaml"],
    "rlsd-inpaint": ["configs/rlsd-inpaint.yaml"],
}

# Runs launch.py as its command line would, recording the trained system's parameter names
# (a checkpoint's state_dict does not say which tensors are parameters and which are buffers).
LAUNCH = """
import json, runpy, sys
import lightning.pytorch as pl
fit, names_file = pl.Trainer.fit, sys.argv[1]
def fit_and_record(self, model, *args, **kwargs):
    out = fit(self, model, *args, **kwargs)
    json.dump(sorted(n for n, _ in model.named_parameters()), open(names_file, "w"), indent=0)
    return out
pl.Trainer.fit = fit_and_record
sys.argv = ["launch.py"] + sys.argv[2:]
runpy.run_path("launch.py", run_name="__main__")
"""


def run_case(case: str, args: list[str], out: Path, repo: Path) -> float:
    """Trains one case; writes ``out/<case>.{pt,params.json,metrics.json}``; returns seconds."""
    root = out / "runs" / case
    shutil.rmtree(root, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", LAUNCH, str(out / f"{case}.params.json"), "--config", args[0], "--train",
           *COMMON, f"exp_root_dir={root}", *args[1:]]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=repo, env=env, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    (run_dir,) = {p.parent.parent for p in root.rglob("ckpts/last.ckpt")}
    ckpt = torch.load(run_dir / "ckpts/last.ckpt", map_location="cpu", weights_only=True)
    # Tensors a system keeps beyond its state_dict (e.g. the NeRF occupancy mask) as "checkpoint.<key>".
    extra = {f"checkpoint.{k}": v for k, v in ckpt.items() if isinstance(v, torch.Tensor)}
    torch.save({k: v.clone() for k, v in {**ckpt["state_dict"], **extra}.items()}, out / f"{case}.pt")
    shutil.copy(run_dir / "metrics.json", out / f"{case}.metrics.json")
    return seconds


def match(before: dict, after: dict, maps: list[tuple[str, str]]) -> dict[str, str]:
    """BEFORE name -> AFTER name: the same name, else the ``--map``-rewritten one, else the only
    AFTER name that ends with ``.<name>`` (or whose BEFORE name ends with the AFTER name)."""
    pairs = {}
    for name in before:
        renamed = [new + name[len(old):] for old, new in maps if name.startswith(old)]
        direct = [n for n in [name, *renamed] if n in after]
        by_suffix = [n for n in after if n.endswith("." + name) or name.endswith("." + n)]
        if direct or len(by_suffix) == 1:
            pairs[name] = (direct or by_suffix)[0]
    return pairs


def compare_case(before_dir: Path, after_dir: Path, case: str, maps, tol: float) -> dict:
    before = torch.load(before_dir / f"{case}.pt", weights_only=True)
    after = torch.load(after_dir / f"{case}.pt", weights_only=True)
    params = set(json.loads((before_dir / f"{case}.params.json").read_text()))
    pairs = match(before, after, maps)
    diffs = {}
    for old, new in pairs.items():
        a, b = before[old], after[new]
        if a.shape != b.shape or a.dtype != b.dtype:
            diffs[old] = float("inf")
        else:
            diffs[old] = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
    unmatched = sorted(set(before) - set(pairs))
    row = {"case": case, "compared": len(pairs), "max_abs_diff": max(diffs.values(), default=0.0),
           "bitwise_equal": all(torch.equal(before[o], after[n]) for o, n in pairs.items()) and not unmatched,
           "unmatched_params": [n for n in unmatched if n in params],
           "unmatched_buffers": [n for n in unmatched if n not in params],
           "new_in_after": sorted(set(after) - set(pairs.values())),
           "renamed": {o: n for o, n in pairs.items() if o != n},
           "differing": {n: d for n, d in diffs.items() if d > 0}}
    # Informational only: a refactor may rename metrics or write null where NaN was.
    m0, m1 = (json.loads((d / f"{case}.metrics.json").read_text()) for d in (before_dir, after_dir))
    row["metrics_differ"] = sorted(k for k in m0.keys() | m1.keys() if json.dumps(m0.get(k)) != json.dumps(m1.get(k)))
    row["ok"] = row["max_abs_diff"] <= tol and not row["unmatched_params"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_run = sub.add_parser("run", help="train every case and keep its checkpoint tensors")
    p_run.add_argument("--out", type=Path, required=True)
    p_run.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    p_run.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    p_cmp = sub.add_parser("compare", help="compare two run folders")
    p_cmp.add_argument("before", type=Path)
    p_cmp.add_argument("after", type=Path)
    p_cmp.add_argument("--map", action="append", default=[], metavar="OLD_PREFIX=NEW_PREFIX")
    p_cmp.add_argument("--tol", type=float, default=1e-6)
    p_cmp.add_argument("--json", type=Path)
    args = parser.parse_args()

    if args.cmd == "run":
        args.out.mkdir(parents=True, exist_ok=True)
        times = {}
        for case in args.cases:
            times[case] = run_case(case, CASES[case], args.out.resolve(), args.repo.resolve())
            print(f"{case:32s} {times[case]:7.1f} s", flush=True)
        (args.out / "timings.json").write_text(json.dumps(times, indent=1))
        return

    maps = [tuple(m.split("=", 1)) for m in args.map]
    cases = [c for c in CASES if (args.before / f"{c}.pt").exists()]
    rows = [compare_case(args.before, args.after, c, maps, args.tol) for c in cases]
    print(f"{'case':32s} {'tensors':>7s} {'unmatched':>9s} {'max|diff|':>10s} bitwise")
    for r in rows:
        print(f"{r['case']:32s} {r['compared']:7d} {len(r['unmatched_params'])}+{len(r['unmatched_buffers']):<7d} "
              f"{r['max_abs_diff']:10.3g} {'yes' if r['bitwise_equal'] else 'no'}{'' if r['ok'] else '  FAIL'}")
        for key in ("unmatched_params", "unmatched_buffers", "new_in_after", "differing", "metrics_differ"):
            if r[key]:
                print(f"    {key}: {r[key]}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    sys.exit(0 if all(r["ok"] for r in rows) else 1)


if __name__ == "__main__":
    main()
