"""Checkpoints as safetensors files: tensors plus JSON metadata, never pickle.

A checkpoint holds the model, the optimizer (moments and step counts), the loss scaler, the model settings it was
trained with, and a `TrainState`: where training stands, exactly. It is written to a temporary file in the same
folder, flushed to disk, then renamed over the old one, and the folder flushed too: a crash or a kill mid-write leaves
the previous checkpoint intact. Reading one that is damaged or not a checkpoint raises `CheckpointError`, whose message says what to do.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from trainer.errors import CheckpointError
from trainer.run_folder import durable_replace


@dataclass
class TrainState:
    """Where training stands: what a checkpoint records besides the weights and the optimizer."""

    epoch: int = 0  # the epoch in progress; equal to train.epochs once training is done
    step: int = 0  # optimizer steps of `epoch` already taken
    best_test_acc: float = 0.0
    last_test_acc: typing.Optional[float] = None  # after the last finished epoch
    best_epoch: typing.Optional[int] = None  # the epoch of best.safetensors
    best_score: typing.Optional[float] = None  # its validation accuracy, or test accuracy without a validation split
    # The train metrics of the steps taken in `epoch`, summed over processes: correct, loss_sum, seen, seconds.
    epoch_sums: dict = field(default_factory=dict)


def atomic_save(tensors: dict, metadata: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f"{path.name}*.tmp"):  # left by a process killed while writing
        stale.unlink()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp,
                  metadata={k: json.dumps(v) for k, v in metadata.items()})
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's file is 0600; the run's other files follow the umask
        durable_replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def current_umask() -> int:
    """The process's umask, read without setting it (os.umask would change it for every thread for a moment)."""
    try:
        return next(int(line.split()[1], 8) for line in open("/proc/self/status") if line.startswith("Umask:"))
    except (OSError, StopIteration):
        return 0o022


def read_metadata(path: Path) -> dict:
    """The JSON metadata of a file written by atomic_save, after checking that the whole file is there."""
    return _read(path, tensors=False)[1]


def read(path: Path) -> tuple:
    """(tensors, metadata) of a file written by atomic_save."""
    return _read(path, tensors=True)


def _read(path: Path, tensors: bool) -> tuple:
    try:
        # safe_open checks the header against the file's size: a truncated file fails here.
        with safe_open(str(path), framework="pt") as f:
            metadata = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
            return ({key: f.get_tensor(key) for key in f.keys()} if tensors else {}), metadata
    except (SafetensorError, OSError, json.JSONDecodeError) as error:
        raise CheckpointError(
            f"{path} cannot be read as a safetensors checkpoint ({' '.join(str(error).split())}): it is damaged, cut "
            f"short by a full disk or a copy that did not finish, or not a checkpoint of this trainer. Give another "
            f"weights file, or start the run again."
        ) from None


def save_checkpoint(path: Path, model, optimizer, scaler, state: TrainState, model_config: dict,
                    ema_model=None) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if ema_model is not None:  # train.ema_decay: the average of the weights
        tensors.update({f"ema.{k}": v for k, v in ema_model.state_dict().items()})
    optimizer_state = optimizer.state_dict()
    for param_id, param_state in optimizer_state["state"].items():
        for name, value in param_state.items():
            tensors[f"optimizer.{param_id}.{name}"] = torch.as_tensor(value)
    metadata = {
        "train_state": dataclasses.asdict(state),
        "model_config": model_config,
        "param_groups": optimizer_state["param_groups"],
        "scaler": scaler.state_dict() if scaler is not None else None,
    }
    atomic_save(tensors, metadata, path)


def read_train_state(path: Path) -> tuple:
    """(TrainState, model settings) of a checkpoint, from its header alone."""
    metadata = read_metadata(path)
    if "train_state" not in metadata:
        raise CheckpointError(f"{path} holds no training state (it is a weights file, or was written by an older "
                              f"version of this trainer); it cannot be resumed. Start a new run.")
    return TrainState(**metadata["train_state"]), metadata.get("model_config")


def load_checkpoint(path: Path, model, optimizer, scaler, ema_model=None) -> TrainState:
    """Restores model, optimizer, loss-scaler and weight-average state in place; returns the saved TrainState."""
    tensors, metadata = read(path)
    if ema_model is not None:
        average = under(tensors, "ema.")
        if not average:
            raise CheckpointError(f"{path} holds no average of the weights (it was written with train.ema_decay "
                                  f"off), so it cannot resume with train.ema_decay set; resume without it, or start a "
                                  f"new run.")
        ema_model.load_state_dict(average)
    try:
        model.load_state_dict(under(tensors, "model."))
    except RuntimeError as error:
        raise CheckpointError(f"{path} holds another model than the settings describe ({str(error).splitlines()[0]} "
                              f"...); give the model.* settings it was trained with.") from None
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, param_id, name = key.split(".", 2)
            state.setdefault(int(param_id), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": metadata["param_groups"]})
    # safetensors stores tensors contiguous. The moments of a channels_last weight must get its layout back: the
    # fused AdamW kernel walks a parameter and its moments as flat memory, side by side.
    for param, param_state in optimizer.state.items():
        for name, value in param_state.items():
            if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                param_state[name] = torch.empty_like(param, dtype=value.dtype).copy_(value)
    if scaler is not None and metadata.get("scaler"):
        scaler.load_state_dict(metadata["scaler"])
    return TrainState(**metadata["train_state"])


def under(tensors: dict, prefix: str) -> dict:
    """The state dict a checkpoint keeps under `prefix` ("model.", "ema."), without it."""
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}


def save_weights(path: Path, model, model_config: dict) -> None:
    atomic_save(model.state_dict(), {"model_config": model_config}, path)


def read_weights(path: Path, average: bool = False) -> tuple:
    """(state dict, model settings) from a weights file (model.safetensors, best.safetensors) or a training
    checkpoint: of a checkpoint, its weights, or with `average` their average (train.ema_weights=ema reports it)."""
    tensors, metadata = read(path)
    if any(k.startswith("model.") for k in tensors):
        tensors = under(tensors, "ema." if average else "model.")
        if not tensors:
            raise CheckpointError(f"{path} holds no average of the weights, but the settings (the run's config.yaml, "
                                  f"or train.* given to this command) ask for one (train.ema_decay with "
                                  f"train.ema_weights=ema); give python -m trainer.explain train.ema_weights=raw to "
                                  f"open its weights, or give the run's best.safetensors.")
    return tensors, metadata.get("model_config")
