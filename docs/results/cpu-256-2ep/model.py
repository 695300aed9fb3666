"""ConvMixer ("Patches Are All You Need?", Trockman & Kolter) as named modules.

Same layers, parameters and outputs as the reference `nn.Sequential` in
locuslab/convmixer-cifar10; `from_reference_state_dict` loads its weights, and `timm_state_dict` gives timm's
ConvMixer ours. With huggingface_hub's mixin, `ConvMixer.from_pretrained(folder or repo id)` loads an exported model
(python -m trainer.export).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from collections import OrderedDict

import torch
from einops.layers.torch import Reduce
from huggingface_hub import PyTorchModelHubMixin
from torch import nn


def conv_gelu_bn(conv: nn.Conv2d) -> nn.Sequential:
    """ConvMixer applies every convolution as conv -> GELU -> BatchNorm."""
    return nn.Sequential(OrderedDict(conv=conv, act=nn.GELU(), norm=nn.BatchNorm2d(conv.out_channels)))


class MixerBlock(nn.Module):
    """Mixes space with a residual depthwise k x k conv, then channels with a pointwise 1 x 1 conv."""

    def __init__(self, dim: int, kernel_size: int):
        super().__init__()
        self.depthwise = conv_gelu_bn(nn.Conv2d(dim, dim, kernel_size, groups=dim, padding="same"))
        self.pointwise = conv_gelu_bn(nn.Conv2d(dim, dim, kernel_size=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(x + self.depthwise(x))


class ConvMixer(nn.Module, PyTorchModelHubMixin, library_name="pytorch", tags=["image-classification", "convmixer"],
                repo_url="https://github.com/locuslab/convmixer-cifar10"):
    def __init__(self, dim: int = 256, depth: int = 8, kernel_size: int = 5, patch_size: int = 2, num_classes: int = 10):
        super().__init__()
        # Patch embedding: non-overlapping patch_size x patch_size patches, each to a dim-vector.
        self.stem = conv_gelu_bn(nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size))
        self.blocks = nn.Sequential(*[MixerBlock(dim, kernel_size) for _ in range(depth)])
        self.pool = Reduce("b c h w -> b c", "mean")
        self.head = nn.Linear(dim, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.blocks(self.stem(images))))


def build_model(model_config) -> ConvMixer:
    c = model_config
    return ConvMixer(c.dim, c.depth, c.kernel_size, c.patch_size, c.num_classes)


@dataclass
class ModelCost:
    table: str  # torchinfo's layer table
    parameters: int
    mult_adds: int  # per image


def model_cost(model: nn.Module, image_size: int = 32) -> ModelCost:
    from torchinfo import Units, summary

    stats = summary(model, input_size=(1, 3, image_size, image_size), depth=3, verbose=0, mode="eval", device="cpu",
                    col_names=("output_size", "num_params", "mult_adds"), row_settings=("var_names",))
    # On Python 3.11+ torchinfo writes its unit as "(Units.MEGABYTES)" where it means "(M)".
    table = re.sub(r"\(Units\.(\w+)\)", lambda unit: f"({Units[unit.group(1)].value})", str(stats))
    return ModelCost(table, stats.total_params, stats.total_mult_adds)


def timm_state_dict(state_dict: dict) -> dict:
    """Our state dict with timm's names (timm.models.convmixer.ConvMixer: `stem.0`, `blocks.<i>.0.fn.0`, ...)."""
    parts = {"stem.conv": "stem.0", "stem.norm": "stem.2", "depthwise.conv": "0.fn.0", "depthwise.norm": "0.fn.2",
             "pointwise.conv": "1", "pointwise.norm": "3"}
    return {re.sub("|".join(map(re.escape, parts)), lambda m: parts[m.group(0)], key): value
            for key, value in state_dict.items()}


def from_reference_state_dict(state_dict: dict) -> dict:
    """Renames a reference state dict (nn.Sequential, maybe saved through nn.DataParallel) to ours.

    Reference layout: 0 stem conv, 2 stem BN, 3..3+depth-1 blocks (`.0.fn.0` depthwise conv,
    `.0.fn.2` its BN, `.1` pointwise conv, `.3` its BN), then pool, flatten and the Linear head.
    """
    state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    block_ids = sorted({int(m.group(1)) for key in state_dict if (m := re.match(r"(\d+)\.0\.fn\.", key))})
    if not block_ids:
        raise ValueError("This state dict has no ConvMixer blocks ('<i>.0.fn.0.weight'); is it the reference layout?")
    first, depth = block_ids[0], len(block_ids)
    head = first + depth + 2  # after AdaptiveAvgPool2d and Flatten
    block_parts = {"0.fn.0": "depthwise.conv", "0.fn.2": "depthwise.norm", "1": "pointwise.conv", "3": "pointwise.norm"}
    renamed = {}
    for key, value in state_dict.items():
        index, rest = key.split(".", 1)
        index = int(index)
        if index == 0:
            new = "stem.conv." + rest
        elif index == 2:
            new = "stem.norm." + rest
        elif index == head:
            new = "head." + rest
        elif index in block_ids:
            part, leaf = rest.rsplit(".", 1)
            if part not in block_parts:
                raise ValueError(f"Unexpected reference key '{key}'.")
            new = f"blocks.{index - first}.{block_parts[part]}.{leaf}"
        else:
            raise ValueError(f"Unexpected reference key '{key}'.")
        renamed[new] = value
    return renamed
