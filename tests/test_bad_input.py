"""Bad input, as a new user gives it: one clear paragraph, exit status 2, and nothing written or changed.

The command lines run in this process (trainer.errors.run_cleanly, as the real commands do), so that Hypothesis can
try many of them: an exception escaping here would be a traceback there.
"""

import hashlib
import io
import shutil
import string
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
from accelerate.state import AcceleratorState
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import ROOT
from trainer.checkpoint import atomic_save, read
from trainer.__main__ import main as train_main
from trainer.cli import restart_command, train_parser
from trainer.errors import run_cleanly
from trainer.explain import main as explain_main
from trainer.config import settings as all_settings
from trainer.config import shown
from trainer.data import load_cifar
from trainer.config import DataConfig

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def run(main, argv, capsys) -> tuple:
    """(exit code, stdout, stderr) of a command line, in this process."""
    AcceleratorState._reset_state(True)  # each run may pick another mixed precision, as separate processes do
    capsys.readouterr()
    try:
        code = run_cleanly(lambda: main([str(a) for a in argv]))
    except SystemExit as exit:  # argparse's own errors: usage and one line, exit status 2
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_paragraph(code: int, err: str, *phrases: str) -> None:
    assert code == 2, err
    last_line = err.rstrip("\n").split("\n")[-1]  # datasets' progress bars may come first
    assert "error: " in last_line and err.count("error: ") == 1 and "Traceback" not in err, err
    for phrase in phrases:
        assert phrase in last_line, (phrase, err)


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def png(width=32, height=32) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def hub_folder(folder: Path, image, label, rows: int = 16) -> Path:
    """A hub-layout folder whose columns are `image` and `target`, filled by the given factories."""
    folder.mkdir(parents=True)
    for split in ("train", "test"):
        data = datasets.Dataset.from_dict({"image": [image(i) for i in range(rows)],
                                           "target": [label(i) for i in range(rows)]})
        data.to_parquet(str(folder / f"{split}.parquet"))
    return folder


@pytest.fixture(scope="module")
def odd_datasets(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("odd_datasets")
    (root / "empty").mkdir()
    (root / "a_file").write_text("not a dataset")
    return {
        "empty folder": (root / "empty", "doesn't contain any data files"),
        "a file": (root / "a_file", "is a file"),
        "missing folder": (root / "nowhere", "is no folder on this machine"),
        "no images": (hub_folder(root / "numbers", lambda i: i, lambda i: i % 10), "holds no images"),
        "bytes that are no image": (hub_folder(root / "junk", lambda i: b"junk", lambda i: 0),
                                    "cannot be decoded as images"),
        "wrong image size": (hub_folder(root / "big", lambda i: png(40, 30), lambda i: 0), "must all be 32 x 32"),
        "text labels": (hub_folder(root / "text", lambda i: png(), lambda i: "cat"), "must hold class indices"),
        "too many classes": (hub_folder(root / "many", lambda i: png(), lambda i: i), "set model.num_classes=16"),
        "encoded bytes": (hub_folder(root / "encoded", lambda i: png(), lambda i: i % 10), None),
    }


@pytest.mark.parametrize("case", ["empty folder", "a file", "missing folder", "no images", "bytes that are no image",
                                  "wrong image size", "text labels", "too many classes", "encoded bytes"])
def test_data_problems_are_explained_before_any_run_folder_exists(case, odd_datasets, cache_dir, tmp_path, capsys):
    folder, phrase = odd_datasets[case]
    argv = [f"data.name={folder}", "data.image_column=image", "data.label_column=target", f"data.cache_dir={cache_dir}",
            f"output_dir={tmp_path / 'run'}", "tracker=none", "model.dim=16", "model.depth=1", "train.epochs=1",
            "train.batch_size=8", "explain.enabled=false"]
    code, out, err = run(train_main, argv, capsys)
    if phrase is None:  # PNG bytes, as many hub datasets store them: datasets' Image feature decodes them
        assert code == 0 and (tmp_path / "run" / "summary.json").is_file(), err
        data = load_cifar(DataConfig(name=str(folder), image_column="image", label_column="target",
                                     cache_dir=str(cache_dir)))
        assert np.array_equal(data.train.images[0].permute(1, 2, 0).numpy(), np.asarray(Image.open(io.BytesIO(png()))))
    else:
        assert_one_paragraph(code, err, phrase)
        assert not (tmp_path / "run").exists()


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained_run[0], copy)
    return copy


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 3])


