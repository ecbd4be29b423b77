"""The web app's job queue: training runs in background processes, ``max_jobs`` at a time.

A job is the command line's run, ``scorestudio train --config FILE [resume=CKPT]``: the same entry
point (:func:`scorestudio.cli.main`), run folder, ``cmd.txt`` and exit statuses (143 after SIGTERM,
with ``ckpts/last.ckpt`` kept, so a cancelled job resumes). Its stdout and stderr go to a log file
that the queue reads for progress: the run folder from the ``[scorestudio] run folder:`` line, the
step, it/s and losses from the progress bar's lines.

By default a job's process is forked from a warm process (multiprocessing's forkserver) that
imported torch, Lightning and the systems once when the app started: a fresh interpreter spends
most of a short run's start importing them. ``cold=True`` starts ``python -m scorestudio train`` as
a plain subprocess instead.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

# Imported once by the warm process, before it forks a job's process.
PRELOAD = ["torch", "lightning.pytorch", "scorestudio.tools.launch", "scorestudio.systems.distillation",
           "scorestudio.priors.embedded"]
EXIT_CANCELLED = 128 + signal.SIGTERM
RUN_FOLDER = re.compile(r"\[scorestudio\] run folder: (.+?)(?: \(\d+ processes\))?$")
# Lightning's progress bar: "Epoch 0:  25%|██▌  | 1/4 [00:00<00:00,  3.07it/s, v_num=1, train/loss=2.9]", or
# "Training: |   | 5/? [...]" in a resumed run (the global step, without the total)
PROGRESS = re.compile(r"(?:Epoch \d+|Training):[^|]*\|[^|]*\|\s*(\d+)/(\d+|\?) \[([^\]]*)\]")
LOG_TAIL_BYTES = 64 * 1024


@dataclass
class Job:
    """A run of the queue and what its log told so far."""

    id: int
    label: str
    argv: list[str]                        # scorestudio's arguments: ["train", "--config", ...]
    log: Path
    status: str = "queued"                 # queued | running | cancelling | finished | failed | cancelled
    folder: Optional[Path] = None          # the run folder, once the run printed it
    returncode: Optional[int] = None
    submitted: float = field(default_factory=time.time)
    started: Optional[float] = None
    ended: Optional[float] = None
    first_step_at: Optional[float] = None  # when the log first showed a training step
    step: int = 0
    total: int = 0
    rate: str = ""                         # "3.07it/s" or "2.10s/it", as the bar prints it
    losses: dict[str, float] = field(default_factory=dict)
    history: dict[int, dict[str, float]] = field(default_factory=dict)   # step → logged scalars
    read_at: int = 0                       # bytes of the log parsed so far
    process: object = field(default=None, repr=False)

    @property
    def active(self) -> bool:
        return self.status in ("queued", "running", "cancelling")

    def parse(self, text: str) -> None:
        """Take in the log's new ``text``: its lines and progress-bar updates (``\\r``-separated)."""
        for segment in re.split(r"[\r\n]", text):
            found = RUN_FOLDER.search(segment)
            if found and self.folder is None:
                self.folder = Path(found.group(1).strip())
            bar = PROGRESS.search(segment)
            if bar:
                self._progress(int(bar.group(1)), bar.group(2), bar.group(3))

    def _progress(self, step: int, total: str, inside: str) -> None:
        if total.isdigit():
            self.total = int(total)
        if step < 1:
            return
        self.step = max(self.step, step)
        if self.first_step_at is None:
            self.first_step_at = time.time()
        scalars = {}
        for part in (p.strip() for p in inside.split(",")):
            if part.endswith(("it/s", "s/it")) and "=" not in part:
                self.rate = part
            elif "=" in part:
                key, _, value = part.partition("=")
                try:
                    scalars[key.strip()] = float(value)
                except ValueError:
                    continue
        scalars.pop("v_num", None)
        if scalars:
            self.losses = scalars
            self.history[step] = scalars


def run_in_child(argv: list[str], log: str, threads: int) -> None:
    """A job's process (forked from the warm one): ``scorestudio <argv>`` with its output in
    ``log``; exits with the command's status."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False, encoding="utf-8", errors="replace")
    sys.stderr = open(2, "w", buffering=1, closefd=False, encoding="utf-8", errors="replace")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    from scorestudio.cli import main

    sys.argv = ["scorestudio", *argv]   # cmd.txt records the run as `scorestudio train ...`
    sys.exit(main(argv))


class Launcher:
    """Starts a job's process: forked from the warm process, or ``python -m scorestudio`` (cold)."""

    def __init__(self, threads: int, cold: bool = False):
        self.threads = threads
        self.cold = cold
        self.context = None if cold else multiprocessing.get_context("forkserver")
        if self.context is not None:
            self.context.set_forkserver_preload(PRELOAD)

    def warm_up(self) -> threading.Thread:
        """Start the warm process (its imports) in the background; the thread that waits for it."""
        def start() -> None:
            if self.context is not None:
                probe = self.context.Process(target=os.getpid)
                probe.start()
                probe.join()

        thread = threading.Thread(target=start, name="scorestudio-ui-warm-up", daemon=True)
        thread.start()
        return thread

    def start(self, argv: list[str], log: Path):
        """The started process of ``scorestudio <argv>``: ``.pid`` and ``.poll()`` (None while it runs)."""
        if self.context is None:
            env = {**os.environ, "OMP_NUM_THREADS": str(self.threads)}
            with open(log, "ab") as handle:
                return subprocess.Popen([sys.executable, "-m", "scorestudio", *argv], stdout=handle,
                                        stderr=subprocess.STDOUT, env=env)
        process = self.context.Process(target=run_in_child, args=(argv, str(log), self.threads),
                                       name=f"scorestudio {argv[0]}")
        process.start()
        return ForkedProcess(process)


