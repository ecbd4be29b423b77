"""scorestudio: score distillation from diffusion models for 3D, vector graphics and inverse problems.

Importing the package is cheap: subpackages with heavy dependencies (diffusers, nerfacc, ...)
load only when a registered module of theirs is first looked up with :func:`find`.
"""

from scorestudio.utils.registry import declare_lazy, find, register

__version__ = "0.1.0"
__all__ = ["register", "find", "train", "load_run", "Run", "__version__"]


def __getattr__(name: str):
    """``scorestudio.train`` / ``load_run`` / ``Run`` (see :mod:`scorestudio.api`), imported on first use."""
    if name in ("train", "load_run", "Run"):
        from scorestudio import api

        return getattr(api, name)
    raise AttributeError(f"module 'scorestudio' has no attribute {name!r}")

declare_lazy("scorestudio.systems.toy_particles", "toy-particles")
declare_lazy("scorestudio.priors.embedded", "embedded")
declare_lazy("scorestudio.priors.stable_diffusion", "stable-diffusion")
declare_lazy("scorestudio.priors.deepfloyd_if", "deepfloyd-if")
declare_lazy("scorestudio.priors.prompt_processor", "prompt-processor")
declare_lazy("scorestudio.guidance.sds", "sds")
declare_lazy("scorestudio.guidance.nfsd", "nfsd")
declare_lazy("scorestudio.guidance.lmc_sds", "lmc-sds")
declare_lazy("scorestudio.systems.image_particles", "image-particles")
declare_lazy("scorestudio.guidance.vsd", "vsd")
declare_lazy("scorestudio.data.operators", "box-inpaint", "random-inpaint", "mask-inpaint", "super-resolution",
             "gaussian-blur", "motion-blur", "phase-retrieval", "hdr")
declare_lazy("scorestudio.systems.inverse", "inverse")
declare_lazy("scorestudio.guidance.dreamsampler", "dreamsampler")
declare_lazy("scorestudio.systems.text_to_svg", "text-to-svg")
declare_lazy("scorestudio.systems.svg_restoration", "svg-restoration")
declare_lazy("scorestudio.systems.vectorize", "vectorize")
declare_lazy("scorestudio.systems.dreamfusion", "dreamfusion")
declare_lazy("scorestudio.systems.distillation", "distillation")
declare_lazy("scorestudio.generators.nerf", "nerf")
declare_lazy("scorestudio.generators.gaussians", "gaussians")
declare_lazy("scorestudio.generators.latent", "latent")
declare_lazy("scorestudio.metrics.evaluators", "probe", "opacity", "psnr-ssim", "view")
declare_lazy("scorestudio.generators.svg", "svg")
