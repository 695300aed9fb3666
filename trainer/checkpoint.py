"""Checkpoints as safetensors files: tensors plus JSON metadata, never pickle.

A checkpoint is written to a temporary file in the same folder, flushed to disk,
then renamed over `last.safetensors`: a crash or a kill mid-write leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

LAST = "last.safetensors"


def atomic_save(tensors: dict, metadata: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp,
                  metadata={k: json.dumps(v) for k, v in metadata.items()})
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read(path: Path) -> tuple:
    """(tensors, metadata) of a file written by atomic_save."""
    with safe_open(str(path), framework="pt") as f:
        tensors = {key: f.get_tensor(key) for key in f.keys()}
        metadata = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
    return tensors, metadata


def save_checkpoint(path: Path, model, optimizer, scaler, progress: dict, model_config: dict) -> None:
    """progress: where training stands (epoch, step, partial epoch counts), enough to resume exactly."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    optimizer_state = optimizer.state_dict()
    for param_id, state in optimizer_state["state"].items():
        for name, value in state.items():
            tensors[f"optimizer.{param_id}.{name}"] = torch.as_tensor(value)
    metadata = {
        "progress": progress,
        "model_config": model_config,
        "param_groups": optimizer_state["param_groups"],
        "scaler": scaler.state_dict() if scaler is not None else None,
    }
    atomic_save(tensors, metadata, path)


def load_checkpoint(path: Path, model, optimizer, scaler) -> dict:
    """Restores model, optimizer and loss-scaler state in place; returns the saved progress."""
    tensors, metadata = read(path)
    model.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")})
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
    return metadata["progress"]


def save_weights(path: Path, model, model_config: dict) -> None:
    atomic_save(model.state_dict(), {"model_config": model_config}, path)


def read_weights(path: Path) -> tuple:
    """(state dict, model config) from model.safetensors or a training checkpoint."""
    tensors, metadata = read(path)
    if any(k.startswith("model.") for k in tensors):
        tensors = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    return tensors, metadata.get("model_config")
