"""Checkpoints: an optimizer restored from one continues exactly as the uninterrupted one."""

import os
import stat

import pytest
import torch

from trainer.checkpoint import TrainState, load_checkpoint, save_checkpoint
from trainer.errors import CheckpointError
from trainer.run_folder import atomic_write


def _model_and_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 8, 3).to(memory_format=torch.channels_last)
    return model, torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.01, fused=True)


def _steps(model, optimizer, first, last):
    for i in range(first, last):
        torch.manual_seed(100 + i)
        model(torch.randn(4, 3, 8, 8).contiguous(memory_format=torch.channels_last)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()


def test_fused_adamw_on_channels_last_weights_resumes_exactly(tmp_path):
    straight = _model_and_optimizer()
    _steps(*straight, 0, 6)
    first = _model_and_optimizer()
    _steps(*first, 0, 3)
    save_checkpoint(tmp_path / "last.safetensors", *first, None, TrainState(epoch=0, step=3), {})
    resumed = _model_and_optimizer()
    assert load_checkpoint(tmp_path / "last.safetensors", *resumed, None) == TrainState(epoch=0, step=3)
    _steps(*resumed, 3, 6)
    assert torch.equal(resumed[0].weight, straight[0].weight) and torch.equal(resumed[0].bias, straight[0].bias)


def test_checkpoint_files_follow_the_umask_like_the_run_folders_other_files(tmp_path):
    model, optimizer = _model_and_optimizer()
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, model, optimizer, None, TrainState(), {})
    (tmp_path / "other.txt").write_text("x")
    assert stat.S_IMODE(os.stat(path).st_mode) == stat.S_IMODE(os.stat(tmp_path / "other.txt").st_mode)


def test_each_write_reaches_the_disk_before_its_rename_and_the_folder_after(tmp_path, monkeypatch):
    """Without the fsyncs, a machine that crashes soon after a rename can come back with an empty file (XFS, Lustre,
    NFS): the checkpoint, or the run's settings."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(b))), real_replace(a, b)))
    model, optimizer = _model_and_optimizer()
    path = tmp_path / "checkpoints" / "last.safetensors"
    save_checkpoint(path, model, optimizer, None, TrainState(), {})
    atomic_write(tmp_path / "config.yaml", "seed: 0\n")
    assert [kind for kind, _ in events] == ["fsync", "replace", "fsync"] * 2
    (_, checkpoint_tmp), (_, renamed), (_, folder), (_, config_tmp), _, (_, run_folder) = events
    assert checkpoint_tmp.startswith(str(path)) and checkpoint_tmp.endswith(".tmp") and renamed == str(path)
    assert folder == str(path.parent) and config_tmp == str(tmp_path / "config.yaml.tmp")
    assert run_folder == str(tmp_path)


def test_the_fp16_loss_scalers_state_comes_back(tmp_path):
    """Accelerate's loss scaler exists only for fp16 on a GPU; torch's GradScaler for the CPU has the same state."""
    model, optimizer = _model_and_optimizer()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=3)
    for _ in range(2):  # two good steps: the growth tracker counts them
        scaler.scale(model(torch.randn(2, 3, 8, 8)).mean()).backward()
        scaler.step(optimizer)
        scaler.update()
    model.weight.grad = torch.full_like(model.weight, float("inf"))  # an overflow: the scale halves
    scaler.step(optimizer)
    scaler.update()
    assert scaler.state_dict()["scale"] == 2.0**11
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, model, optimizer, scaler, TrainState(), {})
    restored = torch.amp.GradScaler("cpu")
    load_checkpoint(path, *_model_and_optimizer(), restored)
    assert restored.state_dict() == scaler.state_dict() != torch.amp.GradScaler("cpu").state_dict()


def state(model) -> list:
    return list(model.state_dict().values())


def test_a_checkpoint_opens_with_the_weights_its_run_reports(tmp_path):
    """With train.ema_weights=ema every figure of a run is its weight average's: predict, the app, explain and
    export, given an unfinished run's checkpoint, use the average; with raw, the weights."""
    from trainer.config import config_yaml, load_config
    from trainer.model import build_model
    from trainer.trained_run import open_run

    config = load_config(None, ["model.dim=8", "model.depth=1", "train.ema_decay=0.9"])
    torch.manual_seed(0)
    model, average = build_model(config.model), build_model(config.model)
    assert not torch.equal(state(model)[0], state(average)[0])
    path = tmp_path / "checkpoints" / "last.safetensors"
    save_checkpoint(path, model, torch.optim.SGD(model.parameters()), None, TrainState(), vars(config.model), average)
    (tmp_path / "config.yaml").write_text(config_yaml(config))
    for weights, expected in (("ema", average), ("raw", model)):
        opened = open_run(tmp_path, [f"train.ema_weights={weights}"]).model
        assert all(torch.equal(a, b) for a, b in zip(state(opened), state(expected))), weights
    save_checkpoint(path, model, torch.optim.SGD(model.parameters()), None, TrainState(), vars(config.model))
    with pytest.raises(CheckpointError, match="holds no average of the weights"):
        open_run(tmp_path)
