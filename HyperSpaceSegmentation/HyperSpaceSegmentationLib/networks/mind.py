"""MIND, modality independent neighbourhood descriptors (Heinrich et al., Medical Image Analysis 2012), as a U-Net's
first operation: the network sees how each voxel's patch resembles its neighbours' patches, not the intensities.

For each voxel ``x`` and each of its ``2 * dim`` face neighbours ``x + r``: ``D(x, r)``, the Gaussian-weighted mean
over a patch around ``x`` of ``(I(y) - I(y + r))^2``; ``V(x)``, the mean of ``D(x, r)`` over the neighbours (a local
variance); ``MIND(x, r) = exp(-D(x, r) / V(x))``, divided by its largest value over ``r``. Squared differences and
a ratio to the local variance make the descriptor the same for ``a * I + b`` (``a`` of either sign: an inverted
contrast) and 1 in every channel where the image is flat. Computed on whatever grid the network runs on (the
working grid), the same way in training and inference; beyond the input's edges the edge voxel repeats.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SIGMA = 0.8  # voxels: the patch's Gaussian weighting
_RADIUS = 2  # voxels of the Gaussian on each side
_FLAT = 1e-6  # a local variance below this share of the image's mean variance counts as flat


def channels(dim: int) -> int:
    """How many descriptor channels a ``dim``-D image gives: one per face neighbour."""
    return 2 * dim


def _gaussian(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Separable Gaussian smoothing of ``x`` (batch, channels, *spatial), edges repeated."""
    offsets = torch.arange(-_RADIUS, _RADIUS + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (offsets / SIGMA) ** 2)
    kernel = kernel / kernel.sum()
    batch, count = x.shape[:2]
    conv = F.conv3d if dim == 3 else F.conv2d
    for axis in range(dim):
        shape = [1] * dim
        shape[axis] = len(offsets)
        pad = [0] * (2 * dim)
        pad[2 * (dim - 1 - axis)] = pad[2 * (dim - 1 - axis) + 1] = _RADIUS
        x = conv(F.pad(x, pad, mode="replicate"), kernel.view(1, 1, *shape).expand(count, 1, *shape), groups=count)
    return x


def mind(images: torch.Tensor) -> torch.Tensor:
    """The descriptors of ``images`` (batch, 1, *spatial; 2D or 3D): (batch, 2 * dim, *spatial), in [0, 1]."""
    dim = images.ndim - 2
    pad = [1] * (2 * dim)
    padded = F.pad(images, pad, mode="replicate")
    shifted = []
    for axis in range(dim):
        for step in (-1, 1):
            index = [slice(None), slice(None)] + [slice(1, -1)] * dim
            index[2 + axis] = slice(1 + step, padded.shape[2 + axis] - 1 + step)
            shifted.append(padded[tuple(index)])
    distances = _gaussian(torch.cat([(images - s) ** 2 for s in shifted], dim=1), dim)
    variance = distances.mean(dim=1, keepdim=True)
    floor = _FLAT * variance.mean(dim=tuple(range(1, variance.ndim)), keepdim=True) + torch.finfo(images.dtype).tiny
    descriptors = torch.exp(-distances / torch.maximum(variance, floor))
    return descriptors / descriptors.amax(dim=1, keepdim=True)

