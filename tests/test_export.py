"""python -m trainer.export: the Hub's model layout, loaded back by huggingface_hub and by timm as outside clients."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm.models.convmixer
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from trainer.errors import run_cleanly
from trainer.export import main as export_main
from trainer.model import ConvMixer, timm_state_dict
from trainer.trained_run import open_run


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "convmixer"
    assert run_cleanly(lambda: export_main([str(trained_run[0]), str(out)])) == 0
    return out


def test_the_folder_has_the_hub_layout_and_a_model_card(trained_run, exported):
    names = {p.name for p in exported.iterdir()}
    assert names == {"model.safetensors", "config.json", "model.py", "image_files.py", "app.py", "requirements.txt",
                     "README.md", "gallery.png", "train.log"}
    card = ModelCard.load(exported / "README.md")
    summary = json.loads((trained_run[0] / "summary.json").read_text())
    assert card.data.library_name == "pytorch" and card.data.datasets == ["uoft-cs/cifar10"]
    assert "convmixer" in card.data.tags and card.data.metrics == ["accuracy"]
    assert card.data.eval_results[0].metric_value == round(summary["final_test_acc"], 4)
    for needed in ("## Intended use and limits", "from_pretrained", "timm_state_dict", "![gallery](gallery.png)",
                   f"{summary['parameters']:,} parameters"):
        assert needed in card.text, needed
    assert (trained_run[0] / "train.log").read_text().strip() in card.text
    assert "| `model.dim` | 32 | 256 |" in card.text  # the settings that differ from the reference recipe
    assert "cache_dir" not in card.text and "data.name" not in card.text  # not local paths: a card is public
    assert "test-time augmentation" not in card.text
    assert json.loads((trained_run[0] / "run.json").read_text())["test_format"] == "PNG"  # conftest's tiny copy
    assert "stored as JPEG" not in card.text and card.data.eval_results[0].dataset_name == "CIFAR-10"
    config = json.loads((exported / "config.json").read_text())
    assert config["dim"] == 32 and config["depth"] == 2 and len(config["class_names"]) == 10


def test_the_card_claims_the_accuracy_of_the_weights_exported(trained_run, tmp_path):
    """best.safetensors: the best epoch's test accuracy, from metrics.csv, and the card says how it was chosen; a
    checkpoint: no accuracy claimed."""
    folder = tmp_path / "run"
    shutil.copytree(trained_run[0], folder, ignore=shutil.ignore_patterns("wandb"))
    rows = list(csv.DictReader(open(folder / "metrics.csv")))
    assert rows[0]["test_acc"] != rows[-1]["test_acc"]  # so that the best epoch's figure is not the final one's
    summary = json.loads((folder / "summary.json").read_text())
    best = {**summary["best"], "epoch": 0}  # as if the first epoch had been the best
    (folder / "summary.json").write_text(json.dumps({**summary, "best": best}))
    expected = float(rows[0]["test_acc"])
    for weights, out in ((folder / "best.safetensors", tmp_path / "best"),
                         (folder / "checkpoints" / "last.safetensors", tmp_path / "checkpoint")):
        assert run_cleanly(lambda: export_main([str(weights), str(out)])) == 0
    card = ModelCard.load(tmp_path / "best" / "README.md")
    assert card.data.eval_results[0].metric_value == round(expected, 4)
    assert json.loads((tmp_path / "best" / "config.json").read_text())["test_accuracy"] == expected
    assert "the run's best epoch, 0, chosen by test accuracy (an optimistic choice" in card.text
    card = ModelCard.load(tmp_path / "checkpoint" / "README.md")
    assert not card.data.eval_results and "no accuracy is claimed for them" in card.text
    assert json.loads((tmp_path / "checkpoint" / "config.json").read_text())["test_accuracy"] is None


def test_flip_tta_and_a_jpeg_copy_are_named(trained_run, tmp_path):
    """The run's figures include train.tta's mirror; from_pretrained, timm and app.py take one view."""
    copy = tmp_path / "run"
    shutil.copytree(trained_run[0], copy, ignore=shutil.ignore_patterns("wandb"))
    settings = (copy / "config.yaml").read_text()
    assert "  tta: false\n" in settings
    (copy / "config.yaml").write_text(settings.replace("  tta: false\n", "  tta: true\n"))
    for name in ("run.json", "summary.json"):  # and its test images stored as JPEG, as the shared copy's
        info = json.loads((copy / name).read_text())
        (copy / name).write_text(json.dumps({**info, "test_format": "JPEG"}))
    assert run_cleanly(lambda: export_main([str(copy), str(tmp_path / "out")])) == 0
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert "with flip test-time augmentation" in card.text and "| `train.tta` | true | false |" in card.text
    assert card.data.eval_results[0].metric_name == "accuracy (flip TTA)"
    assert json.loads((tmp_path / "out" / "config.json").read_text())["test_accuracy_with_flip_tta"] is True
    assert "stored as JPEG" in card.text and card.data.eval_results[0].dataset_name == "CIFAR-10 (stored as JPEG)"


def test_from_pretrained_and_timm_give_the_runs_logits(trained_run, exported):
    run = open_run(trained_run[0])
    images = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        expected = run.model(images)
        loaded = ConvMixer.from_pretrained(str(exported)).eval()
        assert torch.equal(loaded(images), expected)
        outside = timm.models.convmixer.ConvMixer(dim=32, depth=2, kernel_size=5, patch_size=2, num_classes=10)
        outside.load_state_dict(timm_state_dict(load_file(exported / "model.safetensors")))  # strict: every key
        assert torch.equal(outside.eval()(images), expected)


def test_the_space_app_classifies_as_predict_does(trained_run, exported, tmp_path):
    """app.py runs from the folder alone (no module of the trainer imported) and classifies as the run's model does."""
    from PIL import Image

    from trainer.trained_run import Evaluation

    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp_path / "image.png")
    probe = ("import sys; sys.path.insert(0, '.')\nfrom PIL import Image\nimport app\n"
             f"labels, shown = app.classify(Image.open({str(tmp_path / 'image.png')!r}))\n"
             "print(max(labels, key=labels.get), shown.shape, any(m.startswith('trainer') for m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=exported, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    run = open_run(trained_run[0])
    with torch.no_grad():  # the Space runs the model in fp32, as it is
        predicted = int(run.model(Evaluation(open_run(trained_run[0])).normalize(image[None])).argmax())
    assert result.stdout.splitlines()[-1].split() == [run.class_names[predicted], "(256,", "256,", "3)", "False"]


def test_an_existing_folder_is_not_touched_and_push_offline_keeps_the_folder(trained_run, exported, tmp_path,
                                                                              monkeypatch, capsys):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("keep")
    assert run_cleanly(lambda: export_main([str(trained_run[0]), str(tmp_path / "busy")])) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["mine.txt"]
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    assert run_cleanly(lambda: export_main([str(trained_run[0]), str(tmp_path / "out"), "--push", "me/m"])) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Not pushed: HF_HUB_OFFLINE") and "hf upload me/m" in err[0]
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_an_empty_folder_is_filled_and_a_failed_export_leaves_nothing(trained_run, tmp_path, monkeypatch, capsys):
    (tmp_path / "empty").mkdir()
    assert run_cleanly(lambda: export_main([str(trained_run[0]), str(tmp_path / "empty")])) == 0
    assert (tmp_path / "empty" / "model.safetensors").is_file()
    (tmp_path / "other").mkdir()  # the umask's mode, not mkdtemp's private one
    assert (tmp_path / "empty").stat().st_mode & 0o777 == (tmp_path / "other").stat().st_mode & 0o777
    monkeypatch.chdir(tmp_path / "other")
    assert run_cleanly(lambda: export_main([str(trained_run[0]), "."])) == 2  # not into the folder one stands in
    assert "is the folder you are in" in capsys.readouterr().err

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("trainer.export.model_card", full_disk)  # fails after the weights are written
    with pytest.raises(OSError, match="No space left"):
        export_main([str(trained_run[0]), str(tmp_path / "new")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "other"]


def test_push_uploads_the_folder(trained_run, tmp_path, monkeypatch, capsys):
    """No Hub here: huggingface_hub's two calls are recorded instead of sent."""
    import huggingface_hub

    calls = []
    def upload_folder(self, folder_path, repo_id, **kwargs):
        calls.append(("upload", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))
        return "https://huggingface.co/me/m/commit/1"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id)))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    assert run_cleanly(lambda: export_main([str(trained_run[0]), str(tmp_path / "out"), "--push", "me/m"])) == 0
    assert calls[0] == ("create", "me/m") and calls[1][1] == "me/m" and "model.safetensors" in calls[1][2]
    assert "Pushed to https://huggingface.co/me/m" in capsys.readouterr().out
