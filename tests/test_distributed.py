"""Multi-process semantics on the CPU (2 processes over gloo): same results as 1 process, and failures end the job."""

import csv
import time

from conftest import ROOT, launch, tiny_run_overrides


def test_one_and_two_processes_reach_the_same_accuracy(tiny_cifar, cache_dir, tmp_path):
    """Same seed and global batch: same optimizer steps and LR schedule. The runs differ only in which process
    augments which image and in BatchNorm's per-process statistics, so the accuracies agree within a tolerance."""
    settings = {"train.epochs": 3, "model.dim": 48, "explain.enabled": "false"}
    runs = {}
    for processes in (1, 2):
        out = tmp_path / f"p{processes}"
        result = launch(tiny_run_overrides(tiny_cifar, cache_dir, out, **settings), processes=processes)
        assert result.returncode == 0, result.stdout + result.stderr
        runs[processes] = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(runs[1]) == len(runs[2]) == 3
    # The same steps on the same images: the training losses follow the same course (a gradient mis-weighted across
    # processes, or a process training on the wrong share, would part them).
    for a, b in zip(runs[1], runs[2]):
        assert abs(float(a["train_loss"]) - float(b["train_loss"])) <= 0.1 * float(a["train_loss"]), (a, b)
    one, two = float(runs[1][-1]["test_acc"]), float(runs[2][-1]["test_acc"])
    assert one > 0.6 and abs(one - two) <= 0.05, (one, two)  # 0.05: about 10 of the 203 test images


def test_an_error_on_one_rank_ends_the_whole_job(tiny_cifar, cache_dir, tmp_path):
    started = time.time()
    result = launch(["1", "2", *tiny_run_overrides(tiny_cifar, cache_dir, tmp_path / "crash", **{"train.epochs": 3})],
                    processes=2, timeout=300, script=ROOT / "tests" / "crash_on_rank.py")
    elapsed = time.time() - started
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "injected failure on rank 1" in output, output
    assert elapsed < 180, f"the surviving rank took {elapsed:.0f} s to stop"


def test_a_signal_on_one_rank_stops_every_rank_at_the_same_check():
    result = launch([], processes=2, timeout=120, script=ROOT / "tests" / "stop_agreement.py")
    assert result.returncode == 0, result.stdout + result.stderr
    for rank in (0, 1):
        assert f"rank {rank}: FFFTTTTTT SIGUSR1 138" in result.stdout, result.stdout + result.stderr


def test_bad_data_stops_every_process_with_one_message(tmp_path):
    """Each process loads the data; the main process says once what is wrong, and no run folder is made."""
    (tmp_path / "empty").mkdir()
    started = time.time()
    result = launch([f"data.name={tmp_path / 'empty'}", "tracker=none", f"output_dir={tmp_path / 'run'}"], processes=2,
                    timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and output.count("error: data.name=") == 1, output
    assert output.lstrip().startswith("error: data.name=")  # the trainer's paragraph comes before the launcher's report
    assert not (tmp_path / "run").exists() and time.time() - started < 90


def test_uneven_shards_and_several_passes_average_to_the_whole_steps_gradient():
    """5 images on 2 processes (3 and 2), passes of 2: weighting each process's loss by its own share (3/3, 2/2) and
    DDP's plain average would give 2.5 images' worth of weight to 2 of them."""
    result = launch([], processes=2, timeout=120, script=ROOT / "tests" / "uneven_shards.py")
    assert result.returncode == 0, result.stdout + result.stderr
    for rank in (0, 1):
        assert f"rank {rank}: largest difference from one process's gradient" in result.stdout, result.stdout

