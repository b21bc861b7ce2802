"""The calling process's peak resident memory, for the side-by-side scripts here (stdlib only: they
also run in the peers' virtualenvs). VmHWM belongs to the process's own address space, unlike
``ru_maxrss``, which a process carries over exec from its parent."""

from __future__ import annotations


def peak_rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmHWM in /proc/self/status")
