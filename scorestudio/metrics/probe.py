"""The probe: a small CNN that names the shape, colour, kind and view of a procedural image.

Trained by ``scorestudio train-prior --stage probe`` on the same generator as the
embedded prior (with shift/blur/noise augmentation, so imperfect generated images are named
robustly). Its penultimate ``features`` are the default feature space of the repulsion kernel and
of :func:`diversity`.

    probe = load_probe()                 # scorestudio/priors/weights/embedded/probe/
    logits = probe(images)               # images [N, 3, H, W] in [0, 1]
    feats = probe.features(images)       # [N, D], differentiable w.r.t. images
    probe.classify(images)[0]            # {"shape": "cube", "color": "red", ...}
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from scorestudio.priors.embedded_arch import ProbeConfig, ProbeNet

EMBEDDED_WEIGHTS = Path(__file__).resolve().parents[1] / "priors" / "weights" / "embedded"
DEFAULT_PROBE_DIR = EMBEDDED_WEIGHTS / "probe"
# The probe's features distilled onto the embedded prior's latents (no decoder in the loop):
# see scorestudio.tools.train_latent_probe.
DEFAULT_LATENT_PROBE_DIR = EMBEDDED_WEIGHTS / "latent_probe"
HEADS = ("shape", "color", "kind", "view")


class Probe(ProbeNet):
    """:class:`~scorestudio.priors.embedded_arch.ProbeNet` plus readable predictions.

    ``forward(images) -> {"shape": [N, 13], "color": [N, 8], "kind": [N, 2], "view": [N, 4]}``
    logits and ``features(images) -> [N, D]`` come from the network.
    """

    def names(self, head: str) -> tuple[str, ...]:
        """Class names of ``head`` in logit order."""
        return {"shape": self.cfg.shapes, "color": self.cfg.colors, "kind": self.cfg.kinds,
                "view": self.cfg.views}[head]

    @torch.no_grad()
    def classify(self, images: Tensor) -> list[dict]:
        """Per image ``[N, 3, H, W]`` in [0, 1]: ``{"shape", "color", "kind", "view"}`` (view is
        None when the image is predicted to be an icon), ``"p_<head>"`` the top probability and
        ``"probabilities"`` = ``{head: {class name: probability}}``."""
        probs = {h: v.softmax(-1).cpu() for h, v in self(images).items()}
        out = []
        for i in range(images.shape[0]):
            row: dict = {}
            for h in HEADS:
                p = probs[h][i]
                row[h] = self.names(h)[int(p.argmax())]
                row[f"p_{h}"] = float(p.max())
            if row["kind"] == "icon":
                row["view"], row["p_view"] = None, None
            row["probabilities"] = {h: {n: round(float(v), 4) for n, v in zip(self.names(h), probs[h][i])}
                                    for h in HEADS}
            out.append(row)
        return out


def load_probe(folder: str | Path | None = None, device: str | torch.device = "cpu") -> Probe:
    """The frozen probe in ``folder`` (``config.json`` + ``probe.safetensors``; default: the
    shipped ``scorestudio/priors/weights/embedded/probe/``), float32, in eval mode."""
    folder = Path(folder) if folder is not None else DEFAULT_PROBE_DIR
    config, weights = folder / "config.json", folder / "probe.safetensors"
    if not (config.is_file() and weights.is_file()):
        raise FileNotFoundError(f"no probe in {folder} (expected config.json and probe.safetensors): train it "
                                "with `scorestudio train-prior --stage probe` (image probe) or "
                                "`scorestudio train-latent-probe` (latent probe)")
    probe = Probe(ProbeConfig.from_dict(json.loads(config.read_text())))
    probe.load_state_dict({k: v.float() for k, v in load_file(str(weights)).items()})
    probe.requires_grad_(False)
    return probe.eval().to(device)


def load_probe_or_warn(folder: str | Path | None = None) -> Probe | None:
    """The probe, or None with a warning when its weights are missing (metrics are then skipped)."""
    import warnings

    try:
        return load_probe(folder)
    except FileNotFoundError as err:
        warnings.warn(f"no probe metrics: {err}")
        return None


def diversity(features: Tensor) -> float:
    """1 − mean pairwise cosine similarity over i ≠ j of ``features`` ``[N, D]`` (N ≥ 2): 0 for
    identical features, 1 for mutually orthogonal ones (the RSD papers' diversity)."""
    n = features.shape[0]
    if n < 2:
        raise ValueError(f"diversity needs at least 2 feature vectors, got {n}")
    unit = torch.nn.functional.normalize(features.flatten(1).float(), dim=1)
    sim = unit @ unit.T
    off_diagonal = (sim.sum() - sim.diagonal().sum()) / (n * (n - 1))
    return float(1.0 - off_diagonal)
