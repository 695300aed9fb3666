"""The explain hook: the mistakes it picks, its outputs, the methods' comparison, and W&B's offline table."""

import csv
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT
from trainer.errors import run_cleanly
from trainer.explain import main as explain_main
from trainer.augment import Normalize
from trainer.cam_methods import cam_maps
from trainer.config import Config, ExplainConfig, ModelConfig
from trainer.explanations import explain, plain_copy, select_mistakes
from trainer.model import ConvMixer
from trainer.steps import Predictions


def test_selection_rules():
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    preds = torch.tensor([1, 1, 0, 3, 0, 0])  # wrong at rows 0, 2, 4, 5
    probs = torch.full((6, 10), 0.01)
    probs[torch.arange(6), preds] = torch.tensor([0.5, 0.9, 0.7, 0.9, 0.9, 0.5])
    p = Predictions(torch.arange(6), labels, preds, probs, 0.0)
    assert select_mistakes(p, 10, "first", 0).tolist() == [0, 2, 4, 5]
    assert select_mistakes(p, 2, "most_confident", 0).tolist() == [4, 2]
    assert select_mistakes(p, 3, "most_confident", 0).tolist() == [4, 2, 0]  # ties: test-set order
    random = select_mistakes(p, 4, "random", 1)
    assert sorted(random.tolist()) == [0, 2, 4, 5] and random.tolist() == select_mistakes(p, 4, "random", 1).tolist()


@pytest.fixture(scope="module")
def mistakes():
    """A small model's predictions on random images with random labels: plenty of mistakes."""
    torch.manual_seed(1)
    model = ConvMixer(dim=16, depth=2).eval()
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        probs = model(Normalize(Config().augment.mean, Config().augment.std)(images)).softmax(1)
    labels = (probs.argmax(1) + 1 + torch.arange(40) % 3) % 10  # every image a mistake
    return model, Predictions(torch.arange(40), labels, probs.argmax(1), probs, 0.0), images


def explain_with(mistakes, **settings):
    model, predictions, images = mistakes
    config = Config(model=ModelConfig(dim=16, depth=2), explain=ExplainConfig(num_images=5, **settings))
    return explain(model, predictions, images, config)


def test_the_comparison_ranks_every_method_and_block_with_both_baselines(mistakes):
    result = explain_with(mistakes, methods=["gradcam", "layercam", "fullgrad"], blocks=["all"], method="best")
    rows = result.summary([str(c) for c in range(10)])["methods"]
    assert [(r["method"], r["block"]) for r in rows if not r["baseline"]] != []
    assert sorted((r["method"], str(r["block"])) for r in rows) == sorted(
        [("gradcam", "0"), ("gradcam", "1"), ("layercam", "0"), ("layercam", "1"), ("fullgrad", "None"),
         ("random", "None"), ("sobel", "None")])
    means = [r["road_mean"] for r in rows]
    assert means == sorted(means, reverse=True) and all(r["road_std"] >= 0 and r["seconds"] >= 0 for r in rows)
    best = next(r for r in rows if not r["baseline"])
    assert (result.method, result.block) == (best["method"], best["block"])  # explain.method=best
    np.testing.assert_array_equal(result.cam_pred.shown, result.compared_maps[(result.method, result.block)])
    faithful = result.faithfulness()
    assert faithful["road_combined"] == best["road_mean"] and faithful["images"] == 5
    assert faithful["road_combined_sobel"] == next(r["road_mean"] for r in rows if r["method"] == "sobel")


def test_the_gallery_method_joins_the_comparison_at_the_last_block(mistakes):
    result = explain_with(mistakes, methods=["layercam"], blocks=["0"], method="hirescam")
    assert (result.method, result.block) == ("hirescam", 1)
    assert {(r.method, r.block) for r in result.comparison} == {("layercam", 0), ("hirescam", 1), ("random", None),
                                                                 ("sobel", None)}
    labels = mistakes[1].labels[result.chosen]
    expected_true = cam_maps(plain_copy(mistakes[0], ModelConfig(dim=16, depth=2)),
                             Normalize(Config().augment.mean, Config().augment.std)(result.originals), labels,
                             "hirescam", 1)
    np.testing.assert_allclose(result.cam_true.raw, expected_true.raw, rtol=1e-5, atol=1e-6)


