"""One optimizer step and the stop request, in one process: the paths a training run takes rarely."""

import os
import signal

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator

from trainer.config import TrainConfig
from trainer.steps import StopRequest, train_step


def test_clip_norm_clips_the_steps_gradient():
    """train.clip_norm (the reference's --clip-norm): the step's gradient, summed over its passes, is scaled to that
    norm before the optimizer uses it."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    images, labels = torch.randn(6, 3, 2, 2) * 10, torch.tensor([0, 1, 2, 1, 0, 2])
    full = [g.clone() for g in torch.autograd.grad(F.cross_entropy(model(images), labels), list(model.parameters()))]
    norm = torch.cat([g.flatten() for g in full]).norm()
    assert norm > 0.5
    before = [p.detach().clone() for p in model.parameters()]
    accelerator = Accelerator(cpu=True)
    model, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=1.0))
    train_step(accelerator, model, optimizer, images, labels, TrainConfig(micro_batch_size=4, clip_norm=0.5))
    steps = [old - new.detach() for old, new in zip(before, model.parameters())]  # lr 1: the clipped gradient
    for step, gradient in zip(steps, full):
        torch.testing.assert_close(step, gradient * 0.5 / norm, rtol=1e-4, atol=1e-6)


def test_a_second_ctrl_c_stops_at_once():
    """The first Ctrl-C asks for a checkpoint; one more than SAME_REQUEST_SECONDS later means: stop now. Signals within
    that time belong to the first (a launcher relays the same Ctrl-C as SIGTERM or SIGINT)."""
    with StopRequest(Accelerator(cpu=True)) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)  # the launcher's relay of the same Ctrl-C
        assert stop.requested() and stop.signal == signal.SIGINT
        stop.received_at -= StopRequest.SAME_REQUEST_SECONDS + 1  # as if 3 s had passed
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handlers are put back


@pytest.mark.parametrize("compile", ["blocks", "model"])
def test_a_compiled_model_keeps_the_models_own_state_dict_keys(compile):
    """torch.compile wraps the model (keys '_orig_mod.*') or its blocks; checkpoints and weights files must hold the
    model's own keys, so that any run, compiled or not, resumes and explains any other's."""
    from trainer.config import ModelConfig, for_device
    from trainer.model import build_model
    from trainer.steps import plain_model, prepare_training

    model = build_model(ModelConfig(dim=16, depth=2))
    keys = list(model.state_dict())
    accelerator = Accelerator(cpu=True)
    prepared, _ = prepare_training(accelerator, model, for_device(TrainConfig(compile=compile), on_cpu=True))
    if compile == "model":
        assert any(key.startswith("_orig_mod.") for key in prepared.state_dict())  # what the wrapper alone gives
    assert list(plain_model(accelerator, prepared).state_dict()) == keys
