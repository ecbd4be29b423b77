"""What a run does when its numbers stop being numbers: ``trainer.on_nonfinite``.

A training step is *non-finite* when its loss is NaN or infinite, when the guidance had to zero
NaN or infinite elements of its gradient (``n_nonfinite`` in the logs, see
:meth:`scorestudio.guidance.base.Guidance.sanitize`), or when a trained parameter is NaN,
infinite or larger than :func:`huge` after the update (its square overflows: a learning rate of
1e30 sends parameters there without producing a single NaN).

- ``stop`` (the default): after ``trainer.nonfinite_patience`` non-finite steps in a row, or at
  once when parameters are not finite (no update brings them back), the run stops with a
  :class:`DivergenceError` naming the step, what was not finite and the usual causes; the command
  exits with status 2. A loss or gradient spike the next steps recover from goes on. ``last.ckpt``
  keeps the last finite state (:class:`~scorestudio.utils.checkpoint.RunCheckpoint` never
  replaces it with a non-finite one).
- ``warn``: a warning at the first step of every run of non-finite steps; training goes on.
- ``skip``: as ``warn``, and the update of a step whose gradients are not finite or whose guidance
  zeroed elements is dropped (parameters and optimizer state stay as they were).

Whatever the policy, a run stops with a :class:`DivergenceError` at the first step that leaves
parameters not finite: nothing can be rendered or learnt from them (an SVG rasterizer cannot even
draw NaN paths), so no pictures or metrics are written from them.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Iterable, Optional

import lightning.pytorch as pl
import torch

from scorestudio.utils.config import ConfigError

POLICIES = ("stop", "warn", "skip")
CAUSES = ("a learning rate too high (system.optimizer.args.lr, or the generator's own lr)",
          "a guidance scale too high or NaN (system.guidance.guidance_scale)",
          "a loss weight too high or NaN (system.loss.lambda_*, or the generator's regularizer weights)")


class DivergenceError(ConfigError):
    """A run stopped because it diverged; the command line reports it with exit status 2."""


def check_policy(policy: str, patience: int) -> None:
    """A ``ConfigError`` for an unknown ``trainer.on_nonfinite`` or a patience below 1."""
    if policy not in POLICIES:
        raise ConfigError(f"trainer.on_nonfinite={policy!r}: expected one of {', '.join(POLICIES)}")
    if patience < 1:
        raise ConfigError(f"trainer.nonfinite_patience={patience}: give a number of steps ≥ 1")


def huge(dtype: torch.dtype) -> float:
    """The magnitude beyond which a value of ``dtype`` counts as diverged: the square root of the
    largest float32 (float64 for float64 tensors), where squaring it overflows."""
    return math.sqrt(torch.finfo(torch.promote_types(dtype, torch.float32)).max)


def diverged_tensors(named: Iterable[tuple[str, Any]]) -> list[str]:
    """The names of the floating tensors of ``named`` ((name, value) pairs) that hold a NaN, an
    infinity or a value beyond :func:`huge`; one synchronisation for all of them."""
    floats = [(k, v.detach()) for k, v in named if isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel()]
    if not floats:
        return []
    peaks = torch.stack([v.abs().amax().float().cpu() for _, v in floats])   # NaN stays NaN
    limits = torch.tensor([huge(v.dtype) for _, v in floats])
    bad = ~(peaks <= limits)
    return [k for (k, _), b in zip(floats, bad.tolist()) if b]


def _zeroed(trainer: pl.Trainer) -> int:
    """Gradient elements the guidance zeroed at this step (the logged ``n_nonfinite`` values)."""
    values = [v for k, v in trainer.callback_metrics.items() if k.rsplit("/", 1)[-1] == "n_nonfinite"]
    return int(sum(float(v) for v in values))


def _shown(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


class DivergenceGuard(pl.Callback):
    """Applies ``trainer.on_nonfinite`` (see the module docstring) to every training step."""

    def __init__(self, policy: str = "stop", patience: int = 3) -> None:
        check_policy(policy, patience)
        self.policy, self.patience = policy, patience
        self.streak = 0           # non-finite steps in a row

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.policy != "skip":
            return
        grads = [(f"grad of {n}", p.grad) for n, p in pl_module.named_parameters() if p.grad is not None]
        bad = bool(diverged_tensors(grads)) or _zeroed(trainer) > 0
        if trainer.strategy.reduce_boolean_decision(bad, all=False):
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None   # torch optimizers leave a parameter without gradient, and its state, alone

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        problems, lost = self.problems(trainer, pl_module, outputs)
        if not trainer.strategy.reduce_boolean_decision(bool(problems), all=False):
            self.streak = 0
            return
        self.streak += 1
        lost = trainer.strategy.reduce_boolean_decision(lost, all=False)
        what = "; ".join(problems) or "non-finite values in another process"
        step = trainer.global_step
        if lost or (self.policy == "stop" and self.streak >= self.patience):
            how = ("and parameters that are not finite never recover (whatever trainer.on_nonfinite says)" if lost else
                   f"for {self.streak} steps in a row (trainer.nonfinite_patience={self.patience}); "
                   "trainer.on_nonfinite=warn or skip trains on regardless")
            raise DivergenceError(
                f"the run diverged: step {step}: {what}, {how}. Usual causes: {'; '.join(CAUSES)}. The last finite "
                "state is in ckpts/last.ckpt if one was saved before (checkpoint.every_n_train_steps)")
        if self.streak == 1 and self.policy != "stop":
            action = "its update dropped" if self.policy == "skip" else "training goes on"
            warnings.warn(f"step {step}: {what} (trainer.on_nonfinite={self.policy}: {action}). "
                          f"Usual causes: {'; '.join(CAUSES)}")

    def on_train_end(self, trainer, pl_module) -> None:
        bad = diverged_tensors((n, p) for n, p in pl_module.named_parameters() if p.requires_grad)
        if trainer.strategy.reduce_boolean_decision(bool(bad), all=False):
            raise DivergenceError(
                f"the run diverged: after its last step ({trainer.global_step}) {_shown(bad) or 'a parameter'} "
                f"{'is' if len(bad) == 1 else 'are'} not finite (or beyond {huge(torch.float32):.2g}), so no "
                f"pictures or metrics are written from them. Usual causes: {'; '.join(CAUSES)}")

    @staticmethod
    def problems(trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any) -> tuple[list[str], bool]:
        """What was not finite at this step (the loss, zeroed guidance gradients, parameters), and
        whether parameters were."""
        found = []
        loss: Optional[torch.Tensor] = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and not bool(torch.isfinite(loss.detach()).all()):
            found.append(f"the loss is {float(loss.detach().float().sum()):g}")
        zeroed = _zeroed(trainer)
        if zeroed:
            found.append(f"the guidance zeroed {zeroed} NaN or infinite gradient elements")
        bad = diverged_tensors((n, p) for n, p in pl_module.named_parameters() if p.requires_grad)
        if bad:
            found.append(f"{_shown(bad)} not finite (or beyond {huge(torch.float32):.2g})")
        return found, bool(bad)
