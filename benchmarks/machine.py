"""What a benchmark ran on, for its results: CPU model, cores and Python, and the load around it."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(load_before: tuple[float, ...], load_after: tuple[float, ...]) -> dict:
    """The machine, with the load averages (``os.getloadavg()``) before and after the runs."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "cores_usable": len(os.sched_getaffinity(0)),
            "python": platform.python_version(), "platform": platform.platform(),
            "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in load_after]}
