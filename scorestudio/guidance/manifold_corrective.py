"""b̂ψ, the learned manifold corrective of LMC-SDS (Kolotouros et al. 2024, §4 and Eq. 10).

The prior's one-step denoised estimate ẑ_t = (z_t − σ_t ε̂_∅(z_t, t)) / α_t of a clean latent z
is z plus a t-dependent "frequency bias" (blur, lost detail): ẑ_t ≈ b(z, t). SDS's projection
term pulls z towards ẑ_t and therefore blurs. b̂ψ(z, t) is a small deterministic network that
learns b, so that LMC-SDS can compare ẑ_t with b̂ψ(z, t) instead of with z and keep only the
part of ẑ_t − z that is *not* the prior's systematic bias.

Pieces:

* :class:`ManifoldCorrective` — a small U-Net (Conv/ReLU blocks, max-pool down, skip
  connections, a tanh-bounded residual output) with t as a sin/cos frequency encoding
  concatenated per pixel.
* :func:`normalized_corrective_loss` — L_k of Eq. 10: the squared error between ẑ_t and b̂
  after rescaling b̂ to ẑ_t's mean and standard deviation.
* :func:`save_corrective` / :func:`load_corrective` — a folder with ``config.json`` and
  ``model.safetensors`` (any latent channel count: the shipped one is for the embedded prior's
  4×8×8 latents; a user-trained one for Stable Diffusion loads the same way).

Train with ``scorestudio train-corrective`` (:mod:`scorestudio.tools.train_corrective`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scorestudio.priors.loading import PriorWeightsNotFound

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FOLDER_NAME = "manifold_corrective"   # sub-folder of a prior's weights folder
STAT_DIMS = (1, 2, 3)   # μ, σ per sample over all channels and pixels ("global image statistics")
_EPS = 1e-6
RESIDUAL_RANGE = 3.0    # |b̂ − z| ≤ 3 (in units of z's std): the tanh bounds the correction
TRAIN_HINT = ("train them with `scorestudio train-corrective` "
              "(embedded prior: `bash scripts/train_manifold_corrective.sh`, ~30 min on 2 CPU cores)")


class CorrectiveWeightsNotFound(PriorWeightsNotFound):
    """b̂ψ weights that are not where a config says (a FileNotFoundError and a ConfigError)."""


@dataclass
class CorrectiveConfig:
    """Architecture of b̂ψ, stored as ``config.json`` next to the weights."""

    latent_channels: int = 4                                       # C of the prior's model space
    channels: list = field(default_factory=lambda: [32, 64, 128])   # filters per level (doubling, as the paper)
    time_frequencies: int = 6                                       # sin/cos(2^k π t), k < this

    def to_dict(self) -> dict:
        return {**asdict(self), "channels": list(self.channels)}

    @classmethod
    def from_dict(cls, data: dict) -> "CorrectiveConfig":
        known = {k: data[k] for k in ("latent_channels", "channels", "time_frequencies") if k in data}
        return cls(**known)


def standardize(x: Tensor) -> Tensor:
    """``x`` ``[N, C, h, w]`` with zero mean and unit std per sample (over C, h, w)."""
    mu = x.mean(STAT_DIMS, keepdim=True)
    return (x - mu) / (x.std(STAT_DIMS, keepdim=True, unbiased=False) + _EPS)


def time_encoding(t: Tensor, frequencies: int) -> Tensor:
    """Frequency encoding ``[N, 2F + 1]`` of t ``[N]`` in [0, 1]: (t, sin 2^k π t, cos 2^k π t)."""
    t = t.float().view(-1, 1)
    scales = math.pi * 2.0 ** torch.arange(frequencies, device=t.device, dtype=t.dtype)
    return torch.cat([t, torch.sin(t * scales), torch.cos(t * scales)], dim=1)


class _Block(nn.Sequential):
    """Two 3×3 Conv/ReLU layers (the paper's encoder/decoder unit)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True))


class ManifoldCorrective(nn.Module):
    """b̂ψ(z, t): latents ``[N, C, h, w]`` and t ``[N]`` (fraction of T, in [0, 1]) → ``[N, C, h, w]``.

    The input is standardised per sample (mean 0, std 1), so b̂ψ(a z + c, t) = b̂ψ(z, t) for a > 0.
    Encoder: one :class:`_Block` per level of ``cfg.channels``, 2× max-pool between levels;
    decoder: nearest upsampling, concatenation with the encoder's skip, a block; a 1×1 conv (on
    the last block's features and z) whose tanh, times ``RESIDUAL_RANGE``, is added to the
    standardised z. The output lives in a normalised space (L_k ignores its mean and scale): use
    :func:`match_statistics` to bring it to ẑ_t's statistics. The t encoding is concatenated to
    the input of every encoder level, so even the coarse levels know how much blur to apply.
    Any h, w work (pooling rounds up, upsampling follows the skip's size).
    """

    def __init__(self, cfg: CorrectiveConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or CorrectiveConfig()
        c = self.cfg.latent_channels
        te = 2 * self.cfg.time_frequencies + 1
        chans = list(self.cfg.channels)
        self.down = nn.ModuleList()
        prev = c
        for width in chans:
            self.down.append(_Block(prev + te, width))
            prev = width
        self.up = nn.ModuleList(_Block(chans[i + 1] + chans[i], chans[i]) for i in reversed(range(len(chans) - 1)))
        # Residual output b̂ = z + r, r = RESIDUAL_RANGE · tanh(·), the head zero-initialised
        # (b̂ starts as the identity baseline). Measured on latents of ongoing SDS/LMC runs (off
        # the training manifold): a plain tanh(U-Net) output was 4.5× worse than the identity at
        # t = 0.05, the residual form 0.9× — the prior's bias is small at small t, and a
        # residual keeps b̂ close to z there for inputs it has never seen.
        self.out = nn.Conv2d(chans[0] + c, c, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, z: Tensor, t: Tensor) -> Tensor:
        if z.shape[1] != self.cfg.latent_channels:
            raise ValueError(f"b̂ψ expects {self.cfg.latent_channels}-channel latents, got {tuple(z.shape)}")
        enc = time_encoding(t.to(z.device).expand(z.shape[0]), self.cfg.time_frequencies).to(z.dtype)
        # Standardise z per sample: the output is only used up to an affine map (L_k), and the
        # latents of an ongoing optimisation leave the training range (their contrast grows);
        # standardised, they look like the training inputs at least in scale.
        z = standardize(z)
        skips = []
        x = z
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2, ceil_mode=True)
            x = block(torch.cat([x, enc[:, :, None, None].expand(-1, -1, *x.shape[-2:])], dim=1))
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = block(torch.cat([x, skip], dim=1))
        return z + RESIDUAL_RANGE * torch.tanh(self.out(torch.cat([x, z], dim=1)))


class IdentityCorrective(nn.Module):
    """b̂(z, t) = z: the ablation that turns L_lmc back into (σ_t/α_t) × SDS's projection term."""

    def forward(self, z: Tensor, t: Tensor) -> Tensor:
        return z


# --------------------------------------------------------------------------------------------
# The normalised loss L_k (Eq. 10).
# --------------------------------------------------------------------------------------------

def match_statistics(source: Tensor, reference: Tensor) -> Tensor:
    """``source`` ``[N, C, h, w]`` affinely rescaled to each reference sample's mean and std:
    σ(ref)/σ(src) · (src − μ(src)) + μ(ref).

    Invariant to positive affine maps of ``source``; used both in L_k and when LMC-SDS applies b̂ψ
    (Eq. 9 with the normalisation absorbed into b̂, as the paper prescribes).
    """
    mu_s = source.mean(STAT_DIMS, keepdim=True)
    sd_s = source.std(STAT_DIMS, keepdim=True, unbiased=False)
    mu_r = reference.mean(STAT_DIMS, keepdim=True)
    sd_r = reference.std(STAT_DIMS, keepdim=True, unbiased=False)
    return (source - mu_s) * (sd_r / (sd_s + _EPS)) + mu_r


def normalized_corrective_loss(prediction: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """L_k = mean‖ẑ_t − match_statistics(b̂, ẑ_t)‖² per sample, ``[N]`` or its mean (``reduction``).

    ``prediction`` b̂ψ(z, t) and ``target`` ẑ_t are ``[N, C, h, w]``. The mean is over elements
    (so the figure does not depend on the latent size). Equals 2 σ(ẑ_t)² (1 − corr(b̂, ẑ_t)) up to
    the ε in the division: 0 for a perfect predictor, unchanged by b̂ → a b̂ + c (a > 0).

    Why normalised: an unnormalised b̂ underestimates the contrast of ẑ_t (it regresses to the
    mean over noise draws), and that deficit would reappear in L_lmc as a push towards
    over-saturated, over-contrasted images (paper §4).

    Note: the paper's printed Eq. 10 keeps b̂'s own mean (… + μ(b̂)); here both mean and std come
    from ẑ_t, which makes L_k invariant to any positive affine rescaling of b̂.
    """
    per = (target - match_statistics(prediction, target)).pow(2).flatten(1).mean(1)
    if reduction == "none":
        return per
    if reduction == "mean":
        return per.mean()
    raise ValueError(f"reduction={reduction!r}: use 'mean' or 'none'")


# --------------------------------------------------------------------------------------------
# Folder format: config.json + model.safetensors.
# --------------------------------------------------------------------------------------------


def save_corrective(net: ManifoldCorrective, folder: str | Path, dtype: torch.dtype = torch.float16,
                    extra: dict | None = None) -> Path:
    """Write ``folder/config.json`` (architecture + ``extra``, e.g. training facts) and
    ``folder/model.safetensors`` (weights cast to ``dtype``; fp16 halves the shipped size)."""
    from safetensors.torch import save_file

    from scorestudio.utils.io import write_json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / CONFIG_FILE, {**net.cfg.to_dict(), **(extra or {})})
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    return folder


def load_corrective(folder: str | Path, latent_channels: int | None = None,
                    device: str | torch.device = "cpu") -> ManifoldCorrective:
    """b̂ψ from ``folder`` (float32, frozen, eval mode).

    ``latent_channels``: the prior's C, checked against the folder's config (a b̂ψ trained for
    another prior is refused). Raises :class:`CorrectiveWeightsNotFound` with the training
    command when the folder or a file is missing.
    """
    from safetensors.torch import load_file

    folder = Path(folder).expanduser()
    config, weights = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not folder.is_dir():
        raise CorrectiveWeightsNotFound(f"LMC-SDS: no b̂ψ (manifold corrective) weights at {folder}: {TRAIN_HINT}, "
                                        "or point system.guidance.corrective_path to a trained folder")
    if not (config.is_file() and weights.is_file()):
        raise CorrectiveWeightsNotFound(f"LMC-SDS: {folder} lacks {CONFIG_FILE} or {WEIGHTS_FILE}: {TRAIN_HINT}")
    cfg = CorrectiveConfig.from_dict(json.loads(config.read_text()))
    if latent_channels is not None and cfg.latent_channels != latent_channels:
        raise CorrectiveWeightsNotFound(
            f"LMC-SDS: the b̂ψ in {folder} was trained for {cfg.latent_channels}-channel latents but this prior has "
            f"{latent_channels}: train one for this prior ({TRAIN_HINT}, with --prior-type/--prior-path)")
    net = ManifoldCorrective(cfg)
    net.load_state_dict({k: v.float() for k, v in load_file(str(weights)).items()})
    net.requires_grad_(False)
    return net.eval().to(device)


def parameter_count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
