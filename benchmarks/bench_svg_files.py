"""The SVG reader and rasterizer on real files, against resvg.

    python benchmarks/bench_svg_files.py [--size 256] [--sets feather,mdi,...] [--limit N]
                                         [--no-icons] [--no-suite] [--categories painting,...]
                                         [--out benchmarks/results/svg_files.json]

Two parts, both on the files under ``benchmarks/data/svg/`` (see its README for their sources
and licences):

1. **Icon sets** (every folder but ``resvg-tests``): each file read with ``parse_svg`` at
   ``--size`` px wide (aspect kept), rendered with ``render`` and compared with resvg-py's
   rendering of the same file at the same size on white. Per set: files, files loaded, median /
   p90 / max mean absolute error (0–255 units, ours quantised to 8 bits like resvg's PNG),
   median parse time (ms, one read after a warm-up), failures by cause, and the features the
   reader did not draw (summed over the set's files).
2. **resvg's test suite** (``resvg-tests/<category>/<feature>/*.svg``): each file read at its own
   size; a file *uses only supported features* when the reader draws everything in it (its
   ``ignored`` count is empty) and it loads; per category, the fraction of those within
   ``--threshold`` (2/255) of resvg.

Writes the JSON and a picture of the worst files (ours | resvg | |difference| × 4) to
``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import io as _io
import json
import statistics
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scorestudio.renderers.svg import SvgError, render  # noqa: E402
from scorestudio.renderers.svg.io import parse_svg  # noqa: E402

DATA = ROOT / "benchmarks" / "data" / "svg"
SUITE = "resvg-tests"
CATEGORIES = ("structure", "painting", "shapes", "masking")


def resvg_image(path: Path, width: int | None) -> np.ndarray:
    """resvg's rendering of a file on white, ``[H, W, 3]`` float in [0, 1]."""
    import resvg_py
    from PIL import Image

    # resvg's own default language list (resvg-py passes none, which fails every systemLanguage);
    # the test suite assumes an English system, as the reader does
    png = bytes(resvg_py.svg_to_bytes(svg_path=str(path), width=width, background="#ffffff", languages=["en"]))
    return np.asarray(Image.open(_io.BytesIO(png)).convert("RGB"), dtype=np.float64) / 255


