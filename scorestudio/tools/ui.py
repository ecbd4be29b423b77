"""``scorestudio ui``: the web app (Gradio) to launch runs, watch them train and look at results.

    pip install "scorestudio[ui]"
    scorestudio ui                                  # http://127.0.0.1:7860, runs under outputs/
    scorestudio ui --port 8080 --outputs runs --max-jobs 2 --threads 1

The page is served on 127.0.0.1 unless ``--host`` says otherwise (``--host 0.0.0.0``: every
interface of this machine), and never through Gradio's public share link unless ``--share``.
docs/ui.md describes the tabs.
"""

from __future__ import annotations

import argparse
import atexit
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Optional

from scorestudio.utils.cli_args import positive_int


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scorestudio ui", description="The web app: launch runs, watch them, "
                                     "look at results (Gradio; pip install \"scorestudio[ui]\")")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to serve on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=positive_int, default=7860, help="port (default 7860)")
    parser.add_argument("--share", action="store_true", help="also serve through a public Gradio share link")
    parser.add_argument("--outputs", default="outputs",
                        help="the runs' folder: new runs go there, the run browser lists it")
    parser.add_argument("--max-jobs", type=positive_int, default=1, help="runs trained at the same time (default 1)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="CPU threads per run (default: the cores divided among --max-jobs)")
    parser.add_argument("--cold", action="store_true",
                        help="start each run as a fresh `python -m scorestudio train` instead of forking it from a "
                             "process that imported torch once (slower to start)")
    return parser


def interrupt(signum, frame) -> None:
    """SIGTERM as Ctrl-C: Gradio's launch() then closes the server, and the queue's exit hook
    stops the running jobs (each saves its checkpoint)."""
    raise KeyboardInterrupt


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import gradio  # noqa: F401
    except ImportError:
        print('scorestudio ui: error: the web app needs Gradio: pip install "scorestudio[ui]"', file=sys.stderr)
        return 2
    from scorestudio.ui.app import build_app, launch
    from scorestudio.ui.jobs import JobQueue, Launcher
    from scorestudio.ui.tasks import prompt_warning

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    outputs = Path(args.outputs).resolve()
    outputs.mkdir(parents=True, exist_ok=True)
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.max_jobs)
    launcher = Launcher(threads, cold=args.cold)
    launcher.warm_up()
    # The prompt box's vocabulary check imports the prior classes (torch): before the first prompt.
    threading.Thread(target=prompt_warning, args=("embedded", "a cube"), daemon=True).start()
    queue = JobQueue(launcher, outputs / "ui" / "logs", max_jobs=args.max_jobs)
    atexit.register(queue.shutdown)
    signal.signal(signal.SIGTERM, interrupt)
    app = build_app(outputs, queue)
    launch(app, outputs, args.host, args.port, args.share)
    return 0
