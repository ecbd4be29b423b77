"""Counter-based randomness: every random draw comes from a generator keyed by what it is for.

A generator is derived from (run seed, stream name, particle index, step, ...) instead of being
advanced statefully. So a particle's randomness does not depend on how many other particles run
beside it, on which process it is sharded to, or on whether the run was resumed from a
checkpoint: resuming and sharding give bitwise the same draws.

With gradient accumulation (``trainer.accumulate_grad_batches = k``) the k training batches of
one optimizer step share its step number; :func:`micro_batch` adds the batch's index to every key
drawn inside it, so each batch draws its own cameras, timesteps and noise (batch 0 draws what a
run without accumulation draws).
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

import torch

_MICRO_BATCH: ContextVar[int] = ContextVar("micro_batch", default=0)


@contextmanager
def micro_batch(index: int) -> Iterator[None]:
    """Draws inside come from the streams of training batch ``index`` of an optimizer step."""
    token = _MICRO_BATCH.set(index)
    try:
        yield
    finally:
        _MICRO_BATCH.reset(token)


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 63-bit seed from a run seed and any number of keys (stable across runs and machines); the
    :func:`micro_batch` index joins the keys when it is not 0."""
    index = _MICRO_BATCH.get()
    if index:
        keys = (*keys, "micro-batch", index)
    text = "/".join(str(k) for k in (seed, *keys))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def generator(seed: int, *keys: int | str, device: str | torch.device = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` for the stream named by ``keys`` (e.g. "noise", particle, step)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(seed, *keys))
    return gen


def per_particle_randn(shape: tuple[int, ...], seed: int, particle_ids: list[int] | torch.Tensor,
                       *keys: int | str, device: str | torch.device = "cpu",
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise ``[len(particle_ids), *shape]``, row i drawn from particle i's stream."""
    rows = [torch.randn(shape, generator=generator(seed, *keys, int(p)), dtype=dtype) for p in particle_ids]
    return torch.stack(rows).to(device)


def per_particle_rand(shape: tuple[int, ...], seed: int, particle_ids: list[int] | torch.Tensor,
                      *keys: int | str, device: str | torch.device = "cpu",
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uniform [0, 1) draws ``[len(particle_ids), *shape]``, row i from particle i's stream."""
    rows = [torch.rand(shape, generator=generator(seed, *keys, int(p)), dtype=dtype) for p in particle_ids]
    return torch.stack(rows).to(device)
