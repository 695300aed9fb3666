"""GELU followed by training-mode BatchNorm in C kernels (trainer/cpu_kernels.c), for the CPU in fp32.

Every convolution of ConvMixer is conv -> GELU -> BatchNorm. In eager PyTorch the two after the convolution take
five passes over the activations forward and backward, and on a 2-core AVX2 CPU they cost about as much as the
pointwise convolutions. Here the forward is one pass for GELU, its derivative and the batch statistics and one to
normalize; the backward one pass for BatchNorm's sums and one for the input gradient. GELU's derivative is kept in
place of its input, which is the same memory and spares the backward the erf. The running statistics are updated as nn.BatchNorm2d updates them. `use_fused_gelu_norm` swaps this in for
training on the CPU in fp32; evaluation, autocast and other devices keep the modules' own forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer import cpu_kernels
from trainer.model import MixerBlock


class _GeluBatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, weight, bias, eps, residual):
        n, channels, height, width = z.shape
        rows = n * height * width
        g, slope, y = torch.empty_like(z), torch.empty_like(z), torch.empty_like(z)
        sums = torch.empty(2, channels, dtype=torch.float64)
        # Sums about a value of each channel (GELU of its first element), so that a mean large against the spread
        # does not swallow the variance.
        pivot = F.gelu(z[0, :, 0, 0]).contiguous()
        cpu_kernels.call("gelu_forward", z, pivot, g, slope, sums, rows, channels)
        offset = sums[0] / rows
        mean = pivot.double() + offset
        var = (sums[1] / rows - offset * offset).clamp_min(0)  # biased, as BatchNorm normalizes
        rstd = (var + eps).rsqrt()
        scale = (weight.double() * rstd).float()
        shift = (bias.double() - mean * weight.double() * rstd).float()
        cpu_kernels.call("scale_shift", g, scale, shift, residual, y, rows, channels)  # None: no residual
        ctx.save_for_backward(slope, g, weight, mean, rstd)  # GELU's slope, not z: no erf in the backward
        return y, mean.float(), var.float()

    @staticmethod
    def backward(ctx, grad_y, _grad_mean, _grad_var):
        slope, g, weight, mean, rstd = ctx.saved_tensors
        n, channels, height, width = g.shape
        rows = n * height * width
        grad_y = grad_y.contiguous(memory_format=torch.channels_last)
        centre = mean.float()
        sums = torch.empty(2, channels, dtype=torch.float64)
        cpu_kernels.call("backward_sums", grad_y, g, centre, sums, rows, channels)
        # sum dy and sum dy * normalized g
        rounding = centre.double() - mean  # the float centre's rounding, put back in double
        grad_bias = sums[0]
        grad_scale = rstd * (sums[1] + rounding * sums[0])
        # BatchNorm's input gradient, w * rstd * (dy - mean(dy) - xhat * mean(dy * xhat)), as a * dy + b * (g - centre)
        # + k.
        a = weight.double() * rstd
        b = -a * rstd * grad_scale / rows
        k = -a * grad_bias / rows + b * rounding
        a, b, k = a.float(), b.float(), k.float()
        grad_z = torch.empty_like(g)
        cpu_kernels.call("gelu_backward", grad_y, slope, g, a, b, k, centre, grad_z, rows, channels)
        return grad_z, grad_scale.float(), grad_bias.float(), None, grad_y if ctx.needs_input_grad[4] else None


def fits(z: torch.Tensor, act: nn.Module, norm: nn.Module, residual: torch.Tensor | None = None) -> bool:
    """Whether the kernels compute what `norm(act(z)) (+ residual)` would (to float rounding), for these modules and
    these inputs."""
    if residual is not None and not (residual.shape == z.shape and residual.dtype == z.dtype
                                     and residual.is_contiguous(memory_format=torch.channels_last)):
        return False
    return (norm.training and z.device.type == "cpu" and z.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu") and z.dim() == 4 and z.shape[1] % 8 == 0
            and z.is_contiguous(memory_format=torch.channels_last) and type(act) is nn.GELU
            and act.approximate == "none" and type(norm) is nn.BatchNorm2d and norm.affine
            and norm.track_running_stats and norm.momentum is not None and cpu_kernels.library() is not None)


def gelu_batch_norm(z: torch.Tensor, norm: nn.BatchNorm2d, residual: torch.Tensor | None = None) -> torch.Tensor:
    """norm(GELU(z)) (+ residual) in training mode, with norm's running statistics updated as nn.BatchNorm2d does."""
    y, mean, var = _GeluBatchNorm.apply(z, norm.weight, norm.bias, norm.eps, residual)
    count = z.numel() // z.shape[1]
    with torch.no_grad():
        norm.running_mean.lerp_(mean, norm.momentum)
        norm.running_var.lerp_(var * count / max(count - 1, 1), norm.momentum)  # unbiased, as BatchNorm keeps it
        norm.num_batches_tracked.add_(1)
    return y


class FusedConvGeluNorm(nn.Sequential):
    """ConvMixer's conv -> GELU -> BatchNorm (`conv`, `act`, `norm`), with the fused kernels where they fit; a
    residual given is added in the normalizing pass."""

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        z = self.conv(x)
        if fits(z, self.act, self.norm, residual):
            return gelu_batch_norm(z, self.norm, residual)
        y = self.norm(self.act(z))
        return y if residual is None else y + residual


class FusedMixerBlock(MixerBlock):
    """MixerBlock with its skip connection added by the depthwise stage's kernel: one pass over memory fewer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x, residual=x))


def use_fused_gelu_norm(model: nn.Module) -> int:
    """Switches every conv -> GELU -> BatchNorm of `model` to the fused kernels, and every MixerBlock's residual add
    into its depthwise stage; returns how many stages."""
    stages = [m for m in model.modules() if type(m) is nn.Sequential and list(m._modules) == ["conv", "act", "norm"]]
    for stage in stages:
        stage.__class__ = FusedConvGeluNorm  # same modules and state dict keys, another forward
    for block in [m for m in model.modules() if type(m) is MixerBlock]:
        if isinstance(block.depthwise, FusedConvGeluNorm):
            block.__class__ = FusedMixerBlock
    return len(stages)
