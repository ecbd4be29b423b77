"""Hostile inputs and faults: run each case against a source tree and classify its outcome.

    python benchmarks/bench_hostile.py                       # this tree
    git archive 6604416 | tar -x -C /tmp/before && python benchmarks/bench_hostile.py --tree /tmp/before

Each case runs as its own process (``python -m scorestudio ...`` or a short script) with the
tree on PYTHONPATH, a time limit and an address-space limit (so a petabyte allocation fails
instead of taking the machine down), and gets one outcome: ``correct`` (the right result),
``clear`` (one error line, exit 2, nothing half-made), ``unclear`` (a traceback, or an error that
leaves a half-made run folder), ``crash`` (killed, hung past the limit, out of memory),
``silent`` (exit 0 or a stored result that is wrong), ``data loss`` (a good checkpoint or another
run's files replaced) or ``security`` (a crafted file ran code). Prints one line per case and the
counts per class of fault as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parents[1]
OUTCOMES = ("correct", "clear", "unclear", "crash", "silent", "data loss", "security")
CLASSES = {1: "crafted checkpoint runs code", 2: "runs share a folder", 3: "failure overwrites last.ckpt",
           4: "divergence saved as success", 5: "SIGTERM exit status", 6: "SVG / image limits",
           7: "CJK prompt", 8: "bad inputs", 9: "optimizer override at resume"}
LIMIT_S = 120
MEMORY_KB = 8 * 1024 * 1024   # address space of a case: 8 GiB


@dataclass
class Result:
    rc: int | None          # None: killed at the time limit
    out: str
    err: str
    seconds: float


@dataclass
class Case:
    name: str
    klass: int
    run: Callable[["Bench"], str]   # returns the outcome


class Bench:
    """Runs the cases of one tree in a scratch folder."""

    def __init__(self, tree: Path, scratch: Path, prior: Path) -> None:
        self.tree, self.scratch, self.prior = tree, scratch, prior

    def env(self) -> dict:
        return {**os.environ, "PYTHONPATH": str(self.tree), "OMP_NUM_THREADS": "1"}

    def python(self, *args: str, limit: float = LIMIT_S, until: Callable[[], bool] | None = None,
               send: int | None = None) -> Result:
        """``python args`` with the limits; with ``until``/``send``: send the signal once ``until()``."""
        start = time.time()
        cmd = ["bash", "-c", f'ulimit -v {MEMORY_KB}; exec "$0" "$@"', sys.executable, *args]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env(),
                                cwd=self.tree, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        if until is not None:
            while not until() and proc.poll() is None and time.time() - start < limit:
                time.sleep(0.05)
            time.sleep(0.3)
            proc.send_signal(send)
        try:
            out, err = proc.communicate(timeout=max(1.0, limit - (time.time() - start)))
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            rc = None
        return Result(rc, out, err, time.time() - start)

    def scorestudio(self, *args: str, **kw) -> Result:
        return self.python("-m", "scorestudio", *args, **kw)

    def train(self, config: str, *overrides: str, **kw) -> Result:
        return self.scorestudio("train", "--config", str(self.tree / "configs" / config), *overrides, **kw)

    def folder(self, name: str) -> Path:
        path = self.scratch / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def error_outcome(res: Result, out_dir: Path | None = None) -> str:
    """The outcome of a command that must fail: clear, unclear, crash or silent."""
    if res.rc is None or res.rc < 0 or res.rc >= 128 or "can't allocate" in res.err or "MemoryError" in res.err:
        return "crash"
    if res.rc == 0:
        return "silent"
    half_made = out_dir is not None and out_dir.exists() and any(p.is_file() for p in out_dir.rglob("*"))
    return "unclear" if "Traceback" in res.err or half_made else "clear"


def ckpt(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


SMALL = ["system.n_realizations=8", "system.gammas=[0,10]", "trainer.enable_progress_bar=false",
         "trainer.val_check_interval=0", "use_timestamp=false"]


def toy(b: Bench, out: Path, *overrides: str, **kw) -> Result:
    return b.train("toy-particles.yaml", f"exp_root_dir={out}", *SMALL, *overrides, **kw)


# ---------------------------------------------------------------------------------------- cases


class _Touch:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def crafted(mode: str, legacy: bool = False) -> Callable[[Bench], str]:
    def run(b: Bench) -> str:
        import torch

        base = b.folder(f"crafted-{mode}-{legacy}")
        marker, path = base / "pwned", base / "evil" / "ckpts" / "last.ckpt"
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {"state_dict": {"particles": _Touch(marker)}, "global_step": 1}
        path.write_bytes(pickle.dumps(state, protocol=2)) if legacy else torch.save(state, path)
        res = b.scorestudio(mode, "--config", str(b.tree / "configs" / "toy-particles.yaml"),
                            f"exp_root_dir={base / 'out'}", *SMALL, f"resume={path}")
        return "security" if marker.exists() else error_outcome(res, base / "out")
    return run


def same_folder(b: Bench) -> str:
    out = b.folder("same")
    toy(b, out, "trainer.max_steps=2", "tag=same")
    toy(b, out, "trainer.max_steps=3", "tag=same")
    first = out / "toy-particles" / "same"
    step = json.loads((first / "metrics.json").read_text()).get("step")
    return "data loss" if ckpt(first / "ckpts" / "last.ckpt")["global_step"] != 2 or step != 2 else "correct"


def failing_run(b: Bench) -> str:
    """A good step-4 checkpoint of svg-restoration, then a resume whose NaN loss weight turns the
    control points NaN."""
    import torch

    out = b.folder("failing")
    common = ["svg-restoration.yaml", f"exp_root_dir={out}", "use_timestamp=false", "tag=f", "data.procedural_index=0",
              "system.distillation=false", "system.generator.paths.num_paths=8", "trainer.enable_progress_bar=false",
              "trainer.val_check_interval=0", "checkpoint.every_n_train_steps=2"]
    b.train(*common, "trainer.max_steps=4")
    last = out / "svg-restoration" / "f" / "ckpts" / "last.ckpt"
    res = b.train(*common, "trainer.max_steps=8", f"resume={last}", "system.lambda_dc=.nan")
    state = ckpt(last)["state_dict"].values()
    if any(t.is_floating_point() and not torch.isfinite(t).all() for t in state):
        return "data loss"
    return "silent" if res.rc == 0 else error_outcome(res)


def tiny_run(*overrides: str) -> Callable[[Bench], str]:
    def run(b: Bench) -> str:
        out = b.folder("tiny-" + "-".join(o.replace("/", "_") for o in overrides))
        res = b.train("image-particles-sds.yaml", f"exp_root_dir={out}", "use_timestamp=false", "tag=t",
                      "trainer.enable_progress_bar=false", "trainer.val_check_interval=0",
                      f"system.prior.pretrained_model_name_or_path={b.prior}",
                      "system.guidance.repulsion.features=probe", "system.n_particles=2", "trainer.max_steps=6",
                      *overrides)
        return error_outcome(res)
    return run


def sigterm(b: Bench) -> str:
    out = b.folder("sigterm")
    last = out / "toy-particles" / "s" / "ckpts" / "last.ckpt"
    res = toy(b, out, "tag=s", "trainer.max_steps=100000", "checkpoint.every_n_train_steps=25",
              until=last.is_file, send=signal.SIGTERM)
    return "correct" if res.rc == 143 else "silent" if res.rc == 0 else error_outcome(res)


def svg_file(b: Bench, name: str, body: str, size: str = 'width="100" height="100"') -> Path:
    path = b.folder("svg") / name
    path.write_text(f'<svg xmlns="http://www.w3.org/2000/svg" {size}>{body}</svg>')
    return path


def svg_bomb(b: Bench) -> str:
    defs = ['<rect id="a0" width="1" height="1" fill="red"/>']
    defs += [f'<g id="a{k}">' + f'<use xlink:href="#a{k - 1}"/>' * 10 + "</g>" for k in range(1, 9)]
    path = b.folder("svg") / "bomb.svg"
    path.write_text('<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
                    f'width="100" height="100"><defs>{"".join(defs)}</defs><use xlink:href="#a8"/></svg>')
    return error_outcome(b.scorestudio("svg", "render", str(path), str(path.with_suffix(".png")), limit=60))


def svg_render(name: str, body: str, size: str = 'width="100" height="100"', *args: str) -> Callable[[Bench], str]:
    def run(b: Bench) -> str:
        path = svg_file(b, name, body, size)
        return error_outcome(b.scorestudio("svg", "render", str(path), str(path.with_suffix(".png")), *args))
    return run


RECT = '<rect width="5" height="5" fill="red"/>'


def png_bomb(b: Bench) -> str:
    import io
    import struct
    import zlib

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (1, 1), "red").save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", 20000, 20000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    bomb = b.folder("png") / "bomb.png"
    bomb.write_bytes(bytes(data))
    out = b.folder("png") / "out"
    return error_outcome(b.train("svg-restoration.yaml", f"exp_root_dir={out}", f"data.image={bomb}",
                                 "system.distillation=false", "trainer.max_steps=2"), out)


def diverged_coordinates(b: Bench) -> str:
    """A scene whose points diverged to ±1e20 (an optimiser's state, not a file) must render."""
    script = ("import torch\nfrom scorestudio.renderers.svg import SvgScene, polygon_points, render\n"
              "v = torch.tensor([[[[-1e20, -1e20], [1e20, 0.0], [0.0, 1e20]]]])\n"
              "img = render(SvgScene(polygon_points(v), torch.tensor([[[1.0, 0, 0, 1]]]), 64, 64))\n"
              "assert img[0, 0].eq(1).all() and img[0, 1:].eq(0).all(), 'wrong image'\n")
    res = b.python("-c", script, limit=60)
    if res.rc == 0:
        return "correct"
    return "silent" if "wrong image" in res.err else "crash" if res.rc is None or "allocate" in res.err else "unclear"


def cjk_prompt(b: Bench) -> str:
    out = b.folder("cjk")
    res = toy(b, out, "trainer.max_steps=1", "tag=" + "一只红色的立方体" * 12 + "猫猫猫猫", "use_timestamp=true")
    return "correct" if res.rc == 0 else error_outcome(res)


def bad_input(*overrides: str) -> Callable[[Bench], str]:
    def run(b: Bench) -> str:
        out = b.folder("bad-" + "-".join(o.replace("/", "_") for o in overrides))
        return error_outcome(toy(b, out, "trainer.max_steps=2", *overrides), out)
    return run


def unwritable_root(b: Bench) -> str:
    (b.folder("file") / "f").write_text("")
    return error_outcome(toy(b, b.folder("file"), "trainer.max_steps=2", f"exp_root_dir={b.folder('file') / 'f'}"))


def svg_bad_output(b: Bench) -> str:
    path = svg_file(b, "ok.svg", RECT)
    return error_outcome(b.scorestudio("svg", "render", str(path), str(path.parent / "no-extension")))


def lr_at_resume(b: Bench) -> str:
    out = b.folder("resume-lr")
    toy(b, out, "trainer.max_steps=2", "tag=r")
    last = out / "toy-particles" / "r" / "ckpts" / "last.ckpt"
    toy(b, out, "trainer.max_steps=4", "tag=r", f"resume={last}", "system.optimizer.args.lr=0.5")
    return "correct" if ckpt(last)["optimizer_states"][0]["param_groups"][0]["lr"] == 0.5 else "silent"


CASES = [
    Case("resume=crafted.ckpt --train", 1, crafted("train")),
    Case("resume=crafted.ckpt --test", 1, crafted("test")),
    Case("resume=crafted.ckpt --export", 1, crafted("export")),
    Case("resume=crafted legacy pickle --train", 1, crafted("train", legacy=True)),
    Case("two runs, one tag, use_timestamp=false", 2, same_folder),
    Case("resume with a NaN loss weight after a good step-4 checkpoint", 3, failing_run),
    Case("image-particles lr=1e30", 4, tiny_run("system.optimizer.args.lr=1e30")),
    Case("image-particles lr=.nan", 4, tiny_run("system.optimizer.args.lr=.nan")),
    Case("image-particles guidance_scale=.nan", 4, tiny_run("system.guidance.guidance_scale=.nan")),
    Case("SIGTERM during training", 5, sigterm),
    Case("svg render: 2 KB nested <use> (10⁸ shapes)", 6, svg_bomb),
    Case('svg render: width="1e9"', 6, svg_render("wide.svg", RECT, 'width="1e9" height="10"')),
    Case("svg render --width 1000000", 6, svg_render("small.svg", RECT, 'width="100" height="100"',
                                                      "--width", "1000000")),
    Case("svg render: coordinates ±1e12", 6, svg_render("far.svg", '<path d="M -1e12 -1e12 L 1e12 0 L 0 1e12 Z" '
                                                                   'fill="red"/>')),
    Case("rasterizer: diverged points ±1e20", 6, diverged_coordinates),
    Case("svg-restoration data.image=20000² PNG bomb", 6, png_bomb),
    Case("tag = 100 CJK characters", 7, cjk_prompt),
    Case("system.optimizer.args.foo=1", 8, bad_input("system.optimizer.args.foo=1")),
    Case("seed=-1", 8, bad_input("seed=-1")),
    Case("seed=99999999999", 8, bad_input("seed=99999999999")),
    Case("trainer.max_steps=-5", 8, bad_input("trainer.max_steps=-5")),
    Case("trainer.precision=half", 8, bad_input("trainer.precision=half")),
    Case("exp_root_dir under a file", 8, unwritable_root),
    Case("exp_root_dir read-only (/sys)", 8, bad_input("exp_root_dir=/sys/scorestudio")),
    Case("svg render OUT without extension", 8, svg_bad_output),
    Case("resume with system.optimizer.args.lr=0.5", 9, lr_at_resume),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", type=Path, default=HERE, help="source tree to test (default: this one)")
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/bench_hostile"), help="scratch folder")
    parser.add_argument("--only", default="", help="run the cases whose name contains this")
    parser.add_argument("--json", type=Path, help="also write the outcomes here")
    args = parser.parse_args()
    scratch = args.scratch / args.tree.resolve().name
    scratch.mkdir(parents=True, exist_ok=True)
    prior = args.scratch / "tiny-prior"
    if not prior.exists():   # the tiny random prior of the tests, made with this tree's helper
        sys.path.insert(0, str(HERE))
        from tests.tiny_models import make_tiny_embedded

        make_tiny_embedded(prior)
    bench = Bench(args.tree.resolve(), scratch, prior)
    outcomes = {}
    for case in CASES:
        if args.only in case.name:
            start = time.time()
            outcome = outcomes[case.name] = (case.klass, case.run(bench))
            print(f"{case.klass:2d}  {outcome[1]:10s} {time.time() - start:6.1f} s  {case.name}", flush=True)
    counts = {k: Counter(o for c, o in outcomes.values() if c == k) for k in CLASSES}
    print("\n| class | " + " | ".join(OUTCOMES) + " |\n|---|" + "---|" * len(OUTCOMES))
    for k, name in CLASSES.items():
        print(f"| {k}. {name} | " + " | ".join(str(counts[k][o] or "") for o in OUTCOMES) + " |")
    if args.json:
        args.json.write_text(json.dumps(outcomes, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
