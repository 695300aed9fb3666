"""Faster weight gradients for ConvMixer's convolutions on the CPU.

oneDNN computes a convolution's forward and input gradient well on the CPU, but its weight gradients are slow for
ConvMixer's shapes. Per block and pass of 64 images, on a 2-core AMD EPYC with AVX2 in fp32:

- depthwise 5 x 5: 32 ms (its forward takes 6 ms), and about 42 ms in bf16 on a 2-core EPYC with AVX512-BF16. In fp32 a
  C kernel (`cpu_kernels.c`, built on first use: trainer/cpu_kernels.py) takes 8 ms; in bf16 (autocast) the gradient
  as k*k shifted products summed over batch and space, compiled by TorchInductor into one vectorized loop, about
  6.5 ms (in fp32 on AVX2 it takes 44 ms, slower than oneDNN).
- pointwise 1 x 1: 24-39 ms for the weight and bias, against 15 ms for the forward, which does the same number of
  multiply-adds. On the channels-last view the weight gradient is one matrix product, grad_output^T @ input
  (16,384 x 256 by 16,384 x 256), that MKL does in 16-18 ms. fp32 only: bf16 keeps oneDNN's, unmeasured there.

`use_fast_weight_grad` swaps them in and leaves the forward, the input gradient, the parameters and the state dict as
they were. A kernel that cannot be built (no C compiler) says so once, and oneDNN's gradient is used.
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from trainer import cpu_kernels


def weight_and_bias_grad(inputs: torch.Tensor, grad_output: torch.Tensor, kernel_size: int):
    """d loss / d (weight, bias) of a stride-1 'same' depthwise convolution, summed in fp32: (C, 1, k, k), (C,)."""
    pad = kernel_size // 2
    height, width = inputs.shape[-2:]
    padded, grad_output = F.pad(inputs.float(), (pad, pad, pad, pad)), grad_output.float()
    taps = [(padded[:, :, i:i + height, j:j + width] * grad_output).sum((0, 2, 3))
            for i in range(kernel_size) for j in range(kernel_size)]
    return torch.stack(taps, 1).view(-1, 1, kernel_size, kernel_size), grad_output.sum((0, 2, 3))


@functools.cache
def compiled_grads():
    """The compiled `weight_and_bias_grad`, or None (with a warning) where TorchInductor cannot build CPU code."""
    cpu_kernels.use_compile_cache()  # prepare_training's setting, when it came first, wins; quiets a CUDA warning
    try:
        compiled = torch.compile(weight_and_bias_grad)
        probe = torch.randn(2, 4, 6, 6)
        torch.testing.assert_close(compiled(probe, probe, 3), weight_and_bias_grad(probe, probe, 3))
        return compiled
    except Exception as error:  # any compiler failure means: keep oneDNN's kernel
        warnings.warn(f"train.fast_depthwise_grad: torch.compile failed on this machine ({type(error).__name__}: "
                      f"{str(error).splitlines()[0] if str(error) else ''}); using the standard, slower kernel.")
        return None


def native_weight_and_bias_grad(inputs: torch.Tensor, grad_output: torch.Tensor, kernel_size: int):
    """`weight_and_bias_grad` by the C kernel (fp32, channels a multiple of 8, k in 3..9)."""
    x = inputs.contiguous(memory_format=torch.channels_last)
    g = grad_output.contiguous(memory_format=torch.channels_last)
    n, channels, height, width = x.shape
    taps, bias = torch.empty(kernel_size * kernel_size, channels), torch.empty(channels)
    cpu_kernels.call("depthwise_weight_grad", x, g, taps, bias, n, height, width, channels, kernel_size)
    return taps.t().reshape(channels, 1, kernel_size, kernel_size), bias


def pointwise_weight_and_bias_grad(inputs: torch.Tensor, grad_output: torch.Tensor, kernel_size: int = 1):
    """d loss / d (weight, bias) of a 1 x 1 convolution, as one matrix product on the channels-last view."""
    x = inputs.permute(0, 2, 3, 1).reshape(-1, inputs.shape[1])  # a view for channels-last tensors, else a copy
    g = grad_output.permute(0, 2, 3, 1).reshape(-1, grad_output.shape[1])
    return (g.t() @ x).view(g.shape[1], x.shape[1], 1, 1), g.sum(0)


def grad_function(inputs: torch.Tensor, kernel_size: int, groups: int):
    """The fastest weight-and-bias gradient for these inputs that this machine can build, or None for oneDNN's."""
    if groups == 1 and kernel_size == 1:
        return pointwise_weight_and_bias_grad if inputs.dtype == torch.float32 else None
    if inputs.dtype == torch.float32:
        fits = inputs.shape[1] % 8 == 0 and kernel_size in (3, 5, 7, 9) and inputs.device.type == "cpu"
        return native_weight_and_bias_grad if fits and cpu_kernels.library() is not None else None
    return compiled_grads()


