"""The machine the engine runs on: compute device, resident and available memory, on Linux, macOS and Windows."""

from __future__ import annotations

import psutil
import torch

from .errors import UserError


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; ``cuda`` is this process's GPU (``local_rank``)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but no CUDA GPU is available: use --device cpu or auto")
        return torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)
    if name != "cpu":
        raise UserError(f"unknown device {name!r}: use auto, cpu or cuda")
    return torch.device("cpu")


def resident_memory_mb() -> float:
    """Current resident memory of this process (MB)."""
    return psutil.Process().memory_info().rss / 2**20


def available_memory_mb(device: torch.device) -> float:
    """Memory a run may still use on ``device`` (MB); on the CPU the reclaimable caches count as available."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] / 2**20
    return psutil.virtual_memory().available / 2**20
