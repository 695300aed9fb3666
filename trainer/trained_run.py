"""A trained run opened for use after training: its settings, its weights in a plain ConvMixer in eval mode, and its
evaluation as the run evaluated (device, mixed precision, passes, memory format, normalization). `python -m
trainer.explain`, `trainer.predict`, `trainer.app` and `trainer.export` start here.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainer.augment import Normalize
from trainer.checkpoint import read_weights
from trainer.config import Config, for_device, load_config, validate
from trainer.data import Split
from trainer.errors import ConfigError
from trainer.model import ConvMixer, build_model
from trainer.run_folder import RunFolder
from trainer.steps import Predictions, evaluate, plain_model

# CIFAR-10's classes in label order: the names of a run older than run.json's class_names, with 10 classes.
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@dataclass
class TrainedRun:
    folder: RunFolder
    weights: Path  # model.safetensors, or a checkpoint
    config: Config
    model: ConvMixer

    @property
    def class_names(self) -> list:
        """Names of the model's outputs, as the run's data named them."""
        names = self.folder.read_run_info().get("class_names")
        if not names and self.folder.summary.is_file():  # older runs: the explain summary lists them in order
            names = list(self.folder.read_summary().get("explain", {}).get("per_class_accuracy", {}))
        if not names and self.config.model.num_classes == 10:
            names = CIFAR10_CLASSES
        return names or [str(i) for i in range(self.config.model.num_classes)]

    @functools.cached_property
    def test_accuracy(self) -> float | None:
        """The test accuracy the run recorded for these weights: the final weights', or the best epoch's; None for a
        checkpoint or an unfinished run."""
        summary = self.folder.read_summary()
        if self.weights == self.folder.weights:
            return summary.get("final_test_acc")
        best = summary.get("best") or {}
        if self.weights == self.folder.best_weights and best.get("epoch") is not None:
            column = self.config.train.reported_prefix + "test_acc"
            return next((row[column] for row in self.folder.metric_rows() if row["epoch"] == best["epoch"]), None)
        return None

    @property
    def gallery_method(self) -> tuple:
        """(method, block) of the run's gallery: its explain summary's, else explain.method at the last block."""
        summary = self.folder.read_summary()
        faithful = summary.get("explain", {}).get("faithfulness", {})
        if "method" in faithful:
            return faithful["method"], faithful["block"]
        method = self.config.explain.method if self.config.explain.method != "best" else "gradcam"
        return method, None if method == "fullgrad" else self.config.model.depth - 1


def find_weights(target: Path) -> tuple:
    """(RunFolder, weights file) for a run folder or a checkpoint/weights file inside one."""
    if target.is_dir():
        folder = RunFolder(target)
        # The final weights of a finished run; the checkpoint of one still training (its weights are older).
        finished = folder.status() == "finished"
        for candidate in ((folder.weights, folder.checkpoint) if finished else (folder.checkpoint, folder.weights)):
            if candidate.is_file():
                return folder, candidate
        raise ConfigError(f"{target} has no weights ({folder.weights.name} or checkpoints/{folder.checkpoint.name}); "
                          f"train first, or give the path of a weights file.")
    if not target.is_file():
        raise ConfigError(f"{target} does not exist; give a run folder or a .safetensors file in one.")
    return RunFolder(target.parent.parent if target.parent.name == "checkpoints" else target.parent), target


def open_run(target: Path, overrides=()) -> TrainedRun:
    """The run at `target` (a run folder or a weights file in one), its settings with `overrides` applied, and its
    weights loaded: bad input raises ConfigError or CheckpointError before anything heavy starts."""
    folder, weights = find_weights(Path(target))
    config = load_config(str(folder.config) if folder.config.is_file() else None, overrides)
    # A checkpoint of a run that reports its weight average: the average, as every figure of the run is its.
    state, model_config = read_weights(weights, average=config.train.reports_average)
    model = build_model(config.model)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        described = (f"the model in {folder.config}" if folder.config.is_file() else
                     f"the default model (there is no {folder.config.name} beside it)")
        raise ConfigError(f"{weights} does not fit {described} ({model_config or 'unknown'} vs "
                          f"{dataclasses.asdict(config.model)}): {str(error).splitlines()[0]} Give the run folder "
                          f"the weights were trained in (python -m trainer.explain also takes model.* settings to "
                          f"match them).") from None
    return TrainedRun(folder, weights, config, model.eval())


class Evaluation:
    """The run's evaluation, as the run did it: Accelerate's device and mixed precision for this machine, the passes
    of train.micro_batch_size, channels_last, the run's normalization. The model is the run's, prepared."""

    def __init__(self, run: TrainedRun):
        from accelerate import Accelerator

        on_cpu = not torch.cuda.is_available()
        # Evaluating trains nothing: a run trained with SyncBatchNorm on GPUs is evaluated on any machine.
        train = dataclasses.replace(run.config.train, sync_batchnorm=False)
        self.config = dataclasses.replace(run.config, train=for_device(train, on_cpu))
        self.accelerator = Accelerator(cpu=on_cpu, mixed_precision=self.config.train.mixed_precision)
        validate(self.config, self.accelerator.num_processes)
        model = run.model.to(memory_format=torch.channels_last) if self.config.train.channels_last else run.model
        self.model = self.accelerator.prepare(model)
        a = self.config.augment
        self.normalize = Normalize(a.mean, a.std, self.accelerator.device)

    def predict(self, split: Split) -> Predictions:
        """Every image of `split`, gathered from every process, in order."""
        return evaluate(self.accelerator, self.model, split, self.config, self.normalize)

    def predict_images(self, images: torch.Tensor) -> Predictions:
        """uint8 N x 3 x 32 x 32 images without labels (Predictions.labels are 0)."""
        return self.predict(Split(images, torch.zeros(len(images), dtype=torch.long)))

    @property
    def plain_model(self):
        """The model without Accelerate's wrappers, its evaluation untouched: for explanations.plain_copy."""
        return plain_model(self.accelerator, self.model)

    @functools.cached_property
    def cam_model(self):
        """The run's weights in a plain ConvMixer in fp32, for CAM maps."""
        from trainer.explanations import plain_copy

        return plain_copy(self.plain_model, self.config.model)

    def cam_overlays(self, images: torch.Tensor, classes, method: str, block: int | None,
                     opacity: float = 0.5) -> np.ndarray:
        """uint8 N x 3 x 32 x 32 images under `method`'s maps of `classes` at mixer block `block` (None, or ignored,
        for a method without one): N x 32 x 32 x 3 uint8."""
        from trainer.cam_methods import NO_BLOCK, cam_maps
        from trainer.plots import overlay

        inputs = self.normalize(images.to(self.accelerator.device)).cpu()
        maps = cam_maps(self.cam_model, inputs, torch.as_tensor(classes), method,
                        -1 if block is None or method in NO_BLOCK else block).shown
        return (255 * overlay(images.permute(0, 2, 3, 1).numpy() / 255.0, maps, opacity)).round().astype(np.uint8)
