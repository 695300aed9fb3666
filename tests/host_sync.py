"""Records what in a piece of code would make the CPU wait for the GPU, using the `meta` device as the GPU.

A CUDA program stalls its CPU whenever it reads a value computed on the GPU (`.item()`, `nonzero`, boolean masking,
`unique`, data-dependent shapes) or copies host memory to the GPU without `non_blocking` from pinned memory (the
copy waits for all queued work). On `meta` tensors nothing runs, but every operator still passes through PyTorch's
dispatcher, where `HostSyncRecorder` sees it: run the code under it with tensors on `meta`, then read `.syncs`
(each a reason) and `.uploads` (host-to-device copies, with their non_blocking flag).
"""

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

DATA_DEPENDENT = {"_local_scalar_dense", "item", "nonzero", "nonzero_static", "masked_select", "unique", "_unique",
                  "_unique2", "unique_dim", "unique_consecutive", "equal", "is_nonzero", "bincount", "histc",
                  "repeat_interleave", "masked_scatter"}
FACTORIES_FROM_DATA = {torch.tensor, torch.as_tensor, torch.asarray}  # build on the CPU, then copy, blocking


def _tensors(args, kwargs):
    return [a for a in tree_leaves((args, kwargs or {})) if isinstance(a, torch.Tensor)]


class _Dispatch(TorchDispatchMode):
    def __init__(self, recorder):
        super().__init__()
        self.recorder = recorder

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        tensors = _tensors(args, kwargs)
        on_host = [t for t in tensors if t.device.type == "cpu" and t.dim() > 0]
        on_device = [t for t in tensors if t.device.type != "cpu"]
        if name in DATA_DEPENDENT and on_device:
            self.recorder.syncs.append(f"{name}: reads data on the device")
        if name in ("index", "index_put", "index_put_", "_index_put_impl_") and on_device and any(
                t.dtype == torch.bool for t in tree_leaves(args[1:]) if isinstance(t, torch.Tensor)):
            self.recorder.syncs.append(f"{name} with a boolean mask: its result's size depends on the data")
        result = func(*args, **kwargs)
        if name in ("_to_copy", "copy_") and on_host:
            source = args[1] if name == "copy_" else args[0]
            target = args[0] if name == "copy_" else result
            if source.device.type == "cpu" and target.device.type != "cpu":
                blocking = not (kwargs.get("non_blocking") or (name == "copy_" and len(args) > 2 and args[2]))
                self.recorder.uploads.append({"bytes": source.numel() * source.element_size(), "blocking": blocking})
                if blocking:
                    self.recorder.syncs.append(f"{name}: a blocking host-to-device copy of {tuple(source.shape)}")
        elif on_host and on_device:
            self.recorder.syncs.append(f"{name}: mixes host tensors {[tuple(t.shape) for t in on_host]} into a "
                                       f"device op (an implicit blocking copy)")
        return result


class _Function(TorchFunctionMode):
    def __init__(self, recorder):
        super().__init__()
        self.recorder = recorder

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        device = kwargs.get("device")
        if func in FACTORIES_FROM_DATA and device is not None and torch.device(device).type != "cpu":
            self.recorder.syncs.append(f"{func.__name__}(..., device={device}): built on the host, copied blocking")
        if (func is torch.Tensor.__setitem__ and isinstance(args[2], (int, float, bool))
                and args[0].device.type != "cpu"):
            # CUDA wraps the number in a CPU tensor and copies it (blocking) into a 0-dim target; on `meta` the
            # number is wrapped on `meta`, so the dispatcher never shows that copy.
            self.recorder.syncs.append("a Python number written into a device tensor: a blocking copy on CUDA")
        return func(*args, **kwargs)


class HostSyncRecorder:
    def __init__(self):
        self.syncs, self.uploads = [], []
        self._modes = (_Function(self), _Dispatch(self))

    def __enter__(self):
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc):
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