@pytest.mark.parametrize("damage,extra,phrase", [
    ("truncated checkpoint", [], "cannot be read as a safetensors checkpoint"),
    ("text for a checkpoint", [], "cannot be read as a safetensors checkpoint"),
    ("none", ["model.dim=48"], "model.dim=48 where the run has 32"),
    ("config.yaml edited", [], "holds another model than"),
])
def test_a_failed_resume_changes_nothing_in_the_run(run_copy, damage, extra, phrase, capsys):
    checkpoint = run_copy / "checkpoints" / "last.safetensors"
    if damage == "truncated checkpoint":
        truncate(checkpoint)
    elif damage == "text for a checkpoint":
        checkpoint.write_text("not a checkpoint")
    elif damage == "config.yaml edited":
        config = run_copy / "config.yaml"
        config.write_text(config.read_text().replace("dim: 32", "dim: 48"))
    before = snapshot(run_copy)
    code, out, err = run(train_main, [f"resume={run_copy}", *extra], capsys)
    assert_one_paragraph(code, err, phrase)
    assert snapshot(run_copy) == before


def with_train_state(checkpoint: Path, **changes) -> None:
    """Rewrites a checkpoint's training state, e.g. to put it in the middle of an epoch."""
    tensors, metadata = read(checkpoint)
    metadata["train_state"] = {**metadata["train_state"], **changes}
    atomic_save(tensors, metadata, checkpoint)


@pytest.mark.parametrize("state,extra,phrase", [
    ({}, ["train.epochs=1"], "train.epochs=1, but the run has trained 2 epoch(s)"),
    ({"epoch": 1, "step": 3}, ["train.batch_size=64"], "train.batch_size=64 where the run has 128"),
    ({"epoch": 1, "step": 3}, ["seed=5"], "seed=5 where the run has 0"),
    ({"epoch": 1, "step": 3}, ["WORLD_SIZE=2"], "this start runs 2 process(es) where the run ran 1"),
])
def test_a_resume_that_cannot_continue_the_run_says_why(run_copy, state, extra, phrase, capsys, monkeypatch):
    if extra[0].startswith("WORLD_SIZE="):  # what accelerate launch --num_processes 2 sets; refused before it matters
        monkeypatch.setenv("WORLD_SIZE", extra[0].split("=")[1])
        extra = []
    with_train_state(run_copy / "checkpoints" / "last.safetensors", **state)
    before = snapshot(run_copy)
    code, _, err = run(train_main, [f"resume={run_copy}", *extra], capsys)
    assert_one_paragraph(code, err, phrase)
    assert snapshot(run_copy) == before


def test_a_new_run_never_writes_over_a_run_or_into_a_file(run_copy, tmp_path, capsys):
    before = snapshot(run_copy)
    code, _, err = run(train_main, [f"output_dir={run_copy}", "tracker=none"], capsys)
    assert_one_paragraph(code, err, f"continue it with resume={run_copy}")
    assert snapshot(run_copy) == before
    (tmp_path / "a_file").write_text("mine")
    code, _, err = run(train_main, [f"output_dir={tmp_path / 'a_file'}"], capsys)
    assert_one_paragraph(code, err, "is a file")
    assert (tmp_path / "a_file").read_text() == "mine"


def test_resume_check_passes_on_a_sound_run_and_writes_nothing(run_copy, capsys):
    before = snapshot(run_copy)
    code, out, err = run(train_main, [f"resume={run_copy}", "--check"], capsys)
    assert code == 0 and "settings, data and checkpoint are fine" in out, err
    assert snapshot(run_copy) == before


def test_explain_refuses_what_is_not_a_weights_file(run_copy, tmp_path, capsys):
    text = tmp_path / "model.safetensors"
    text.write_text("{}")
    code, _, err = run(explain_main, [text], capsys)
    assert_one_paragraph(code, err, "cannot be read as a safetensors checkpoint")


