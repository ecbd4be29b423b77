"""The tabs of the web app and the config that each one's settings produce.

A tab offers some shipped configs and a fixed set of settings. Every setting writes one config
key, named here, with a value of a checked type and range; an uploaded image is a file the app
wrote itself (:mod:`scorestudio.ui.uploads`). No key comes from the browser, so no setting can
point a run at weights, feature networks or anything else that loads code: those stay the
shipped configs' (and the prior files' under ``configs/priors/``).
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from scorestudio.utils.config import ConfigError, load_config, parse_structured, shipped_config_dirs
from scorestudio.utils.run import ExperimentConfig

PRIORS = ("embedded", "stable-diffusion", "deepfloyd-if")
PROMPT_MAX_CHARS = 300


@dataclass(frozen=True)
class Setting:
    """A widget of a tab: its label, the type of its value and the range allowed."""

    label: str
    kind: str                       # text | int | float | floats (comma-separated) | choice
    lo: float = -math.inf
    hi: float = math.inf
    choices: tuple[str, ...] = ()
    info: str = ""


SETTINGS = {
    "prompt": Setting("prompt", "text", info="what to draw"),
    "particles": Setting("particles N", "int", 1, 16, info="samples optimised together"),
    "gamma": Setting("repulsion γ", "float", 0, 1e5, info="0 = independent particles"),
    "gammas": Setting("repulsion weights γ", "floats", 0, 1e5, info="comma-separated: one ensemble per γ"),
    "guidance": Setting("guidance scale", "float", 0, 500, info="classifier-free guidance (CFG)"),
    "steps": Setting("steps", "int", 1, 100_000),
    "preview": Setting("preview every", "int", 0, 100_000, info="steps between live images (0 = none)"),
    "seed": Setting("seed", "int", 0, 2**31 - 1),
    "operator": Setting("degradation", "choice", choices=("gaussian-blur", "super-resolution")),
}


@dataclass(frozen=True)
class Task:
    """One tab: the shipped configs it offers (the first is the default) and the config key each
    of its settings writes."""

    name: str
    label: str
    configs: tuple[str, ...]
    keys: dict[str, str]
    about: str = ""
    config_label: str = "config"
    image_key: Optional[str] = None        # the config key of an uploaded image (None: no upload)
    image_help: str = ""
    prior_key: Optional[str] = "system"    # where prior_type / prior live (None: no prior)
    hidden: tuple[str, ...] = ()           # configs offered only when their generator is registered

    @property
    def settings(self) -> list[str]:
        return list(self.keys)


DISTILLATION_KEYS = {"prompt": "system.prompt_processor.prompt", "particles": "system.n_particles",
                     "gamma": "system.guidance.repulsion.gamma", "guidance": "system.guidance.guidance_scale",
                     "steps": "trainer.max_steps", "preview": "trainer.val_check_interval", "seed": "seed"}

TASKS = {task.name: task for task in (
    Task("text-to-3d", "Text to 3-D",
         ("dreamfusion-embedded", "gaussians-embedded", "prolificdreamer-embedded", "dreamfusion-lmc",
          "dreamfusion-sd", "dreamfusion-if", "prolificdreamer-sd"),
         DISTILLATION_KEYS,
         about="NeRF or Gaussian-splat particles distilled from the prior: turntables, meshes (GLB) and metrics.",
         hidden=("gaussians-embedded",)),
    Task("image-particles", "Image particles",
         ("image-particles-sds", "image-particles-nfsd", "image-particles-vsd", "image-particles-lmc",
          "image-particles-sds-sd"),
         DISTILLATION_KEYS,
         about="N images distilled from the prior directly (the quickest job: seconds on a CPU)."),
    Task("text-to-svg", "Text to SVG",
         ("text-to-svg", "text-to-svg-dreamsampler", "text-to-svg-lmc", "text-to-svg-scratch"),
         {**DISTILLATION_KEYS, "preview": "system.frame_every"},
         about="Vector icons: closed Bézier paths fitted through the differentiable rasterizer; SVG files."),
    Task("svg-restoration", "SVG restoration", ("svg-restoration",),
         {"prompt": "system.prompt_processor.prompt", "operator": "data.operator",
          "guidance": "system.guidance.guidance_scale", "steps": "trainer.max_steps",
          "preview": "system.frame_every", "seed": "seed"},
         about="A blurry or small picture restored as vector paths; before/after comparison.",
         image_key="data.image",
         image_help="the degraded picture (PNG or JPEG); none: a held-out procedural icon, degraded here"),
    Task("inverse", "Inverse problems",
         ("rlsd-inpaint", "rlsd-random-inpaint", "rlsd-sr4", "rlsd-deblur", "rlsd-motion-deblur",
          "rlsd-phase-retrieval", "rlsd-hdr"),
         {"prompt": "system.solver.prompt", "particles": "system.n_particles",
          "gamma": "system.solver.repulsion.gamma", "steps": "trainer.max_steps",
          "preview": "system.frame_every", "seed": "seed"},
         about="RLSD: N particles restore an image seen through an operator (inpainting, blur, ...).",
         config_label="operator", image_key="data.image",
         image_help="the clean picture (PNG or JPEG) the operator degrades; none: a held-out procedural image"),
    Task("toy", "Toy experiment", ("toy-particles",),
         {"particles": "system.n_particles", "gammas": "system.gammas", "steps": "trainer.max_steps",
          "preview": "trainer.val_check_interval", "seed": "seed"},
         about="2-D particles on a bimodal target, one ensemble per repulsion weight γ: mode collapse vs γ.",
         prior_key=None),
)}


def offered_configs(task: Task, generator_available) -> list[str]:
    """The task's configs this installation can run: a config in ``task.hidden`` only when
    ``generator_available(its generator_type)``."""
    keep = []
    for name in task.configs:
        if name in task.hidden:
            generator = load_config(name, resolve=False).system.get("generator_type")
            if not generator_available(generator):
                continue
        keep.append(name)
    return keep


def describe(name: str) -> str:
    """A config's dropdown label: its name with its generator, guidance and prior."""
    system = load_config(name, resolve=False).get("system", {})
    parts = [system.get(k) for k in ("generator_type", "guidance_type", "prior_type")]
    parts = [str(p) for p in parts if isinstance(p, str)]
    return f"{name} ({' · '.join(parts)})" if parts else name


