"""Checkpoints: an optimizer restored from one continues exactly as the uninterrupted one."""

import os
import stat

import torch

from trainer.checkpoint import TrainState, load_checkpoint, save_checkpoint


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
