"""Who a process is: its PID plus the boot and start time, so that a reused PID is told apart.

Run recovery (orchestration/run_recovery.py) and the lake's leases (infra/lake_lease.py) both ask
whether the process that holds something still runs.
"""

from __future__ import annotations

import os


def process_identity(pid: int) -> str | None:
    """``boot_id/start_ticks`` of a live process, or None when there is none with that PID."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read().decode()
        with open("/proc/sys/kernel/random/boot_id") as file:
            boot = file.read().strip()
    except (FileNotFoundError, ProcessLookupError):  # the latter: it exited while being read
        if os.path.isdir("/proc"):
            return None
        # No procfs (macOS): only whether the PID exists can be told.
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return "alive"
    # Fields after the command name, which is in parentheses and may hold spaces: state is the
    # first, starttime (clock ticks after boot) the 20th.
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):  # killed, not yet reaped by its parent
        return None
    return f"{boot}/{fields[19]}"
