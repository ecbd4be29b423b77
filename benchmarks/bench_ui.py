"""Seconds from clicking Run in the web app to the first progress the page shows, in a real browser.

For each start mode of the app's runs, ``scorestudio ui`` is started on a free port over a fresh
outputs folder and Chromium (Playwright) opens it; then, ``--repeats + 1`` times, the page sets up a
short image-particles run (2 particles, ``--steps`` steps, the embedded prior), clicks Run and times

- click → the job panel shows the first training step ("step 1/N" or later),
- click → the job panel says "finished".

The first run of each app is clicked as soon as the page loads (``first``: it may wait for the
warm process's imports); the others follow one another (``next``). Modes: ``warm`` (runs forked
from a process that imported torch, Lightning and the systems once: the default) and ``cold``
(``scorestudio ui --cold``: each run a fresh ``python -m scorestudio train``), in rounds of
palindromic order (warm, cold, cold, warm, ...) so that a steady drift in the machine's load
cancels in the means. The load average is recorded with each figure.

    python benchmarks/bench_ui.py                    # 1 round, 2 timed runs per mode
    python benchmarks/bench_ui.py --rounds 2 --repeats 3 --steps 4

Prints the figures and writes benchmarks/results/ui_first_progress.json (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.test_ui import CHROMIUM, CHROMIUM_ARGS, free_port, set_number, wait_http  # noqa: E402


def time_runs(url: str, runs: int, steps: int) -> list[dict]:
    """``runs`` image-particles runs clicked one after another on the page at ``url``."""
    from playwright.sync_api import sync_playwright

    timings = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        page.goto(url)
        page.get_by_role("tab", name="Image particles").click()
        page.locator("#image-particles-prompt textarea").fill("a red cube")
        for elem, value in (("particles", 2), ("steps", steps), ("preview", max(1, steps // 2))):
            set_number(page, f"image-particles-{elem}", value)
        for k in range(runs):
            set_number(page, "image-particles-seed", k)   # the page reads its widgets when Run is clicked
            clicked = time.time()
            page.locator("#image-particles-run").click()
            progress = page.locator("#job-progress")
            job = progress.filter(has_text=f"job {k + 1} ")
            job.filter(has_text=re.compile(r"step [1-9]\d*/")).wait_for(timeout=300_000)
            first = time.time() - clicked
            job.filter(has_text="finished").wait_for(timeout=600_000)
            timings.append({"first_progress_s": round(first, 2), "finished_s": round(time.time() - clicked, 2),
                            "load_average": round(os.getloadavg()[0], 2), "kind": "first" if k == 0 else "next"})
            print(f"    run {k}: first progress {first:.2f} s, finished {timings[-1]['finished_s']:.2f} s "
                  f"(load {timings[-1]['load_average']})", flush=True)
        browser.close()
    return timings


def measure(mode: str, runs: int, steps: int, threads: int) -> list[dict]:
    """Start ``scorestudio ui`` in ``mode`` (warm | cold) and time ``runs`` runs on its page."""
    with tempfile.TemporaryDirectory(prefix="bench-ui-") as tmp:
        port = free_port()
        log = Path(tmp) / "server.log"
        cmd = [sys.executable, "-m", "scorestudio", "ui", "--port", str(port), "--outputs", str(Path(tmp) / "outputs"),
               "--threads", str(threads), *(["--cold"] if mode == "cold" else [])]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "GRADIO_ANALYTICS_ENABLED": "False"}
        server = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env, cwd=tmp)
        try:
            wait_http(f"http://127.0.0.1:{port}/", server, log)
            return time_runs(f"http://127.0.0.1:{port}/", runs, steps)
        finally:
            server.terminate()
            server.wait(timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1, help="rounds of (warm, cold) in palindromic order")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs after the first, per app start")
    parser.add_argument("--steps", type=int, default=4, help="training steps of each run")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of each run")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ui_first_progress.json"))
    args = parser.parse_args()
    order = [m for r in range(args.rounds) for m in (("warm", "cold") if r % 2 == 0 else ("cold", "warm"))]
    results: dict[str, list[dict]] = {"warm": [], "cold": []}
    for mode in order:
        print(f"{mode}:", flush=True)
        results[mode] += measure(mode, args.repeats + 1, args.steps, args.threads)
    summary = {}
    for mode, rows in results.items():
        for kind in ("first", "next"):
            values = [r["first_progress_s"] for r in rows if r["kind"] == kind]
            if values:
                summary[f"{mode}_{kind}_first_progress_s_mean"] = round(statistics.mean(values), 2)
                summary[f"{mode}_{kind}_first_progress_s_range"] = [min(values), max(values)]
    summary["load_average_range"] = [min(r["load_average"] for rows in results.values() for r in rows),
                                     max(r["load_average"] for rows in results.values() for r in rows)]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": " ".join(["python", *sys.argv]), "cpus": os.cpu_count(),
                               "steps": args.steps, "summary": summary, "runs": results}, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
