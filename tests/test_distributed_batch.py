"""Beyond one machine: particles sharded over two nodes (torchrun), prompts × seeds on Ray.

Two simulated nodes on localhost (``torchrun --nnodes 2``, one gloo process each) train the same
particles as one process, agree on one run folder, and their checkpoint resumes in one process.
A Ray batch of 4 short runs on a local 2-CPU cluster, one of whose workers is killed mid-run,
finishes all 4 with the killed one retried; the same batch again does no work (the Ray tests
are marked slow: ``pytest -m slow tests/test_distributed_batch.py``, with ``scorestudio[ray]``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scorestudio.tools.batch import KILL_ONCE_ENV, PROMPT_KEY, plan_runs
from scorestudio.tools.batch import parse_args as parse_batch_args
from scorestudio.utils.config import ConfigError, load_config
from scorestudio.utils.distributed import check_launcher_world, is_first_process
from tests.test_sharding import checkpoint, launch_args, run_in_one_process

ROOT = Path(__file__).resolve().parents[1]


def free_loopback_port() -> int | None:
    """A free TCP port on 127.0.0.1, or None without loopback networking."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]
    except OSError:
        return None


# 4 processes, 2 per node, as torchrun (this one: rank 1) and SLURM's srun (rank 0) describe them.
TORCHRUN = {"TORCHELASTIC_RUN_ID": "job", "WORLD_SIZE": "4", "RANK": "1", "LOCAL_RANK": "1", "GROUP_RANK": "0",
            "LOCAL_WORLD_SIZE": "2"}
SLURM = {"SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
         "SLURM_NODEID": "0", "SLURM_JOB_NAME": "train"}


@pytest.mark.parametrize("launcher, rank", [(TORCHRUN, 1), (SLURM, 0)])
def test_the_launcher_gives_the_rank_and_must_match_nodes_times_processes(monkeypatch, launcher, rank):
    """Under torchrun or SLURM the global rank comes from the launcher, before any process group;
    a --nodes × processes that is not the launcher's number of processes is a clear error."""
    for key in [k for k in os.environ if k.startswith(("SLURM_", "TORCHELASTIC_"))]:
        monkeypatch.delenv(key)
    for key, value in launcher.items():
        monkeypatch.setenv(key, value)
    assert is_first_process(started_by_rank0=False) == (rank == 0)
    check_launcher_world(2, 2)
    with pytest.raises(ConfigError, match="started 4 processes but --nodes 1 × 2 process"):
        check_launcher_world(2, 1)


