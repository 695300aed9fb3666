"""End to end through `accelerate launch`, on the CPU, with real datasets, Accelerate and wandb (offline)."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from conftest import ROOT, launch, tiny_run_overrides

EPOCH_LINE = re.compile(r"^ConvMixer: Epoch: (\d+) \| Train Acc: \d\.\d{4}, Test Acc: \d\.\d{4}, Time: \d+\.\d, lr: \d\.\d{6}$")


def test_one_process_run_writes_every_output(trained_run):
    out, result = trained_run
    lines = (out / "train.log").read_text().splitlines()
    assert [EPOCH_LINE.match(line).group(1) for line in lines] == ["0", "1"]
    assert lines[0] in result.stdout  # printed as well as logged
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert list(rows[0]) == ["epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "seconds", "images_per_second"]
    assert float(rows[1]["lr"]) == 0.0 and float(rows[0]["images_per_second"]) > 0
    assert float(rows[1]["train_acc"]) > 0.2  # it learns the coloured classes
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_test_acc"] == float(rows[1]["test_acc"]) and summary["num_processes"] == 1
    assert summary["parameters"] == sum(v.numel() for k, v in load_file(out / "model.safetensors").items() if "running" not in k and "num_batches" not in k)
    assert "Total params" in (out / "model_summary.txt").read_text()
    assert (out / "checkpoints" / "last.safetensors").is_file() and (out / "config.yaml").is_file()
    # W&B ran offline into the run folder and logged both epochs
    offline = list((out / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))
    assert "wandb sync" in result.stdout
    assert f"Done: test accuracy {summary['final_test_acc']:.4f}" in result.stdout and str(out) in result.stdout
    assert "No CUDA runtime" not in result.stdout + result.stderr  # a CUDA build of torch on a CPU-only machine


def test_two_processes_evaluate_every_test_image_once(tiny_cifar, cache_dir):
    result = launch([tiny_cifar, cache_dir], processes=2, timeout=300, script=ROOT / "tests" / "predict_shards.py")
    assert result.returncode == 0 and "OK 203 rows" in result.stdout, result.stdout + result.stderr


def test_two_process_training_run(tiny_cifar, cache_dir, tmp_path):
    out = tmp_path / "run2"
    result = launch(tiny_run_overrides(tiny_cifar, cache_dir, out, **{"explain.enabled": "false"}), processes=2)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = (out / "train.log").read_text().splitlines()
    assert len(lines) == 2 and all(EPOCH_LINE.match(l) for l in lines)  # written once, by the main process
    assert json.loads((out / "summary.json").read_text())["num_processes"] == 2
    report = (out / "report.md").read_text()
    assert "**Finished**" in report and "Not computed: this run had `explain.enabled=false`" in report


def test_interrupted_and_resumed_run_ends_with_the_same_weights(tiny_cifar, cache_dir, tmp_path):
    settings = {"train.epochs": 3, "model.dim": 64, "explain.num_images": 2}
    straight = launch(tiny_run_overrides(tiny_cifar, cache_dir, tmp_path / "straight", **settings))
    assert straight.returncode == 0, straight.stdout + straight.stderr

    interrupted = tmp_path / "interrupted"
    process = launch(tiny_run_overrides(tiny_cifar, cache_dir, interrupted, **settings), wait=False)
    log = interrupted / "train.log"
    deadline = time.time() + 300
    while not (log.exists() and log.read_text()) and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGINT)  # as Ctrl-C: checkpoint after the current step, then stop
    output = process.communicate(timeout=300)[0]
    assert process.returncode != 0 and "SIGINT received" in output, output  # the launcher, hit too, exits 1
    assert f"Continue with: accelerate launch trainer/main.py resume={interrupted}" in output  # the command used
    assert len(log.read_text().splitlines()) < 3, "the run was stopped before its end"
    report = (interrupted / "report.md").read_text()  # what exists so far, and what is missing
    assert "**Not finished**" in report and f"resume={interrupted}" in report
    assert "Not computed yet: the explanations are made when training ends" in report
    assert "accelerate launch trainer/main.py" in report

    resumed = launch([f"resume={interrupted}"])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Resuming" in resumed.stdout
    a, b = load_file(tmp_path / "straight" / "model.safetensors"), load_file(interrupted / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [l.split(", Time")[0] for l in log.read_text().splitlines()] == \
           [l.split(", Time")[0] for l in (tmp_path / "straight" / "train.log").read_text().splitlines()]


def test_bad_settings_stop_before_any_work(tmp_path):
    started = time.time()
    result = subprocess.run([sys.executable, "-m", "trainer.main", "model.patch_size=3", f"output_dir={tmp_path / 'x'}"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2
    assert "patch_size=3 does not divide" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x").exists()
    nowhere = subprocess.run([sys.executable, "-m", "trainer.main", f"data.name={tmp_path / 'none'}", "tracker=none",
                              f"output_dir={tmp_path / 'y'}"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert nowhere.returncode == 2 and "is no folder on this machine" in nowhere.stderr
    assert time.time() - started < 120
