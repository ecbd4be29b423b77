"""Base classes: every configurable piece of scorestudio parses its own ``Config`` dataclass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from scorestudio.utils.config import parse_structured


class Configurable:
    """A plain object configured by a nested ``Config`` dataclass (no parameters)."""

    @dataclass
    class Config:
        pass

    cfg: Any

    def __init__(self, cfg: Any = None, path: str = "") -> None:
        self.cfg = parse_structured(self.Config, cfg, path)
        self.config_path = path
        self.configure()

    def configure(self) -> None:
        """Build whatever the parsed ``self.cfg`` describes. Override in subclasses."""


class BaseModule(nn.Module):
    """An ``nn.Module`` configured by a nested ``Config`` dataclass.

    ``path`` is where this module's config sits in the run config (``system.guidance``); it
    prefixes config errors so the user knows which key to fix.
    """

    @dataclass
    class Config:
        pass

    cfg: Any

    def __init__(self, cfg: Any = None, path: str = "") -> None:
        super().__init__()
        self.cfg = parse_structured(self.Config, cfg, path)
        self.config_path = path
        self.configure()

    def configure(self) -> None:
        """Build submodules from ``self.cfg``. Override in subclasses."""
