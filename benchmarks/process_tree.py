"""CPU seconds and peak RSS of this process and every process under it (the Spark JVM, its Python
workers), read from /proc (Linux): what a local-mode Spark stage really costs the machine."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def tree_pids(root: int | None = None) -> list[int]:
    tree, pids, todo = _children(), [], [root or os.getpid()]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(tree.get(pid, []))
    return pids


def tree_cpu_seconds(root: int | None = None, exclude: Iterable[int] = ()) -> float:
    """User + system CPU of the live processes in the tree (less ``exclude`` and their subtrees),
    each with its reaped children's: Spark's Python workers exit and are reaped by its daemon, so
    their CPU stays counted. Stdlib only: the peers' scripts use it too."""
    ticks = os.sysconf("SC_CLK_TCK")
    skip = {pid for excluded in exclude for pid in tree_pids(excluded)}
    total = 0
    for pid in tree_pids(root):
        if pid in skip:
            continue
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
    return total / ticks


def reset_peak_rss() -> None:
    """Start this process's peak RSS afresh (writing 5 to clear_refs resets VmHWM)."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb(pid: int | None = None) -> float:
    """VmHWM of one process in MiB."""
    for line in Path(f"/proc/{pid or 'self'}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def rss_mb(pid: int | None = None) -> float:
    """VmRSS of one process in MiB."""
    for line in Path(f"/proc/{pid or 'self'}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def tree_peak_rss_mb(root: int | None = None) -> dict[str, float]:
    """The largest peak RSS among the live processes under ``root`` (not itself), per command name
    ("java" for the Spark JVM, "python" for its Python workers)."""
    me = root or os.getpid()
    peaks: dict[str, float] = {}
    for pid in tree_pids(root):
        if pid == me:
            continue
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            name = "python" if name.startswith("python") else name
            peaks[name] = max(peaks.get(name, 0.0), peak_rss_mb(pid))
        except OSError:
            continue
    return peaks
