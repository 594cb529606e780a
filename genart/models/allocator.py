"""How a process that runs the models allocates memory: glibc's malloc set to keep the buffers of one forward
(or backward) pass for the next, instead of handing them back to the kernel after each pass and faulting
fresh zeroed pages in for the next one.

PyTorch allocates a CPU tensor with ``malloc``. By default glibc serves a block over its mmap threshold (128
KiB, raised on the fly up to 32 MiB) from fresh ``mmap`` pages and returns them on ``free``, and gives the
heap's free top back above 128 KiB; a thread other than the main one allocates from an arena of its own whose
heaps are at most 64 MiB, so a larger block is mmapped whatever the thresholds. A convolution's activations
at 224 px are megabytes (tens of them in a batch), so every pass faulted its buffers in again. Measured on
this project's machine (one thread, CPU time an image): ``efficientnet_lite0`` at 224 px took 11,000 page
faults and 49 ms an image in batches of 16 and 33 ms in batches of 4, against 20-24 ms at every batch size
with its memory reused; a training step of it (batch 32) 5.0 s of CPU instead of 3.8 (README, Benchmarks).

Two ways in, one setting:

- :data:`ALLOCATOR_ENV`, glibc's tunables, read when a process starts: for the processes genart starts to run
  models (Serve model replicas, Ray Train workers, the serving benchmark's plain app). Their model code runs
  on a thread of Ray's or of a server's, so they also put every thread on the main heap
  (``MALLOC_ARENA_MAX=1``).
- :func:`reuse_freed_memory`, the same through ``mallopt`` in a running process that runs the models on its
  main thread (``genart evaluate``, the benchmarks' in-process references).

The price: a process keeps its high-water mark of heap, and up to :data:`TRIM_THRESHOLD` free above it.
Tunables already in the environment win over both (``MALLOC_TRIM_THRESHOLD_=131072`` turns this off).
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["ALLOCATOR_ENV", "TRIM_THRESHOLD", "allocator_environment", "reuse_freed_memory"]

#: Free memory glibc may keep at the top of the heap before it gives it back (a training step's worth).
TRIM_THRESHOLD = 1 << 30
#: glibc's tunables for a process that runs models: one heap for every thread, no mmapped blocks, and up to
#: :data:`TRIM_THRESHOLD` of free memory kept.
ALLOCATOR_ENV = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD),
}
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # <malloc.h>
_applied: bool | None = None


def allocator_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (environment variables for a process to start) with :data:`ALLOCATOR_ENV` under it: a tunable
    ``env`` or this process' environment already sets is left as it is."""
    env = dict(env or {})
    return {**{k: v for k, v in ALLOCATOR_ENV.items() if k not in os.environ}, **env}


def reuse_freed_memory() -> bool:
    """This process' malloc set as :data:`ALLOCATOR_ENV` sets a new one's, for blocks its threads allocate
    from the main heap (the main thread's). Returns whether it is in effect; a no-op returning False off
    glibc or where the environment sets glibc's tunables itself. Safe to call more than once."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux") or any(name in os.environ for name in ALLOCATOR_ENV):
        return _applied
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc's C library
        return _applied
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied
