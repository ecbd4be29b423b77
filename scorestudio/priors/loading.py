"""Where prior weights come from, and one clear error when they cannot be found.

``pretrained_model_name_or_path`` is either a local folder in diffusers layout (``unet/``,
``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/`` ...) or a Hugging Face hub id that is
looked up in the local Hugging Face cache. scorestudio never touches the network unless a config
sets ``local_files_only: false``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from scorestudio.utils.config import ConfigError


class PriorWeightsNotFound(ConfigError, FileNotFoundError):
    """Prior weights that are neither a loadable local folder nor in the Hugging Face cache."""


def offline_hint(name: str, key: str) -> str:
    """What to do when ``name`` (the value of config key ``key``) is not available offline."""
    return (
        f"scorestudio runs offline: download the model on a machine with network "
        f"(e.g. `huggingface-cli download {name} --local-dir DIR`) and pass {key}=DIR"
    )


def load_component(cls: Any, name_or_path: str, subfolder: str, *, key: str,
                   local_files_only: bool = True, **kwargs: Any) -> Any:
    """``cls.from_pretrained(name_or_path, subfolder=subfolder, ...)`` with an actionable error.

    ``cls`` is any diffusers / transformers class with ``from_pretrained`` (models, tokenizers,
    schedulers); ``key`` is the full config key of ``name_or_path`` for the error message.
    Raises :class:`PriorWeightsNotFound` if the component cannot be loaded.
    """
    try:
        return cls.from_pretrained(name_or_path, subfolder=subfolder,
                                   local_files_only=local_files_only, **kwargs)
    except (OSError, ValueError) as err:  # missing files, not cached, or not a valid hub id
        what = f"{cls.__name__} from {name_or_path!r} (subfolder {subfolder}/)"
        if Path(name_or_path).is_dir():
            message = (f"cannot load {what}: {str(err).rstrip('.')}. The folder given as {key} exists "
                       f"but is not a complete diffusers-format model folder")
        elif not _is_hub_id(name_or_path):
            message = (f"cannot load {what}: no such folder. Set {key} to a diffusers-format model "
                       f"folder or a cached hub id; {offline_hint('HUB_ID', key)}")
        else:
            cache = "not in the Hugging Face cache" if local_files_only else f"could not be downloaded ({err})"
            message = f"cannot load {what}: not a local folder and {cache}. {offline_hint(name_or_path, key)}"
        raise PriorWeightsNotFound(message) from err


def _is_hub_id(name: str) -> bool:
    """Whether ``name`` is a syntactically valid hub repo id ("owner/name")."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def resolve_dtype(name: str, key: str) -> torch.dtype:
    """Weights/compute dtype of a prior: "float32", or "float16" when CUDA is available.

    Half precision on the CPU is slow and lacks kernels, so there it warns and returns float32.
    """
    choices = {"float32": torch.float32, "float16": torch.float16}
    if name not in choices:
        raise ConfigError(f"{key}={name!r}: expected one of {', '.join(choices)}")
    if choices[name] is torch.float16 and not torch.cuda.is_available():
        warnings.warn(f"{key}=float16 needs CUDA; loading the prior in float32 on the CPU")
        return torch.float32
    return choices[name]
