"""Janus check of Perp-Neg on the embedded prior: view agreement of orbit frames with and without it.

For each prompt and seed, one dreamfusion-embedded run (4 NeRF particles) without and one with
``system.prompt_processor.use_perp_neg=true``; the ``view`` evaluator scores every test-orbit
frame (the probe's view head against the camera's view bucket) and ``probe`` the shape and colour
fractions. Runs go one at a time (``--lock FILE`` wraps each in ``flock FILE`` so that heavy jobs of
several users do not overlap); a finished run (its metrics.json) is not run again.

    python benchmarks/bench_janus.py --out benchmarks/results/janus --lock /work/notes/heavy.lock
    python benchmarks/bench_janus.py --out DIR --seeds 0 1 --steps 300      # a smaller set
    python benchmarks/bench_janus.py --out DIR --summary-only               # the table of what ran

Writes ``DIR/janus.json``: per run its metrics, per (prompt, perp_neg) the means over seeds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ("a red mug", "a blue house")
KEYS = ("view_agreement", "view_agreement_front", "view_agreement_side", "view_agreement_back",
        "back_seen_as_front", "shape_fraction", "color_fraction")


def run_name(prompt: str, seed: int, perp_neg: bool) -> str:
    return f"{prompt.replace(' ', '_')}-s{seed}-{'perpneg' if perp_neg else 'plain'}"


def command(prompt: str, seed: int, perp_neg: bool, steps: int, out: Path) -> list[str]:
    return [sys.executable, str(ROOT / "launch.py"), "--config", str(ROOT / "configs/dreamfusion-embedded.yaml"),
            "--train", f"system.prompt_processor.prompt={prompt}", f"seed={seed}",
            f"system.prompt_processor.use_perp_neg={str(perp_neg).lower()}",
            "system.evaluation.evaluators=[probe,opacity,view]", f"trainer.max_steps={steps}",
            "system.generator.export.after_test=false", "trainer.enable_progress_bar=false",
            f"exp_root_dir={out}", f"tag={run_name(prompt, seed, perp_neg)}", "use_timestamp=false"]


def metrics_of(out: Path, name: str) -> dict | None:
    path = out / "dreamfusion-embedded" / name / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


def summary(out: Path, seeds: list[int]) -> dict:
    runs, means = {}, {}
    for prompt in PROMPTS:
        for perp_neg in (False, True):
            rows = [m for s in seeds if (m := metrics_of(out, run_name(prompt, s, perp_neg))) is not None]
            runs.update({run_name(prompt, s, perp_neg): metrics_of(out, run_name(prompt, s, perp_neg)) for s in seeds})
            if rows:
                means[f"{prompt} | perp_neg={perp_neg}"] = {
                    "seeds": len(rows), **{k: sum(r[k] for r in rows if r.get(k) is not None) / len(rows) for k in KEYS}}
    return {"runs": runs, "means": means}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--lock", default=None, help="run each training under `flock LOCK`")
    parser.add_argument("--summary-only", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.summary_only:
        for seed in args.seeds:   # seed-major: an interrupted set still holds complete pairs
            for prompt in PROMPTS:
                for perp_neg in (False, True):
                    if metrics_of(args.out, run_name(prompt, seed, perp_neg)) is not None:
                        continue
                    cmd = command(prompt, seed, perp_neg, args.steps, args.out)
                    cmd = ["flock", args.lock, *cmd] if args.lock else cmd
                    print(" ".join(cmd), flush=True)
                    subprocess.run(cmd, check=True, cwd=ROOT)
    result = summary(args.out, args.seeds)
    (args.out / "janus.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result["means"], indent=2))


if __name__ == "__main__":
    main()
