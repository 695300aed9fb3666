"""On an NVIDIA GPU only (skipped elsewhere, saying why): the GPU path for real. bench/gpu_check.sh runs these."""

import warnings

import pytest
import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from trainer.augment import Augment
from trainer.batches import BatchSource, seeded
from trainer.config import AugmentConfig, Config, TrainConfig, for_device
from trainer.data import Split
from trainer.ema import WeightAverage
from trainer.cam_methods import cam_maps, road
from trainer.steps import EpochCounts, plain_model, prepare_training, train_step
from trainer.model import build_model

pytestmark = pytest.mark.cuda
CUDA = torch.device("cuda")


def random_split(rows: int, device) -> Split:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (rows, 3, 32, 32), dtype=torch.uint8, generator=generator)
    return Split(images, torch.randint(0, 10, (rows,), generator=generator)).to(device)


@pytest.fixture
def fresh_accelerate():
    """Each test may pick its own mixed precision: Accelerate keeps one state per process otherwise."""
    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


# The training options that touch the step: Mixup and CutMix, label smoothing, the weight average.
OPTIONS = {"reference": ({}, {}),
           "options": ({"mixup": 0.8, "cutmix": 1.0}, {"label_smoothing": 0.1, "ema_decay": 0.99})}


@pytest.mark.parametrize("options", list(OPTIONS))
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_training_steps_never_synchronise(fresh_accelerate, precision, options):
    """A few whole steps (batch indices, augmentation, mixing, forward, backward, fused AdamW, loss scaler, the
    weight average, metric counters) under torch.cuda.set_sync_debug_mode("warn"): any host-device synchronisation
    fails the test, which lists them all."""
    augment, train_options = OPTIONS[options]
    train = for_device(TrainConfig(mixed_precision=precision, **train_options), on_cpu=False)
    config = Config(augment=AugmentConfig(**augment), train=train)
    accelerator = Accelerator(mixed_precision=precision)
    torch.backends.cudnn.benchmark = True
    model, optimizer = prepare_training(accelerator, build_model(config.model), train)
    average = WeightAverage(plain_model(accelerator, model), train.ema_decay) if train.ema_decay else None
    batches = BatchSource(random_split(4096, CUDA), Augment(config.augment, CUDA), config)
    counts = EpochCounts.start(CUDA)
    steps = batches.epoch(0)

    def step(k: int) -> None:
        _, images, labels = next(steps)
        counts.add(train_step(accelerator, model, optimizer, images, labels, train))
        if average:
            average.update(k)

    for k in range(2):  # warm-up: cuDNN's autotuning synchronises, once per shape
        step(k)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")  # "warn" rather than "error": the failure lists every offender
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for k in range(2, 5):
                step(k)
    finally:
        torch.cuda.set_sync_debug_mode(0)
        torch.backends.cudnn.benchmark = False
    syncs = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught if "synchroniz" in str(w.message)]
    assert syncs == [], "\n".join(syncs)
    assert counts.seen.item() == 5 * 512 and torch.isfinite(counts.loss_sum).item()


def test_default_precision_suits_this_gpu(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)  # set under accelerate launch
    expected = "bf16" if torch.cuda.get_device_capability() >= (8, 0) else "fp16"
    assert for_device(Config().train, on_cpu=False).mixed_precision == expected


def test_augmentation_on_the_gpu_matches_the_cpu():
    """Same draws, same uint8 results up to float rounding in the resize and blends (at most one level)."""
    plain = AugmentConfig(mean=[0.0] * 3, std=[1 / 255] * 3)  # outputs in uint8 units
    split = random_split(512, "cpu")
    on_cpu = Augment(plain, "cpu")(split.images, seeded(1, 2, 3))
    on_gpu = Augment(plain, CUDA)(split.images.to(CUDA), seeded(1, 2, 3)).cpu()
    difference = (on_cpu - on_gpu).abs()
    assert (difference <= 1.001).float().mean() > 0.999, difference.max()


def test_explain_runs_on_the_gpu_as_on_the_cpu():
    torch.manual_seed(0)
    model = build_model(Config(model=Config().model.__class__(dim=32, depth=2)).model).eval()
    images, classes = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    on_cpu = cam_maps(model, images, classes)
    road_on_cpu = road(model, images, classes, on_cpu.shown, seed=0)
    on_gpu = cam_maps(model.to(CUDA), images, classes)
    torch.testing.assert_close(torch.from_numpy(on_gpu.raw), torch.from_numpy(on_cpu.raw), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(road(model, images, classes, on_cpu.shown, seed=0), road_on_cpu, atol=1e-3)
