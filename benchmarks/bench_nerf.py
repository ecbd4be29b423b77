"""Cost of a text-to-3D training step: render / guidance / backward / optimizer, particles batched
or run one after another, dense grid vs hash grid, dense sampling vs empty-space skipping.

Every configuration is the demo's (configs/dreamfusion-embedded.yaml, SDS + repulsion on the
probe's features) with the number of particles, the encoding, the render size and the shading
overridden. "lambertian" steps compute normals (3 extra field evaluations at the visible
samples); "albedo" steps are the warm-up's. The batched-vs-sequential ratio compares one
4-particle step (with and without repulsion, which only a batch can have) with the sum of one
step of each of 4 single-particle runs (seeds 0-3). "occupancy" rows skip empty space
(``renderer.estimator=occupancy``: the field is evaluated only in occupied cells); on CUDA
``--estimators nerfacc`` adds rows with nerfacc's occupancy grids and packed samples.

By default the particles are the freshly initialised density blobs; ``--trained-geometry CKPT``
loads the geometry of a finished 4-particle run instead (single-particle run i gets particle i),
where empty-space skipping sees the occupancy of a real object (grid rows; the hash grid rows
start from blobs).

The prior is the trained embedded prior when it is installed; otherwise a randomly initialised
prior of the same architecture (the same cost per step; pass --prior tiny for the unit-test size).
Times are medians over the timed steps; the 4-particle run and the 4 single-particle runs
alternate step by step so that a busy machine slows both alike.

    python benchmarks/bench_nerf.py                 # all rows, 3 timed steps each
    python benchmarks/bench_nerf.py --steps 1 --threads 1
    python benchmarks/bench_nerf.py --trained-geometry outputs/dreamfusion-embedded/<run>/ckpts/last.ckpt \
        --out benchmarks/results/nerf_trained.json
    python benchmarks/bench_nerf.py --device cuda --out benchmarks/results/nerf_cuda.json
    python benchmarks/bench_nerf.py --estimators occupancy --overrides system.guidance.repulsion.on=rendered

Prints a table and writes benchmarks/results/nerf.json (or ``--out``) and a bar chart of the phases
(the same name, .png).
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
from typing import Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import sharding  # noqa: E402
import torch  # noqa: E402

from scorestudio.systems.dreamfusion import DreamFusionSystem  # noqa: E402
from scorestudio.utils.checkpoint import load_checkpoint  # noqa: E402
from scorestudio.utils.config import load_config  # noqa: E402
from scorestudio.utils.run import RunContext  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CONFIG = ROOT / "configs" / "dreamfusion-embedded.yaml"
TRAINED = ROOT / "scorestudio" / "priors" / "weights" / "embedded"
# A hash grid a CPU can afford: 8 levels from 8 to 8 · 1.5^7 ≈ 137 cells per axis, 2^16 entries.
CPU_HASHGRID = ["system.geometry.hashgrid.n_levels=8", "system.geometry.hashgrid.log2_hashmap_size=16",
                "system.geometry.hashgrid.base_resolution=8", "system.geometry.hashgrid.per_level_scale=1.5",
                "system.geometry.hashgrid.backend=torch"]
SHADING = {"albedo": ["system.material.ambient_only_steps=1000000"],
           "lambertian": ["system.material.ambient_only_steps=0", "system.material.albedo_prob=0",
                          "system.material.lambertian_prob=1", "system.material.textureless_prob=0"]}
PHASES = ("render", "guidance", "backward", "optimizer")


def prepare_prior(kind: str, folder: Path) -> tuple[str, str, str]:
    """(prior folder, probe folder, description) for ``kind``: trained, random (default
    architecture) or tiny."""
    if kind == "auto":
        kind = "trained" if (TRAINED / "unet").is_dir() and (TRAINED / "probe").is_dir() else "random"
    if kind == "trained":
        return str(TRAINED), str(TRAINED / "probe"), "trained embedded prior"
    from safetensors.torch import save_file

    from scorestudio.data.cameras import VIEW_NAMES
    from scorestudio.data.procedural import ALL_SHAPES, COLOR_NAMES, KINDS
    from scorestudio.priors.embedded_arch import SIZES, ProbeConfig, ProbeNet, build_unet, build_vae
    from scorestudio.utils.io import write_json
    from tests.tiny_models import make_tiny_embedded

    make_tiny_embedded(folder)                     # scheduler, text encoder spec, tiny networks
    size = SIZES["default" if kind == "random" else "tiny"]
    if kind == "random":                           # the shipped architecture, random weights
        torch.manual_seed(0)
        build_vae(size).save_pretrained(folder / "vae")
        build_unet(size).half().save_pretrained(folder / "unet")
    probe_cfg = ProbeConfig(resolution=size.image_size, channels=size.probe.channels, feature_dim=size.probe.feature_dim,
                            norm_num_groups=size.probe.norm_num_groups, shapes=ALL_SHAPES, colors=COLOR_NAMES,
                            kinds=KINDS, views=VIEW_NAMES)
    (folder / "probe").mkdir()
    write_json(folder / "probe" / "config.json", probe_cfg.to_dict())
    save_file({k: v.contiguous() for k, v in ProbeNet(probe_cfg).state_dict().items()},
              str(folder / "probe" / "probe.safetensors"))
    what = "randomly initialised prior of the shipped architecture" if kind == "random" else "tiny test prior"
    return str(folder), str(folder / "probe"), what


DEVICE = torch.device("cpu")   # set by --device


def build(overrides: list[str], seed: int, workdir: Path,
          geometry: Optional[dict] = None) -> tuple[DreamFusionSystem, torch.optim.Optimizer]:
    """A system and its optimizer; ``geometry``: a geometry state dict to start from."""
    cfg = load_config(CONFIG, overrides)
    system = DreamFusionSystem(cfg.system, run=RunContext(workdir, seed)).to(DEVICE)
    if geometry is not None:
        system.geometry.load_state_dict(geometry)
    return system, system.configure_optimizers()


def trained_geometry(path: Optional[str]) -> Optional[dict]:
    """The geometry state (leading axis: particles) of a DreamFusion checkpoint, or None."""
    if path is None:
        return None
    state = load_checkpoint(path, require=("state_dict",), map_location=DEVICE)["state_dict"]
    geometry = {k.removeprefix("geometry."): v for k, v in state.items() if k.startswith("geometry.")}
    n = next(iter(geometry.values())).shape[0]
    if n < 4:
        raise SystemExit(f"--trained-geometry {path}: has {n} particles; the benchmark needs 4")
    return geometry


def now() -> float:
    """perf_counter after the device's queued work (CUDA kernels run asynchronously)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)
    return time.perf_counter()


