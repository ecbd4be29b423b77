"""Janus check of Perp-Neg on the embedded prior: view agreement of orbit frames with and without it.

For each prompt and seed, one dreamfusion-embedded run (4 NeRF particles; ``--config``: another 3-D
config of the embedded prior) without and one with
``system.prompt_processor.use_perp_neg=true``; the ``view`` evaluator scores every test-orbit
frame (the probe's view head against the camera's view bucket) and ``probe`` the shape and colour
fractions. Runs go one at a time (``--lock FILE`` wraps each in ``flock FILE`` so that heavy jobs of
several users do not overlap); a finished run (its metrics.json) is not run again.

    python benchmarks/bench_janus.py --out benchmarks/results/janus --lock /work/notes/heavy.lock
    python benchmarks/bench_janus.py --out DIR --seeds 0 --steps 300 --override "system.resolutions=[32]" \
        --override "system.resolution_milestones=[]"                        # a smaller set
    python benchmarks/bench_janus.py --out DIR --summary-only               # the table of what ran
    python benchmarks/bench_janus.py --out DIR --config gaussians-embedded.yaml   # splats instead of NeRF

Writes ``DIR/janus.json``: per run its metrics, per (prompt, perp_neg) the means over seeds and
how many particles meet the quality bar; ``DIR/janus_orbits.png``: the first seed's orbits.

``--per-view`` measures the same guidance effect without NeRF training (minutes instead of hours
on a loaded CPU): one latent image per test-orbit camera (``--views`` azimuths at elevation 15°), each
distilled by SDS from the embedded prior with that camera's prompt (plain: its view prompt;
Perp-Neg: the view mixture and negatives), all prompts, seeds and both settings in one batch;
then the probe's view of each image against the camera's bucket, and its shape and colour.

    python benchmarks/bench_janus.py --out DIR --per-view --steps 200 --seeds 0 --views 12

``--reference`` says what the check can show on these prompts (a minute): the probe's views of the
*true* objects on the same orbit (the ceiling of view agreement: the probe itself misreads some
frames), and of the embedded prior's own DDIM samples of each view prompt (does the prior draw a
back for "back view"?). Writes ``DIR/janus_reference.json`` and ``DIR/janus_reference.png``.

    python benchmarks/bench_janus.py --out DIR --reference --samples 12
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
CONFIG = "dreamfusion-embedded.yaml"   # a 3-D config of the embedded prior (its runs go to DIR/<its name>/)
QUALITY_BAR = 0.8   # the quality bar: shape and colour on at least this fraction of frames


def run_name(prompt: str, seed: int, perp_neg: bool) -> str:
    return f"{prompt.replace(' ', '_')}-s{seed}-{'perpneg' if perp_neg else 'plain'}"


def command(prompt: str, seed: int, perp_neg: bool, steps: int | None, out: Path, extra: list[str],
            config: str = CONFIG) -> list[str]:
    return [sys.executable, str(ROOT / "launch.py"), "--config", str(ROOT / "configs" / config),
            "--train", f"system.prompt_processor.prompt={prompt}", f"seed={seed}",
            f"system.prompt_processor.use_perp_neg={str(perp_neg).lower()}",
            "system.evaluation.evaluators=[probe,opacity,view]", *([f"trainer.max_steps={steps}"] if steps else []),
            "system.generator.export.after_test=false", "trainer.enable_progress_bar=false",
            f"exp_root_dir={out}", f"tag={run_name(prompt, seed, perp_neg)}", "use_timestamp=false", *extra]


def runs_folder(out: Path, config: str) -> Path:
    """Where ``launch.py`` puts the runs of ``config`` under ``exp_root_dir=out``: ``out/<its name>``."""
    from scorestudio.utils.config import load_config

    return out / load_config(str(ROOT / "configs" / config)).name


def metrics_of(out: Path, name: str, config: str = CONFIG) -> dict | None:
    """The metrics of run ``name`` (in its folder, or ``name-K`` when that was taken), or None."""
    runs = runs_folder(out, config)
    paths = [p for p in (runs / name, *sorted(runs.glob(f"{name}-*"))) if (p / "metrics.json").is_file()]
    return json.loads((paths[-1] / "metrics.json").read_text()) if paths else None


def quality_bar(rows: list[dict], bar: float = QUALITY_BAR) -> dict:
    """How many particles of the runs ``rows`` show the prompt's shape and colour on ≥ ``bar`` of
    their orbit frames."""
    fractions = [(r[f"particle{i}/shape_fraction"], r[f"particle{i}/color_fraction"])
                 for r in rows for i in range(sum(k.endswith("/shape_fraction") for k in r))]
    return {"particles": len(fractions), "particles_meeting_quality_bar": sum(min(f) >= bar for f in fractions)}


def summary(out: Path, seeds: list[int], config: str = CONFIG) -> dict:
    runs, means = {}, {}
    for prompt in PROMPTS:
        for perp_neg in (False, True):
            runs.update({run_name(prompt, s, perp_neg): metrics_of(out, run_name(prompt, s, perp_neg), config) for s in seeds})
            rows = [m for s in seeds if (m := runs[run_name(prompt, s, perp_neg)]) is not None]
            if rows:
                means[f"{prompt} | perp_neg={perp_neg}"] = {
                    "seeds": len(rows), **{k: sum(r[k] for r in rows if r.get(k) is not None) / len(rows) for k in KEYS},
                    **quality_bar(rows)}
    return {"runs": runs, "means": means}


def per_view(seeds: list[int], steps: int, n_views: int = 24, lr: float = 0.03, scale: float = 10.0) -> dict:
    """View agreement, shape and colour of view-conditioned image particles (see the docstring)."""
    import torch

    from scorestudio import find
    from scorestudio.data.cameras import VIEW_NAMES, orbit_cameras, view_index
    from scorestudio.metrics.attributes import prompt_attributes
    from scorestudio.metrics.probe import load_probe
    from scorestudio.priors.prompt_processor import PromptBatch
    from scorestudio.priors.perp_neg import PerpNegBatch
    from scorestudio.utils.seeding import generator

    prior, probe = find("embedded")({}), load_probe()
    cameras = orbit_cameras(n_views, 15.0)
    bucket = view_index(cameras.elevation, cameras.azimuth)
    groups = [(prompt, seed, perp) for perp in (False, True) for prompt in PROMPTS for seed in seeds]
    batches = []
    for prompt, seed, perp in groups:
        processor = find("prompt-processor")({"prompt": prompt, "use_perp_neg": perp})
        batches.append(processor(prior, cameras.elevation, cameras.azimuth))
    shape = (prior.latent_channels, prior.latent_size, prior.latent_size)
    latents = torch.stack([torch.randn(shape, generator=generator(seed, "init", i, g))
                           for g, (_, seed, _) in enumerate(groups) for i in range(len(cameras))]).requires_grad_(True)
    optimizer = torch.optim.Adam([latents], lr=lr)
    sds = find("sds")({"rgb_as_latents": True, "guidance_scale": scale}, path="system.guidance")
    half = len(groups) // 2 * len(cameras)   # plain rows first, Perp-Neg rows after
    plain = PromptBatch(torch.cat([b.cond for b in batches[:len(groups) // 2]]),
                        torch.cat([b.uncond for b in batches[:len(groups) // 2]]), [])
    perp = PromptBatch(torch.cat([b.cond for b in batches[len(groups) // 2:]]),
                       torch.cat([b.uncond for b in batches[len(groups) // 2:]]), [],
                       PerpNegBatch(torch.cat([b.perp_neg.embeddings for b in batches[len(groups) // 2:]]),
                                    torch.cat([b.perp_neg.weights for b in batches[len(groups) // 2:]])))
    ids = torch.arange(len(latents))
    for step in range(steps):
        if step % 20 == 0:
            print(f"per-view step {step}/{steps}", flush=True)
        optimizer.zero_grad()
        loss = sds(prior, latents[:half], plain, ids[:half], step)["loss_sds"]
        loss = loss + sds(prior, latents[half:], perp, ids[half:], step)["loss_sds"]
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        logits = probe(prior.decode_latents(latents))
    seen = {head: [probe.names(head)[j] for j in logits[head].argmax(-1).tolist()] for head in ("view", "shape", "color")}
    result = {}
    for g, (prompt, seed, perp_on) in enumerate(groups):
        rows = range(g * len(cameras), (g + 1) * len(cameras))
        views = [VIEW_NAMES.index(seen["view"][r]) for r in rows]
        agree = [v == int(b) for v, b in zip(views, bucket)]
        wanted = prompt_attributes(prompt)
        key = f"{prompt} | perp_neg={perp_on}"
        entry = result.setdefault(key, {"runs": []})
        entry["runs"].append({
            "seed": seed, "view_agreement": sum(agree) / len(agree),
            **{f"view_agreement_{name}": sum(a for a, b in zip(agree, bucket) if b == v) / max(1, int((bucket == v).sum()))
               for v, name in enumerate(VIEW_NAMES[:3])},
            "back_seen_as_front": sum(v == 0 for v, b in zip(views, bucket) if b == 2) / int((bucket == 2).sum()),
            "shape_fraction": sum(seen["shape"][r] == wanted["shape"] for r in rows) / len(cameras),
            "color_fraction": sum(seen["color"][r] == wanted["color"] for r in rows) / len(cameras)})
    for entry in result.values():
        entry["mean"] = {k: sum(r[k] for r in entry["runs"]) / len(entry["runs"]) for k in entry["runs"][0] if k != "seed"}
    return result


def orbit_sheet(out: Path, seed: int, config: str = CONFIG, every: int = 3):
    """Every ``every``-th test-orbit frame of each particle of the runs of ``seed``, one row per
    particle, plain above Perp-Neg: ``[3, H, W]``, or None when a run is missing. The frames are
    the rgb panels cut out of the runs' ``particle{i}.gif`` (the layout of ``test_orbits``)."""
    import imageio.v3 as iio
    import torch

    from scorestudio.data.cameras import VIEW_NAMES, orbit_cameras, view_index
    from scorestudio.utils.images import label_height, labelled_grid

    rows, labels = [], []
    for prompt in PROMPTS:
        for perp_neg in (False, True):
            name = run_name(prompt, seed, perp_neg)
            gifs = sorted((runs_folder(out, config) / name / "save").glob("it*-test/particle*.gif"))
            if not gifs:
                return None
            for gif in gifs:
                frames = torch.from_numpy(iio.imread(gif)[..., :3].copy()).permute(0, 3, 1, 2).float() / 255
                # A frame is a title strip, then a row of labelled panels (rgb first), pad 2.
                size = next(h for h in range(frames.shape[-2]) if h + 2 * label_height(h) + 8 == frames.shape[-2])
                top = label_height(size) + 4 + 2 + label_height(size)
                panels = frames[::every, :, top:top + size, 2:2 + size]
                rows.append(torch.nn.functional.interpolate(panels, size=96, mode="area"))
                labels += [f"{'Perp-Neg' if perp_neg else 'plain'} {gif.stem.removeprefix('particle')}:"] + [""] * (len(rows[-1]) - 1)
    cameras = orbit_cameras(len(frames), 15.0)
    views = view_index(cameras.elevation, cameras.azimuth)[::every]
    labels = [f"{head} {VIEW_NAMES[v]} {a:.0f}°".strip() for head, v, a in
              zip(labels, views.tolist() * len(rows), cameras.azimuth[::every].tolist() * len(rows))]
    return labelled_grid(torch.cat(rows), labels, ncol=len(rows[0]),
                         title=f"seed {seed}: {', '.join(PROMPTS)} (camera's view bucket, azimuth)")