def ours(path: Path, width: int | None) -> tuple[np.ndarray, Counter, float]:
    """Our rendering ``[H, W, 3]`` (quantised to 8 bits), the ignored features and the parse time
    in ms (the second of two reads)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parse_svg(path, width)
        start = time.perf_counter()
        scene, ignored = parse_svg(path, width)
        parse_ms = 1000 * (time.perf_counter() - start)
    with torch.no_grad():
        image = render(scene)[0].permute(1, 2, 0).numpy().astype(np.float64)
    return np.round(image * 255) / 255, ignored, parse_ms


def compare(path: Path, width: int | None) -> dict:
    """One file: its MAE (0–255) against resvg, parse ms and ignored features, or its failure."""
    row = {"file": str(path.relative_to(DATA))}
    try:
        image, ignored, parse_ms = ours(path, width)
    except SvgError as err:
        row["failure"] = _cause(str(err))
        row["error"] = str(err).split(": ", 1)[-1][:200]
        return row
    except Exception as err:  # a rasterizer that does not draw a part yet, or a reader bug
        row["failure"] = type(err).__name__
        row["error"] = str(err)[:200]
        return row
    row["parse_ms"] = parse_ms
    row["ignored"] = dict(ignored)
    try:
        reference = resvg_image(path, width if width else None)
    except Exception as err:
        row["failure"] = "resvg failed"
        row["error"] = str(err)[:200]
        return row
    if reference.shape != image.shape:
        h, w = min(reference.shape[0], image.shape[0]), min(reference.shape[1], image.shape[1])
        row["size_mismatch"] = [list(image.shape[:2]), list(reference.shape[:2])]
        reference, image = reference[:h, :w], image[:h, :w]
    row["mae"] = float(np.abs(image - reference).mean() * 255)
    return row


def _cause(message: str) -> str:
    """A short failure cause from a reader error message."""
    for key in ("no shapes to draw", "not a valid SVG", "MAX_SVG", "no positive size", "MAX_CANVAS"):
        if key in message:
            return key
    return message.split(": ", 1)[-1][:60]


def summarise(rows: list[dict]) -> dict:
    errors = [r["mae"] for r in rows if "mae" in r]
    ignored = Counter()
    for r in rows:
        ignored.update(r.get("ignored", {}))
    out = {"files": len(rows), "loaded": len(errors),
           "failures": dict(Counter(r["failure"] for r in rows if "failure" in r)),
           "ignored_features": dict(ignored.most_common())}
    if errors:
        out.update(median_mae=statistics.median(errors), p90_mae=float(np.percentile(errors, 90)),
                   max_mae=max(errors), within_2=sum(e <= 2 for e in errors) / len(errors),
                   median_parse_ms=statistics.median(r["parse_ms"] for r in rows if "parse_ms" in r),
                   max_parse_ms=max(r["parse_ms"] for r in rows if "parse_ms" in r))
    return out


def suite(threshold: float, limit: int | None, categories=CATEGORIES) -> tuple[dict, list[dict]]:
    per_category, all_rows = {}, []
    for category in categories:
        files = sorted((DATA / SUITE / category).rglob("*.svg"))[:limit]
        rows = [compare(f, None) for f in files]
        supported = [r for r in rows if "mae" in r and not r["ignored"]]
        within = [r for r in supported if r["mae"] <= threshold]
        per_category[category] = {
            "files": len(rows), "loaded": sum("mae" in r for r in rows), "supported_only": len(supported),
            "within_threshold": len(within), "fraction_within": len(within) / len(supported) if supported else None,
            "failures": dict(Counter(r["failure"] for r in rows if "failure" in r)),
            "worst_supported": sorted(((r["mae"], r["file"]) for r in supported), reverse=True)[:15]}
        all_rows += rows
        print(f"{category:10s} files {len(rows):4d}  supported-only {len(supported):4d}  within "
              f"{threshold:g}/255: {len(within):4d} ({per_category[category]['fraction_within'] or 0:.1%})",
              flush=True)
    return per_category, all_rows


def worst_picture(rows: list[dict], width: int, out: Path, count: int = 8) -> None:
    """The worst loaded files side by side: ours | resvg | |difference| × 4."""
    from PIL import Image

    worst = sorted((r for r in rows if "mae" in r), key=lambda r: -r["mae"])[:count]
    tiles = []
    for r in worst:
        path = DATA / r["file"]
        a = ours(path, width)[0]
        b = resvg_image(path, width)
        h, w = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
        a, b = a[:h, :w], b[:h, :w]
        tiles.append(np.concatenate([a, b, 1 - np.clip(4 * np.abs(a - b), 0, 1)], 1))
    if not tiles:
        return
    wmax = max(t.shape[1] for t in tiles)
    tiles = [np.pad(t, ((0, 4), (0, wmax - t.shape[1]), (0, 0)), constant_values=1) for t in tiles]
    Image.fromarray((np.concatenate(tiles) * 255).round().astype(np.uint8)).save(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="output width of the icon sets, px")
    parser.add_argument("--sets", default=None, help="comma-separated icon sets (default: all)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many files per set / category")
    parser.add_argument("--threshold", type=float, default=2.0, help="resvg test suite: MAE bound, 0-255 units")
    parser.add_argument("--no-suite", action="store_true", help="skip resvg's test suite")
    parser.add_argument("--no-icons", action="store_true",
                        help="skip the icon sets (their figures already in --out are kept)")
    parser.add_argument("--categories", default=",".join(CATEGORIES),
                        help="comma-separated resvg test-suite categories")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "svg_files.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = args.sets.split(",") if args.sets else sorted(p.name for p in DATA.iterdir()
                                                          if p.is_dir() and p.name != SUITE)
    out = Path(args.out)
    result = {"size": args.size, "sets": {}, "rows": {}}
    if args.no_icons:
        names = []
        if out.exists():                                 # keep the icon sets' figures of an earlier run
            earlier = json.loads(out.read_text())
            result = {"size": earlier.get("size", args.size), "sets": earlier.get("sets", {}),
                      "rows": {k: v for k, v in earlier.get("rows", {}).items() if k != SUITE}}
    icon_rows = []
    for name in names:
        rows = [compare(f, args.size) for f in sorted((DATA / name).glob("*.svg"))[: args.limit]]
        result["sets"][name] = summarise(rows)
        result["rows"][name] = rows
        icon_rows += rows
        s = result["sets"][name]
        print(f"{name:16s} files {s['files']:4d} loaded {s['loaded']:4d}  MAE median "
              f"{s.get('median_mae', float('nan')):.3f} p90 {s.get('p90_mae', float('nan')):.3f} "
              f"max {s.get('max_mae', float('nan')):.2f}  parse {s.get('median_parse_ms', float('nan')):.1f} ms  "
              f"failures {s['failures']}", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    if icon_rows:
        worst_picture(icon_rows, args.size, out.with_name(out.stem + "_worst.png"))
    if not args.no_suite:
        result["suite"], suite_rows = suite(args.threshold, args.limit, args.categories.split(","))
        result["rows"][SUITE] = suite_rows
        supported = [r for r in suite_rows if "mae" in r and not r["ignored"]]
        worst_picture(supported, None, out.with_name(out.stem + "_suite_worst.png"))
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
