"""Shared fixtures: a small CIFAR-like dataset in the Hugging Face hub layout, and a way to run the trainer."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# A fresh datasets cache: it keys a local folder's cache by its path, and pytest reuses tmp paths across sessions,
# so a stale cache could otherwise hand a test an older session's data. Set before `datasets` is imported.
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="hf-datasets-")

ROOT = Path(__file__).resolve().parents[1]
SHARED_CIFAR = ROOT.parent / "shared" / "datasets" / "cifar10"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_hub_dataset(folder: Path, train_rows: int, test_rows: int, seed: int = 0) -> Path:
    """Writes parquet files and a README like uoft-cs/cifar10: columns img (PNG) and label (ClassLabel).

    Each class has its own colour and stripe direction, so a small model learns it in a few steps. One test label
    in ten is replaced by a random class, so that even a perfect model leaves mistakes for the explain hook.
    """
    import datasets

    rng = np.random.default_rng(seed)
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    for split, rows in (("train", train_rows), ("test", test_rows)):
        labels = rng.integers(0, 10, rows)
        images = []
        for label in labels:
            base = np.array([(label * 37) % 256, (label * 91) % 256, (label * 53) % 256], dtype=np.float64)
            stripes = (np.arange(32) // (2 + label % 4)) % 2 * 60
            pattern = stripes[:, None] if label < 5 else stripes[None, :]
            pixels = base + pattern[..., None] + rng.normal(0, 25, (32, 32, 3))
            images.append(Image.fromarray(pixels.clip(0, 255).astype(np.uint8)))
        if split == "test":
            noisy = rng.random(rows) < 0.1
            labels[noisy] = rng.integers(0, 10, noisy.sum())
        data = datasets.Dataset.from_dict({"img": images, "label": labels.tolist()}, features=features)
        (folder / "plain_text").mkdir(parents=True, exist_ok=True)
        data.to_parquet(str(folder / "plain_text" / f"{split}-00000-of-00001.parquet"))
    (folder / "README.md").write_text(
        "---\nconfigs:\n- config_name: plain_text\n  data_files:\n  - split: train\n    path: plain_text/train-*\n"
        "  - split: test\n    path: plain_text/test-*\n  default: true\n---\n# tiny CIFAR-like test data\n"
    )
    return folder


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory) -> Path:
    return write_hub_dataset(tmp_path_factory.mktemp("tiny_cifar"), train_rows=1024, test_rows=203)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("decoded_cache")


def tiny_run_overrides(data: Path, cache: Path, out: Path, **extra) -> list:
    """A model and schedule small enough for seconds per epoch on 2 CPU cores."""
    settings = {
        "data.name": data, "data.cache_dir": cache, "output_dir": out, "model.dim": 32, "model.depth": 2,
        "train.batch_size": 128, "train.epochs": 2, "tracker": "none", "explain.num_images": 4,
        "explain.methods": "gradcam,layercam",  # the default nine take longer than the tiny run
    }
    settings.update(extra)
    return [f"{k}={v}" for k, v in settings.items()]


def launch(overrides: list, processes: int = 1, extra_env: dict | None = None, timeout: int = 600, wait: bool = True,
           script: Path = ROOT / "trainer" / "main.py"):
    """Runs `script` (the trainer) through `accelerate launch` (2 processes: --multi_gpu, which is MULTI_CPU here)."""
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    command += ["--multi_gpu", "--num_processes", str(processes)] if processes > 1 else ["--num_processes", "1"]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]
    command += [str(script), *map(str, overrides)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1" if processes > 1 else "2"}
    env.update(extra_env or {})
    # A session of its own, so that a signal to the launcher's process group (Ctrl-C) reaches it and its workers
    # and nothing else.
    if not wait:
        return subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          start_new_session=True)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def trained_run(tiny_cifar, cache_dir, tmp_path_factory):
    """One finished 1-process run with W&B (offline) and the explain hook, shared by the tests that read it."""
    out = tmp_path_factory.mktemp("trained") / "run"
    result = launch(tiny_run_overrides(tiny_cifar, cache_dir, out, tracker="wandb", **{
        "explain.methods": "gradcam,layercam,fullgrad", "explain.blocks": "all"}))
    assert result.returncode == 0, result.stdout + result.stderr
    return out, result


@pytest.fixture(autouse=True, scope="module")
def fresh_accelerate_state():
    """Accelerate keeps one state per process, mixed precision included: a module that evaluates a run in-process
    on a CPU with AVX512-BF16 (an Accelerator in bf16) would hand bf16 to the next module's Accelerators, and one
    that asks for another precision would fail. Each module starts with none."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` need an NVIDIA GPU; elsewhere they are skipped, saying so (bench/gpu_check.sh runs them)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (torch.cuda.is_available() is False); run bench/gpu_check.sh "
                                   "on a GPU machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
