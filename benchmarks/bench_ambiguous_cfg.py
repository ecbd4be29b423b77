"""What CFG does to a prompt that leaves the colour open: does one denoising step keep an object's colour?

For each shape of ``--shapes`` the procedural renderer draws the shape in each of the embedded
prior's 8 colours (the prior's training look: lit albedo on white); each image is encoded, noised
to t, denoised once with the ambiguous prompt "a <shape>" at CFG scale s (x̂0 = (z_t − σ_t ε̂) / α_t)
and decoded, and the probe classifies x̂0. "colour kept": the probe's colour of x̂0 is the colour
the object was drawn in; "shape kept": its shape is the prompted one. x̂0 is where SDS pulls the
render at that t, so a colour that CFG does not keep is one that no 3-D particle can hold.

    python benchmarks/bench_ambiguous_cfg.py                  # cube, sphere, torus; s = 1 2 3 5 10; t/T = 0.3 0.6 0.9

Writes ``benchmarks/results/ambiguous_cfg.json`` and ``.md`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


@torch.no_grad()
def kept(prior, probe, shape: str, scale: float, frac: float, draws: int, seed: int, negative: str = "") -> dict:
    """Fractions of (colour, noise draw) pairs whose one-step x̂0 keeps the colour / the shape."""
    from scorestudio.data.cameras import cameras_from_angles
    from scorestudio.data.procedural import ALL_SHAPES, COLORS, render_objects

    names = list(COLORS)
    n = len(names)
    cameras = cameras_from_angles(torch.full((n,), 20.0), torch.full((n,), 30.0), 2.5, 40.0)
    images = render_objects(torch.full((n,), ALL_SHAPES.index(shape)), torch.tensor([COLORS[c] for c in names]),
                            cameras, prior.image_size)
    z0 = prior.encode_images(images)
    cond, uncond = prior.encode_text([f"a {shape}"] * n), prior.encode_text([negative] * n)
    t = torch.full((n,), int(frac * prior.num_train_timesteps))
    gen = torch.Generator().manual_seed(seed)
    colour = shape_ok = 0
    for _ in range(draws):
        z_t = prior.add_noise(z0, torch.randn(z0.shape, generator=gen), t)
        eps = prior.predict_noise_cfg(z_t, t, cond, uncond, scale)[0]
        logits = probe(prior.decode_latents(prior.denoised(z_t, eps, t)))
        colour += sum(probe.names("color")[j] == names[i] for i, j in enumerate(logits["color"].argmax(-1).tolist()))
        shape_ok += sum(probe.names("shape")[j] == shape for j in logits["shape"].argmax(-1).tolist())
    return {"colour_kept": colour / (n * draws), "shape_kept": shape_ok / (n * draws)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["cube", "sphere", "torus"])
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0, 3.0, 5.0, 10.0])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.3, 0.6, 0.9], help="t/T")
    parser.add_argument("--draws", type=int, default=3, help="noise draws per colour")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--negative", default="", help="the negative prompt of CFG (default: none, as the embedded configs)")
    parser.add_argument("--out", default=str(RESULTS / "ambiguous_cfg.json"))
    args = parser.parse_args()
    import scorestudio
    from scorestudio.metrics.probe import load_probe

    prior, probe = scorestudio.find("embedded")({}), load_probe(None)
    rows = []
    for shape in args.shapes:
        for scale in args.scales:
            for frac in args.fractions:
                rows.append({"shape": shape, "cfg": scale, "t_frac": frac,
                             **kept(prior, probe, shape, scale, frac, args.draws, args.seed, args.negative)})
                print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    lines = ["| prompt | CFG | " + " | ".join(f"t/T = {f:g}: colour, shape kept" for f in args.fractions) + " |",
             "|---|---|" + "---|" * len(args.fractions)]
    for shape in args.shapes:
        for scale in args.scales:
            cells = [next(r for r in rows if r["shape"] == shape and r["cfg"] == scale and r["t_frac"] == f)
                     for f in args.fractions]
            lines.append(f"| a {shape} | {scale:g} | " + " | ".join(f"{c['colour_kept']:.2f}, {c['shape_kept']:.2f}"
                                                              for c in cells) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
