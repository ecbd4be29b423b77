"""Runs of a system from a config: ``scorestudio train|validate|test|export`` (and ``launch.py``).

    scorestudio train --config configs/toy-particles.yaml [--gpu 0] [--seed 1] key=value ...
    scorestudio train --config configs/dreamfusion-embedded.yaml --gpu 0,1   # particles sharded over 2 GPUs
    python launch.py --config configs/toy-particles.yaml --train key=value ...   # the same, threestudio's form

Any ``key=value`` argument overrides the config (dot-list syntax, e.g.
``system.prompt_processor.prompt="a red cube"``); ``resume=path/to/last.ckpt`` resumes a run or
picks the checkpoint to test / export.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
import warnings
from datetime import datetime
from pathlib import Path
from typing import Optional

from scorestudio.utils.config import ConfigError, load_config, parse_structured, to_plain
from scorestudio.utils.registry import RegistryError, find
from scorestudio.utils.run import ExperimentConfig, RunContext, check_experiment, run_dir_for

MODES = ("train", "validate", "test", "export")


def build_parser(mode: Optional[str] = None) -> argparse.ArgumentParser:
    """The launch options; without ``mode`` (launch.py's form) one of --train/--validate/--test/--export."""
    parser = argparse.ArgumentParser(
        prog=f"scorestudio {mode}" if mode else "launch.py",
        description=f"Score distillation runs: scorestudio {mode or 'train'} --config CONFIG [key=value ...]",
    )
    parser.add_argument("--config", required=True, help="YAML config file (may 'extends: base.yaml')")
    if mode is None:
        flags = parser.add_mutually_exclusive_group(required=True)
        for name in MODES:
            flags.add_argument(f"--{name}", action="store_true", help=f"{name} the system")
    parser.add_argument("--gpu", default=None,
                        help="the GPU to run on ('0'), or GPUs to shard the particles over ('0,1'); "
                             "absent or 'cpu' runs on the CPU")
    parser.add_argument("--processes", type=int, default=1,
                        help="on the CPU: shard the particles over this many processes (--train; "
                             "the distillation systems: distillation, dreamfusion, image-particles, text-to-svg, svg-restoration)")
    parser.add_argument("--nodes", type=int, default=1,
                        help="shard the particles over this many machines too (--train; each runs --processes "
                             "or --gpu processes; started by torchrun or SLURM: docs/distributed.md)")
    parser.add_argument("--seed", type=int, default=None, help="overrides the config's seed")
    parser.add_argument("--verbose", action="store_true", help="debug logging and full tracebacks")
    return parser


def parse_args(argv: Optional[list[str]] = None, mode: Optional[str] = None) -> tuple[argparse.Namespace, list[str]]:
    """Split the command line into options and config overrides; ``mode`` is the verb
    (``scorestudio train ...``), or None when the command line holds a --train/--test/... flag."""
    parser = build_parser(mode)
    args, extras = parser.parse_known_args(argv)
    unknown = [e for e in extras if "=" not in e or e.startswith("-")]
    if unknown:
        parser.error(f"unrecognised arguments {unknown}; config overrides look like key=value")
    if args.seed is not None:
        extras.append(f"seed={args.seed}")
    args.mode = mode or next(m for m in MODES if getattr(args, m))
    return args, extras


def select_devices(gpu: Optional[str], processes: int = 1) -> tuple[str, object, int]:
    """(accelerator, devices, number of processes) for Lightning: the CPU (``processes`` of
    them) or the listed GPUs (one process each). A requested GPU falls back to the CPU (with a
    warning) when CUDA is unavailable."""
    if processes < 1:
        raise ConfigError(f"--processes {processes}: give a number of processes ≥ 1")
    if gpu is None or gpu.strip().lower() in ("", "cpu", "-1"):
        return "cpu", processes, processes
    import torch

    if processes != 1:
        raise ConfigError(f"--processes {processes} shards over CPU processes; to shard over GPUs list them: --gpu 0,1")
    try:
        ids = [int(g) for g in gpu.split(",") if g.strip()]
    except ValueError:
        raise ConfigError(f"--gpu {gpu}: give a GPU index (--gpu 0), a list (--gpu 0,1), or cpu") from None
    if not torch.cuda.is_available():
        warnings.warn(f"--gpu {gpu} requested but CUDA is not available; running on the CPU")
        return "cpu", 1, 1
    missing = [i for i in ids if i >= torch.cuda.device_count()]
    if missing:
        raise ConfigError(f"--gpu {gpu}: no such GPU {missing}; this machine has {torch.cuda.device_count()}")
    return "gpu", ids, len(ids)


def share_cpu_threads(processes: int) -> None:
    """Give each of the ``processes`` CPU processes its share of the cores (torch would give each
    all of them, and 2 processes × 2 threads on 2 cores run slower than one process). The
    processes Lightning starts inherit OMP_NUM_THREADS; a value the user set is kept."""
    import torch

    if "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // processes))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def make_trainer(exp: ExperimentConfig, run: RunContext, accelerator: str, devices: object, processes: int = 1,
                 find_unused_parameters: bool = False, nodes: int = 1):
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import TQDMProgressBar
    from lightning.pytorch.loggers import CSVLogger

    from scorestudio.utils.checkpoint import AtomicCheckpointIO, CtrlC, OptimizerSettings, RunCheckpoint
    from scorestudio.utils.divergence import DivergenceGuard

    # One log version per launch, so a resumed run never overwrites the logs of its first part.
    version = stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for k in range(1, 1000):
        if not (run.root / "csv_logs" / version).exists():
            break
        version = f"{stamp}-{k}"
    loggers = [CSVLogger(run.root, name="csv_logs", version=version)]
    try:
        from lightning.pytorch.loggers import TensorBoardLogger

        import tensorboard  # noqa: F401  (optional)

        loggers.append(TensorBoardLogger(run.root, name="tb_logs", version=version))
    except ImportError:
        pass
    t = exp.trainer
    callbacks = [RunCheckpoint(run.ckpt_dir, exp.checkpoint.every_n_train_steps, exp.checkpoint.keep_all),
                 DivergenceGuard(t.on_nonfinite, t.nonfinite_patience), OptimizerSettings(), CtrlC()]
    if t.enable_progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=1))
    strategy = "auto"
    if processes * nodes > 1:   # particles sharded (utils.distributed): plain DDP over the processes
        from lightning.pytorch.strategies import DDPStrategy

        from scorestudio.utils.distributed import SharedRunRoot

        # Buffers are constants (schedules, colours): no need to broadcast them every step.
        strategy = DDPStrategy(forward_sync_buffers=False, find_unused_parameters=find_unused_parameters)
        callbacks.append(SharedRunRoot(run))
    return pl.Trainer(
        accelerator=accelerator,
        devices=devices,
        num_nodes=nodes,
        strategy=strategy,
        max_steps=t.max_steps,
        log_every_n_steps=t.log_every_n_steps,
        val_check_interval=t.val_check_interval or None,
        check_val_every_n_epoch=None,
        limit_val_batches=1 if t.val_check_interval else 0,
        num_sanity_val_steps=t.num_sanity_val_steps,
        precision=t.precision,
        accumulate_grad_batches=t.accumulate_grad_batches,
        enable_checkpointing=False,
        enable_progress_bar=t.enable_progress_bar,
        enable_model_summary=False,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        logger=loggers,
        default_root_dir=str(run.root),
    )


