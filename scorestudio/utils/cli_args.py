"""argparse types shared by scorestudio's command-line tools."""

from __future__ import annotations

import argparse
from typing import Any


def positive_int(text: str) -> int:
    """An integer ≥ 1 (counts, sizes, steps): ``--n 0`` is a usage error, not a crash later."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
    return value


def build_prior(name: str, config: dict, how_to_pass: str) -> Any:
    """The registered prior ``name`` built from ``config``, for a command-line tool: missing weights
    or an unknown name end the command with the prior's own message (which names the launch.py
    setting, ``system.prior.KEY``) followed by ``how_to_pass`` (how this tool takes those settings)."""
    from scorestudio.utils.config import ConfigError
    from scorestudio.utils.registry import RegistryError, find

    try:
        return find(name, kind="priors")(config)
    except (ConfigError, RegistryError) as err:
        raise SystemExit(f"error: {err}\n({how_to_pass})") from None
