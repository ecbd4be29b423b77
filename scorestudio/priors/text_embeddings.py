"""Precomputed text embeddings: encode prompts once, run later without loading the text encoder.

A prior's text encoder can dwarf the rest of a run (T5-XXL for DeepFloyd IF is 4.7 B parameters)
or be missing where the run happens (a GPU node without the MiniLM package). Like threestudio's
prompt cache, scorestudio writes the embeddings of a list of prompts to one file; a prior whose
``text_embeddings`` config names that file (or the ``SCORESTUDIO_TEXT_EMBEDDINGS`` environment
variable, its default) takes prompts from it and never loads its text encoder model.

    scorestudio text-embeddings --out prompts.pt --dataset-captions
    scorestudio text-embeddings --out prompts.pt --prompts "a red cube" "an icon"
    scorestudio text-embeddings --out sd.pt --prior stable-diffusion \\
        --prior-arg pretrained_model_name_or_path=/models/sd21 --prompts-file prompts.txt

File layout (``torch.save``): ``{"prompts": [P strings], "embeddings": float32 [P, L, D],
"prior": prior type, "source": model folder or hub id}``. "" (the unconditional prompt) is
always included.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from scorestudio.utils.config import ConfigError
from scorestudio.utils.io import atomic_open

ENV_VAR = "SCORESTUDIO_TEXT_EMBEDDINGS"
COMMAND = "scorestudio text-embeddings"


def default_file() -> Optional[str]:
    """The file named by ``$SCORESTUDIO_TEXT_EMBEDDINGS`` (None when unset or empty)."""
    return os.environ.get(ENV_VAR) or None


def load_text_embeddings(path: str | os.PathLike, text_max_length: Optional[int] = None) -> dict[str, Tensor]:
    """``{prompt: [L, D]}`` from a file written by :func:`save_text_embeddings`.

    ``text_max_length`` (the prior's L) is checked against the file's, so embeddings made for
    another prior fail here rather than inside the UNet.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"text embeddings file {path} not found: write it with `{COMMAND} --out {path} "
                          f"--prompts ...`, or unset system.prior.text_embeddings / ${ENV_VAR}")
    data = torch.load(path, map_location="cpu", weights_only=True)
    embeddings = data["embeddings"].to(torch.float32)
    if text_max_length is not None and embeddings.shape[1] != text_max_length:
        raise ConfigError(f"{path}: embeddings have {embeddings.shape[1]} tokens per prompt, this prior uses "
                          f"{text_max_length}; they were made for prior {data.get('prior')!r} "
                          f"({data.get('source')!r}): rewrite them with `{COMMAND}`")
    return dict(zip(data["prompts"], embeddings))


def save_text_embeddings(path: str | os.PathLike, embeddings: dict[str, Tensor], prior: str, source: str) -> None:
    """Write ``{prompt: [L, D]}`` atomically (see the module docstring for the layout)."""
    prompts = list(embeddings)
    with atomic_open(path) as f:
        torch.save({"prompts": prompts, "embeddings": torch.stack([embeddings[p] for p in prompts]).float(),
                    "prior": prior, "source": source}, f)
