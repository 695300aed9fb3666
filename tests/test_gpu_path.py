"""The GPU path, checked on the CPU: PyTorch's `meta` device stands in for CUDA (tests/host_sync.py)."""

import pytest
import torch
from accelerate import Accelerator
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF
from torchvision.transforms.autoaugment import _apply_op

from host_sync import HostSyncRecorder
from trainer.augment import Augment
from trainer.batches import BatchSource
from trainer.config import AugmentConfig, Config, TrainConfig, for_device
from trainer.data import Split
from trainer.ema import WeightAverage
from trainer.cam_methods import cam_maps, road
from trainer.steps import EpochCounts, train_step
from trainer.model import ConvMixer, build_model

META = torch.device("meta")


def meta_split(rows: int = 2048) -> Split:
    return Split(torch.empty(rows, 3, 32, 32, dtype=torch.uint8, device=META),
                 torch.empty(rows, dtype=torch.long, device=META))


# The step's training options: label smoothing and the weight average, with Mixup or with CutMix.
OPTIONS = TrainConfig(label_smoothing=0.1, ema_decay=0.99)


@pytest.mark.parametrize("config", [Config(), Config(augment=AugmentConfig(randaug_n=2, randaug_m=12)),
                                    Config(augment=AugmentConfig(mixup=0.8), train=OPTIONS),
                                    Config(augment=AugmentConfig(cutmix=1.0), train=OPTIONS)],
                         ids=["reference", "two-ops", "mixup-smoothing-ema", "cutmix-smoothing-ema"])
def test_a_training_step_never_waits_for_the_device(config):
    """Batch indices, augmentation, forward, backward, optimizer step, the weight average and metric counters: no
    data-dependent read of device memory and one host-to-device copy per step, non-blocking."""
    batches = BatchSource(meta_split(), Augment(config.augment, META), config)
    model = build_model(config.model).to(META).to(memory_format=torch.channels_last)
    # The fused AdamW of the trainer has no meta kernel; the foreach one runs the same per-parameter maths here,
    # and the GPU check (bench/gpu_check.sh) runs the fused one under torch.cuda.set_sync_debug_mode("error").
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.01, foreach=True)
    average = WeightAverage(model, config.train.ema_decay) if config.train.ema_decay else None
    counts = EpochCounts.start(META)
    steps = batches.epoch(0)
    for k in range(2):
        with HostSyncRecorder() as recorder:
            step, images, labels = next(steps)
            counts.add(train_step(Accelerator(cpu=True), model, optimizer, images, labels, config.train))
            if average:
                average.update(k)
        assert recorder.syncs == [], recorder.syncs
        assert [u["blocking"] for u in recorder.uploads] == [False], recorder.uploads
        assert images.shape == (512, 3, 32, 32) and images.is_contiguous(memory_format=torch.channels_last)


def test_the_recorder_sees_each_kind_of_host_sync():
    """What the old augmentation did on CUDA, one kind at a time: each is caught."""
    images = torch.empty(8, 3, 32, 32, dtype=torch.uint8, device=META)
    cases = {
        "blocking copy": lambda: torch.arange(8).to(META),
        "torch.tensor on the device": lambda: torch.tensor([0.5, 0.5, 0.5], device=META),
        "host index into a device tensor": lambda: images[torch.tensor([0, 2])],
        "boolean mask": lambda: images[torch.ones(8, dtype=torch.bool, device=META)],
        "item": lambda: images.sum().item(),
        "torchvision's affine": lambda: _apply_op(images, "ShearX", 0.3, InterpolationMode.NEAREST, None),
        "torchvision's v1 autocontrast": lambda: TF.autocontrast(images),
        "torchvision's sharpness": lambda: _apply_op(images, "Sharpness", 0.3, InterpolationMode.NEAREST, None),
    }
    for name, case in cases.items():
        with HostSyncRecorder() as recorder:
            try:
                case()
            except (RuntimeError, NotImplementedError):  # meta tensors hold no data to read
                pass
        assert recorder.syncs, name


class InputDevice(Exception):
    pass


def record_input_device(module, args):
    raise InputDevice(args[0].device)  # stop here: a meta model cannot finish a Grad-CAM


def test_explain_hands_the_model_its_inputs_on_the_model_device():
    """Grad-CAM and the ROAD faithfulness metric get CPU images; a model on another device must receive them there."""
    model = ConvMixer(dim=16, depth=1).to(META)
    model.register_forward_pre_hook(record_input_device)
    images, classes = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    for call in (lambda: cam_maps(model, images, classes),
                 lambda: road(model, images, classes, torch.rand(2, 32, 32).numpy(), seed=0)):
        with pytest.raises(InputDevice) as seen:
            call()
        assert seen.value.args[0] == META


@pytest.mark.parametrize("capability,launcher,expected", [
    ((9, 0), None, "bf16"), ((8, 0), None, "bf16"), ((7, 5), None, "fp16"), ((9, 0), "fp16", "fp16"),
    ((9, 0), "no", "bf16"),
])
def test_mixed_precision_default_on_a_gpu(monkeypatch, capability, launcher, expected):
    """No GPU here: the device's compute capability is what a GPU would report."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
    if launcher:
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launcher)
    else:
        monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    train = for_device(TrainConfig(), on_cpu=False)
    assert train.mixed_precision == expected
    assert train.micro_batch_size is None and train.compile == "no"
    assert not (train.fast_depthwise_grad or train.fast_pointwise_grad or train.fused_gelu_norm)
    assert for_device(TrainConfig(mixed_precision="no"), on_cpu=False).mixed_precision == "no"
