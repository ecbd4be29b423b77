"""Every script in examples/ runs as a user would run it: from another folder, on the installed package."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
SHORT = {"quickstart.py": ["3"]}   # arguments that keep each example short in the tests


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(script, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, str(script), *SHORT.get(script.name, [])], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "particles: (4, 3, 64, 64)" in done.stdout
    assert (tmp_path / "outputs").is_dir()


def test_python_api_reopens_a_run_and_exports(tmp_path, tiny):
    import scorestudio

    prior, probe = tiny
    run = scorestudio.train(ROOT / "configs" / "text-to-svg.yaml", exp_root_dir=str(tmp_path), use_timestamp=False,
                            trainer__max_steps=2, trainer__val_check_interval=0, system__n_particles=2,
                            system__init_from_sample__enabled=False, system__prior__pretrained_model_name_or_path=str(prior),
                            system__probe_path=str(probe), trainer__enable_progress_bar=False)
    assert run.metrics["step"] == 2 and run.checkpoint.is_file()
    again = scorestudio.load_run(run.root)
    assert again.config.system_type == "text-to-svg"
    assert tuple(again.render().shape) == (2, 3, 64, 64)
    paths = again.export()
    assert sorted(p.name for p in paths) == ["particle0.svg", "particle1.svg"]
    assert all(p.parent.name == "it2-export" for p in paths)
    with pytest.raises(scorestudio.api.ConfigError, match="not a scorestudio run folder"):
        scorestudio.load_run(tmp_path)


def test_shipped_configs_resolve_by_name():
    from scorestudio.utils.config import ConfigError, config_path

    assert config_path("dreamfusion-embedded").name == "dreamfusion-embedded.yaml"
    assert config_path("toy-particles.yaml").is_file()
    with pytest.raises(ConfigError, match="Did you mean 'toy-particles'"):
        config_path("toy-particle")