def reference(n_samples: int, scale: float = 10.0, steps: int = 50, seed: int = 0):
    """The ceiling and the prior's own view knowledge (see the docstring): ``(result, picture)``,
    the picture ``[3, H, W]`` with one row per prompt (true orbit) and per view prompt (samples)."""
    import torch
    from diffusers import DDIMScheduler

    from scorestudio import find
    from scorestudio.data.cameras import VIEW_NAMES, orbit_cameras, view_index
    from scorestudio.data.procedural import ALL_SHAPES, COLORS, render_objects
    from scorestudio.metrics.attributes import prompt_attributes
    from scorestudio.metrics.evaluators import view_metrics
    from scorestudio.metrics.probe import load_probe
    from scorestudio.utils.images import labelled_grid

    prior, probe = find("embedded")({}), load_probe()
    cameras = orbit_cameras(24, 15.0)
    bucket = view_index(cameras.elevation, cameras.azimuth)
    to_ours = torch.tensor([VIEW_NAMES.index(name) for name in probe.names("view")])
    scheduler = DDIMScheduler.from_config(prior.scheduler_config)
    scheduler.set_timesteps(steps)
    result, grids = {}, []
    for prompt in PROMPTS:
        wanted = prompt_attributes(prompt)
        truth = render_objects(torch.full((len(cameras),), ALL_SHAPES.index(wanted["shape"])),
                               torch.tensor([COLORS[wanted["color"]]] * len(cameras)), cameras, 128)
        with torch.no_grad():
            seen = to_ours[probe(truth)["view"].argmax(-1)]
        entry = {"truth_orbit": {k: v for k, v in view_metrics(seen[None], bucket).items() if "/" not in k}}
        grids.append(labelled_grid(truth, [f"{VIEW_NAMES[b][0]}>{VIEW_NAMES[v]}" for b, v in zip(bucket, seen)],
                                   ncol=len(cameras), title=f"{prompt}: true object, camera bucket > probe view"))
        processor = find("prompt-processor")({"prompt": prompt})
        embeddings = prior.encode_text(processor.view_prompts())
        uncond = prior.encode_text([processor.cfg.negative_prompt])
        gen = torch.Generator().manual_seed(seed)
        for v, view in enumerate(VIEW_NAMES[:3]):
            x = torch.randn(n_samples, prior.latent_channels, prior.latent_size, prior.latent_size, generator=gen)
            cond, neg = embeddings[[v] * n_samples], uncond.expand(n_samples, *uncond.shape[1:])
            with torch.no_grad():
                for t in scheduler.timesteps:
                    eps = prior.predict_noise_cfg(x, t, cond, neg, scale)[0]
                    x = scheduler.step(eps, t, x).prev_sample
                images = prior.decode_latents(x).clamp(0, 1)
                rows = probe.classify(images)
            views = [r["view"] for r in rows]
            entry[f"samples_{view}_view"] = {
                "n": n_samples, **{f"seen_{name}": views.count(name) / n_samples for name in VIEW_NAMES},
                "shape_fraction": sum(r["shape"] == wanted["shape"] for r in rows) / n_samples}
            shown = torch.nn.functional.interpolate(images, size=truth.shape[-1], mode="nearest")
            grids.append(labelled_grid(shown, [str(w) for w in views], ncol=n_samples,
                                       title=f'prior samples of "{processor.view_prompts()[v]}" (probe view)'))
        result[prompt] = entry
        print(prompt, json.dumps(entry), flush=True)
    width = max(g.shape[-1] for g in grids)
    picture = torch.cat([torch.nn.functional.pad(g, (0, width - g.shape[-1]), value=1.0) for g in grids], dim=1)
    return {"samples": n_samples, "guidance_scale": scale, "ddim_steps": steps, "seed": seed,
            "prompts": result}, picture


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the config's)")
    parser.add_argument("--config", default=CONFIG, help="a 3-D config of the embedded prior, in configs/")
    parser.add_argument("--lock", default=None, help="run each training under `flock LOCK`")
    parser.add_argument("--override", action="append", default=[], help="a config override for every run")
    parser.add_argument("--summary-only", action="store_true")
    parser.add_argument("--per-view", action="store_true", help="view-conditioned image particles instead of NeRF runs")
    parser.add_argument("--views", type=int, default=24, help="--per-view: orbit cameras (images per prompt and seed)")
    parser.add_argument("--reference", action="store_true", help="the true objects' and the prior's own view readings")
    parser.add_argument("--samples", type=int, default=12, help="--reference: prior samples per view prompt")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.reference:
        from scorestudio.utils.images import save_image

        result, picture = reference(args.samples)
        (args.out / "janus_reference.json").write_text(json.dumps(result, indent=2))
        save_image(picture, args.out / "janus_reference.png")
        return
    if args.per_view:
        steps = args.steps or 500
        result = {"steps": steps, "seeds": args.seeds, "views": args.views,
                  "groups": per_view(args.seeds, steps, args.views)}
        (args.out / "janus_per_view.json").write_text(json.dumps(result, indent=2))
        print(json.dumps({k: v["mean"] for k, v in result["groups"].items()}, indent=2))
        return
    if not args.summary_only:
        for seed in args.seeds:   # seed-major: an interrupted set still holds complete pairs
            for prompt in PROMPTS:
                for perp_neg in (False, True):
                    if metrics_of(args.out, run_name(prompt, seed, perp_neg), args.config) is not None:
                        continue
                    cmd = command(prompt, seed, perp_neg, args.steps, args.out, args.override, args.config)
                    cmd = ["flock", args.lock, *cmd] if args.lock else cmd
                    print(" ".join(cmd), flush=True)
                    subprocess.run(cmd, check=True, cwd=ROOT)
    result = summary(args.out, args.seeds, args.config)
    (args.out / "janus.json").write_text(json.dumps(result, indent=2))
    sheet = orbit_sheet(args.out, args.seeds[0], args.config)
    if sheet is not None:
        from scorestudio.utils.images import save_image

        save_image(sheet, args.out / "janus_orbits.png")
    print(json.dumps(result["means"], indent=2))


if __name__ == "__main__":
    main()
