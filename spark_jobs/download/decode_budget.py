"""The memory a downloader's decode threads may hold at once (``download.decode_memory_mb``).

A 243 KB PNG can claim 9000×9000 pixels, within the pixel cap, and cost 316 MB to decode; four
decode threads would hold four of those. Each decode reserves its estimated cost (from the header,
before any pixel is decoded) and waits until the reservations in force leave room for it, so that
concurrent decodes together stay under the budget. Waiters are served in arrival order, so a big
image is not starved by a stream of small ones.

glibc keeps what a thread frees in that thread's malloc arena, and raises its mmap threshold after
the first big free, so four decode threads would each keep the biggest image they decoded and the
process would grow to threads × that, budget or not. A fixed mmap threshold makes pixel buffers
(Pillow allocates them in 16 MiB blocks) mmap'd and unmapped on free, so the process's memory
follows the budget. That setting is process-wide and applies on glibc only.
"""

from __future__ import annotations

import ctypes
import functools
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from infra.config import DownloadConfig

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


@functools.cache
def _unmap_big_frees() -> None:
    if sys.platform.startswith("linux"):
        mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
        if mallopt is not None:
            mallopt(_M_MMAP_THRESHOLD, 1 << 20)


class DecodeBudget:
    def __init__(self, capacity_bytes: int):
        _unmap_big_frees()
        self.capacity = capacity_bytes
        self._used = 0
        self._tickets = 0  # handed out
        self._serving = 0  # the ticket whose turn it is
        self._changed = threading.Condition()

    @classmethod
    def of(cls, config: DownloadConfig) -> DecodeBudget:
        return cls(config.decode_memory_mb * 2**20)

    @contextmanager
    def reserve(self, cost: int) -> Iterator[None]:
        """Hold ``cost`` bytes of the budget (at most ``capacity``) for the duration of the block."""
        assert cost <= self.capacity, "refuse images that alone exceed the budget before reserving"
        with self._changed:
            ticket = self._tickets
            self._tickets += 1
            self._changed.wait_for(lambda: self._serving == ticket and self._used + cost <= self.capacity)
            self._serving += 1
            self._used += cost
            self._changed.notify_all()  # the next ticket may fit too
        try:
            yield
        finally:
            with self._changed:
                self._used -= cost
                self._changed.notify_all()