def test_the_comparison_repeats_exactly(mistakes):
    """ROAD's noise is seeded: the same run explained twice gives the same scores (the seconds aside)."""
    first, second = (explain_with(mistakes, methods=["gradcam", "eigencam"]) for _ in range(2))
    scores = [[(r.method, r.block, r.road.tolist()) for r in result.comparison] for result in (first, second)]
    assert scores[0] == scores[1]


def test_explain_outputs_after_training(trained_run):
    out, _ = trained_run
    explain = out / "explain"
    for name in ("gallery.png", "misclassified_grid.png", "misclassified.csv", "per_class_accuracy.csv",
                 "confusion_matrix.png", "gradcam.npz", "summary.json"):
        assert (explain / name).is_file(), name
    assert json.loads((explain / "summary.json").read_text()) == json.loads((out / "summary.json").read_text())["explain"]
    arrays = np.load(explain / "gradcam.npz")
    n = len(arrays["indices"])
    assert n == 4  # explain.num_images in the tiny run
    assert arrays["cam_pred_raw"].shape == (n, 16, 16) and arrays["cam_true"].shape == (n, 32, 32)
    assert (arrays["labels"] != arrays["preds"]).all()
    assert np.all(np.diff(arrays["probs"]) <= 0)  # most confident mistakes first
    rows = list(csv.DictReader(open(explain / "misclassified.csv")))
    summary = json.loads((out / "summary.json").read_text())["explain"]
    assert len(rows) == summary["misclassified"] == round((1 - summary["test_accuracy"]) * 203)
    assert set(arrays["indices"].tolist()) <= {int(r["row_index"]) for r in rows}
    faithfulness = summary["faithfulness"]
    assert (faithfulness["method"], faithfulness["block"]) == ("gradcam", 1)  # the default, at the last block
    scores = [faithfulness[f"road_combined{kind}"] for kind in ("", "_random", "_sobel")]
    assert all(math.isfinite(score) for score in scores) and len(set(scores)) == 3
    # explain.methods=gradcam,layercam,fullgrad at explain.blocks=all (2 blocks), and the two baselines
    assert len(summary["methods"]) == 2 * 2 + 1 + 2 and (explain / "methods.png").is_file()
    assert str(arrays["method"]) == "gradcam" and int(arrays["block"]) == 1
    report = (out / "report.md").read_text()
    assert "| fullgrad | - |" in report and "| sobel (baseline) | - |" in report and "(gallery) | 1 |" in report
    # per class: the accuracies, weighted by their image counts, make the test accuracy; every test image counted
    classes = list(csv.DictReader(open(explain / "per_class_accuracy.csv")))
    images = sum(int(row["images"]) for row in classes)
    correct = sum(float(row["accuracy"]) * int(row["images"]) for row in classes if row["accuracy"])
    assert images == 203 and correct / images == pytest.approx(summary["test_accuracy"], abs=1e-3)


