"""The embedded prior says what it knows: an out-of-vocabulary prompt gets one clear warning, and
metrics that cannot score it are null with a reason (strict JSON)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scorestudio.cli import parse_args, run
from scorestudio.utils.registry import find

ROOT = Path(__file__).resolve().parents[1]


def strict(text: str):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")
    return json.loads(text, parse_constant=refuse)


def test_embedded_prior_names_its_vocabulary_for_an_unknown_prompt(tiny):
    prior = find("embedded")({"pretrained_model_name_or_path": str(tiny[0])}, path="system.prior")
    assert prior.unknown_prompt("a red cube") is None and prior.unknown_prompt("an icon") is None
    reason = prior.unknown_prompt("a hamburger")
    assert "'a hamburger' names none of them" in reason and "mug" in reason and "stable-diffusion" in reason


def test_out_of_vocabulary_run_warns_and_writes_strict_metrics(tmp_path, tiny):
    prior, probe = tiny
    argv = ["--config", str(ROOT / "configs" / "image-particles-sds.yaml"), "--train", f"exp_root_dir={tmp_path}",
            "use_timestamp=false", "trainer.max_steps=1", "trainer.val_check_interval=0",
            "trainer.enable_progress_bar=false", "system.n_particles=2", "system.prompt_processor.prompt=a hamburger",
            f"system.prior.pretrained_model_name_or_path={prior}", f"system.probe_path={probe}",
            "system.guidance.repulsion.features=probe"]
    with pytest.warns(UserWarning, match="the embedded prior knows only these objects"):
        ctx = run(*parse_args(argv))
    metrics = strict(ctx.metrics_path.read_text())
    assert metrics["quality"] is None and "names no shape" in metrics["null_reasons"]["quality"]
