"""Devices and CPU threads: which device a run uses and how many torch threads a fold gets.

One thread policy for every executor: a fold uses ``threads`` torch intra-op threads when the
run's executor names a count, else this process's cores split evenly between the tasks it runs at
once (1 here and in a SLURM job, a dask worker's thread count there). The number of threads can
change the last bits of CPU float sums, so two runs give byte-identical predictions only with the
same count (``merlib train --threads N`` pins it).

Base layer: imports nothing from merlib; torch and distributed are imported on use.
"""
from __future__ import annotations

import os


def resolve_device(name: str):
    """``auto`` -> CUDA when available, else the CPU; any other name as torch reads it."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def available_cores() -> int:
    """Cores this process may run on (the affinity mask SLURM and containers set), else all."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def cpu_threads(workers: int = 1, cores: int | None = None) -> int:
    """Torch threads for each of ``workers`` fold processes sharing ``cores`` (default: this
    process's cores): the ``local`` executor uses ``cpu_threads(1)``, a dask LocalCluster of N
    CPU workers ``cpu_threads(N)``."""
    cores = available_cores() if cores is None else cores
    return max(1, cores // max(1, workers))


def task_slots() -> int:
    """How many tasks this process runs at once: a dask worker's threads, else 1."""
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return 1


def fold_threads(requested: int = 0) -> int:
    """The policy: ``requested`` when set, else this process's cores over its task slots."""
    return requested or cpu_threads(task_slots())


def use_fold_threads(requested: int = 0) -> int:
    """Set torch's intra-op threads by :func:`fold_threads` (and keep freed memory, see
    :func:`keep_freed_memory`); returns the count."""
    import torch

    keep_freed_memory()
    n = fold_threads(requested)
    torch.set_num_threads(n)
    return n


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of handing it back to the OS.

    A CPU training step allocates and frees tensors of hundreds of MB (a batch's block windows,
    gradients); by default each comes from a fresh ``mmap`` and is returned on free, so every
    step pays the page faults of touching it anew, which on a 2-core VM took a third of a
    24-block fold (``bench/quick_profile.py``). The price: the process keeps its peak memory.
    No-op (False) where the C library is not glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]
