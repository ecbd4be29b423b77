"""Beyond one machine: particles sharded over two nodes (torchrun).

Two simulated nodes on localhost (``torchrun --nnodes 2``, one gloo process each) train the same
particles as one process, agree on one run folder, and their checkpoint resumes in one process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scorestudio.utils.config import ConfigError
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