def defaults(task: Task, name: str) -> dict[str, Any]:
    """The settings' values in the config ``name`` (None where it holds no plain value: a
    schedule, an interpolation); ``prior``: its prior type."""
    cfg = load_config(name, resolve=False)
    values: dict[str, Any] = {}
    for setting, key in task.keys.items():
        try:
            value = OmegaConf.select(cfg, key, throw_on_missing=False)
        except OmegaConfBaseException:   # an interpolation that needs other keys
            value = None
        if isinstance(value, DictConfig) or (OmegaConf.is_list(value) and setting != "gammas"):
            value = None
        elif OmegaConf.is_list(value):
            value = ", ".join(f"{v:g}" for v in value)
        values[setting] = value
    if task.prior_key:
        values["prior"] = OmegaConf.select(cfg, f"{task.prior_key}.prior_type")
    return values


def check_prompt(text: Any) -> str:
    """The prompt as the config will hold it; ValueError says what is wrong with it."""
    prompt = str(text or "").strip()
    if len(prompt) > PROMPT_MAX_CHARS:
        raise ValueError(f"prompt: at most {PROMPT_MAX_CHARS} characters, got {len(prompt)}")
    if "${" in prompt:   # OmegaConf reads ${...} as an interpolation
        raise ValueError("prompt: '${' is not allowed (configs read it as an interpolation)")
    if any(ord(c) < 32 for c in prompt):
        raise ValueError("prompt: one line of text, without control characters")
    return prompt


def check_value(name: str, value: Any) -> Any:
    """A widget's value as its setting's type, within its range (ValueError otherwise)."""
    setting = SETTINGS[name]
    if setting.kind == "text":
        return check_prompt(value)
    if setting.kind == "choice":
        if value not in setting.choices:
            raise ValueError(f"{setting.label}: one of {', '.join(setting.choices)}, got {value!r}")
        return value
    if setting.kind == "floats":
        try:
            numbers = [float(v) for v in str(value).split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"{setting.label}: numbers separated by commas, got {value!r}") from None
        if not numbers:
            raise ValueError(f"{setting.label}: give at least one number")
        for number in numbers:
            _in_range(setting, number)
        return numbers
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{setting.label}: a number, got {value!r}") from None
    if setting.kind == "int":
        if number != int(number):
            raise ValueError(f"{setting.label}: a whole number, got {value!r}")
        number = int(number)
    return _in_range(setting, number)


