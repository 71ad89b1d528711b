"""Sliding-window prediction of a batch of volumes or slices, with Gaussian blending (overlap 0.5 by default) as
nnU-Net and MIST do."""

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


@torch.inference_mode()
def predict_probabilities(
    images: torch.Tensor,
    network: nn.Module,
    num_classes: int,
    patch: Sequence[int],
    overlap: float = 0.5,
    update: Callable[[int], None] | None = None,
    outside: float = 0.0,
) -> torch.Tensor:
    """Softmax probabilities ``(batch, num_classes, *shape)`` for a batch ``(batch, channels, *shape)`` of volumes
    (3D networks) or slices (2D networks) of one shape.

    The batch goes through each window position together: one network call per window, after which
    ``update(1)`` is called. ``patch`` must already fit the network (see ``patch_size_for``); images smaller than
    one patch are padded with ``outside`` (the normalised intensity beyond a scan, as in training), and the
    blended probabilities are divided by the summed window weights (one window: its probabilities, unweighted).
    """
    shape = images.shape[2:]
    padded = [max(s, p) for s, p in zip(shape, patch)]
    pad = []
    for s, p in zip(reversed(shape), reversed(padded)):
        pad += [0, p - s]
    source = F.pad(images, pad, value=outside) if any(pad) else images
    starts = [window_starts(s, p, overlap) for s, p in zip(padded, patch)]
    every = (slice(None), slice(None))  # every image of the batch, every channel
    if all(len(s) == 1 for s in starts):  # one window: nothing to blend
        probabilities = torch.softmax(network(source).float(), dim=1)
        if update:
            update(1)
        return probabilities[(*every, *(slice(0, s) for s in shape))]
    importance = gaussian_importance(patch).to(images.device)
    probabilities = torch.zeros((images.shape[0], num_classes, *padded), device=images.device)
    weight_sum = torch.zeros(padded, device=images.device)
    for corner in itertools.product(*starts):
        region = tuple(slice(c, c + p) for c, p in zip(corner, patch))
        logits = network(source[(*every, *region)])
        probabilities[(*every, *region)] += torch.softmax(logits.float(), dim=1) * importance
        weight_sum[region] += importance
        if update:
            update(1)
    probabilities /= weight_sum
    return probabilities[(*every, *(slice(0, s) for s in shape))]
