"""A faster weight gradient for ConvMixer's depthwise convolutions on the CPU.

On the CPU, oneDNN's weight gradient of a depthwise 5 x 5 convolution is the slowest op of a ConvMixer step: about
85 ms per block for 128 images in bf16, against 3 ms for the forward and 6 ms for the input gradient (2-core EPYC).
The same gradient written as k*k shifted products summed over batch and space, compiled by TorchInductor into one
vectorized loop, takes about 13 ms. `use_fast_weight_grad` swaps that in and leaves the forward, the input gradient,
the parameters and the state dict as they were. Without a working compiler it says so once and changes nothing.
"""

from __future__ import annotations

import functools
import logging
import warnings

import torch
import torch.nn.functional as F
from torch import nn


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
    # A CUDA build of torch on a machine without a GPU warns "No CUDA runtime is found" when TorchInductor loads
    # its C++ builder; it builds CPU code here, so the warning would only alarm.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    try:
        compiled = torch.compile(weight_and_bias_grad)
        probe = torch.randn(2, 4, 6, 6)
        torch.testing.assert_close(compiled(probe, probe, 3), weight_and_bias_grad(probe, probe, 3))
        return compiled
    except Exception as error:  # any compiler failure means: keep oneDNN's kernel
        warnings.warn(f"train.fast_depthwise_grad: torch.compile failed on this machine ({type(error).__name__}: "
                      f"{str(error).splitlines()[0] if str(error) else ''}); using the standard, slower kernel.")
        return None


class _DepthwiseConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inputs, weight, bias, kernel_size, grad_fn):
        if torch.is_autocast_enabled(inputs.device.type):  # do autocast's cast here, so backward sees one dtype
            dtype = torch.get_autocast_dtype(inputs.device.type)
            inputs, weight = inputs.to(dtype), weight.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
        ctx.save_for_backward(inputs, weight)
        ctx.has_bias, ctx.kernel_size, ctx.grad_fn = bias is not None, kernel_size, grad_fn
        return F.conv2d(inputs, weight, bias, padding=kernel_size // 2, groups=inputs.shape[1])

    @staticmethod
    def backward(ctx, grad_output):
        inputs, weight = ctx.saved_tensors
        pad, channels = ctx.kernel_size // 2, inputs.shape[1]
        # oneDNN is fast only when the gradient has the inputs' dtype and memory format (channels_last or not).
        grad_output = grad_output.to(inputs.dtype).contiguous(memory_format=_memory_format(inputs))
        grad_input = None
        if ctx.needs_input_grad[0]:  # input only: asking oneDNN for the bias gradient runs its slow weight kernel too
            grad_input = torch.ops.aten.convolution_backward(
                grad_output, inputs, weight, None, [1, 1], [pad, pad], [1, 1], False, [0, 0], channels,
                [True, False, False])[0]
        grad_weight, grad_bias = ctx.grad_fn(inputs, grad_output, ctx.kernel_size)
        # The weight's own strides (channels_last differs in its size-1 dimension): DDP copies a gradient whose
        # strides differ from its bucket's, and warns, at every step.
        grad_weight = torch.empty_strided(weight.shape, weight.stride(), dtype=grad_weight.dtype,
                                          device=grad_weight.device).copy_(grad_weight)
        return grad_input, grad_weight, grad_bias if ctx.has_bias else None, None, None


def _memory_format(tensor: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if tensor.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


class FastGradDepthwiseConv2d(nn.Conv2d):
    """nn.Conv2d (depthwise, stride 1, 'same' padding, odd square kernel) with the compiled weight gradient."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return _DepthwiseConv.apply(inputs, self.weight, self.bias, self.kernel_size[0], compiled_grads())


def is_same_depthwise(conv: nn.Module) -> bool:
    k = conv.kernel_size[0] if isinstance(conv, nn.Conv2d) else 0
    return (type(conv) is nn.Conv2d and conv.groups == conv.in_channels == conv.out_channels and k % 2 == 1
            and conv.kernel_size == (k, k) and conv.stride == (1, 1) and conv.dilation == (1, 1)
            and conv.padding in ("same", (k // 2, k // 2)) and conv.padding_mode == "zeros")


def use_fast_weight_grad(model: nn.Module) -> int:
    """Switches every eligible depthwise conv of `model` to the compiled weight gradient; returns how many."""
    if compiled_grads() is None:
        return 0
    convs = [m for m in model.modules() if is_same_depthwise(m)]
    for conv in convs:
        conv.__class__ = FastGradDepthwiseConv2d  # same parameters and state dict keys, another backward
    return len(convs)
