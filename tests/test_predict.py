"""python -m trainer.predict: image files in, the run's own predictions out."""

import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT
from trainer.config import DataConfig
from trainer.data import load_cifar
from trainer.errors import run_cleanly
from trainer.image_files import as_cifar, read_images
from trainer.predict import main as predict_main


def run_predict(*args):
    return subprocess.run([sys.executable, "-m", "trainer.predict", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


@pytest.fixture(scope="module")
def test_pngs(trained_run, tiny_cifar, cache_dir, tmp_path_factory):
    """The run's test split, saved as PNG files named by row (the run read the same pixels from parquet)."""
    folder = tmp_path_factory.mktemp("pngs")
    test = load_cifar(DataConfig(name=str(tiny_cifar), cache_dir=str(cache_dir)), 10).test
    for row, image in enumerate(test.images):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{row:03d}.png")
    return folder, test


def test_png_test_images_get_exactly_the_runs_predictions(trained_run, test_pngs, tmp_path):
    run, _ = trained_run
    folder, test = test_pngs
    (folder / "notes.txt").write_text("not an image")
    result = run_predict(run, folder, "--format", "json", "--topk", "2", "--cam", tmp_path / "cams")
    assert result.returncode == 1, result.stderr  # one file failed, the others went on
    assert f"{folder / 'notes.txt'}: not an image PIL can read; skipped." in result.stderr
    rows = json.loads(result.stdout)
    assert [r["path"] for r in rows] == [str(folder / f"{k:03d}.png") for k in range(len(test))]  # sorted, in order
    names = json.loads((run / "run.json").read_text())["class_names"]
    mistakes = {int(r["row_index"]): r for r in csv.DictReader(open(run / "explain" / "misclassified.csv"))}
    assert 0 < len(mistakes) < len(test)
    for k, row in enumerate(rows):
        best = row["top"][0]
        assert len(row["top"]) == 2 and best["probability"] >= row["top"][1]["probability"]
        if k in mistakes:
            assert best["class"] == mistakes[k]["predicted"]
            assert abs(best["probability"] - float(mistakes[k]["confidence"])) <= 0.5e-4 + 1e-6  # csv: 4 decimals
        else:
            assert best["class"] == names[test.labels[k]]
    cams = sorted((tmp_path / "cams").iterdir())
    assert len(cams) == len(test) and cams[0].name == "000.cam.png"
    assert Image.open(cams[0]).size == (256, 128)  # image and overlay side by side, 4x


def predict_here(capsys, *args):
    """The command in this process (as the real one runs it): (exit status, stdout, stderr)."""
    code = run_cleanly(lambda: predict_main(list(map(str, args))))
    out, err = capsys.readouterr()
    return code, out, err


def test_csv_has_a_row_per_image_in_the_order_given(trained_run, test_pngs, capsys):
    folder, _ = test_pngs
    code, out, err = predict_here(capsys, trained_run[0] / "model.safetensors", folder / "005.png", folder / "001.png",
                                  "--topk", "1")
    assert code == 0, err
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["path", "class_1", "probability_1"]
    assert [r[0] for r in rows[1:]] == [str(folder / "005.png"), str(folder / "001.png")]


def test_bad_requests_say_what_to_do(trained_run, tmp_path, capsys):
    (tmp_path / "a.txt").write_text("text")
    code, _, err = predict_here(capsys, trained_run[0], tmp_path / "a.txt")
    assert code == 2 and "No image could be read" in err and "Traceback" not in err
    code, _, err = predict_here(capsys, trained_run[0], tmp_path, "--topk", "11")
    assert code == 2 and "the model has 10 classes" in err
    code, _, err = predict_here(capsys, tmp_path / "no_run", tmp_path)
    assert code == 2 and "does not exist" in err


def test_images_of_any_size_become_cifar_sized(tmp_path):
    square = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert np.array_equal(as_cifar(Image.fromarray(square)), square.transpose(2, 0, 1))  # unchanged
    wide = np.zeros((40, 80, 3), dtype=np.uint8)
    wide[:, 20:60] = 255  # the centre square is white, the sides black
    assert (as_cifar(Image.fromarray(wide)) == 255).all()  # cropped to the centre, not squashed
    Image.fromarray(wide).convert("L").save(tmp_path / "grey.jpg")
    Image.fromarray(square).convert("RGBA").save(tmp_path / "alpha.png")
    files = read_images([tmp_path])
    assert files.images.shape == (2, 3, 32, 32) and files.images.dtype == torch.uint8 and not files.failed


def test_hidden_files_empty_folders_and_oversized_images(tmp_path, monkeypatch):
    """A folder's hidden files (.DS_Store, .ipynb_checkpoints/) are not the user's images; an empty folder and an
    image over PIL's decompression-bomb limit are named as failures, and the others go on."""
    folder = tmp_path / "photos"
    (folder / ".ipynb_checkpoints").mkdir(parents=True)
    Image.new("RGB", (30, 20), "red").save(folder / "a.png")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    Image.new("RGB", (30, 20)).save(folder / ".ipynb_checkpoints" / "a-checkpoint.png")
    (tmp_path / "empty").mkdir()
    Image.new("RGB", (64, 64)).save(tmp_path / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 is over twice the limit: PIL refuses to open it
    files = read_images([folder, tmp_path / "empty", tmp_path / "huge.png"])
    assert files.paths == [folder / "a.png"] and files.images.shape == (1, 3, 32, 32)
    (empty, why_empty), (huge, why_huge) = files.failed
    assert (empty, why_empty) == (tmp_path / "empty", "a folder with no files in it (hidden ones left out)")
    assert huge == tmp_path / "huge.png" and "decompression bomb" in why_huge