def load_weights(system, ckpt_path: str) -> int:
    """Load a checkpoint's state into ``system`` (for --export); returns its global step."""
    from scorestudio.utils.checkpoint import load_checkpoint

    ckpt = load_checkpoint(ckpt_path, key="resume", require=("state_dict",))
    system.on_load_checkpoint(ckpt)
    system.load_state_dict(ckpt["state_dict"])
    return int(ckpt.get("global_step", 0))


def run(args: argparse.Namespace, overrides: list[str]) -> RunContext:
    raw = load_config(args.config, overrides)
    exp = parse_structured(ExperimentConfig, raw)
    check_experiment(exp)
    if args.mode in ("test", "export", "validate") and not exp.resume:
        raise ConfigError(f"--{args.mode} needs a checkpoint: add resume=path/to/ckpts/last.ckpt")
    accelerator, devices, processes = select_devices(args.gpu, args.processes)
    if args.nodes < 1:
        raise ConfigError(f"--nodes {args.nodes}: give a number of machines ≥ 1")
    if processes * args.nodes > 1 and args.mode != "train":
        raise ConfigError(f"--{args.mode} runs in one process: drop --processes / --nodes / the GPU list")
    from scorestudio.utils.distributed import RUN_ROOT_ENV, check_launcher_world, is_first_process

    check_launcher_world(processes, args.nodes)
    system_cls = find(exp.system_type, kind="systems")
    # Lightning starts the processes of ranks ≥ 1 by running this command again: they must use
    # the run folder rank 0 chose (its timestamp), which they inherit through the environment.
    started_by_rank0 = RUN_ROOT_ENV in os.environ
    first = is_first_process(started_by_rank0)   # global rank 0: writes the run's records
    run_ctx = RunContext(Path(os.environ[RUN_ROOT_ENV]) if started_by_rank0 else run_dir_for(exp), exp.seed)
    import lightning.pytorch as pl

    # Before building the system: modules initialised by libraries (peft's LoRA, nn.Linear) draw
    # from the global RNG, so seed it for runs and their resumptions to start identically.
    pl.seed_everything(exp.seed, workers=True, verbose=False)
    system = system_cls(exp.system, run=run_ctx, data=exp.data)

    system.prepare_sharding(processes * args.nodes)
    if accelerator == "cpu" and processes > 1:
        share_cpu_threads(processes)
    if exp.resume:
        from scorestudio.utils.checkpoint import check_checkpoint

        check_checkpoint(system, exp.resume)
    if first:
        parsed = to_plain(exp)
        parsed["system"] = system.resolved_config()
        run_ctx.prepare(parsed, argv=[Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv else None, mode=args.mode,
                        resume=exp.resume)
        print(f"[scorestudio] run folder: {run_ctx.root}" + (f" ({processes} processes)" if processes > 1 else ""))

    if not args.verbose:
        quiet_lightning()
    with run_ctx.removed_on_failure():   # a new run that fails before its first checkpoint leaves no folder
        trainer = make_trainer(exp, run_ctx, accelerator, devices, processes, system.ddp_find_unused_parameters,
                               args.nodes)
        if args.mode == "train":
            if processes > 1 and not started_by_rank0:
                os.environ[RUN_ROOT_ENV] = str(run_ctx.root)   # for the processes trainer.fit starts
            try:
                trainer.fit(system, ckpt_path=exp.resume, weights_only=True)
                trainer.test(system, verbose=False)
            finally:
                if not started_by_rank0:
                    os.environ.pop(RUN_ROOT_ENV, None)
        elif args.mode == "validate":
            trainer.validate(system, ckpt_path=exp.resume, verbose=False, weights_only=True)
        elif args.mode == "test":
            trainer.test(system, ckpt_path=exp.resume, verbose=False, weights_only=True)
        else:
            step = load_weights(system, exp.resume)
            system.export_step = step
            for path in system.export():
                print(f"[scorestudio] exported {path}")
    if first:
        print(f"[scorestudio] outputs in {run_ctx.save_dir}")
    return run_ctx


# Lightning warnings that ask nothing of a user: the frozen prior and feature networks stay in eval
# mode on purpose; the camera "data" is drawn in the training step, so loader workers would only add
# processes; and Lightning's own use of a tree API that newer torch deprecates.
INTENDED_LIGHTNING_WARNINGS = (r".*module\(s\) in eval mode at the start of training.*",
                               r".*does not have many workers.*",
                               r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")


def quiet_lightning() -> None:
    """Lightning's own messages at WARNING and above only (its INFO lines, "GPU available", tips,
    were printed twice through the root handler), without the warnings listed above. Called after
    Lightning is imported: its import sets its logger to INFO."""
    import lightning.pytorch  # noqa: F401
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in INTENDED_LIGHTNING_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


def main(argv: Optional[list[str]] = None, mode: Optional[str] = None) -> None:
    args, overrides = parse_args(argv, mode)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    try:
        run(args, overrides)
    except (ConfigError, RegistryError, OSError) as err:   # OSError: a file to read or write (full disk, ...)
        if args.verbose:
            traceback.print_exc()
        print(f"scorestudio: error: {err}", file=sys.stderr)
        sys.exit(2)
    except SystemExit as stop:   # Lightning ends an interrupted run with status 0 (SIGTERM) or 1 (Ctrl-C)
        from scorestudio.utils.checkpoint import interrupting_signal

        sig = interrupting_signal(stop)
        if sig is None:
            raise
        print(f"scorestudio: stopped by {sig.name}: exit status {128 + sig}", file=sys.stderr)
        sys.exit(128 + sig)