def _in_range(setting: Setting, number: float) -> float:
    if not (math.isfinite(number) and setting.lo <= number <= setting.hi):
        raise ValueError(f"{setting.label}: between {setting.lo:g} and {setting.hi:g}, got {number:g}")
    return number


def prior_file(prior: str) -> Path:
    """``configs/priors/<prior>.yaml`` of the shipped configs."""
    for folder in shipped_config_dirs():
        path = folder / "priors" / f"{prior}.yaml"
        if path.is_file():
            return path
    raise ConfigError(f"no shipped prior config priors/{prior}.yaml")


def swap_prior(cfg: DictConfig, prior_key: str, prior: str) -> None:
    """Give ``cfg`` the ``prior`` of the shipped prior files in place of its own: the embedded
    prior with its defaults, or ``configs/priors/<prior>.yaml`` (weights folder, dtype, CFG)."""
    if prior not in PRIORS:
        raise ValueError(f"prior: one of {', '.join(PRIORS)}, got {prior!r}")
    node = OmegaConf.select(cfg, prior_key)
    if node.get("prior_type") == prior:
        return
    node.prior_type = prior
    node.prior = {}   # the other prior's keys (weights folder, dtype) mean nothing to this one
    if prior != "embedded":
        cfg.merge_with(load_config(prior_file(prior), resolve=False))


def build_config(task: Task, name: str, values: dict[str, Any], outputs: Path,
                 image: Optional[Path] = None) -> DictConfig:
    """The resolved config of a run of ``task``: shipped config ``name``, then the settings in
    ``values`` (None: keep the config's), the uploaded ``image``, the run folder under
    ``outputs`` and the progress bar the app reads. ValueError / ConfigError say what is wrong."""
    if name not in task.configs:
        raise ValueError(f"{task.config_label}: one of {', '.join(task.configs)}, got {name!r}")
    cfg = load_config(name, resolve=False)
    if task.prior_key and values.get("prior"):
        swap_prior(cfg, task.prior_key, values["prior"])
    checked = {k: check_value(k, v) for k, v in values.items() if k in task.keys and v not in (None, "")}
    if "preview" in checked and "steps" in checked:
        checked["preview"] = min(checked["preview"], checked["steps"])
    for setting, value in checked.items():
        OmegaConf.update(cfg, task.keys[setting], value, merge=False)
    if image is not None and task.image_key:
        OmegaConf.update(cfg, task.image_key, str(image), merge=False)
    cfg.exp_root_dir = str(outputs)
    OmegaConf.update(cfg, "trainer.enable_progress_bar", True, merge=False)
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{name}: {err}") from err
    parse_structured(ExperimentConfig, cfg)
    return cfg


def save_config(cfg: DictConfig, folder: Path, name: str) -> Path:
    """Write ``cfg`` as ``folder/<name>-<hash>.yaml`` (the same config, the same file); its path."""
    text = OmegaConf.to_yaml(cfg)
    path = folder / f"{re.sub(r'[^A-Za-z0-9_-]', '_', name)}-{hashlib.sha1(text.encode()).hexdigest()[:10]}.yaml"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return path


def vocabulary(prior: str) -> Optional[str]:
    """What the embedded prior can draw (the procedural data set it was trained on), as
    Markdown; None for the open-vocabulary priors."""
    if prior != "embedded":
        return None
    from scorestudio.data.procedural import COLOR_NAMES, ICON_SHAPES, SHAPES_3D

    return (f"**The embedded prior knows** objects: {', '.join(SHAPES_3D)} · icons: {', '.join(ICON_SHAPES)} · "
            f"colours: {', '.join(COLOR_NAMES)}. Prompts such as \"a red cube\" or \"a blue star icon\".")


def prompt_warning(prior: str, prompt: str) -> Optional[str]:
    """The prior's warning for a prompt it cannot draw (``unknown_prompt``), or None."""
    from scorestudio.utils.registry import find

    if not prompt:
        return None
    cls = find(prior, kind="priors")
    # Building a prior loads its weights; unknown_prompt reads only what its class knows.
    return cls.unknown_prompt(cls.__new__(cls), prompt)