class _Conv(torch.autograd.Function):
    """F.conv2d with stride 1 and 'same' padding (groups 1 or depthwise), with `grad_function`'s weight gradient."""

    @staticmethod
    def forward(ctx, inputs, weight, bias, kernel_size, groups):
        if torch.is_autocast_enabled(inputs.device.type):  # do autocast's cast here, so backward sees one dtype
            dtype = torch.get_autocast_dtype(inputs.device.type)
            inputs, weight = inputs.to(dtype), weight.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
        ctx.save_for_backward(inputs, weight)
        ctx.has_bias, ctx.kernel_size, ctx.groups = bias is not None, kernel_size, groups
        return F.conv2d(inputs, weight, bias, padding=kernel_size // 2, groups=ctx.groups)

    @staticmethod
    def backward(ctx, grad_output):
        inputs, weight = ctx.saved_tensors
        pad = ctx.kernel_size // 2
        # oneDNN is fast only when the gradient has the inputs' dtype and memory format (channels_last or not).
        grad_output = grad_output.to(inputs.dtype).contiguous(memory_format=_memory_format(inputs))
        fast_grad = grad_function(inputs, ctx.kernel_size, ctx.groups)
        # Input only, when there is a faster weight gradient: asking oneDNN for the bias gradient runs its slow weight
        # kernel too.
        wanted = [ctx.needs_input_grad[0], fast_grad is None, fast_grad is None and ctx.has_bias]
        grad_input, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad_output, inputs, weight, [weight.shape[0]] if ctx.has_bias else None, [1, 1], [pad, pad], [1, 1], False,
            [0, 0], ctx.groups, wanted)
        if fast_grad is not None:
            grad_weight, grad_bias = fast_grad(inputs, grad_output, ctx.kernel_size)
            # The weight's own strides (channels_last differs in its size-1 dimension): DDP copies a gradient whose
            # strides differ from its bucket's, and warns, at every step.
            grad_weight = torch.empty_strided(weight.shape, weight.stride(), dtype=grad_weight.dtype,
                                              device=grad_weight.device).copy_(grad_weight)
        return grad_input, grad_weight, grad_bias if ctx.has_bias else None, None, None


def _memory_format(tensor: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if tensor.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


class FastGradConv2d(nn.Conv2d):
    """nn.Conv2d (depthwise with an odd square kernel and 'same' padding, or 1 x 1; stride 1) with a faster weight
    gradient."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return _Conv.apply(inputs, self.weight, self.bias, self.kernel_size[0], self.groups)


def is_same_depthwise(conv: nn.Module) -> bool:
    k = conv.kernel_size[0] if isinstance(conv, nn.Conv2d) else 0
    return (type(conv) is nn.Conv2d and conv.groups == conv.in_channels == conv.out_channels and k % 2 == 1
            and conv.kernel_size == (k, k) and conv.stride == (1, 1) and conv.dilation == (1, 1)
            and conv.padding in ("same", (k // 2, k // 2)) and conv.padding_mode == "zeros")


def is_pointwise(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.groups == 1 and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
            and conv.padding in ("same", "valid", (0, 0)) and conv.dilation == (1, 1))


def use_fast_weight_grad(model: nn.Module, depthwise: bool = True, pointwise: bool = True) -> int:
    """Switches the eligible depthwise and pointwise convs of `model` to the faster weight gradients; returns how
    many. The kernel for the precision the model runs in is chosen on each backward pass, and built on the first."""
    convs = [m for m in model.modules() if (depthwise and is_same_depthwise(m)) or (pointwise and is_pointwise(m))]
    for conv in convs:
        conv.__class__ = FastGradConv2d  # same parameters and state dict keys, another backward
    return len(convs)
