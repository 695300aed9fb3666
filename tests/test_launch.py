"""launch/*.sbatch against a real one-node Slurm cluster (munged, slurmctld, slurmd started here, on loopback).

The CPU script runs 2 tasks, one trainer process each, with machine ranks 0 and 1: the multi-node rendezvous of
launch/task.sh on one machine. The preemption test sends Slurm's warning signal mid-run and checks that the
requeued job resumes from the checkpoint and ends exactly where an uninterrupted job ends.
"""

import json
import os
import re
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import slurm_cluster
from conftest import ROOT, tiny_run_overrides
from test_train import EPOCH_LINE

# 128 steps an epoch (2 processes of 4 images), and a progress line at every step: the preemption test signals in
# the middle of an epoch.
SETTINGS = {"train.epochs": 2, "model.dim": 64, "train.batch_size": 8, "progress_every": 0.001, "tracker": "wandb",
            "explain.num_images": 3}


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = slurm_cluster.missing()
    if reason:
        pytest.skip(reason)
    cluster = slurm_cluster.SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    yield cluster
    cluster.stop()


def submit(slurm, script, run_dir, logs, overrides):
    # sbatch's --output on the command line overrides the script's, to keep the job logs out of the repository.
    env = {"RUN_DIR": str(run_dir), "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    return slurm.submit(ROOT / "launch" / script, *overrides, cwd=ROOT, env=env, options=[f"--output={logs}/slurm-%x-%j.out"])


@pytest.fixture(scope="module")
def straight_job(slurm, tiny_cifar, cache_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("straight")
    run_dir = folder / "run"
    job = submit(slurm, "cpu.sbatch", run_dir, folder, tiny_run_overrides(tiny_cifar, cache_dir, run_dir, **SETTINGS))
    info = slurm.wait(job)
    log = (folder / f"slurm-convmixer-cpu-{job}.out").read_text()
    assert info["JobState"] == "COMPLETED", log + slurm.logs()
    return run_dir, log


def test_cpu_script_runs_two_tasks_into_one_run_folder(straight_job):
    run_dir, log = straight_job
    lines = (run_dir / "train.log").read_text().splitlines()
    assert len(lines) == 2 and all(EPOCH_LINE.match(line) for line in lines)  # once, by the main process
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["explain"]["explained"] == 3
    assert (run_dir / "explain" / "gallery.png").is_file()
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1  # W&B offline, inside the run folder
    assert "run folder" in log and lines[-1] in log  # the job log holds the trainer's output


def test_warning_signal_checkpoints_requeues_and_resumes_to_the_same_end(slurm, straight_job, tiny_cifar, cache_dir,
                                                                         tmp_path):
    """Slurm sends USR1 to every process of the job step, the launchers included: they must outlive it (a launcher
    that dies of it fails its task, and srun --kill-on-bad-exit then kills the trainers before their checkpoint)."""
    run_dir = tmp_path / "run"
    job = submit(slurm, "cpu.sbatch", run_dir, tmp_path, tiny_run_overrides(tiny_cifar, cache_dir, run_dir, **SETTINGS))
    job_log = tmp_path / f"slurm-convmixer-cpu-{job}.out"
    deadline = time.time() + 300
    while not (job_log.exists() and "epoch 1: step 2/128" in job_log.read_text()) and time.time() < deadline:
        time.sleep(0.05)
    assert job_log.exists() and "epoch 1: step 2/128" in job_log.read_text(), slurm.logs()
    # What `#SBATCH --signal=B:USR1@120` does before the time limit: USR1 to the batch shell.
    slurm.run(["scancel", "--batch", "--signal=USR1", str(job)])
    info = slurm.wait(job, timeout=600)
    log = job_log.read_text()
    assert info["JobState"] == "COMPLETED" and int(info["Restarts"]) == 1, log + slurm.logs()
    assert "SIGUSR1 received" in log and "requeueing job" in log and "(start 2)" in log, log
    stopped = re.search(r"Stopped by SIGUSR1; the checkpoint is saved at epoch (\d+), step (\d+)\.", log)
    assert stopped, log
    epoch, step = map(int, stopped.groups())
    # Mid-epoch (the signal came at step 2 of 128, and a step takes tens of milliseconds), and the requeued job went
    # on from that very step.
    assert epoch == 1 and 2 <= step < 128, log
    assert f"Resuming {run_dir} at epoch 1, step {step}." in log, log
    straight_dir, _ = straight_job
    assert [line.split(", Time")[0] for line in (run_dir / "train.log").read_text().splitlines()] == \
           [line.split(", Time")[0] for line in (straight_dir / "train.log").read_text().splitlines()]
    a, b = load_file(straight_dir / "model.safetensors"), load_file(run_dir / "model.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("env,processes", [
    ({"SLURM_GPUS_PER_NODE": "a100:4"}, "4"),  # --gpus-per-node=a100:4
    ({"SLURM_GPUS_ON_NODE": "2"}, "2"),  # --gres=gpu:2 sets no SLURM_GPUS_PER_NODE
    ({"CUDA_VISIBLE_DEVICES": "0,1,2"}, "3"),
    ({}, None),
])
def test_gpu_scripts_start_one_process_per_gpu_however_the_job_asked_for_them(tmp_path, env, processes):
    """launch/gpu.sbatch's process count, up to its srun (a stand-in here: this machine has no GPU to allocate)."""
    (tmp_path / "srun").write_text('#!/bin/sh\necho "srun: PROCESSES_PER_TASK=$PROCESSES_PER_TASK"\n')
    (tmp_path / "srun").chmod(0o755)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CUDA_", "PROCESSES_PER_TASK"))}
    result = subprocess.run(["bash", str(ROOT / "launch" / "gpu.sbatch")], cwd=ROOT, capture_output=True, text=True,
                            env={**clean, **env, "PATH": f"{tmp_path}:{clean['PATH']}", "RUN_DIR": str(tmp_path / "r")},
                            timeout=60)
    if processes:
        assert result.returncode == 0 and f"srun: PROCESSES_PER_TASK={processes}" in result.stdout, result
    else:
        assert result.returncode == 2 and "srun" not in result.stdout, result
        assert "error: this job has no GPUs that Slurm reports" in result.stderr and "--gres=gpu:N" in result.stderr
