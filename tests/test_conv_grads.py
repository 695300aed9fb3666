"""The faster weight gradients (the CPU fast path: for the depthwise convs a C kernel in fp32 and TorchInductor's in
bf16, for the pointwise convs a matrix product in fp32) against PyTorch's own convolution."""

import copy

import pytest
import torch
import torch.nn.functional as F

from trainer import cpu_kernels
from trainer.config import ModelConfig
from trainer.conv_grads import (FastGradConv2d, compiled_grads, grad_function, native_weight_and_bias_grad,
                                pointwise_weight_and_bias_grad, use_fast_weight_grad, weight_and_bias_grad)
from trainer.model import build_model


@pytest.mark.parametrize("kernel_size", [3, 5])
@pytest.mark.parametrize("channels_last", [False, True])
def test_weight_and_bias_grad_match_autograd(kernel_size, channels_last):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 6, kernel_size, groups=6, padding="same").double()
    x = torch.randn(4, 6, 9, 7, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    grad_output = torch.randn(4, 6, 9, 7, dtype=torch.float64)
    conv(x).backward(grad_output)
    weight, bias = weight_and_bias_grad(x, grad_output, kernel_size)
    torch.testing.assert_close(weight.double(), conv.weight.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bias.double(), conv.bias.grad, rtol=1e-5, atol=1e-5)


def test_swapped_model_has_the_same_outputs_gradients_and_state_dict():
    assert compiled_grads() is not None, "TorchInductor must build CPU code here (gcc is on this machine)"
    torch.manual_seed(0)
    plain = build_model(ModelConfig(dim=16, depth=3)).to(memory_format=torch.channels_last)
    fast = copy.deepcopy(plain)
    assert use_fast_weight_grad(fast) == 6
    swapped = [name for name, m in fast.named_modules() if isinstance(m, FastGradConv2d)]
    assert swapped == [f"blocks.{i}.{kind}.conv" for i in range(3) for kind in ("depthwise", "pointwise")]  # not the stem
    assert fast.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(8, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (8,))
    for model in (plain, fast):
        F.cross_entropy(model(x), y).backward()
    for (name, a), b in zip(plain.named_parameters(), fast.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_swapped_model_under_bf16_autocast_stays_close():
    torch.manual_seed(1)
    plain = build_model(ModelConfig(dim=32, depth=2)).to(memory_format=torch.channels_last)
    fast = copy.deepcopy(plain)
    use_fast_weight_grad(fast)
    x = torch.randn(16, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (16,))
    for model in (plain, fast):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
    for (name, a), b in zip(plain.named_parameters(), fast.parameters()):
        assert b.grad.dtype == torch.float32
        # bf16 rounding: compare directions and sizes, not bits
        cosine = F.cosine_similarity(a.grad.flatten(), b.grad.flatten(), dim=0)
        assert cosine > 0.99, (name, cosine)


@pytest.mark.parametrize("groups, kernel_size", [(8, 5), (1, 1)])
def test_weight_gradient_has_the_weights_strides(groups, kernel_size):
    """DDP copies a gradient whose strides differ from its parameter's, at every step, and warns about it."""
    conv = torch.nn.Conv2d(8, 8, kernel_size, groups=groups, padding="same").to(memory_format=torch.channels_last)
    assert use_fast_weight_grad(conv) == 1
    conv(torch.randn(2, 8, 6, 6).contiguous(memory_format=torch.channels_last)).sum().backward()
    assert conv.weight.grad.stride() == conv.weight.stride() != torch.empty(conv.weight.shape).stride()


@pytest.mark.parametrize("kernel_size", [3, 5, 7, 9])
@pytest.mark.parametrize("height, width", [(16, 16), (5, 11), (1, 3)])
def test_c_kernel_matches_autograd(kernel_size, height, width):
    assert cpu_kernels.library() is not None, "the C kernel must build here (gcc is on this machine)"
    torch.manual_seed(kernel_size)
    conv = torch.nn.Conv2d(24, 24, kernel_size, groups=24, padding="same").double()
    x = torch.randn(3, 24, height, width, dtype=torch.float64)
    grad_output = torch.randn(3, 24, height, width, dtype=torch.float64)
    conv(x).backward(grad_output)
    weight, bias = native_weight_and_bias_grad(x.float(), grad_output.float(), kernel_size)
    torch.testing.assert_close(weight.double(), conv.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(bias.double(), conv.bias.grad, rtol=1e-4, atol=1e-4)


def test_each_precision_gets_its_kernel_and_odd_shapes_get_onednns():
    fp32 = torch.randn(2, 16, 8, 8)
    assert grad_function(fp32, 5, 16) is native_weight_and_bias_grad
    assert grad_function(fp32.bfloat16(), 5, 16) is compiled_grads()
    assert grad_function(torch.randn(2, 12, 8, 8), 5, 12) is None  # channels not a multiple of 8: oneDNN's kernel
    assert grad_function(fp32, 1, 1) is pointwise_weight_and_bias_grad
    assert grad_function(fp32.bfloat16(), 1, 1) is None  # bf16: oneDNN's, not measured against a matrix product
    one_channel = torch.randn(2, 1, 8, 8)  # model.dim=1: a depthwise conv with groups 1 is not a pointwise one
    assert grad_function(one_channel, 5, 1) is None and grad_function(one_channel.bfloat16(), 5, 1) is compiled_grads()


def test_only_depthwise_or_only_pointwise():
    model = build_model(ModelConfig(dim=16, depth=2))
    assert use_fast_weight_grad(copy.deepcopy(model), depthwise=False) == 2
    assert use_fast_weight_grad(copy.deepcopy(model), pointwise=False) == 2
    assert use_fast_weight_grad(model, depthwise=False, pointwise=False) == 0


@pytest.mark.parametrize("channels_last", [False, True])
def test_pointwise_grads_match_autograd(channels_last):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(16, 24, 1).double()
    fast = copy.deepcopy(conv).float()
    assert use_fast_weight_grad(fast) == 1
    x = torch.randn(3, 16, 5, 7, dtype=torch.float64)
    grad_output = torch.randn(3, 24, 5, 7, dtype=torch.float64)
    if channels_last:
        x, grad_output = (t.contiguous(memory_format=torch.channels_last) for t in (x, grad_output))
    x_fast = x.float().requires_grad_()
    x.requires_grad_()
    conv(x).backward(grad_output)
    weight, bias = pointwise_weight_and_bias_grad(x.detach(), grad_output)
    torch.testing.assert_close(weight, conv.weight.grad)
    torch.testing.assert_close(bias, conv.bias.grad)
    fast(x_fast).backward(grad_output.float())
    for mine, expected in ((fast.weight.grad, conv.weight.grad), (fast.bias.grad, conv.bias.grad), (x_fast.grad, x.grad)):
        torch.testing.assert_close(mine.double(), expected, rtol=1e-5, atol=1e-5)
