"""launch/*.sbatch against a real one-node Slurm cluster (munged, slurmctld, slurmd started here, on loopback).

The CPU script runs 2 tasks, one trainer process each, with machine ranks 0 and 1: the multi-node rendezvous of
launch/task.sh on one machine. The preemption test sends Slurm's warning signal mid-run and checks that the
requeued job resumes from the checkpoint and ends exactly where an uninterrupted job ends.
"""

import json
import os
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import slurm_cluster
from conftest import ROOT, tiny_run_overrides
from test_train import EPOCH_LINE

SETTINGS = {"train.epochs": 3, "model.dim": 64, "tracker": "wandb", "explain.num_images": 3}


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
    assert len(lines) == 3 and all(EPOCH_LINE.match(line) for line in lines)  # once, by the main process
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["explain"]["explained"] == 3
    assert (run_dir / "explain" / "gallery.png").is_file()
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1  # W&B offline, inside the run folder
    assert "run folder" in log and lines[-1] in log  # the job log holds the trainer's output


def test_warning_signal_checkpoints_requeues_and_resumes_to_the_same_end(slurm, straight_job, tiny_cifar, cache_dir,
                                                                         tmp_path):
    run_dir = tmp_path / "run"
    job = submit(slurm, "cpu.sbatch", run_dir, tmp_path, tiny_run_overrides(tiny_cifar, cache_dir, run_dir, **SETTINGS))
    train_log = run_dir / "train.log"
    deadline = time.time() + 300
    while not (train_log.exists() and train_log.read_text()) and time.time() < deadline:
        time.sleep(0.1)
    assert train_log.exists(), slurm.logs()
    # What `#SBATCH --signal=B:USR1@120` does before the time limit: USR1 to the batch shell.
    slurm.run(["scancel", "--batch", "--signal=USR1", str(job)])
    info = slurm.wait(job, timeout=600)
    log = (tmp_path / f"slurm-convmixer-cpu-{job}.out").read_text()
    assert info["JobState"] == "COMPLETED" and int(info["Restarts"]) == 1, log + slurm.logs()
    assert "SIGUSR1 received" in log and "requeueing job" in log and "Resuming" in log, log
    assert "(start 2)" in log
    straight_dir, _ = straight_job
    assert [line.split(", Time")[0] for line in train_log.read_text().splitlines()] == \
           [line.split(", Time")[0] for line in (straight_dir / "train.log").read_text().splitlines()]
    a, b = load_file(straight_dir / "model.safetensors"), load_file(run_dir / "model.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), key
