"""Instructive Feature Enhancement (IFE; Liu et al., MICCAI 2023, Eq. 1-3 and Algorithm 1).

Each channel of a 2D feature map is scored by how much texture it carries, by mean curvature or by 2D
entropy; per sample, the ``floor(r * C)`` best-scoring channels are appended to the raw features
(concatenation on the channel axis), so the next stage sees ``C + floor(r * C)`` channels. The scores are
computed without gradients and the selection is not differentiable: gradients flow through the selected
channels' values only, as in the paper. Everything is vectorised over samples and channels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

VARIANTS = ("none", "curvature", "entropy")
DEFAULT_RATIOS = {"curvature": (0.75, 0.5), "entropy": (0.5, 0.5)}  # the paper's best for a U-Net (its Table 2)
ENTROPY_BINS = 256

_ALPHA, _BETA, _GAMMA = -1.0 / 16.0, 5.0 / 16.0, -1.0
CURVATURE_KERNEL = torch.tensor([[_ALPHA, _BETA, _ALPHA], [_BETA, _GAMMA, _BETA], [_ALPHA, _BETA, _ALPHA]])
"""Gong's approximate mean-curvature filter (Eq. 1): its entries sum to zero, so flat regions give zero."""


def curvature_scores(features: torch.Tensor) -> torch.Tensor:
    """``(batch, channels)``: the summed absolute mean-curvature response of each channel over its valid 3x3
    windows (no padding, so a constant channel scores exactly 0)."""
    channels, features = features.shape[1], features.float()  # float32 also under autocast: float16 sums overflow
    kernel = CURVATURE_KERNEL.to(features).expand(channels, 1, 3, 3)
    with torch.autocast(features.device.type, enabled=False):
        return F.conv2d(features, kernel, groups=channels).abs().sum(dim=(2, 3))


def entropy_scores(features: torch.Tensor, bins: int = ENTROPY_BINS) -> torch.Tensor:
    """``(batch, channels)``: the 2D entropy (bits, Eq. 2) of each channel's joint histogram of (centre value,
    mean of its 8 neighbours) over its valid 3x3 windows, ``bins`` bins per axis over the channel's own value
    range. A constant channel scores 0; the most any channel can score is ``log2`` of its number of windows."""
    batch, channels = features.shape[:2]
    windows = F.unfold(features.reshape(batch * channels, 1, *features.shape[2:]).float(), 3)  # (B*C, 9, N)
    centre = windows[:, 4]
    neighbours = (windows.sum(dim=1) - centre) / 8.0
    low = features.reshape(batch * channels, -1).amin(dim=1, keepdim=True)
    high = features.reshape(batch * channels, -1).amax(dim=1, keepdim=True)
    scale = bins / (high - low).clamp_min(torch.finfo(torch.float32).tiny)

    def bin_of(values: torch.Tensor) -> torch.Tensor:
        return ((values - low) * scale).long().clamp(0, bins - 1)

    joint = bin_of(centre) * bins + bin_of(neighbours)  # one bin index per window, (B*C, N)
    count = joint.shape[1]
    # the probability of each occupied bin: sort the windows' bins, number the runs, count each run's length
    ordered = joint.sort(dim=1).values
    starts = torch.cat([torch.ones_like(ordered[:, :1], dtype=torch.bool), ordered[:, 1:] != ordered[:, :-1]], dim=1)
    run = starts.long().cumsum(dim=1) - 1
    lengths = torch.zeros_like(ordered, dtype=torch.float32).scatter_add(1, run, torch.ones_like(run, dtype=torch.float32))
    probability = lengths / count
    entropy = -(probability * torch.log2(probability.clamp_min(1e-30))).sum(dim=1)
    return entropy.reshape(batch, channels)


SCORES = {"curvature": curvature_scores, "entropy": entropy_scores}


def selected_channels(channels: int, ratio: float) -> int:
    """How many channels IFE appends to ``channels`` raw ones at ``ratio``: ``floor(ratio * channels)``."""
    return math.floor(ratio * channels + 1e-9)


class FeatureEnhancement(nn.Module):
    """Append the ``floor(ratio * C)`` channels with the highest ``variant`` score to the features, per sample,
    best first. Has no parameters; the next stage's first convolution takes the wider input."""

    def __init__(self, variant: str, ratio: float) -> None:
        super().__init__()
        if variant not in SCORES:
            raise ValueError(f"IFE variant must be one of {', '.join(SCORES)}, not {variant!r}")
        self.variant = variant
        self.ratio = ratio

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        keep = selected_channels(features.shape[1], self.ratio)
        if keep == 0:
            return features
        with torch.no_grad():
            best = SCORES[self.variant](features.detach()).topk(keep, dim=1).indices  # (batch, keep)
        chosen = torch.gather(features, 1, best[:, :, None, None].expand(-1, -1, *features.shape[2:]))
        return torch.cat([features, chosen], dim=1)
