"""Cost of RSD repulsion in a text-to-3D step: render / guidance / kernel / backward split.

Every configuration is the ``make demo`` step (``configs/dreamfusion-embedded.yaml`` or
``--config``) with only the repulsion's feature map and placement overridden; the rows run side
by side in one process and alternate step by step, so that load on a shared machine slows them
alike. Phases of one step (seconds, median over the timed steps):

- render: the generator's training renders of the particles (``render_step``);
- guidance: the guidance call without the kernel (encode, UNet with CFG, δ, loss), plus the
  generator's regularisers;
- kernel: the repulsion inside the guidance call (feature map forward, kernel, VJP back to the
  source), timed by wrapping the guidance's :class:`~scorestudio.guidance.repulsion.Repulsion`;
- backward: ``loss.backward()`` through renders and fields; optimizer: the Adam step.

The kernel's share is kernel / total. Every step has repulsion active (γ ≠ 0 and t inside the
window) unless the config's schedule or window turns it off at the timed steps: the timed steps
are chosen in the phase given by ``--steps-at`` (default: steps right after the warm-up, at each
training resolution), and the report says how many timed steps had the kernel running.

    python benchmarks/bench_repulsion_3d.py                      # demo config, 5 timed steps per row and phase
    python benchmarks/bench_repulsion_3d.py --steps 2 --threads 1

Writes ``benchmarks/results/repulsion_3d.json`` (or ``--out``) and a stacked bar chart (.png).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from scorestudio.systems.dreamfusion import DreamFusionSystem  # noqa: E402
from scorestudio.utils.config import load_config  # noqa: E402
from scorestudio.utils.run import RunContext  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CONFIG = "dreamfusion-embedded.yaml"
PHASES = ("render", "guidance", "kernel", "backward", "optimizer")
# (label, overrides): the kernel variants compared, all on the chosen config's step.
VARIANTS = {
    "no repulsion": ["system.guidance.repulsion.gamma=0"],
    "config": [],
    "probe on decoded z_t": ["system.guidance.repulsion.gamma=10", "system.guidance.repulsion.features=probe",
                             "system.guidance.repulsion.on=noisy", "system.guidance.repulsion.t_window=[0,1]"],
    "latent probe on z_0": ["system.guidance.repulsion.gamma=10", "system.guidance.repulsion.features=latent_probe",
                            "system.guidance.repulsion.on=clean", "system.guidance.repulsion.t_window=[0,1]"],
}


class KernelTimer:
    """Wraps a :class:`Repulsion` so that its calls are timed; ``seconds``/``active`` of the last step."""

    def __init__(self, repulsion) -> None:
        self.repulsion, self.seconds, self.active = repulsion, 0.0, False

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        out = self.repulsion(*args, **kwargs)
        self.seconds += time.perf_counter() - start
        self.active = self.active or out is not None
        return out

    def __getattr__(self, name):
        return getattr(self.repulsion, name)


def build(config: str, overrides: list[str], workdir: Path) -> tuple[DreamFusionSystem, torch.optim.Optimizer, KernelTimer]:
    """The system of ``config`` with ``overrides``, its optimizer and the timer around its repulsion."""
    cfg = load_config(ROOT / "configs" / config, overrides)
    system = DreamFusionSystem(cfg.system, run=RunContext(workdir, cfg.seed))
    timer = KernelTimer(system.guidance.repulsion)
    system.guidance.repulsion = timer
    return system, system.configure_optimizers(), timer


def timed_step(system: DreamFusionSystem, optimizer: torch.optim.Optimizer, timer: KernelTimer, step: int) -> dict:
    """Seconds of each phase of one training step at ``step``; ``kernel_active``: whether it ran."""
    timer.seconds, timer.active = 0.0, False
    t0 = time.perf_counter()
    cameras, rendered = system.render_step(step)
    t1 = time.perf_counter()
    losses = system.losses(rendered, cameras, step)
    loss = sum(v for k, v in losses.items() if k.startswith("loss_"))
    t2 = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    t3 = time.perf_counter()
    optimizer.step()
    t4 = time.perf_counter()
    return {"render": t1 - t0, "guidance": t2 - t1 - timer.seconds, "kernel": timer.seconds,
            "backward": t3 - t2, "optimizer": t4 - t3, "total": t4 - t0, "kernel_active": timer.active}


def measure(config: str, variants: dict[str, list[str]], at: list[int], steps: int, workdir: Path) -> list[dict]:
    """One row per (variant, phase start): median phase times over ``steps`` timed steps after one warm-up."""
    runs = {name: build(config, extra, workdir) for name, extra in variants.items()}
    rows = []
    for start in at:
        times: dict[str, list[dict]] = {name: [] for name in runs}
        for k in range(steps + 1):
            for name, run in runs.items():
                t = timed_step(*run, start + k)
                if k > 0:
                    times[name].append(t)
        for name, ts in times.items():
            row = {"variant": name, "overrides": variants[name], "step": start,
                   "resolution": runs[name][0].resolution_at(start),
                   **{p: statistics.median(t[p] for t in ts) for p in (*PHASES, "total")},
                   "kernel_steps": sum(t["kernel_active"] for t in ts), "timed_steps": len(ts)}
            row["kernel_share"] = row["kernel"] / row["total"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def plot(rows: list[dict], title: str, path: Path) -> None:
    """Stacked phase times, one bar per variant, grouped by phase start (resolution)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    starts = sorted({r["step"] for r in rows})
    names = list(dict.fromkeys(r["variant"] for r in rows))
    colors = dict(zip(PHASES, ("tab:blue", "tab:orange", "tab:red", "tab:green", "tab:gray")))
    fig, ax = plt.subplots(figsize=(2.2 + 1.2 * len(starts) * len(names), 4.2))
    width = 0.8 / len(names)
    for i, start in enumerate(starts):
        for j, name in enumerate(names):
            row = next(r for r in rows if r["step"] == start and r["variant"] == name)
            bottom = 0.0
            for phase in PHASES:
                ax.bar(i + (j - (len(names) - 1) / 2) * width, row[phase], width * 0.9, bottom=bottom,
                       color=colors[phase], label=phase if i == 0 and j == 0 else None)
                bottom += row[phase]
            ax.text(i + (j - (len(names) - 1) / 2) * width, bottom, f"{100 * row['kernel_share']:.0f}%\n{name}",
                    ha="center", va="bottom", fontsize=6)
    resolution = {r["step"]: r["resolution"] for r in rows}
    ax.set_xticks(range(len(starts)), [f"step {s} ({resolution[s]}²)" for s in starts])
    ax.set_ylabel("seconds per step")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    ax.margins(y=0.25)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=CONFIG, help="a NeRF text-to-3D config in configs/")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant and phase")
    parser.add_argument("--steps-at", type=int, nargs="+", default=None,
                        help="global steps where the timed steps start (default: after the warm-up, at each resolution)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", default=str(RESULTS / "repulsion_3d.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(ROOT / "configs" / args.config, [])
    milestones = list(cfg.system.get("resolution_milestones") or [])
    at = args.steps_at or [100, *milestones]
    with tempfile.TemporaryDirectory() as work:
        rows = measure(args.config, VARIANTS, at, args.steps, Path(work))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    info = {"config": args.config, "threads": torch.get_num_threads(), "machine": platform.machine(),
            "torch": torch.__version__, "steps": args.steps, "steps_at": at}
    out.write_text(json.dumps({"info": info, "rows": rows}, indent=2))
    lines = ["| variant | step (res.) | render | guidance | kernel | backward | optimizer | total | kernel share |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['step']} ({r['resolution']}²) | " + " | ".join(f"{r[p]:.3f}" for p in PHASES)
              + f" | {r['total']:.3f} | {100 * r['kernel_share']:.1f}% |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    plot(rows, f"{args.config}: one 4-particle step, {info['threads']} threads", out.with_suffix(".png"))
    print("\n".join(lines))
    print(f"wrote {out}, {out.with_suffix('.md')} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
