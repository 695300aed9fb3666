"""The C kernels of `cpu_kernels.c` (the depthwise weight gradient; GELU with training-mode BatchNorm), built for this
CPU with the system's C compiler on first use, kept in the compile cache, and loaded with ctypes.

No library has these kernels at a useful speed on the CPU: oneDNN's depthwise weight gradient runs far below the
memory bandwidth, and TorchInductor's code for both is slower than eager PyTorch on an AVX2 CPU (measured; see
README, Speed). The source is small, builds in about a second, and needs only a C compiler, as TorchInductor does.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import subprocess
import tempfile
import warnings
from pathlib import Path

from trainer.config import COMPILE_CACHE
from trainer.hardware import cpuinfo

SOURCE = Path(__file__).with_name("cpu_kernels.c")
_P, _L = ctypes.c_void_p, ctypes.c_long
SIGNATURES = {
    "depthwise_weight_grad": [_P] * 4 + [_L] * 5,
    "gelu_forward": [_P] * 5 + [_L] * 2,
    "scale_shift": [_P] * 5 + [_L] * 2,
    "backward_sums": [_P] * 4 + [_L] * 2,
    "gelu_backward": [_P] * 8 + [_L] * 2,
}


def use_compile_cache(folder: str = COMPILE_CACHE) -> Path:
    """Keeps TorchInductor's caches and these kernels in `folder` (or TORCHINDUCTOR_CACHE_DIR, when set), so that a
    second run starts warm: by default TorchInductor caches under /tmp, which a reboot empties."""
    # A CUDA build of torch on a machine without a GPU warns "No CUDA runtime is found" when TorchInductor loads its
    # C++ builder; it builds CPU code here, so the warning would only alarm.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    return Path(os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(folder).expanduser())))


@functools.cache
def keep_freed_memory() -> bool:
    """Asks glibc's malloc to keep freed memory for reuse (no trimming, no mmap below 32 MB). Every op of a step
    allocates its output; by default glibc hands the activations' megabytes back to the system and takes them again
    page by page, and those page faults cost a 2-core VM about a tenth of its step. Returns whether glibc took it."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl): nothing to do
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_trim_threshold, 1 << 30) and libc.mallopt(m_mmap_threshold, 32 << 20))


@functools.cache
def library():
    """The kernels, built with OpenMP where the compiler has it, or None with a warning (no C compiler). The build is
    cached by source, compiler and CPU, so that a cache shared by machines of several kinds (a home folder on a
    cluster) keeps one build for each."""
    compiler = os.environ.get("CC", "cc")
    cpu = cpuinfo("flags") or platform.processor()
    folder = use_compile_cache() / "convmixer-kernels"  # prepare_training's setting, when it came first, wins
    errors = []
    for flags in (["-fopenmp"], []):
        command = [compiler, "-O3", "-march=native", "-shared", "-fPIC", *flags]
        key = hashlib.sha256(SOURCE.read_bytes() + repr((command, cpu, platform.machine())).encode()).hexdigest()[:16]
        built = folder / f"cpu_kernels-{key}.so"
        try:
            if not built.exists():
                folder.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryDirectory(dir=folder) as build:  # built aside, then renamed: atomic
                    subprocess.run([*command, str(SOURCE), "-o", f"{build}/{built.name}"], check=True,
                                   capture_output=True, text=True, timeout=120)
                    os.replace(f"{build}/{built.name}", built)
            kernels = ctypes.CDLL(str(built))
            for name, argtypes in SIGNATURES.items():
                getattr(kernels, name).argtypes = argtypes
            return kernels
        except (OSError, subprocess.SubprocessError) as error:
            errors.append(" ".join((getattr(error, "stderr", None) or str(error)).split())[:200])
    warnings.warn(f"The CPU kernels (trainer/cpu_kernels.c) could not be built with {compiler} ({errors[0]}); using "
                  f"PyTorch's slower ones. Install a C compiler (e.g. gcc), or set CC.")
    return None


def call(name: str, *args) -> None:
    """Runs kernel `name` on tensors (passed by their data pointers) and integers."""
    code = getattr(library(), name)(*(a.data_ptr() if hasattr(a, "data_ptr") else a for a in args))
    if code:
        raise RuntimeError(f"cpu_kernels.{name} returned {code} ({'out of memory' if code == 2 else 'bad shape'})")