def test_offline_wandb_table_keeps_its_images(trained_run):
    """The explain table goes through an artifact staged in the run folder: its images are PNG files there,
    and the offline run's log names those files, so `wandb sync` uploads them."""
    out, _ = trained_run
    staging = out / "wandb" / "data" / "artifacts" / "staging"
    staged = list(staging.iterdir())
    tables = [json.loads(p.read_text()) for p in staged if p.read_bytes()[:1] == b"{" and '"_type": "table"' in p.read_text()]
    table = next(t for t in tables if "cam_predicted" in t["columns"])
    assert len(table["data"]) == 4
    image_cells = [cell for row in table["data"] for cell in row if isinstance(cell, dict)]
    assert len(image_cells) == 12 and all(c["_type"] == "image-file" for c in image_cells)
    pngs = [p for p in staged if p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"]
    assert len(pngs) >= 12
    log = next((out / "wandb").glob("offline-run-*/*.wandb")).read_bytes()
    assert all(str(p).encode() in log for p in pngs), "the offline run records every staged image"
    media = list((out / "wandb").glob("offline-run-*/files/media/images/explain/*.png"))
    assert len(media) == 3  # gallery, methods and confusion matrix


def run_explain_cli(args, processes=1):
    command = [sys.executable, "-m", "trainer.explain", *map(str, args)]
    if processes > 1:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "trainer.explain",
                   *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_explain_cli_on_two_processes_matches_one(trained_run, tmp_path):
    out = tmp_path / "run"  # a copy: the explain command rewrites the run's explanations and report
    shutil.copytree(trained_run[0], out)
    result = run_explain_cli([out / "model.safetensors", "explain.select=first", "explain.num_images=3"], processes=2)
    assert result.returncode == 0, result.stdout + result.stderr
    two = (out / "explain" / "misclassified.csv").read_text()
    first = np.load(out / "explain" / "gradcam.npz")["indices"]
    single = run_explain_cli([out, "explain.select=first", "explain.num_images=3"])
    assert single.returncode == 0, single.stderr
    assert "replacing the earlier ones" in single.stdout and "report.md updated" in single.stdout
    assert "3 of the" in (out / "report.md").read_text()  # the report tells of the new explanations
    run_summary = json.loads((out / "summary.json").read_text())
    # evaluated as the run evaluated (same precision, passes and memory format): the same accuracy
    assert run_summary["explain"]["test_accuracy"] == run_summary["final_test_acc"]
    assert run_summary["explain"]["explained"] == 3
    assert (out / "explain" / "misclassified.csv").read_text() == two
    assert first.tolist() == np.load(out / "explain" / "gradcam.npz")["indices"].tolist()
    assert first.tolist() == sorted(first.tolist())  # 'first': in test-set order


def test_explain_bad_inputs(trained_run, tmp_path, capsys):
    out, _ = trained_run
    empty = tmp_path / "empty_run"
    empty.mkdir()
    assert run_cleanly(lambda: explain_main([str(empty)])) == 2  # in this process, as the command runs it
    err = capsys.readouterr().err
    assert "has no weights" in err and "Traceback" not in err
    assert run_cleanly(lambda: explain_main([str(out), "model.dim=48"])) == 2
    assert "does not fit the model" in capsys.readouterr().err
    copy = tmp_path / "run"  # the shared run stays as training left it
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("wandb"))
    many = run_explain_cli([copy, "explain.num_images=100", "explain.methods=gradcam", "explain.blocks=last"])
    assert many.returncode == 0 and "explaining all of them" in many.stdout
    summary = json.loads((copy / "explain" / "summary.json").read_text())
    assert summary["explained"] == summary["misclassified"]


def test_explaining_other_weights_leaves_the_runs_own_explanations_alone(trained_run, tmp_path, capsys):
    """The run's explain/, summary and report describe its final weights (the app reads its mistakes from there)."""
    copy = tmp_path / "run"
    shutil.copytree(trained_run[0], copy, ignore=shutil.ignore_patterns("wandb"))

    def contents():
        return {p: p.read_bytes() for p in [copy / "summary.json", copy / "report.md", *(copy / "explain").rglob("*")]
                if p.is_file()}

    before = contents()
    assert run_cleanly(lambda: explain_main([str(copy / "best.safetensors"), "explain.methods=gradcam",
                                             "explain.num_images=2"])) == 0
    assert f"Explanations of best.safetensors written to {copy / 'explain-best'}." in capsys.readouterr().out
    assert json.loads((copy / "explain-best" / "summary.json").read_text())["explained"] == 2
    assert contents() == before


def test_offline_wandb_has_the_method_comparison(trained_run):
    out, _ = trained_run
    tables = list((out / "wandb").glob("offline-run-*/files/media/table/explain/method_comparison*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["method", "block", "road_mean", "road_std", "seconds", "baseline"]
    assert len(table["data"]) == 7
    summary = json.loads((out / "summary.json").read_text())["explain"]["methods"]
    assert [row[:2] for row in table["data"]] == [[row["method"], row["block"]] for row in summary]
