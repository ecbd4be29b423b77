"""Feature networks for the repulsion kernel and the diversity metric.

``load_feature_network(kind)`` returns a frozen module with ``features(images) -> [N, D]`` for
images ``[N, 3, H, W]`` in [0, 1], differentiable w.r.t. the images:

- "probe": the embedded prior's probe CNN (shipped, offline; the default);
- "latent_probe": the probe distilled onto the embedded prior's latents: ``features(latents)``
  for latents ``[N, 4, 8, 8]`` instead of images, so the repulsion needs no decoder pass;
- "dinov2": DINOv2's CLS token through transformers, from a local folder the user provides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DinoV2Features(nn.Module):
    """DINOv2 CLS features ``[N, D]`` of images in [0, 1] (resized to 224, ImageNet-normalised)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        from transformers import AutoModel

        # float32 whatever the folder stores (transformers loads a float16 checkpoint as float16):
        # the kernel's squared feature distances would lose precision, or overflow, in half.
        self.model = AutoModel.from_pretrained(path, local_files_only=True, dtype=torch.float32)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def features(self, images: Tensor) -> Tensor:
        x = F.interpolate(images, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
        out = self.model(pixel_values=(x - self.mean) / self.std)
        return out.last_hidden_state[:, 0]


def load_feature_network(kind: str = "probe", path: Optional[str] = None) -> nn.Module:
    """A frozen feature network by name; clear errors when weights are missing."""
    if kind in ("probe", "latent_probe"):
        from scorestudio.metrics.probe import DEFAULT_LATENT_PROBE_DIR, load_probe

        net = load_probe(path if path or kind == "probe" else DEFAULT_LATENT_PROBE_DIR)
        wanted = "latent" if kind == "latent_probe" else "image"
        if net.cfg.space != wanted:
            other = "latent_probe" if kind == "probe" else "probe"
            raise ValueError(f"features={kind!r} needs a probe of {wanted} inputs but the one at {path} reads "
                             f"{net.cfg.space} inputs: use features={other!r} with this folder")
    elif kind == "dinov2":
        if not path or not Path(path).expanduser().is_dir():
            raise FileNotFoundError(
                f"DINOv2 features need a local model folder, got {path!r}: download facebook/dinov2-small "
                "on a machine with network and pass system.guidance.repulsion.feature_net_path=FOLDER")
        net = DinoV2Features(str(Path(path).expanduser()))
    else:
        raise ValueError(f"unknown feature network {kind!r}: use 'probe', 'latent_probe' or 'dinov2'")
    net.requires_grad_(False)
    return net.eval()
