"""Evaluators: what a distillation system reports about its test renders, listed by name.

    system:
      evaluation:
        evaluators: [probe, opacity]

An evaluator is called as ``evaluator(system, frames, alpha) -> dict`` with the test renders
``frames [N, T, 3, H, W]`` in [0, 1] (T orbit views of a 3-D generator, T = 1 for 2-D) and their
accumulated opacity ``[N, T, H, W]`` (None for opaque 2-D generators). Keys ``particle{i}/...``
are per particle. A metric an evaluator cannot compute is ``None`` with its reason under
``null_reasons`` (metrics.json stays strict JSON).
"""

from __future__ import annotations

import warnings
from collections import Counter
from typing import Optional

import torch
from torch import Tensor

from scorestudio.utils.registry import register

# The embedded probe knows the procedural data set of the embedded prior only.
PROBE_PRIORS = ("embedded",)


class Evaluator:
    """Base of the evaluators: one call per test, a flat dict of metrics."""

    def __call__(self, system, frames: Tensor, alpha: Optional[Tensor]) -> dict:
        raise NotImplementedError


@register("probe")
class ProbeEvaluator(Evaluator):
    """What the embedded probe sees: for orbits (T > 1), per particle the fraction of frames
    showing the prompted shape / colour and the majority shape / colour, across particles the
    distinct majority classes and the diversity of the particles' mean features; for images
    (T = 1) diversity, quality (probability of the prompted attributes), distinct classes and
    each image's classes. Skipped, with a note, for priors the probe was not trained on (unless
    ``system.probe_path`` names a probe) and when no probe is installed."""

    @torch.no_grad()
    def __call__(self, system, frames: Tensor, alpha: Optional[Tensor]) -> dict:
        from scorestudio.metrics.probe import load_probe_or_warn

        cfg = system.cfg
        if cfg.prior_type not in PROBE_PRIORS and cfg.probe_path is None:
            reason = (f"the shipped probe scores the embedded prior's classes only, not {cfg.prior_type!r} "
                      "images: set system.probe_path to a probe of your own")
            warnings.warn(f"no probe metrics: {reason}")
            return {"probe": None, "null_reasons": {"probe": reason}}
        probe = load_probe_or_warn(cfg.probe_path)
        if probe is None:
            return {}
        probe = probe.to(frames.device)
        prompt = system.prompt_processor.cfg.prompt
        if frames.shape[1] > 1:
            return orbit_metrics(probe, frames, prompt)
        return image_metrics(probe, frames[:, 0], prompt, cfg.prompts)


def orbit_metrics(probe, frames: Tensor, prompt: str) -> dict:
    """Probe metrics of orbit frames ``[N, T, 3, H, W]`` (see :class:`ProbeEvaluator`)."""
    from scorestudio.metrics.attributes import prompt_attributes
    from scorestudio.metrics.probe import diversity

    wanted = prompt_attributes(prompt)
    n, t = frames.shape[:2]
    flat = frames.flatten(0, 1)
    logits = probe(flat)
    metrics: dict = {}
    majority: dict[str, list[str]] = {"shape": [], "color": []}
    for head in ("shape", "color"):
        names = probe.names(head)
        pred = logits[head].argmax(-1).view(n, t)
        for i in range(n):
            labels = [names[j] for j in pred[i].tolist()]
            majority[head].append(Counter(labels).most_common(1)[0][0])
            metrics[f"particle{i}/majority_{head}"] = majority[head][-1]
            if wanted[head] is not None:
                metrics[f"particle{i}/{head}_fraction"] = labels.count(wanted[head]) / t
        if wanted[head] is not None:
            metrics[f"{head}_fraction"] = sum(metrics[f"particle{i}/{head}_fraction"] for i in range(n)) / n
        metrics[f"distinct_majority_{head}s"] = len(set(majority[head]))
    if n >= 2:
        metrics["diversity"] = diversity(probe.features(flat).view(n, t, -1).mean(1))
    return metrics


def image_metrics(probe, images: Tensor, prompt: str, prompts: Optional[list] = None) -> dict:
    """Probe metrics of images ``[N, 3, H, W]`` (see :class:`ProbeEvaluator`); with ``prompts``
    (one per image) quality is measured against each image's own prompt."""
    from scorestudio.metrics.attributes import attribute_probabilities, probe_report, prompt_attributes

    report = probe_report(images, prompt, probe)
    if prompts is not None:
        logits = probe(images)
        quality = [attribute_probabilities({k: v[i:i + 1] for k, v in logits.items()}, prompt_attributes(str(p)))
                   for i, p in enumerate(prompts)]
        report["quality"] = float(torch.cat(quality).nanmean())
    if report["quality"] != report["quality"]:   # NaN: nothing to score against
        report["quality"] = None
        report["null_reasons"] = {"quality": f"the prompt {prompt!r} names no shape, colour or kind the probe knows"}
    report["classes"] = [{k: p[k] for k in ("shape", "color")} for p in probe.classify(images)]
    return report


