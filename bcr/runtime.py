"""Process-wide determinism and timing helpers.

Bit-identical greedy outputs need the same seed, the same thread count and the same attention
implementation (DESIGN.md, "Facts checked against the pinned versions"); every measuring command calls :func:`setup_runtime` first.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from contextlib import contextmanager

import numpy as np
import torch


def setup_runtime(runtime: dict) -> torch.device:
    """Pin threads and seeds; return the torch device the config asks for (clear error if absent)."""
    device = torch.device(runtime.get("device", "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("config runtime.device is 'cuda' but no CUDA device is visible to this process")
    threads = int(runtime.get("threads", 2))
    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    seed = int(runtime.get("seed", 0))
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return device


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Wall-clock timer that synchronises the device before each reading."""

    def __init__(self, device: torch.device):
        self.device = device

    def now(self) -> float:
        synchronize(self.device)
        return time.perf_counter()


@contextmanager
def cuda_peak(device: torch.device, sink: Callable[[int | None], None]):
    """Report ``max_memory_allocated`` over the block to ``sink`` (None on CPU: never a guess)."""
    if device.type != "cuda":
        yield
        sink(None)
        return
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    yield
    synchronize(device)
    sink(int(torch.cuda.max_memory_allocated(device)))
