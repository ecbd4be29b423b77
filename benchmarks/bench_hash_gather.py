"""The hash grid's table gather, forward + backward: ``F.embedding`` vs ``index_select``, with int32
and int64 indices.

The PyTorch hash grid (``scorestudio/renderers/nerf/encodings.py``) reads 8 corners per point from
K particles' tables stacked into one ``[K·T, F]`` matrix; this benchmark times the candidate
gathers for 1 and 4 particles (the encoding uses the fastest: index_select, int64).

    python benchmarks/bench_hash_gather.py                        # CPU, torch's threads
    python benchmarks/bench_hash_gather.py --device cuda --out benchmarks/results/hash_gather_cuda.json

Prints a table and writes benchmarks/results/hash_gather.json (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def seconds(fn, device: torch.device, repeats: int) -> float:
    """Fastest of ``repeats`` timed calls after one warm-up."""
    times = []
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--log2-table", type=int, default=16, help="log2 of T, rows per particle table")
    parser.add_argument("--points", type=int, default=32 * 32 * 48, help="P, points per particle (rays × samples)")
    parser.add_argument("--features", type=int, default=2, help="F, features per table row")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(RESULTS / "hash_gather.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    size = 2 ** args.log2_table
    gen = torch.Generator().manual_seed(0)
    rows = []
    for particles in (1, 4):
        table = torch.randn(particles * size, args.features, generator=gen).to(device).requires_grad_(True)
        index64 = torch.randint(0, particles * size, (particles, args.points, 8), generator=gen).to(device)
        gathers = {"embedding": lambda index: F.embedding(index, table),
                   "index_select": lambda index: table.index_select(0, index.flatten()).view(*index.shape, -1)}
        row = {"particles": particles}
        for name, gather in gathers.items():
            for bits, index in (("int32", index64.int()), ("int64", index64)):
                def step():
                    gather(index).square().sum().backward()
                    table.grad = None

                row[f"{name}_{bits}_s"] = seconds(step, device, args.repeats)
        rows.append(row)
        print(f"K={particles}: " + ", ".join(f"{k[:-2]} {v * 1e3:.2f} ms" for k, v in row.items() if k.endswith("_s")),
              flush=True)
    out = {"device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
           "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "table_rows": size,
           "points": args.points, "features": args.features, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