class ForkedProcess:
    """A multiprocessing process seen as a ``subprocess.Popen``: ``pid`` and ``poll()``."""

    def __init__(self, process) -> None:
        self.process = process
        self.pid = process.pid

    def poll(self) -> Optional[int]:
        return None if self.process.is_alive() else self.process.exitcode


class JobQueue:
    """Jobs run in submission order, at most ``max_jobs`` at once, watched by a background thread."""

    def __init__(self, launcher: Launcher, log_dir: Path, max_jobs: int = 1, poll_s: float = 0.2):
        self.launcher = launcher
        self.log_dir = log_dir
        self.max_jobs = max_jobs
        self.poll_s = poll_s
        self.jobs: list[Job] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="scorestudio-ui-jobs", daemon=True)
        self.thread.start()

    def submit(self, label: str, argv: list[str], total: int = 0) -> Job:
        """Queue ``scorestudio <argv>``, a run of ``total`` steps (0: unknown until its bar says)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self.lock:
            job_id = len(self.jobs) + 1
            log = self.log_dir / f"job{job_id:04d}-{os.getpid()}-{int(time.time())}.log"
            job = Job(job_id, label, list(argv), log, total=total)
            self.jobs.append(job)
        return job

    def resume(self, folder: Path, label: str, total: int = 0) -> Job:
        """A job continuing the run in ``folder`` (of ``total`` steps) from its ``ckpts/last.ckpt``."""
        return self.submit(label, ["train", "--config", str(folder / "configs" / "parsed.yaml"),
                                   f"resume={folder / 'ckpts' / 'last.ckpt'}", "trainer.enable_progress_bar=true"],
                           total)

    def get(self, job_id: Optional[int]) -> Optional[Job]:
        with self.lock:
            return next((j for j in self.jobs if j.id == job_id), None)

    def running_in(self, folder: Path) -> bool:
        """Whether an active job trains in ``folder``."""
        folder = folder.resolve()
        with self.lock:
            return any(j.active and j.folder is not None and j.folder.resolve() == folder for j in self.jobs)

    def cancel(self, job_id: int) -> str:
        """Drop a queued job, or stop a running one with SIGTERM (it saves ``last.ckpt``)."""
        with self.lock:
            job = next((j for j in self.jobs if j.id == job_id), None)
            if job is None or not job.active:
                return f"job {job_id} is not running"
            if job.status == "queued":
                job.status, job.ended = "cancelled", time.time()
                return f"job {job_id} removed from the queue"
            job.status = "cancelling"
            os.kill(job.process.pid, signal.SIGTERM)
        return f"job {job_id}: stopping; it keeps its last checkpoint and can be resumed"

    def shutdown(self, timeout_s: float = 120) -> None:
        """Stop the running jobs (SIGTERM: each saves its checkpoint) and wait for them."""
        self.stopping.set()
        with self.lock:
            running = [j for j in self.jobs if j.status in ("running", "cancelling")]
            for job in running:
                os.kill(job.process.pid, signal.SIGTERM)
        deadline = time.time() + timeout_s
        for job in running:
            while job.process.poll() is None and time.time() < deadline:
                time.sleep(0.1)
        self.thread.join(timeout=5)

    def _loop(self) -> None:
        while not self.stopping.is_set():
            with self.lock:
                for job in self.jobs:
                    if job.status in ("running", "cancelling"):
                        self._watch(job)
                running = sum(j.status in ("running", "cancelling") for j in self.jobs)
                for job in self.jobs:
                    if job.status == "queued" and running < self.max_jobs:
                        self._start(job)
                        running += 1
            time.sleep(self.poll_s)

    def _start(self, job: Job) -> None:
        job.started = time.time()
        job.status = "running"
        try:
            job.process = self.launcher.start(job.argv, job.log)
        except OSError as err:
            job.status, job.ended = "failed", time.time()
            job.log.write_text(f"scorestudio ui: could not start the run: {err}\n")

    def _watch(self, job: Job) -> None:
        code = job.process.poll()
        self._read(job)
        if code is None:
            return
        job.returncode, job.ended = code, time.time()
        if code == 0:
            job.status = "finished"
        elif code in (EXIT_CANCELLED, -signal.SIGTERM) and job.status == "cancelling":
            job.status = "cancelled"
        else:
            job.status = "failed"

    @staticmethod
    def _read(job: Job) -> None:
        try:
            with open(job.log, "rb") as handle:
                handle.seek(job.read_at)
                data = handle.read()
        except OSError:
            return
        if not data:
            return
        # Up to the last line break: the bar's current line is parsed again with its next update.
        cut = max(data.rfind(b"\r"), data.rfind(b"\n")) + 1
        job.parse(data.decode("utf-8", errors="replace"))
        job.read_at += cut


def log_tail(job: Job, lines: int = 12) -> str:
    """The last ``lines`` lines of a job's log, progress-bar redraws removed."""
    try:
        with open(job.log, "rb") as handle:
            handle.seek(max(0, job.log.stat().st_size - LOG_TAIL_BYTES))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    kept = [line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n")]
    return "\n".join([line for line in kept if line.strip()][-lines:])