@pytest.mark.parametrize("argv", [["--help"], ["train.epochz=3"], ["train.epochs=zero"]])
def test_help_and_setting_errors_answer_without_importing_torch(argv):
    """torch, datasets and Accelerate take seconds to import: --help and a mistyped setting need none of them."""
    probe = ("import sys\nfrom trainer.errors import run_cleanly\nfrom trainer.__main__ import main as train_main\ntry:\n"
             "    run_cleanly(lambda: train_main("
             f"{argv!r}))\nexcept SystemExit:\n    pass\nprint(sorted(m for m in ('torch', 'datasets', 'accelerate') "
             "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.stdout.splitlines()[-1] == "[]", result.stdout + result.stderr


def test_explain_help_answers_without_importing_torch():
    """`python -m trainer.explain --help` took 10 s: the module imported torch and grad-cam before its command line."""
    probe = ("import runpy, sys\nsys.argv = ['trainer.explain', '--help']\ntry:\n    runpy.run_module('trainer.explain', "
             "run_name='__main__', alter_sys=True)\nexcept SystemExit:\n    pass\nprint(sorted(m for m in ('torch', "
             "'pytorch_grad_cam', 'accelerate') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert "CAM explanations" in result.stdout and result.stdout.splitlines()[-1] == "[]", result


def test_help_lists_every_setting_with_its_default():
    text = train_parser().format_help()
    for key, _, default, _ in all_settings():
        assert f"{key}={shown(default)}" in text, key


@pytest.mark.parametrize("argv0,env,expected", [
    ("/x/trainer/__main__.py", {}, "python -m trainer"),
    ("trainer/main.py", {}, "python trainer/main.py"),
    ("/usr/bin/convmixer-train", {}, "convmixer-train"),
    ("trainer/main.py", {"ACCELERATE_MIXED_PRECISION": "no"}, "accelerate launch trainer/main.py"),
    ("trainer/main.py", {"ACCELERATE_MIXED_PRECISION": "no", "WORLD_SIZE": "4"},
     "accelerate launch --multi_gpu --num_processes 4 trainer/main.py"),
])
def test_the_resume_hint_repeats_the_command_that_was_used(monkeypatch, argv0, env, expected):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr("sys.argv", [argv0])
    assert restart_command(cpu=False) == expected


# ---- fuzzing the command lines ----

KEYS = [key for key, *_ in all_settings()]
NASTY_TEXT = ["", "null", "~", "yes", "no", "on", "true", "[1", "{a: 1}", "${x}", "${oc.env:HOME}", "0x10", "1e400",
              "nan", "-.inf", "'quoted'", "a=b", "[]", "[1, 2, 3]", "{}", "@x", "!!python/object:os.system", "%"]
values = st.one_of(
    st.sampled_from(NASTY_TEXT),
    st.integers(-3, 40).map(str),
    st.sampled_from([-1, 0, 1, 2, 3, 7, 16, 31, 32, 33, 101, 512, 10**9, 2**63, 2**64, -2**70]).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(string.printable, max_size=12),
    st.lists(st.floats(-2, 2, allow_nan=False), max_size=4).map(str),
)
keys = st.one_of(st.sampled_from(KEYS), st.sampled_from(["train.epoch", "model", "seed.x", "a.b.c", "", "=", "train."]),
                 st.text(string.ascii_letters + "._", max_size=10))
arguments = st.lists(st.one_of(st.tuples(keys, values).map("=".join), st.sampled_from(["epochs", "--cpu", "--", "-"])),
                     max_size=4)


@FUZZ
@given(arguments)
def test_any_train_command_line_validates_or_says_why(tiny_cifar, cache_dir, tmp_path_factory, monkeypatch, capsys,
                                                     argv):
    """Random keys, values and types for every setting: a run that validates (--check) or exit 2 with one
    paragraph, never a traceback, and then, run for real, still exit 2 with nothing written."""
    folder = tmp_path_factory.mktemp("fuzz")
    monkeypatch.chdir(folder)
    base = [f"data.name={tiny_cifar}", f"data.cache_dir={cache_dir}", "model.dim=16", "model.depth=1"]
    code, out, err = run(train_main, ["--check", *base, *argv], capsys)
    if code == 0:
        assert "are fine; nothing was written" in out, (argv, out, err)
        return
    assert_one_paragraph(code, err)
    code, _, err = run(train_main, [*base, *argv], capsys)  # the same settings, to train: the same refusal
    assert_one_paragraph(code, err)
    assert list(folder.iterdir()) == [], argv


@FUZZ
@given(target=st.sampled_from(["run", "weights", "checkpoint", "text", "truncated", "empty", "nowhere", ""]),
       argv=arguments)
def test_any_explain_command_line_explains_or_says_why(trained_run, tmp_path_factory, capsys, target, argv):
    folder = tmp_path_factory.mktemp("explain_fuzz")
    run_dir = folder / "run"
    shutil.copytree(trained_run[0], run_dir, ignore=shutil.ignore_patterns("wandb"))
    (folder / "text").write_text("not weights")
    shutil.copy(run_dir / "model.safetensors", folder / "truncated")
    truncate(folder / "truncated")
    (folder / "empty").mkdir()
    paths = {"run": run_dir, "weights": run_dir / "model.safetensors", "nowhere": folder / "nowhere", "": "",
             "checkpoint": run_dir / "checkpoints" / "last.safetensors", "text": folder / "text",
             "truncated": folder / "truncated", "empty": folder / "empty"}
    before = snapshot(folder)
    code, out, err = run(explain_main, [paths[target], *[a for a in argv if a not in ("--cpu", "--", "-")],
                                        "explain.num_images=2"], capsys)
    if code == 0:
        assert "Explanations of " in out and " written to " in out, (target, argv, err)
    else:
        assert_one_paragraph(code, err)
        assert snapshot(folder) == before, (target, argv)