def timed_step(system: DreamFusionSystem, optimizer: torch.optim.Optimizer, step: int) -> dict[str, float]:
    """Seconds spent in each phase of one training step."""
    t0 = now()
    cameras, out = system.render_step(step)
    t1 = now()
    losses = system.step_losses(cameras, out, step)
    t2 = now()
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    t3 = now()
    optimizer.step()
    t4 = now()
    times = dict(zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)))
    return {**times, "total": t4 - t0}


def median_of(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def measure(overrides: list[str], steps: int, workdir: Path, geometry: Optional[dict]) -> dict[str, dict]:
    """Median phase times over ``steps`` steps (after one warm-up) of: the 4-particle run with
    repulsion ("batched"), the same without repulsion ("batched_no_repulsion"), and 4
    single-particle runs (seeds 0-3; "single" is seed 0, "sequential" the sum of the four). The
    runs alternate step by step, so that load on a shared machine hits them alike."""
    def particles(i: int, n: int) -> Optional[dict]:
        return None if geometry is None else {k: v[i: i + n] for k, v in geometry.items()}

    runs = {"batched": build([*overrides, "system.n_particles=4"], 0, workdir, particles(0, 4)),
            "batched_no_repulsion": build([*overrides, "system.n_particles=4", "system.guidance.repulsion.gamma=0"],
                                          0, workdir, particles(0, 4))}
    singles = [build([*overrides, "system.n_particles=1"], seed, workdir, particles(seed, 1)) for seed in range(4)]
    rows: dict[str, list] = {name: [] for name in (*runs, "single", "sequential")}
    for step in range(steps + 1):
        times = {name: timed_step(*run, step) for name, run in runs.items()}
        single = [timed_step(*run, step) for run in singles]
        if step > 0:
            for name, t in times.items():
                rows[name].append(t)
            rows["single"].append(single[0])
            rows["sequential"].append({"total": sum(t["total"] for t in single)})
    return {name: median_of(r) for name, r in rows.items()}


def plot(rows: list[dict], title: str, path: Path) -> None:
    """Stacked phase times per configuration: one particle, 4 batched, 4 batched with repulsion;
    the sum of 4 single-particle steps as a line and half of it (issue 5's target) dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [r for r in rows if r["particles"] == 1]
    fig, ax = plt.subplots(figsize=(max(6.0, 2.2 * len(cases)), 4.2))
    colors = dict(zip(PHASES, ("tab:blue", "tab:orange", "tab:green", "tab:gray")))
    width = 0.26
    for i, single in enumerate(cases):
        key = {k: single[k] for k in ("encoding", "resolution", "shading", "estimator")}
        batched = [r for r in rows if r["particles"] == 4 and all(r[k] == v for k, v in key.items())]
        bars = [single] + sorted(batched, key=lambda r: r["repulsion"])
        for j, row in enumerate(bars):
            bottom = 0.0
            for phase in PHASES:
                ax.bar(i + (j - 1) * width, row[phase], width * 0.9, bottom=bottom, color=colors[phase],
                       label=phase if i == 0 and j == 0 else None)
                bottom += row[phase]
        if batched:
            seq = batched[0]["sequential_total"]
            ax.hlines(seq, i - 1.6 * width, i + 1.6 * width, color="k", label="4 single-particle steps" if i == 0 else None)
            ax.hlines(seq / 2, i - 1.6 * width, i + 1.6 * width, color="k", linestyles="--",
                      label="half of that (target)" if i == 0 else None)
    ax.set_xticks(range(len(cases)), [f"{c['encoding']} {c['resolution']}²\n{c['estimator']}, {c['shading']}\n"
                                      "1 | 4 | 4 + rep." for c in cases], fontsize=8)
    ax.set_ylabel("seconds per step")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--prior", choices=["auto", "trained", "random", "tiny"], default="auto")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    parser.add_argument("--trained-geometry", default=None, metavar="CKPT",
                        help="start from the geometry of a 4-particle DreamFusion checkpoint (default: blobs)")
    parser.add_argument("--estimators", nargs="+", choices=["dense", "occupancy", "nerfacc"],
                        default=["dense", "occupancy"],
                        help="sampling schemes to time (nerfacc: its occupancy grids, CUDA only)")
    parser.add_argument("--overrides", nargs="*", default=[],
                        help="config overrides for every configuration, e.g. system.guidance.repulsion.on=rendered")
    parser.add_argument("--out", default=str(RESULTS / "nerf.json"))
    args = parser.parse_args()
    global DEVICE
    DEVICE = sharding.device(args)
    if "nerfacc" in args.estimators and DEVICE.type != "cuda":
        raise SystemExit("--estimators nerfacc needs --device cuda (nerfacc's occupancy grids are CUDA kernels)")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        prior, probe, prior_desc = prepare_prior(args.prior, Path(tmp) / "prior")
        base = [f"system.prior.pretrained_model_name_or_path={prior}", f"system.probe_path={probe}",
                f"system.guidance.repulsion.feature_net_path={probe}", "system.resolution_milestones=[]", *args.overrides]
        geometry = trained_geometry(args.trained_geometry)
        cases = []
        if "dense" in args.estimators:
            cases += [("grid", res, shading, "dense") for res in (32, 64) for shading in ("albedo", "lambertian")]
        cases += [("grid", res, "lambertian", est) for est in ("occupancy", "nerfacc") if est in args.estimators
                  for res in (32, 64)]
        cases += [("hashgrid", res, "lambertian", est) for est in ("dense", "nerfacc") if est in args.estimators
                  for res in (32, 64)]
        for encoding, res, shading, estimator in cases:
            overrides = [*base, f"system.resolutions=[{res}]", f"system.geometry.encoding={encoding}", *SHADING[shading],
                         f"system.renderer.estimator={estimator}",
                         *(CPU_HASHGRID + ["system.loss.lambda_tv=0"] if encoding == "hashgrid" else [])]
            m = measure(overrides, args.steps, Path(tmp) / "run", geometry if encoding == "grid" else None)
            case = {"encoding": encoding, "resolution": res, "shading": shading, "estimator": estimator}
            sequential = m["sequential"]["total"]
            rows.append({**case, "particles": 1, "repulsion": False, **m["single"]})
            for name, repulsion in (("batched_no_repulsion", False), ("batched", True)):
                rows.append({**case, "particles": 4, "repulsion": repulsion, **m[name], "sequential_total": sequential,
                             "batched_over_sequential": m[name]["total"] / sequential})
            print(*rows[-3:], sep="\n", flush=True)
    print(f"\nprior: {prior_desc}; torch threads: {torch.get_num_threads()}; "
          f"seconds per step (median of {args.steps}), demo config otherwise")
    print(f"{'encoding':9} {'estimator':9} {'N':>2} {'rep.':>4} {'res':>4} {'shading':10} "
          + " ".join(f"{p:>9}" for p in (*PHASES, "total")) + f" {'4 seq.':>8} {'ratio':>6}")
    for r in rows:
        seq = f" {r['sequential_total']:8.3f} {r['batched_over_sequential']:6.2f}" if r["particles"] == 4 else ""
        print(f"{r['encoding']:9} {r['estimator']:9} {r['particles']:>2} {'yes' if r['repulsion'] else 'no':>4} {r['resolution']:>4} "
              f"{r['shading']:10} " + " ".join(f"{r[p]:9.3f}" for p in (*PHASES, "total")) + seq)
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out = {"prior": prior_desc, "device": str(DEVICE) if DEVICE.type == "cpu" else torch.cuda.get_device_name(DEVICE),
           "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
           "machine": platform.processor() or platform.machine(), "timed_steps": args.steps,
           "geometry": args.trained_geometry or "initial density blobs", "overrides": args.overrides,
           "hashgrid_cpu_settings": CPU_HASHGRID, "rows": rows}
    out_path.write_text(json.dumps(out, indent=2) + "\n")
    plot(rows, f"{out['device']}, {prior_desc}, {out['geometry']}", out_path.with_suffix(".png"))
    print(f"wrote {out_path} and {out_path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
