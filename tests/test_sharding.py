"""Particles sharded over processes (utils.distributed, ``launch.py --processes N`` / ``--gpu 0,1``).

A run sharded over 2 CPU processes (Lightning DDP, gloo) must train the same particles as the
same run in one process, repulsion included (the kernel has to see the other process's
particles), and only rank 0 writes outputs.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scorestudio.cli import parse_args, run
from scorestudio.guidance.repulsion import repulsion_gradient
from scorestudio.utils.config import ConfigError
from scorestudio.utils.distributed import particle_block
from scorestudio.utils.images import load_image

ROOT = Path(__file__).resolve().parents[1]


def test_particle_blocks_partition_the_particles_in_order():
    blocks = [particle_block(6, rank, 3) for rank in range(3)]
    assert torch.equal(torch.cat(blocks), torch.arange(6))
    with pytest.raises(ConfigError, match="n_particles=5 cannot be split over 2 processes"):
        particle_block(5, 0, 2)


def test_repulsion_of_a_block_sees_the_whole_ensemble():
    """Each block's repulsion, with the others' features gathered, is that block's rows of the
    repulsion of the whole ensemble (here the gather is simulated in one process)."""
    gen = torch.Generator().manual_seed(0)
    particles = torch.randn(6, 2, 3, 3, generator=gen)
    weights = torch.randn(18, 5, generator=gen)

    def features(x):
        return torch.tanh(x.flatten(1) @ weights)

    whole = repulsion_gradient(particles, features)
    everyone = features(particles).detach()
    for block in (torch.arange(0, 3), torch.arange(3, 6)):
        gathered = repulsion_gradient(particles[block], features, lambda f, b=block: (everyone, int(b[0])))
        assert torch.allclose(gathered, whole[block], atol=1e-6)
    alone = repulsion_gradient(particles[:3], features)   # without the gather: another answer
    assert not torch.allclose(alone, whole[:3], atol=1e-3)


def launch_args(tmp_path, tiny, config, tag, *overrides):
    prior, probe = tiny
    return ["--config", str(ROOT / "configs" / config), "--train", f"exp_root_dir={tmp_path}", f"tag={tag}",
            "use_timestamp=false", "trainer.enable_progress_bar=false",
            f"system.prior.pretrained_model_name_or_path={prior}", f"system.probe_path={probe}",
            "system.guidance.repulsion.features=probe", f"system.guidance.repulsion.feature_net_path={probe}",
            "system.n_particles=4", *overrides]


def run_in_one_process(argv):
    return run(*parse_args(argv))


def loopback_problem() -> str | None:
    """Why the processes of a sharded run could not meet here (over TCP on 127.0.0.1), or None."""
    try:
        with socket.socket() as server, socket.socket() as client:
            server.bind(("127.0.0.1", 0))
            server.listen(1)
            client.settimeout(2.0)
            client.connect(server.getsockname())
    except OSError as err:
        return f"no loopback networking (a socket to 127.0.0.1 fails: {err}); sharded runs need it"
    return None


LOOPBACK_PROBLEM = loopback_problem()
needs_loopback = pytest.mark.skipif(LOOPBACK_PROBLEM is not None, reason=LOOPBACK_PROBLEM or "")


def run_in_two_processes(argv):
    """``launch.py ... --processes 2`` in a fresh interpreter (Lightning starts rank 1 by running
    the same command again, so it cannot run inside pytest's process)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(ROOT / "launch.py"), *argv, "--processes", "2"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def checkpoint(tmp_path, system, tag):
    """The run's checkpoint, its state named as the generator's modules (``latents``, ``geometry.*``)."""
    path = tmp_path / system / tag / "ckpts" / "last.ckpt"
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    ckpt["state_dict"] = {k.removeprefix("generator."): v for k, v in ckpt["state_dict"].items()}
    return ckpt


@needs_loopback
def test_image_particles_sharded_over_two_processes_equal_one_process(tmp_path, tiny):
    """4 steps in one process == 2 steps in one process, resumed for 2 more over 2 processes
    (checkpoints do not depend on the number of processes), with repulsion that matters."""
    steps = ["trainer.val_check_interval=2", "system.guidance.repulsion.gamma=20"]
    run_in_one_process(launch_args(tmp_path, tiny, "image-particles-sds.yaml", "one", "trainer.max_steps=4", *steps))
    run_in_one_process(launch_args(tmp_path, tiny, "image-particles-sds.yaml", "free", "trainer.max_steps=4",
                                   steps[0], "system.guidance.repulsion.gamma=0"))
    run_in_one_process(launch_args(tmp_path, tiny, "image-particles-sds.yaml", "two", "trainer.max_steps=2", *steps))
    part = tmp_path / "image-particles" / "two"
    stdout = run_in_two_processes(launch_args(tmp_path, tiny, "image-particles-sds.yaml", "two", "trainer.max_steps=4",
                                              *steps, f"resume={part / 'ckpts' / 'last.ckpt'}"))
    one, two = (checkpoint(tmp_path, "image-particles", tag) for tag in ("one", "two"))
    assert two["global_step"] == 4
    free = checkpoint(tmp_path, "image-particles", "free")["state_dict"]["latents"]
    latents = one["state_dict"]["latents"]
    assert torch.allclose(two["state_dict"]["latents"], latents, atol=1e-5)
    assert (free - latents).abs().max() > 1e-3            # the repulsion (across processes) mattered
    state_one, state_two = (c["optimizer_states"][0]["state"][0] for c in (one, two))
    assert torch.allclose(state_two["exp_avg"], state_one["exp_avg"], atol=1e-5)
    assert {f"particle{i}.png" for i in range(4)} | {"it4-val.png"} <= {p.name for p in (part / "save").iterdir()}
    assert len((part / "cmd.txt").read_text().splitlines()) == 2    # rank 1 wrote nothing of its own
    assert stdout.count("[scorestudio] run folder") == 1


@needs_loopback
def test_dreamfusion_sharded_over_two_processes_equals_one_process(tmp_path, tiny):
    small = ["trainer.max_steps=4", "trainer.val_check_interval=0", "system.resolutions=[16]",
             "system.resolution_milestones=[]", "system.geometry.grid.resolution=12",
             "system.renderer.num_samples_per_ray=12", "system.evaluation.resolution=16", "system.evaluation.n_views=2",
             "system.export.after_test=false", "system.material.ambient_only_steps=2",
             "system.renderer.occupancy.update_every=2",
             # Adam's ε = 1e-15 turns gradients at the rounding level (another summation order in a
             # batch of 2 instead of 4) into full steps of lr; a larger ε compares the actual updates.
             "system.optimizer.args.eps=1e-8"]
    run_in_one_process(launch_args(tmp_path, tiny, "dreamfusion-embedded.yaml", "one", *small))
    run_in_two_processes(launch_args(tmp_path, tiny, "dreamfusion-embedded.yaml", "two", *small))
    one, two = (checkpoint(tmp_path, "dreamfusion-embedded", tag)["state_dict"] for tag in ("one", "two"))
    geometry = [k for k in one if k.startswith("geometry.")]
    assert geometry
    for key in geometry:   # 4 Adam steps of lr 0.01 move weights by up to 0.04; rounding: ~3e-5
        assert (two[key] - one[key]).abs().max() < 1e-4, key
    save = tmp_path / "dreamfusion-embedded" / "two" / "save" / "it4-test"
    assert {f"particle{i}.gif" for i in range(4)} | {"all.gif"} <= {p.name for p in save.iterdir()}


@needs_loopback
def test_text_to_svg_sharded_over_two_processes_equals_one_process(tmp_path, tiny):
    """SVG particles with a sample-fitted start (every process fits all of them; the sampler's
    repulsion sees all samples once, not gathered twice), repulsion, and DreamSampler, whose
    per-particle carried noise every process keeps for all particles (the checkpoint has it all);
    the progress frames of the sharded run still show every particle."""
    small = ["trainer.max_steps=3", "trainer.val_check_interval=0", "system.paths.num_paths=6", "system.frame_every=1",
             "system.init_from_sample.enabled=true", "system.init_from_sample.ddim_steps=3",
             "system.init_from_sample.fit_steps=5", "system.guidance.repulsion.gamma=10"]
    run_in_one_process(launch_args(tmp_path, tiny, "text-to-svg-dreamsampler.yaml", "one", *small))
    run_in_two_processes(launch_args(tmp_path, tiny, "text-to-svg-dreamsampler.yaml", "two", *small))
    one, two = (checkpoint(tmp_path, "text-to-svg", tag)["state_dict"] for tag in ("one", "two"))
    for key in ("points", "colors"):
        assert (two[key] - one[key]).abs().max() < 1e-3, key      # points in px, after 3 steps of lr ~1
    assert one["guidance.prev_valid"].shape == (4, 1) and two["guidance.prev_valid"].all()
    assert (two["guidance.prev_eps"] - one["guidance.prev_eps"]).abs().max() < 1e-3
    frame = load_image(tmp_path / "text-to-svg" / "two" / "save" / "frames" / "it000002.png")
    assert frame.shape[-1] >= 4 * frame.shape[-2] - 16            # 4 particles side by side


def test_sharding_errors_are_clear_before_any_process_starts(tmp_path, tiny):
    argv = launch_args(tmp_path, tiny, "image-particles-sds.yaml", "bad", "system.n_particles=3")
    with pytest.raises(ConfigError, match="n_particles=3 cannot be split over 2 processes"):
        run(*parse_args([*argv, "--processes", "2"]))
    toy = ["--config", str(ROOT / "configs" / "toy-particles.yaml"), "--train", f"exp_root_dir={tmp_path}"]
    with pytest.raises(ConfigError, match="runs in one process"):
        run(*parse_args([*toy, "--processes", "2"]))
