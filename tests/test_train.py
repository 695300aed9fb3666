"""End to end through `accelerate launch`, on the CPU, with real datasets, Accelerate and wandb (offline)."""

import csv
import json
import re
import shutil
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import wandb_log
from conftest import ROOT, launch, tiny_run_overrides
from trainer import plots
from trainer.checkpoint import read_train_state
from trainer.data import load_cifar
from trainer.run_folder import RunFolder
from trainer.steps import lr_at
from trainer.trained_run import Evaluation, open_run

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
    # W&B ran offline into the run folder and logged both epochs, with the values of metrics.csv
    offline = list((out / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    logged = [row for row in wandb_log.history(next(offline[0].glob("*.wandb"))) if "test_acc" in row]
    assert [int(row["_step"]) for row in logged] == [0, 1]
    for row, csv_row in zip(logged, rows):
        for key in ("lr", "train_loss", "train_acc", "test_loss", "test_acc"):
            assert float(row[key]) == pytest.approx(float(csv_row[key]), rel=1e-6), key
    assert "wandb sync" in result.stdout
    assert f"Done: test accuracy {summary['final_test_acc']:.4f}" in result.stdout and str(out) in result.stdout
    assert "No CUDA runtime" not in result.stdout + result.stderr  # a CUDA build of torch on a CPU-only machine


def test_two_processes_evaluate_every_test_image_once_and_hold_out_the_same_rows(tiny_cifar, cache_dir):
    result = launch([tiny_cifar, cache_dir], processes=2, timeout=300, script=ROOT / "tests" / "predict_shards.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK 203 rows; the same 100 validation rows on both processes" in result.stdout, result.stdout


def test_two_process_training_run(tiny_cifar, cache_dir, tmp_path):
    out = tmp_path / "run2"
    # With the average of the weights and a validation split: process 0's average is handed to both before each
    # evaluation (a collective that would hang or fail if the processes disagreed on it).
    result = launch(tiny_run_overrides(tiny_cifar, cache_dir, out, **{"explain.enabled": "false",
                                                                      "train.ema_decay": 0.9, "data.val_size": 64}),
                    processes=2)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ema_val_acc" in (out / "metrics.csv").read_text().splitlines()[0]
    assert "Grad strides do not match" not in result.stderr  # DDP would copy those gradients at every step
    lines = (out / "train.log").read_text().splitlines()
    assert len(lines) == 2 and all(EPOCH_LINE.match(l) for l in lines)  # written once, by the main process
    assert json.loads((out / "summary.json").read_text())["num_processes"] == 2
    report = (out / "report.md").read_text()
    assert "**Finished**" in report and "Not computed: this run had `explain.enabled=false`" in report
    rows = RunFolder(out).metric_rows()  # train.ema_weights=ema: the report's figures are the average's
    assert (f"Test accuracy of the average of the weights after the last epoch: **{rows[-1]['ema_test_acc']:.2%}**"
            in report)
    assert {"val_acc", "ema_test_acc", "ema_val_acc"} <= set(plots.curves(tmp_path / "curves.png", rows))


# 8 steps per epoch (896 training images after the validation split), and every training option on: the resume
# tests below show that a resumed run ends with the same weights with them too.
STOP_SETTINGS = {"train.epochs": 3, "model.dim": 64, "explain.num_images": 2, "data.val_size": 128,
                 "train.batch_size": 112, "train.label_smoothing": 0.1, "train.ema_decay": 0.9, "train.tta": "true",
                 "augment.mixup": 0.8, "augment.cutmix": 1.0, "augment.mix_off_epoch": 2}


@pytest.fixture(scope="module")
def straight_run(tiny_cifar, cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    result = launch(tiny_run_overrides(tiny_cifar, cache_dir, out, **STOP_SETTINGS))
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@pytest.mark.parametrize("stop_at, stopped_at", [("after-checkpoint 0", (1, 0)), ("before-step 10", (1, 2)),
                                                  ("after-step 15", (1, 8))],
                         ids=["at-an-epoch-boundary", "mid-epoch", "before-the-test-pass"])
def test_ctrl_c_stops_with_a_checkpoint_and_the_resumed_run_ends_with_the_same_weights(
        straight_run, tiny_cifar, cache_dir, tmp_path, stop_at, stopped_at):
    interrupted = tmp_path / "interrupted"
    stopped = launch(tiny_run_overrides(tiny_cifar, cache_dir, interrupted, **STOP_SETTINGS),
                     script=ROOT / "tests" / "stop_at.py", extra_env={"STOP_AT": stop_at})
    output = stopped.stdout + stopped.stderr
    # One Ctrl-C: one message, named for it, although the launcher relays it to the trainer as SIGTERM.
    assert stopped.returncode != 0 and output.count(" received: ") == 1 and "SIGINT received" in output, output
    assert f"Stopped by SIGINT; the checkpoint is saved at epoch {stopped_at[0]}, step {stopped_at[1]}." in output, output
    assert f"Continue with: accelerate launch trainer/main.py resume={interrupted}" in output  # the command used
    state, _ = read_train_state(interrupted / "checkpoints" / "last.safetensors")
    assert (state.epoch, state.step) == stopped_at
    assert len((interrupted / "train.log").read_text().splitlines()) == 1
    report = (interrupted / "report.md").read_text()  # what exists so far, and what is missing
    assert "**Not finished**" in report and f"resume={interrupted}" in report
    assert "Not computed yet: the explanations are made when training ends" in report
    assert "accelerate launch trainer/main.py" in report

    resumed = launch([f"resume={interrupted}"])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"Resuming {interrupted} at epoch {stopped_at[0]}, step {stopped_at[1]}." in resumed.stdout
    assert "Total params" not in resumed.stdout  # the model table is printed once per run folder
    for weights in ("model.safetensors", "best.safetensors"):
        a, b = load_file(straight_run / weights), load_file(interrupted / weights)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (weights, key)
    assert [l.split(", Time")[0] for l in (interrupted / "train.log").read_text().splitlines()] == \
           [l.split(", Time")[0] for l in (straight_run / "train.log").read_text().splitlines()]
    untimed = [[{k: v for k, v in row.items() if k not in ("seconds", "images_per_second")}
                for row in csv.DictReader(open(run / "metrics.csv"))] for run in (interrupted, straight_run)]
    assert untimed[0] == untimed[1]  # the validation split and the average's figures too


def test_the_best_epochs_weights_by_validation_and_the_average_next_to_the_weights(straight_run):
    rows = list(csv.DictReader(open(straight_run / "metrics.csv")))
    assert list(rows[0]) == ["epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "val_loss", "val_acc",
                             "ema_test_loss", "ema_test_acc", "ema_val_loss", "ema_val_acc", "seconds",
                             "images_per_second"]
    assert any(row["ema_test_loss"] != row["test_loss"] for row in rows)  # the average is not the weights
    summary = json.loads((straight_run / "summary.json").read_text())
    scores = [float(row["ema_val_acc"]) for row in rows]  # train.ema_weights=ema: the average's figures count
    best = summary["best"]
    assert best == {"epoch": scores.index(max(scores)), "weights": "best.safetensors",
                    "selected_by": "validation accuracy", "score": pytest.approx(max(scores))}
    assert summary["final_test_acc"] == pytest.approx(float(rows[-1]["ema_test_acc"]))
    # best.safetensors holds those weights: evaluated again, as the run evaluated, they score the same.
    run = open_run(straight_run / "best.safetensors")
    data = load_cifar(run.config.data, run.config.model.num_classes, run.config.seed)
    assert Evaluation(run).predict(data.val).accuracy == pytest.approx(max(scores))
    assert "by validation accuracy" in (straight_run / "report.md").read_text()


def test_a_finished_run_resumed_with_more_epochs_says_how_its_lr_jumps(straight_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(straight_run, run)
    before = {path: path.read_bytes() for path in run.rglob("*") if path.is_file()}
    same = launch([f"resume={run}"])  # nothing to train: says so and changes nothing
    assert same.returncode == 0 and "Nothing to train" in same.stdout and "train.epochs=" in same.stdout, same.stdout
    assert {path: path.read_bytes() for path in run.rglob("*") if path.is_file()} == before

    extended = launch([f"resume={run}", "train.epochs=4"])
    assert extended.returncode == 0, extended.stdout + extended.stderr
    lr_after = lr_at(3 + 1 / 8, 4, 0.01)
    said = (f"The LR schedule changes at epoch 3, step 0 (train.epochs 3 -> 4): training goes on with the one-cycle "
            f"schedule of 4 epochs (peak 0.01) from this point, so the next step's LR is {lr_after:.6f} where the "
            f"earlier schedule had 0.000000.")
    assert said in extended.stdout, extended.stdout
    assert said in (run / "report.md").read_text()
    change, = json.loads((run / "run.json").read_text())["schedule_changes"]
    assert (change["epochs_before"], change["epochs"], change["lr_before"], change["lr_after"]) == (3, 4, 0.0, lr_after)
    assert len((run / "train.log").read_text().splitlines()) == 4


def test_progress_lines_when_the_output_is_not_a_terminal(tiny_cifar, cache_dir, tmp_path):
    result = launch(tiny_run_overrides(tiny_cifar, cache_dir, tmp_path / "run", progress_every="0.000001",
                                       **{"train.epochs": 1, "explain.enabled": "false"}))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("epoch 0: step ")]
    assert [line.split(",")[0] for line in lines] == [f"epoch 0: step {n}/8" for n in range(1, 8)], result.stdout
    assert re.fullmatch(r"epoch 0: step 1/8, \d+\.\d img/s, \d+:\d\d:\d\d left in this epoch", lines[0])


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


def test_a_run_whose_end_of_training_hooks_did_not_finish_runs_them_on_resume(straight_run, tmp_path):
    """Training done, hooks cut short (a stop, a crash in the explain hook): no summary.json, no gallery yet."""
    run = tmp_path / "run"
    shutil.copytree(straight_run, run)
    for path in (run / "summary.json", run / "model.safetensors"):
        path.unlink()
    shutil.rmtree(run / "explain")
    checkpoint = (run / "checkpoints" / "last.safetensors").read_bytes()
    resumed = launch([f"resume={run}"])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"Resuming {run}: its 3 epochs are trained; running the end-of-training hooks." in resumed.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final_test_acc"] == json.loads((straight_run / "summary.json").read_text())["final_test_acc"]
    assert (run / "explain" / "gallery.png").is_file() and (run / "model.safetensors").is_file()
    regenerated, written = load_file(run / "model.safetensors"), load_file(straight_run / "model.safetensors")
    assert regenerated.keys() == written.keys() and all(torch.equal(regenerated[k], written[k]) for k in written)
    assert (run / "checkpoints" / "last.safetensors").read_bytes() == checkpoint  # no training: untouched
    assert len((run / "train.log").read_text().splitlines()) == 3
