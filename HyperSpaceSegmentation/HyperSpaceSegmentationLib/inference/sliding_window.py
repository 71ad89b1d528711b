"""Sliding-window prediction with Gaussian blending (overlap 0.5 by default), as nnU-Net and MIST do."""

from __future__ import annotations

import itertools
import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def gaussian_importance(patch: Sequence[int], sigma_scale: float = 0.125) -> torch.Tensor:
    """Weights that fall off from the patch centre (sigma = patch / 8), at least 1e-3 of the peak."""
    axes = []
    for n in patch:
        position = torch.arange(n, dtype=torch.float32) - (n - 1) / 2
        axes.append(torch.exp(-0.5 * (position / max(n * sigma_scale, 1e-6)) ** 2))
    weights = axes[0]
    for axis in axes[1:]:
        weights = weights[..., None] * axis
    weights = weights / weights.max()
    return weights.clamp_min(1e-3)


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Evenly spaced window starts that cover ``size`` with at least ``overlap`` between neighbours."""
    if size <= patch:
        return [0]
    step = patch * (1 - overlap)
    count = math.ceil((size - patch) / step) + 1
    return [round(i * (size - patch) / (count - 1)) for i in range(count)]


def patch_size_for(shape: Sequence[int], patch: Sequence[int], divisor: int) -> tuple[int, ...]:
    """The window size on each axis, in multiples of ``divisor``.

    An axis up to ``1.25 * patch`` long is covered by one window (cheaper than two overlapping ones); a
    longer one uses ``patch``. It is at least ``2 * divisor`` so that the deepest level keeps more than one
    voxel to normalise.
    """
    whole = [max(math.ceil(s / divisor), 2) * divisor for s in shape]
    return tuple(w if s <= 1.25 * p else p for s, p, w in zip(shape, patch, whole))


def count_windows(shape: Sequence[int], patch: Sequence[int], overlap: float) -> int:
    return math.prod(len(window_starts(max(s, p), p, overlap)) for s, p in zip(shape, patch))


@torch.no_grad()
def predict_probabilities(
    volume: torch.Tensor,
    network: nn.Module,
    num_classes: int,
    patch: Sequence[int],
    overlap: float = 0.5,
    update: Callable[[int], None] | None = None,
    outside: float = 0.0,
) -> torch.Tensor:
    """Softmax probabilities ``(num_classes, *shape)`` for a ``(channels, *shape)`` volume.

    ``patch`` must already fit the network (see ``patch_size_for``); a volume smaller than one patch is padded
    with ``outside`` (the normalised intensity beyond a scan, as in training), and the blended probabilities
    are divided by the summed window weights.
    """
    shape = volume.shape[1:]
    padded = [max(s, p) for s, p in zip(shape, patch)]
    pad = []
    for s, p in zip(reversed(shape), reversed(padded)):
        pad += [0, p - s]
    source = F.pad(volume, pad, value=outside) if any(pad) else volume
    importance = gaussian_importance(patch).to(volume.device)
    probabilities = torch.zeros((num_classes, *padded), device=volume.device)
    weight_sum = torch.zeros(padded, device=volume.device)
    starts = [window_starts(s, p, overlap) for s, p in zip(padded, patch)]
    for corner in itertools.product(*starts):
        region = tuple(slice(c, c + p) for c, p in zip(corner, patch))
        logits = network(source[(slice(None), *region)][None])[0]
        probabilities[(slice(None), *region)] += torch.softmax(logits.float(), dim=0) * importance
        weight_sum[region] += importance
        if update:
            update(1)
    probabilities /= weight_sum
    return probabilities[(slice(None), *(slice(0, s) for s in shape))]