@register("opacity")
class OpacityEvaluator(Evaluator):
    """Fog: per particle and on average, the fraction of test pixels that are neither background
    nor surface (:func:`scorestudio.metrics.opacity.translucent_fraction`)."""

    def __call__(self, system, frames: Tensor, alpha: Optional[Tensor]) -> dict:
        from scorestudio.metrics.opacity import translucent_fraction

        if alpha is None:
            return {}
        fraction = translucent_fraction(alpha).tolist()
        return {"translucent_fraction": sum(fraction) / len(fraction),
                **{f"particle{i}/translucent_fraction": f for i, f in enumerate(fraction)}}


@register("psnr-ssim")
class RestorationEvaluator(Evaluator):
    """Restorations of ``system.problem`` (a :class:`scorestudio.data.problems.RestorationProblem`):
    with a known ground truth PSNR / SSIM (mean and best particle), measurement consistency, the
    measurement's own PSNR (the baseline) and, with a probe, diversity and agreement with the
    true classes (:func:`scorestudio.metrics.restoration.evaluate`); otherwise the consistency
    only. With a probe, each restoration's classes."""

    @torch.no_grad()
    def __call__(self, system, frames: Tensor, alpha: Optional[Tensor]) -> dict:
        from scorestudio.data.problems import Problem, upsampled
        from scorestudio.metrics.image_quality import measurement_consistency, psnr
        from scorestudio.metrics.probe import load_probe_or_warn
        from scorestudio.metrics.restoration import evaluate

        problem, probe = system.problem, load_probe_or_warn(system.cfg.probe_path)
        images = frames[:, 0].detach().float()
        y = problem.y.to(images.device)
        if problem.ground_truth is not None:
            truth = problem.ground_truth.to(images.device)
            out = evaluate(images, Problem(truth, problem.operator, y, problem.labels), probe)
            out["psnr_measurement"] = float(psnr(upsampled(y, problem.canvas), truth)[0])
        else:
            out = {"consistency_mean": float(measurement_consistency(problem.operator, images, y).mean())}
        if probe is not None:
            out["classes"] = [{k: p[k] for k in ("shape", "color")} for p in probe.to(images.device).classify(images)]
        return out


@register("view")
class ViewEvaluator(Evaluator):
    """The Janus check of 3-D orbits: does each frame look like the side it is seen from? Per
    particle and on average, the fraction of orbit frames whose probe view (front / side / back /
    overhead) is the camera's view bucket (the prompt processor's thresholds); per bucket the same
    fraction over the frames of that bucket, and ``back_seen_as_front`` (back frames the probe
    calls front: a face on the back). Skipped like ``probe`` for priors the probe does not know
    and for 2-D generators (no cameras)."""

    @torch.no_grad()
    def __call__(self, system, frames: Tensor, alpha: Optional[Tensor]) -> dict:
        from scorestudio.data.cameras import VIEW_NAMES, orbit_cameras, view_index
        from scorestudio.metrics.probe import load_probe_or_warn

        cfg = system.cfg
        reason = None
        if frames.shape[1] < 2:
            reason = "view agreement needs a 3-D orbit (cameras); this generator renders images"
        elif cfg.prior_type not in PROBE_PRIORS and cfg.probe_path is None:
            reason = f"the shipped probe's view head knows the embedded prior's objects only, not {cfg.prior_type!r} images"
        if reason is not None:
            return {"view_agreement": None, "null_reasons": {"view_agreement": reason}}
        probe = load_probe_or_warn(cfg.probe_path)
        if probe is None:
            return {}
        e, (n, t) = cfg.evaluation, frames.shape[:2]
        cameras = orbit_cameras(e.n_views, e.elevation, e.distance, e.fovy)
        bucket = view_index(cameras.elevation, cameras.azimuth, system.prompt_processor.thresholds).to(frames.device)
        names = probe.names("view")
        to_ours = torch.tensor([VIEW_NAMES.index(name) for name in names], device=frames.device)
        seen = to_ours[probe.to(frames.device)(frames.flatten(0, 1))["view"].argmax(-1)].view(n, t)
        return view_metrics(seen, bucket)


def view_metrics(seen: Tensor, bucket: Tensor) -> dict:
    """The :class:`ViewEvaluator`'s numbers from the probe's views ``seen`` long ``[N, T]`` of N
    particles' T orbit frames and the cameras' view buckets ``bucket`` long ``[T]`` (``VIEW_NAMES``
    indices)."""
    from scorestudio.data.cameras import VIEW_NAMES

    agree = (seen == bucket).float()
    metrics: dict = {"view_agreement": float(agree.mean())}
    metrics.update({f"particle{i}/view_agreement": float(agree[i].mean()) for i in range(len(seen))})
    for v, view in enumerate(VIEW_NAMES):
        if bool((bucket == v).any()):
            metrics[f"view_agreement_{view}"] = float(agree[:, bucket == v].mean())
    back = bucket == VIEW_NAMES.index("back")
    if bool(back.any()):
        metrics["back_seen_as_front"] = float((seen[:, back] == VIEW_NAMES.index("front")).float().mean())
    return metrics
