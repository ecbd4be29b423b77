"""Registry, config parsing, inheritance, interpolation, schedules and CLI parsing."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest
from omegaconf import MISSING

from scorestudio.cli import parse_args, select_devices
from scorestudio.utils.config import (
    ConfigError,
    Schedule,
    ScheduledFloat,
    load_config,
    parse_structured,
    schedulable,
)
from scorestudio.utils.registry import RegistryError, find, register


# ---- registry ---------------------------------------------------------------------------------

def test_register_and_find_roundtrip():
    @register("test-widget-a")
    class WidgetA:
        pass

    assert find("test-widget-a") is WidgetA


def test_duplicate_name_raises():
    @register("test-widget-b")
    class WidgetB:
        pass

    with pytest.raises(RegistryError, match="already registered"):
        @register("test-widget-b")
        class Other:  # noqa: F811
            pass


def test_unknown_name_lists_close_matches_and_known_names():
    with pytest.raises(RegistryError) as info:
        find("toy-particle")
    msg = str(info.value)
    assert "'toy-particles'" in msg and "Did you mean" in msg and "Known names:" in msg


def test_unknown_name_of_a_kind_lists_that_kind_only():
    with pytest.raises(RegistryError) as info:
        find("nope", kind="systems")
    msg = str(info.value)
    assert "toy-particles" in msg and "embedded" not in msg


def test_lazy_lookup_imports_the_module():
    cls = find("toy-particles", kind="systems")
    assert cls.registered_name == "toy-particles"


# ---- config parsing ---------------------------------------------------------------------------

@dataclass
class Inner:
    lr: float = 0.1
    name: str = "adam"


@dataclass
class Outer:
    steps: int = 10
    prompt: str = MISSING
    inner: Inner = field(default_factory=Inner)
    weight: ScheduledFloat = schedulable(1.0)
    maybe: Optional[float] = None


def test_parse_fills_defaults_and_nested():
    cfg = parse_structured(Outer, {"prompt": "a cube", "inner": {"lr": 0.5}})
    assert cfg.steps == 10 and cfg.inner.lr == 0.5 and cfg.inner.name == "adam"
    assert isinstance(cfg.weight, Schedule) and cfg.weight.at(123) == 1.0


def test_unknown_key_names_key_class_and_suggestion():
    with pytest.raises(ConfigError) as info:
        parse_structured(Outer, {"prompt": "x", "stpes": 3}, path="system")
    msg = str(info.value)
    assert "system.stpes" in msg and "Outer" in msg and "'steps'" in msg


def test_unknown_nested_key_has_full_path():
    with pytest.raises(ConfigError, match=r"system\.inner\.lrr.*Inner.*'lr'"):
        parse_structured(Outer, {"prompt": "x", "inner": {"lrr": 3}}, path="system")


def test_wrong_type_names_key_and_expected_type():
    with pytest.raises(ConfigError) as info:
        parse_structured(Outer, {"prompt": "x", "steps": "many"}, path="system")
    msg = str(info.value)
    assert "system.steps" in msg and "int" in msg and "many" in msg


def test_wrong_nested_type():
    with pytest.raises(ConfigError, match=r"system\.inner\.lr.*float"):
        parse_structured(Outer, {"prompt": "x", "inner": {"lr": "fast"}}, path="system")


def test_missing_required_key():
    with pytest.raises(ConfigError, match=r"missing required config key 'system\.prompt'"):
        parse_structured(Outer, {}, path="system")


def test_schedule_parsing_and_values():
    cfg = parse_structured(Outer, {"prompt": "x", "weight": [100, 1.0, 3.0, 300]})
    w = cfg.weight
    assert w.at(0) == 1.0 and w.at(100) == 1.0 and w.at(200) == pytest.approx(2.0)
    assert w.at(300) == 3.0 and w.at(10_000) == 3.0


@pytest.mark.parametrize("bad", [[1, 2, 3], [10, 1.0, 2.0, 5], "fast", True])
def test_bad_schedules_are_rejected(bad):
    with pytest.raises(ConfigError, match="weight"):
        parse_structured(Outer, {"prompt": "x", "weight": bad})


def test_non_schedulable_field_rejects_list():
    with pytest.raises(ConfigError, match="steps"):
        parse_structured(Outer, {"prompt": "x", "steps": [0, 1, 2, 3]})


# ---- YAML files ------------------------------------------------------------------------------

def write(path, text):
    path.write_text(text)
    return path


def test_extends_chain_and_override_order(tmp_path):
    write(tmp_path / "base.yaml", "a: 1\nb: {c: 2, d: 3}\nname: base\n")
    write(tmp_path / "mid.yaml", "extends: base.yaml\nb: {c: 20}\n")
    write(tmp_path / "other.yaml", "e: 5\n")
    child = write(tmp_path / "child.yaml", "extends: [mid.yaml, other.yaml]\nname: child\n")
    cfg = load_config(child, ["b.d=30", "f=new"])
    assert cfg.a == 1 and cfg.b.c == 20 and cfg.b.d == 30 and cfg.e == 5 and cfg.f == "new"
    assert cfg.name == "child" and "extends" not in cfg


def test_extends_cycle_is_an_error(tmp_path):
    write(tmp_path / "x.yaml", "extends: y.yaml\n")
    write(tmp_path / "y.yaml", "extends: x.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "x.yaml")


def test_interpolation_and_resolvers(tmp_path):
    f = write(tmp_path / "c.yaml",
              "n: 4\nm: ${mul:${n},3}\ns: ${add:${n},1}\nprompt: a red cube\ntag: ${rmspace:${prompt},_}\n")
    cfg = load_config(f, ["n=5"])
    assert cfg.m == 15 and cfg.s == 6 and cfg.tag == "a_red_cube"


def test_missing_config_file_error(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml$"):
        load_config(tmp_path / "nope.yaml")
    write(tmp_path / "rlsd-inpaint.yaml", "a: 1\n")
    with pytest.raises(ConfigError, match="not found: .*rlsd-inpainting.yaml. Did you mean 'rlsd-inpaint.yaml'"):
        load_config(tmp_path / "rlsd-inpainting.yaml")


def test_override_without_equals_is_an_error(tmp_path):
    f = write(tmp_path / "c.yaml", "a: 1\n")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(f, ["a"])


# ---- CLI ------------------------------------------------------------------------------------

def test_cli_parsing_splits_overrides_and_seed():
    args, overrides = parse_args(["--config", "c.yaml", "--train", "--seed", "3", "system.x=1", "resume=a.ckpt"])
    assert args.mode == "train" and args.config == "c.yaml" and args.gpu is None
    assert overrides == ["system.x=1", "resume=a.ckpt", "seed=3"]


def test_cli_requires_exactly_one_mode():
    with pytest.raises(SystemExit):
        parse_args(["--config", "c.yaml", "--train", "--test"])
    with pytest.raises(SystemExit):
        parse_args(["--config", "c.yaml"])


def test_cli_rejects_stray_arguments():
    with pytest.raises(SystemExit):
        parse_args(["--config", "c.yaml", "--train", "oops"])


def test_gpu_selection_falls_back_to_cpu():
    import torch

    assert select_devices(None) == ("cpu", 1, 1)
    assert select_devices("cpu") == ("cpu", 1, 1)
    assert select_devices(None, processes=2) == ("cpu", 2, 2)
    if not torch.cuda.is_available():
        with pytest.warns(UserWarning, match="CUDA is not available"):
            assert select_devices("0") == ("cpu", 1, 1)
    elif torch.cuda.device_count() >= 2:
        assert select_devices("0,1") == ("gpu", [0, 1], 2)
    with pytest.raises(ConfigError, match="give a GPU index"):
        select_devices("abc")
    with pytest.raises(ConfigError, match="--gpu 0,1"):
        select_devices("0", processes=2)
    with pytest.raises(ConfigError, match="≥ 1"):
        select_devices(None, processes=0)


@dataclass
class Repulse:
    gamma: ScheduledFloat = schedulable(0.0)


@dataclass
class Guided:
    repulsion: Repulse = field(default_factory=Repulse)
    other: Repulse = field(default_factory=lambda: Repulse(gamma=(0, 1.0, 2.0, 10)))


def test_nested_schedules_are_parsed_even_when_defaulted():
    cfg = parse_structured(Guided, {})
    assert isinstance(cfg.repulsion.gamma, Schedule) and cfg.repulsion.gamma.at(5) == 0.0
    assert cfg.other.gamma.at(5) == pytest.approx(1.5)
    cfg = parse_structured(Guided, {"repulsion": {"gamma": [0, 0, 10, 100]}})
    assert cfg.repulsion.gamma.at(50) == pytest.approx(5.0)


def test_unknown_optimizer_is_a_config_error_with_suggestions():
    from scorestudio.systems.toy_particles import ToyParticlesSystem

    system = ToyParticlesSystem({"n_realizations": 2, "optimizer": {"name": "Adm"}})
    with pytest.raises(ConfigError, match="'Adm' is not a torch.optim optimizer. Did you mean 'Adam'.*Known: .*SGD"):
        system.configure_optimizers()


@pytest.mark.parametrize("module, args", [("scorestudio.tools.sample", ["--prompt", "a cube", "--out", "x", "--n", "0"]),
                                          ("scorestudio.tools.sample", ["--prompt", "a cube", "--out", "x", "--steps", "-2"]),
                                          ("scorestudio.tools.procedural", ["--n", "many"])])
def test_command_line_counts_must_be_positive(module, args, capsys):
    """A zero or non-numeric count is a usage error naming the option (was a ZeroDivisionError)."""
    import importlib

    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {next(a for a in args if a in ('--n', '--steps'))}" in err and ("≥ 1" in err)


@pytest.mark.parametrize("name", sorted(p.name for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")))
def test_every_shipped_config_resolves(name):
    """Each top-level config (base files included) resolves its interpolations and parses into the
    run config and its system's Config, without loading any model."""
    from scorestudio.utils.run import ExperimentConfig

    raw = load_config(Path(__file__).resolve().parents[1] / "configs" / name)
    exp = parse_structured(ExperimentConfig, raw)
    assert exp.tag and "${" not in exp.tag
    parse_structured(find(exp.system_type, kind="systems").Config, exp.system, "system")
