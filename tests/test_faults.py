"""Faults a trainer must survive: a kill in the middle of a checkpoint write, damaged and mismatched checkpoints."""

import os
import signal
import subprocess
import sys

import torch
from safetensors.torch import load_file

from conftest import ROOT, launch, tiny_run_overrides
from trainer.checkpoint import read_train_state

SETTINGS = {"train.epochs": 3, "model.dim": 64, "explain.enabled": "false"}


def test_a_kill_during_a_checkpoint_write_keeps_the_previous_one_and_the_resume_is_exact(tiny_cifar, cache_dir,
                                                                                      tmp_path):
    straight = launch(tiny_run_overrides(tiny_cifar, cache_dir, tmp_path / "straight", **SETTINGS))
    assert straight.returncode == 0, straight.stdout + straight.stderr

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "slow_checkpoint_write.py"),
         *map(str, tiny_run_overrides(tiny_cifar, cache_dir, killed, **SETTINGS))],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"})
    output = []
    for line in process.stdout:
        output.append(line)
        if line.startswith("WRITING CHECKPOINT 2"):
            os.killpg(process.pid, signal.SIGKILL)  # as a node failure or the OOM killer: no handler runs
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "".join(output)

    checkpoints = killed / "checkpoints"
    half_written = list(checkpoints.glob("*.tmp"))
    assert len(half_written) == 1 and half_written[0].stat().st_size < (checkpoints / "last.safetensors").stat().st_size
    state, _ = read_train_state(checkpoints / "last.safetensors")  # the previous checkpoint, whole
    assert (state.epoch, state.step) == (1, 0)

    resumed = launch([f"resume={killed}"])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Resuming" in resumed.stdout and "at epoch 1, step 0" in resumed.stdout
    assert list(checkpoints.glob("*.tmp")) == []  # the broken write is cleared away
    a, b = load_file(tmp_path / "straight" / "model.safetensors"), load_file(killed / "model.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), key
