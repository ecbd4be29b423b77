"""Pictures and animations into TensorBoard, when a run logs there (tensorboard installed).

    log_image(system.loggers, "validation", grid, step)        # grid [3, H, W] in [0, 1]
    log_animation(system.loggers, "test/all", "save/it500-test/all.gif", step)

Animations are logged as their GIF file: TensorBoard's image dashboard plays GIFs, and
``add_video`` would need moviepy to encode them again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from torch import Tensor


def tensorboard_writers(loggers: Sequence) -> list:
    """The SummaryWriters of the TensorBoard loggers among Lightning ``loggers``."""
    try:
        from lightning.pytorch.loggers import TensorBoardLogger
    except ImportError:
        return []
    return [logger.experiment for logger in loggers if isinstance(logger, TensorBoardLogger)]


def log_image(loggers: Sequence, tag: str, image: Tensor, step: int) -> None:
    """``image [3, H, W]`` in [0, 1] under ``tag`` at ``step``."""
    for writer in tensorboard_writers(loggers):
        writer.add_image(tag, image.clamp(0, 1), global_step=step)


def log_animation(loggers: Sequence, tag: str, gif: str | os.PathLike, step: int) -> None:
    """The GIF file ``gif`` under ``tag`` at ``step`` (played by the image dashboard)."""
    writers = tensorboard_writers(loggers)
    if not writers:
        return
    from PIL import Image
    from tensorboard.compat.proto.summary_pb2 import Summary

    data = Path(gif).read_bytes()
    with Image.open(gif) as first:
        width, height = first.size
    image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=data)
    for writer in writers:
        writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
