"""Which torch device a model runs on, apart from the CLIP code: tasks that only run heads over
stored embeddings import torch alone, not open_clip (which costs a Python worker ~15 s here)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from infra.config import ConfigError

if TYPE_CHECKING:
    import torch


class ClipModelError(ConfigError):
    """The configured CLIP model cannot be built: unknown name, missing weights, bad tag or device."""


def resolve_device(name: str, assigned_gpu: str | None = None) -> torch.device:
    """``auto`` -> cuda when available, else cpu; asking for cuda without one is an error.

    ``assigned_gpu`` is the GPU address a Spark task was given (``TaskContext.resources()``): on
    CUDA the model runs on that device, so tasks sharing an executor never share a GPU. A Spark
    GPU slot on a host without usable CUDA runs ``auto`` on the CPU.
    """
    import torch  # here: ClipModelError's importers (the Dagster definitions) need no torch

    if name not in ("auto", "cpu", "cuda"):
        raise ClipModelError(f"clip.device must be auto, cpu or cuda, got {name!r}")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        where = f" (Spark assigned this task GPU {assigned_gpu})" if assigned_gpu is not None else ""
        raise ClipModelError(f"clip.device is 'cuda' but no CUDA device is available{where}")
    if assigned_gpu is None:
        return torch.device("cuda")
    if not assigned_gpu.isdigit() or int(assigned_gpu) >= torch.cuda.device_count():
        raise ClipModelError(f"Spark assigned GPU {assigned_gpu!r}, but this host has CUDA devices 0..{torch.cuda.device_count() - 1}")
    return torch.device("cuda", int(assigned_gpu))
