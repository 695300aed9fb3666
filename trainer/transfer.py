"""Moving many small CPU tensors to the GPU without making the CPU wait for it.

A plain `tensor.to("cuda")` from ordinary (pageable) memory blocks the CPU until the GPU has finished all work
queued before it, which leaves the GPU idle while Python prepares the next step. `send` packs every tensor of a
batch's metadata (row indices, augmentation draws) into one buffer, pins it, and issues a single non-blocking copy;
the tensors are then views into the buffer on the device.
"""

from __future__ import annotations

import dataclasses

import torch

ALIGN = 8  # bytes: every view of the buffer starts where any dtype may begin


def send(tree, device):
    """`tree` (tensors inside dataclasses, lists and tuples) with every tensor on `device`, in one copy."""
    device = torch.device(device)
    tensors = []
    _visit(tree, tensors.append)
    if all(t.device == device for t in tensors):
        return tree
    chunks, offsets, end = [], [], 0
    for tensor in tensors:
        raw = tensor.detach().cpu().contiguous().view(-1).view(torch.uint8)
        padding = -raw.numel() % ALIGN
        chunks += [raw, raw.new_zeros(padding)]
        offsets.append(end)
        end += raw.numel() + padding
    buffer = torch.cat(chunks)
    if device.type == "cuda":
        buffer = buffer.pin_memory()  # a copy from pinned memory runs asynchronously
    buffer = buffer.to(device, non_blocking=True)
    moved = iter([buffer[offset:offset + t.numel() * t.element_size()].view(t.dtype).view(t.shape)
                  for offset, t in zip(offsets, tensors)])
    return _visit(tree, lambda _: next(moved))


def _visit(node, on_tensor):
    """Calls on_tensor for each tensor in `node` (depth first) and rebuilds `node` from what it returns."""
    if isinstance(node, torch.Tensor):
        return on_tensor(node)
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        return dataclasses.replace(node, **{f.name: _visit(getattr(node, f.name), on_tensor)
                                            for f in dataclasses.fields(node)})
    if isinstance(node, (list, tuple)):
        return type(node)(_visit(item, on_tensor) for item in node)
    return node