# Every rank prints the run folder it trains in once the process group exists (after SharedRunRoot).
REPORT_ROOT = """
import sys
import scorestudio.utils.distributed as d
share = d.SharedRunRoot.setup
def setup(self, trainer, module, stage):
    share(self, trainer, module, stage)
    print(f"rank {trainer.global_rank} trains in {self.run.root}", flush=True)
d.SharedRunRoot.setup = setup
from scorestudio.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run_two_nodes(tmp_path, argv_of_node, port):
    """``torchrun --nnodes 2 --nproc-per-node 1`` on localhost: node ``r`` runs ``argv_of_node(r)``."""
    script = tmp_path / "report_root.py"
    script.write_text(REPORT_ROOT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                               "--node-rank", str(r), "--master-addr", "127.0.0.1", "--master-port", str(port),
                               str(script), *argv_of_node(r), "--nodes", "2"],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(2)]
    outputs = []
    for node in nodes:
        try:
            outputs.append(node.communicate(timeout=600)[0])
        finally:
            node.kill()
    for node, out in zip(nodes, outputs):
        assert node.returncode == 0, out[-4000:]
    return outputs


def test_two_nodes_under_torchrun_train_the_particles_of_one_process(tmp_path, tiny):
    """2 steps over two nodes (rank 1's command names another tag: it must train in rank 0's
    timestamped folder) == the first 2 steps of one process; resumed in one process for 2 more
    steps == 4 steps of one process (checkpoints do not depend on the number of processes)."""
    port = free_loopback_port()
    if port is None:
        pytest.skip("no loopback networking: torchrun's two nodes on 127.0.0.1 cannot meet")
    steps = ["trainer.val_check_interval=2", "system.guidance.repulsion.gamma=20"]
    run_in_one_process(launch_args(tmp_path, tiny, "image-particles-sds.yaml", "one", "trainer.max_steps=4", *steps,
                                   "checkpoint.every_n_train_steps=2", "checkpoint.keep_all=true"))

    def node_argv(rank):
        return launch_args(tmp_path, tiny, "image-particles-sds.yaml", "nodes" if rank == 0 else "other",
                           "trainer.max_steps=2", *steps, "use_timestamp=true")

    outputs = run_two_nodes(tmp_path, node_argv, port)
    runs = tmp_path / "image-particles"
    [folder] = runs.glob("nodes@*")
    assert not list(runs.glob("other*"))
    for rank, out in enumerate(outputs):
        assert f"rank {rank} trains in {folder}\n" in out, out[-3000:]
    assert "[scorestudio] run folder" not in outputs[1]            # rank 1 wrote no run record
    assert len((folder / "cmd.txt").read_text().splitlines()) == 1

    one_step2 = torch.load(runs / "one" / "ckpts" / "step000002.ckpt", map_location="cpu", weights_only=False)
    nodes = checkpoint(tmp_path, "image-particles", folder.name)
    assert nodes["global_step"] == 2
    assert torch.allclose(nodes["state_dict"]["latents"], one_step2["state_dict"]["generator.latents"], atol=1e-5)

    run_in_one_process(launch_args(tmp_path, tiny, "image-particles-sds.yaml", folder.name, "trainer.max_steps=4",
                                   *steps, f"resume={folder / 'ckpts' / 'last.ckpt'}"))
    one, resumed = checkpoint(tmp_path, "image-particles", "one"), checkpoint(tmp_path, "image-particles", folder.name)
    assert resumed["global_step"] == 4
    assert torch.allclose(resumed["state_dict"]["latents"], one["state_dict"]["latents"], atol=1e-5)
    state_one, state_resumed = (c["optimizer_states"][0]["state"][0] for c in (one, resumed))
    assert torch.allclose(state_resumed["exp_avg"], state_one["exp_avg"], atol=1e-5)


# ---- scorestudio batch on Ray -----------------------------------------------------------------
def test_batch_plans_prompts_times_seeds_in_folders_a_rerun_finds(tmp_path):
    """A CSV row without a seed runs every --seeds, one with a seed runs that one; its cells
    override the config; folders depend only on what makes the run; a prompt is text."""
    prompts = tmp_path / "prompts.csv"
    prompts.write_text('prompt,seed,system.guidance.repulsion.gamma\na red cube,,20\n"a cube: red",3,\n')
    argv = ["--config", str(ROOT / "configs" / "image-particles-sds.yaml"), "--prompts", str(prompts),
            "--seeds", "0-1", "--out", str(tmp_path / "out"), "trainer.max_steps=7"]
    runs = plan_runs(*parse_batch_args(argv))
    gamma = ["system.guidance.repulsion.gamma=20"]
    assert [(r.prompt, r.seed, r.row_overrides) for r in runs] == [("a red cube", 0, gamma), ("a red cube", 1, gamma),
                                                                    ("a cube: red", 3, [])]
    assert all(Path(r.folder).parent == tmp_path / "out" / "image-particles" and r.max_steps == 7 for r in runs)
    assert len({r.folder for r in runs}) == 3
    assert [r.folder for r in plan_runs(*parse_batch_args(argv))] == [r.folder for r in runs]
    other = [r.folder for r in plan_runs(*parse_batch_args([*argv, "trainer.max_steps=8"]))]
    assert not set(other) & {r.folder for r in runs}
    cfg = load_config(ROOT / "configs" / "image-particles-sds.yaml", runs[2].overrides(PROMPT_KEY))
    assert cfg.system.prompt_processor.prompt == "a cube: red"
    twice = tmp_path / "twice.txt"
    twice.write_text("a red cube\n# a comment\n\na red cube\n")
    with pytest.raises(ConfigError, match="'a red cube' with seed 0 twice"):
        plan_runs(*parse_batch_args([*argv[:2], "--prompts", str(twice)]))


def run_batch(argv, env_extra=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "scorestudio", "batch", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)


def batch_argv(tmp_path, tiny, prompts, *extra):
    prior, probe = tiny
    return ["--config", str(ROOT / "configs" / "image-particles-sds.yaml"), "--prompts", str(prompts),
            "--out", str(tmp_path / "batch"), "--num-cpus", "2", "--cpus-per-task", "1", *extra,
            f"system.prior.pretrained_model_name_or_path={prior}", f"system.probe_path={probe}",
            "system.guidance.repulsion.features=probe", f"system.guidance.repulsion.feature_net_path={probe}",
            "system.n_particles=2", "trainer.max_steps=6", "trainer.val_check_interval=0",
            "checkpoint.every_n_train_steps=2"]


@pytest.mark.slow   # a Ray cluster and several training processes: pytest -m slow tests/test_distributed_batch.py
def test_ray_batch_retries_a_killed_worker_and_a_rerun_does_no_work(tmp_path, tiny):
    pytest.importorskip("ray", reason='scorestudio batch needs the optional Ray: pip install "scorestudio[ray]"')
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt,seed,system.guidance.repulsion.gamma\n"
                       "a red cube,,\n"
                       'a blue sphere,,20\n')
    argv = batch_argv(tmp_path, tiny, prompts, "--seeds", "0,1", "--max-retries", "2")
    killed = tmp_path / "killed-once"
    done = run_batch(argv, {KILL_ONCE_ENV: str(killed)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    out = tmp_path / "batch"
    runs = json.loads((out / "index.json").read_text())["runs"]
    assert sorted((r["prompt"], r["seed"]) for r in runs) == [("a blue sphere", 0), ("a blue sphere", 1),
                                                               ("a red cube", 0), ("a red cube", 1)]
    assert all(r["status"] == "finished" and r["metrics"]["step"] == 6 for r in runs)
    victim = killed.read_text().split()[-1]                     # the run whose worker was killed
    assert {r["slug"]: r["attempts"] for r in runs} == {r["slug"]: 2 if r["slug"] == victim else 1 for r in runs}
    victim_folder = out / next(r["folder"] for r in runs if r["slug"] == victim)
    assert len((victim_folder / "cmd.txt").read_text().splitlines()) == 2    # resumed in its own folder
    for r in runs:
        assert (out / r["thumbnail"]).is_file() and r["thumbnail"].endswith("particles.png")
    page = (out / "index.html").read_text()
    assert page.count("<img ") == 4 and "a blue sphere" in page

    again = run_batch(argv)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "4 finished (skipped), 0 to run" in again.stdout
    assert "Started a local Ray instance" not in again.stdout + again.stderr
    assert {r["status"] for r in json.loads((out / "index.json").read_text())["runs"]} == {"skipped"}
    assert len((victim_folder / "cmd.txt").read_text().splitlines()) == 2


@pytest.mark.slow   # a Ray cluster and several training processes: pytest -m slow tests/test_distributed_batch.py
def test_ray_batch_reports_a_run_that_keeps_failing(tmp_path, tiny):
    """A run whose training fails every time is retried --max-retries times, then listed as
    failed (exit status 1), and the others finish."""
    pytest.importorskip("ray", reason='scorestudio batch needs the optional Ray: pip install "scorestudio[ray]"')
    prompts = tmp_path / "prompts.csv"   # the second row's prior does not exist: its run fails when it starts
    prompts.write_text("prompt,seed,system.prior.pretrained_model_name_or_path\n"
                       "a red cube,0,\n"
                       "a red cube,1,/nonexistent/prior\n")
    out = tmp_path / "batch"
    done = run_batch(batch_argv(tmp_path, tiny, prompts, "--max-retries", "1"))
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "FAILED after 2 attempt(s): 'a red cube' seed 1" in done.stderr
    good, bad = json.loads((out / "index.json").read_text())["runs"]
    assert good["status"] == "finished" and good["attempts"] == 1
    assert bad["status"] == "failed" and bad["attempts"] == 2 and "exited with status" in bad["error"]
    assert "failed" in (out / "index.html").read_text()
