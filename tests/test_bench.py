"""The benchmark runs both sides on local data and reports what it measured (a smoke test, not a timing)."""

import json
import subprocess
import sys

from conftest import ROOT


def test_bench_measures_both_loops(tiny_cifar, tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "-m", "trainer.bench", "--data", str(tiny_cifar), "--steps", "1",
                             "--warmup", "1", "--test-images", "64", "--cpu", "--rounds", "2", "--json", str(out),
                             "model.dim=32", "model.depth=2"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    results = json.loads(out.read_text())
    # on the CPU: the plain loop with 2 workers, and the trainer; in turn, twice
    assert [(run["round"], run["side"]) for run in results["runs"]] == [
        (0, "plain"), (0, "trainer"), (1, "plain"), (1, "trainer")]
    ratios = []
    for plain, trainer in (results["runs"][:2], results["runs"][2:]):
        for run in (plain, trainer):
            assert run["train_images_per_second"] > 0 and run["eval_images_per_second"] > 0
        ratios.append(trainer["train_images_per_second"] / plain["train_images_per_second"])
    assert results["train_speedups"] == ratios and results["train_speedup"] == sum(ratios) / 2  # the median of two
    assert "round 2 of 2" in result.stdout and "(rounds: " in result.stdout
    runs = {run["side"]: run for run in results["runs"][2:]}
    assert "speed-up" in result.stdout and "micro-batch 64" in runs["trainer"]["settings"]
    assert runs["trainer"]["projected_recipe_seconds"] > runs["trainer"]["warmup_seconds"] > 0
    # the trainer ran twice in fresh processes on one empty compile cache: cold, then warm (and timed)
    assert runs["trainer"]["warmup_seconds_cold"] > 0 and runs["trainer"]["compile"] == "no"
    assert "warm-up (first steps and evaluation, compilation included): cold" in result.stdout


def test_bench_refuses_too_few_images(tiny_cifar):
    result = subprocess.run([sys.executable, "-m", "trainer.bench", "--data", str(tiny_cifar), "--steps", "4", "--cpu"],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode != 0 and "need 3072 training images; the data has 1024" in result.stderr
