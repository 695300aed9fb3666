"""Grad-CAM's meaning at ConvMixer's last block, the explain outputs, and W&B's offline table."""

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
from pytorch_grad_cam.utils.image import scale_cam_image

from conftest import ROOT
from trainer.explain import grad_cam, select_mistakes
from trainer.steps import Predictions
from trainer.model import ConvMixer


@pytest.fixture(scope="module")
def model_and_images():
    torch.manual_seed(0)
    model = ConvMixer(dim=32, depth=3, kernel_size=5, patch_size=2)
    for m in model.modules():  # non-trivial BN statistics, as after training
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval(), torch.randn(6, 3, 32, 32)


def test_raw_map_sums_to_logit_minus_bias(model_and_images):
    model, images = model_and_images
    with torch.no_grad():
        logits = model(images).double()
    bias = model.head.bias.detach().double()
    preds = logits.argmax(1)
    others = (preds + 3) % 10  # a second target per image, as the true class would be
    for classes in (preds, others):
        maps = grad_cam(model, images, classes)
        assert maps.raw.shape == (6, 16, 16) and maps.shown.shape == (6, 32, 32)
        sums = torch.from_numpy(maps.raw.astype(np.float64)).sum(dim=(1, 2))
        expected = logits[torch.arange(6), classes] - bias[classes]
        torch.testing.assert_close(sums, expected, rtol=1e-4, atol=1e-4)


def test_map_alone_equals_map_in_batch_and_display_is_scaled_relu(model_and_images):
    model, images = model_and_images
    classes = torch.arange(6) % 10
    batch = grad_cam(model, images, classes)
    alone = grad_cam(model, images[2:3], classes[2:3])
    np.testing.assert_allclose(alone.raw[0], batch.raw[2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(alone.shown[0], batch.shown[2], rtol=1e-5, atol=1e-6)
    # ReLU, min-max scale, upsample (bilinear); grad-cam then min-max scales once more across its layers
    expected = scale_cam_image(scale_cam_image(np.maximum(batch.raw, 0), (32, 32)))
    np.testing.assert_allclose(batch.shown, expected, atol=1e-6)
    assert batch.shown.min() >= 0 and batch.shown.max() <= 1 + 1e-6


def test_no_hooks_left_on_the_model(model_and_images):
    model, images = model_and_images
    grad_cam(model, images, torch.zeros(6, dtype=torch.long))
    for module in model.modules():
        assert not module._forward_hooks and not module._backward_hooks and not module._forward_pre_hooks


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
    assert {"road_combined_gradcam", "road_combined_random"} <= set(faithfulness)
    scores = [faithfulness["road_combined_gradcam"], faithfulness["road_combined_random"]]
    assert all(math.isfinite(score) for score in scores) and scores[0] != scores[1]
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
    table = next(t for t in tables if "gradcam_predicted" in t["columns"])
    assert len(table["data"]) == 4
    image_cells = [cell for row in table["data"] for cell in row if isinstance(cell, dict)]
    assert len(image_cells) == 12 and all(c["_type"] == "image-file" for c in image_cells)
    pngs = [p for p in staged if p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"]
    assert len(pngs) >= 12
    log = next((out / "wandb").glob("offline-run-*/*.wandb")).read_bytes()
    assert all(str(p).encode() in log for p in pngs), "the offline run records every staged image"
    media = list((out / "wandb").glob("offline-run-*/files/media/images/explain/*.png"))
    assert len(media) == 2  # gallery and confusion matrix


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


def test_explain_bad_inputs(trained_run, tmp_path):
    out, _ = trained_run
    empty = tmp_path / "empty_run"
    empty.mkdir()
    result = run_explain_cli([empty])
    assert result.returncode == 2 and "has no weights" in result.stderr and "Traceback" not in result.stderr
    wrong = run_explain_cli([out, "model.dim=48"])
    assert wrong.returncode == 2 and "does not fit the model" in wrong.stderr
    many = run_explain_cli([out, "explain.num_images=100"])
    assert many.returncode == 0 and "explaining all of them" in many.stdout
    summary = json.loads((out / "explain" / "summary.json").read_text())
    assert summary["explained"] == summary["misclassified"]
