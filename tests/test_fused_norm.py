"""GELU + training-mode BatchNorm in the C kernels (the CPU fast path in fp32) against PyTorch's modules."""

import copy

import pytest
import torch
import torch.nn.functional as F

from trainer.config import ModelConfig
from trainer.fused_norm import FusedConvGeluNorm, FusedMixerBlock, fits, gelu_batch_norm, use_fused_gelu_norm
from trainer.model import MixerBlock, build_model, conv_gelu_bn


def stage_and_input(channels=16, scale=3.0):
    torch.manual_seed(0)
    stage = conv_gelu_bn(torch.nn.Conv2d(channels, channels, 1)).to(memory_format=torch.channels_last)
    with torch.no_grad():
        stage.norm.weight.uniform_(0.5, 1.5)
        stage.norm.bias.uniform_(-1, 1)
    x = (torch.randn(6, channels, 5, 7) * scale).contiguous(memory_format=torch.channels_last)
    return stage, x


def test_outputs_gradients_and_running_statistics_match_the_modules():
    plain, x = stage_and_input()
    fused = copy.deepcopy(plain)
    assert use_fused_gelu_norm(fused) == 1 and isinstance(fused, FusedConvGeluNorm)
    grad_y = torch.randn(6, 16, 5, 7).contiguous(memory_format=torch.channels_last)
    outputs = []
    for stage in (plain, fused):
        xs = x.clone().requires_grad_()
        for _ in range(3):  # three steps of running statistics
            y = stage(xs)
        y.backward(grad_y)
        outputs.append((y, xs.grad, stage))
    (y0, gx0, s0), (y1, gx1, s1) = outputs
    torch.testing.assert_close(y1, y0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gx1, gx0, rtol=1e-4, atol=1e-5)
    for name in ("weight", "bias"):
        torch.testing.assert_close(getattr(s1.norm, name).grad, getattr(s0.norm, name).grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s1.conv.weight.grad, s0.conv.weight.grad, rtol=1e-4, atol=1e-4)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(s1.norm, name), getattr(s0.norm, name), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("value", [-40.0, -8.0, -1e-3, 0.0, 1e-3, 8.0, 40.0])
def test_gelu_and_its_derivative_hold_far_from_zero(value):
    """The kernel's erf and exp approximations against PyTorch's GELU, where they are hardest: tails and zero."""
    z = torch.full((2, 8, 3, 3), value).contiguous(memory_format=torch.channels_last)
    z[0] += torch.linspace(-1, 1, 9).view(3, 3)  # some spread, so that BatchNorm's variance is not zero
    norm = torch.nn.BatchNorm2d(8)
    zs = [z.clone().requires_grad_() for _ in range(2)]
    y_fused = gelu_batch_norm(zs[0], norm)
    y_plain = F.batch_norm(F.gelu(zs[1]), None, None, norm.weight, norm.bias, True, 0.1, norm.eps)
    grad = torch.randn_like(y_plain)
    y_fused.backward(grad)
    y_plain.backward(grad)
    torch.testing.assert_close(y_fused, y_plain, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(zs[0].grad, zs[1].grad, rtol=1e-3, atol=1e-4)


def test_where_the_kernels_do_not_fit_the_modules_run():
    stage, x = stage_and_input(channels=12)  # channels not a multiple of 8
    z = stage.conv(x)
    assert not fits(z, stage.act, stage.norm)
    stage, x = stage_and_input()
    z = stage.conv(x)
    assert fits(z, stage.act, stage.norm)
    assert not fits(z.contiguous(), stage.act, stage.norm)  # not channels_last
    assert not fits(z.double(), stage.act, stage.norm)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fits(z, stage.act, stage.norm)
    stage.eval()
    assert not fits(z, stage.act, stage.norm)  # evaluation uses the running statistics: the modules' own path


@pytest.mark.parametrize("residual_layout", ["channels_last", "contiguous"])
def test_mixer_block_with_the_residual_in_the_kernel_matches_the_module(residual_layout):
    """The skip connection is added in the normalizing pass; its gradient flows to the block's input as before. An
    input the kernel does not take (not channels_last) falls back to the modules and the plain add."""
    torch.manual_seed(0)
    plain = MixerBlock(16, 5).to(memory_format=torch.channels_last)
    fused = copy.deepcopy(plain)
    assert use_fused_gelu_norm(fused) == 2 and type(fused) is FusedMixerBlock
    x = torch.randn(4, 16, 6, 6)
    if residual_layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    assert fits(fused.depthwise.conv(x), fused.depthwise.act, fused.depthwise.norm, x) == (
        residual_layout == "channels_last")
    grad_y = torch.randn(4, 16, 6, 6)
    results = []
    for block in (plain, fused):
        xs = x.clone().requires_grad_()
        y = block(xs)
        y.backward(grad_y)
        results.append([y, xs.grad] + [p.grad for p in block.parameters()] + list(block.buffers()))
    for name, a, b in zip(["output", "input grad"] + [n for n, _ in plain.named_parameters()]
                          + [n for n, _ in plain.named_buffers()], *results):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4, msg=name)


def test_the_model_swap_keeps_its_state_dict_and_is_reproducible():
    torch.manual_seed(0)
    model = build_model(ModelConfig(dim=16, depth=2)).to(memory_format=torch.channels_last)
    keys = model.state_dict().keys()
    assert use_fused_gelu_norm(model) == 5  # the stem and two per block
    assert model.state_dict().keys() == keys
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    runs = []
    for _ in range(2):
        trained = copy.deepcopy(model)
        F.cross_entropy(trained(x), torch.arange(4)).backward()
        runs.append([p.grad for p in trained.parameters()] + list(trained.buffers()))
    assert all(torch.equal(a, b) for a, b in zip(*runs))  # bit for bit with the same threads


def test_a_mean_far_above_the_spread_keeps_the_variance():
    """Sums about a value near the mean: E[g^2] - mean^2 would lose the variance when mean / std is 1000."""
    torch.manual_seed(0)
    z = (1000 + torch.randn(4, 8, 6, 6)).contiguous(memory_format=torch.channels_last)
    norm = torch.nn.BatchNorm2d(8)
    zs = [z.clone().requires_grad_() for _ in range(2)]
    y_fused = gelu_batch_norm(zs[0], norm)
    y_plain = F.batch_norm(F.gelu(zs[1].double()), None, None, norm.weight.double(), norm.bias.double(), True, 0.1,
                           norm.eps)
    grad = torch.randn_like(y_plain)
    y_fused.backward(grad.float())
    y_plain.backward(grad)
    torch.testing.assert_close(y_fused.double(), y_plain, rtol=1e-3, atol=2e-3)
    torch.testing.assert_close(zs[0].grad.double(), zs[1].grad.double(), rtol=1e-3, atol=2e-3)
    torch.testing.assert_close(norm.running_var, torch.full((8,), 0.9 + 0.1 * zs[1].detach().var((0, 2, 3)).mean()),
                               rtol=0.05, atol=0)


def test_gelu_keeps_its_negative_tail():
    z = torch.full((1, 8, 2, 2), -6.0).contiguous(memory_format=torch.channels_last)
    z[0, :, 0, 0] = -7.0
    norm = torch.nn.BatchNorm2d(8, affine=True)
    gelu_batch_norm(z, norm)  # running_mean now holds 0.1 x the batch mean of GELU(z), about -1e-8
    expected = 0.1 * F.gelu(z.double()).mean((0, 2, 3)).float()
    torch.testing.assert_close(norm.running_mean, expected, rtol=1e-2, atol=0)  # not 0: 1 + erf(z) kept apart
