"""The segmentation U-Net, usable with its own weights or with per-sample generated weights.

One architecture serves every method: FS and AS train the module's own parameters, HyperSpace passes the
weights its hypernetwork generated for each sample of a batch (``forward(x, weights)``), and
``HyperSpaceNet.static_unet`` loads the weights generated for one spacing into a plain copy of this module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

Weights = Mapping[str, torch.Tensor]
"""Per-sample parameters: the module's parameter names mapped to tensors of shape ``(batch, *param.shape)``."""


@dataclass(frozen=True)
class UNetConfig:
    """Shape of the U-Net: dimensionality, channels and depth."""

    dim: int = 3
    in_channels: int = 1
    num_classes: int = 2
    features: tuple[int, ...] = (8, 16, 32, 64)
    convs_per_level: int = 3

    def __post_init__(self) -> None:
        if self.dim not in (2, 3):
            raise ValueError(f"dim must be 2 or 3, not {self.dim}")
        object.__setattr__(self, "features", tuple(int(f) for f in self.features))

    @property
    def divisor(self) -> int:
        """Each spatial size fed to the network must be a multiple of this."""
        return 2 ** (len(self.features) - 1)

    def patch_problem(self, patch: int) -> str | None:
        """Why ``patch`` voxels cannot be a window edge of this network (None if they can): a multiple of the
        divisor, at least twice it, so that the deepest level keeps more than one voxel to normalise."""
        divisor = self.divisor
        if patch >= 2 * divisor and patch % divisor == 0:
            return None
        return (f"a {len(self.features)}-level network needs a multiple of {divisor} of at least {2 * divisor} voxels, "
                f"such as {max(2, round(patch / divisor)) * divisor}")

    def to_dict(self) -> dict:
        return asdict(self)


def _conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, dim: int) -> torch.Tensor:
    """Convolve each sample of a batch with its own kernel in one grouped convolution."""
    batch = x.shape[0]
    conv = F.conv3d if dim == 3 else F.conv2d
    padding = weight.shape[-1] // 2
    out = conv(
        x.reshape(1, -1, *x.shape[2:]),
        weight.reshape(-1, *weight.shape[2:]),
        bias.reshape(-1),
        padding=padding,
        groups=batch,
    )
    return out.reshape(batch, -1, *out.shape[2:])


class ConvNormReLU(nn.Module):
    """Convolution (3^dim), instance normalisation with affine parameters, ReLU."""

    def __init__(self, dim: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.dim = dim
        conv = nn.Conv3d if dim == 3 else nn.Conv2d
        norm = nn.InstanceNorm3d if dim == 3 else nn.InstanceNorm2d
        self.conv = conv(in_channels, out_channels, 3, padding=1)
        self.norm = norm(out_channels, affine=True)

    def forward(self, x: torch.Tensor, weights: Weights | None = None) -> torch.Tensor:
        if weights is None:
            return F.relu(self.norm(self.conv(x)))
        x = _conv(x, weights["conv.weight"], weights["conv.bias"], self.dim)
        shape = (*weights["norm.weight"].shape, *([1] * self.dim))
        x = F.instance_norm(x, eps=self.norm.eps)
        return F.relu(x * weights["norm.weight"].reshape(shape) + weights["norm.bias"].reshape(shape))


class Stage(nn.Module):
    """The convolution blocks of one U-Net level."""

    def __init__(self, dim: int, in_channels: int, out_channels: int, count: int) -> None:
        super().__init__()
        channels = [in_channels] + [out_channels] * count
        self.blocks = nn.ModuleList(ConvNormReLU(dim, a, b) for a, b in zip(channels[:-1], channels[1:]))

    def forward(self, x: torch.Tensor, weights: Weights | None = None) -> torch.Tensor:
        for index, block in enumerate(self.blocks):
            x = block(x, _sub(weights, f"blocks.{index}."))
        return x


def _sub(weights: Weights | None, prefix: str) -> dict[str, torch.Tensor] | None:
    """The entries of ``weights`` under ``prefix``, with the prefix removed."""
    if weights is None:
        return None
    return {name[len(prefix):]: value for name, value in weights.items() if name.startswith(prefix)}


class UNet(nn.Module):
    """U-Net with ``len(features)`` levels, max-pool down, linear up-sampling and concatenating skips."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        f, n, d = config.features, config.convs_per_level, config.dim
        self.encoder = nn.ModuleList(
            Stage(d, config.in_channels if level == 0 else f[level - 1], f[level], n) for level in range(len(f))
        )
        self.decoder = nn.ModuleList(Stage(d, f[level] + f[level + 1], f[level], n) for level in range(len(f) - 1))
        self.head = (nn.Conv3d if d == 3 else nn.Conv2d)(f[0], config.num_classes, 1)

    def forward(self, x: torch.Tensor, weights: Weights | None = None) -> torch.Tensor:
        """Logits of shape ``(batch, num_classes, *x.shape[2:])``; spatial sizes must divide ``config.divisor``."""
        pool = F.max_pool3d if self.config.dim == 3 else F.max_pool2d
        mode = "trilinear" if self.config.dim == 3 else "bilinear"
        skips = []
        for level, stage in enumerate(self.encoder):
            if level:
                x = pool(x, 2)
            x = stage(x, _sub(weights, f"encoder.{level}."))
            skips.append(x)
        for level in reversed(range(len(self.decoder))):
            x = F.interpolate(x, scale_factor=2.0, mode=mode, align_corners=False)
            x = self.decoder[level](torch.cat([skips[level], x], dim=1), _sub(weights, f"decoder.{level}."))
        if weights is None:
            return self.head(x)
        return _conv(x, weights["head.weight"], weights["head.bias"], self.config.dim)


@dataclass(frozen=True)
class ParameterSpec:
    """Name, shape and initialisation scale of one U-Net parameter, as the hypernetwork generates it."""

    name: str
    shape: tuple[int, ...]
    fan_in: int
    kind: str = field(default="weight")  # "weight", "bias", "norm.weight" or "norm.bias"


def parameter_specs(unet: UNet) -> list[ParameterSpec]:
    """Every parameter of ``unet`` with the information needed to generate it well initialised."""
    specs = []
    for name, param in unet.named_parameters():
        if ".norm." in name:
            kind = "norm." + name.rsplit(".", 1)[1]
            fan_in = 1
        elif name.endswith("bias"):
            kind, fan_in = "bias", 1
        else:
            kind, fan_in = "weight", int(param[0].numel())
        specs.append(ParameterSpec(name, tuple(param.shape), fan_in, kind))
    return specs
