"""The segmentation U-Net, usable with its own weights or with generated ones.

One architecture serves every method: FS and AS train the module's own parameters; HyperSpace runs this same
module with the weights its hypernetwork generated for each sample (``torch.func.functional_call``), and
``HyperSpaceNet.static_unet`` loads the weights generated for one spacing into a plain copy of it. A 2D U-Net
may add Instructive Feature Enhancement (``networks.ife``) after its middle encoder stages.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .ife import DEFAULT_RATIOS, VARIANTS, FeatureEnhancement, selected_channels
from .mind import channels as mind_channels
from .mind import mind

INPUT_FEATURES = ("intensity", "mind")
"""What the first convolution sees: the normalised intensities, or their MIND descriptors (``networks.mind``),
computed inside the network from its one input channel."""

IFE_LEVELS = (1, 2)
"""The encoder levels whose outputs IFE enhances (with ratios r0, r1): the two middle stages of a 4-level
U-Net. The enhanced features go down the encoder to the next stage; the skip connections carry the raw ones."""


@dataclass(frozen=True)
class UNetConfig:
    """Shape of the U-Net: dimensionality, channels, depth, IFE variant (2D only; ``ife_ratios`` default to the
    paper's best for the variant) and input features (``INPUT_FEATURES``)."""

    dim: int = 3
    in_channels: int = 1
    num_classes: int = 2
    features: tuple[int, ...] = (8, 16, 32, 64)
    convs_per_level: int = 3
    ife: str = "none"
    ife_ratios: tuple[float, ...] = ()
    input_features: str = "intensity"

    def __post_init__(self) -> None:
        if self.dim not in (2, 3):
            raise ValueError(f"dim must be 2 or 3, not {self.dim}")
        if self.input_features not in INPUT_FEATURES:
            raise ValueError(f"input features must be one of {', '.join(INPUT_FEATURES)}, not {self.input_features!r}")
        if self.input_features == "mind" and self.in_channels != 1:
            raise ValueError(f"MIND describes one input channel, not {self.in_channels}")
        object.__setattr__(self, "features", tuple(int(f) for f in self.features))
        if self.ife not in VARIANTS:
            raise ValueError(f"IFE variant must be one of {', '.join(VARIANTS)}, not {self.ife!r}")
        ratios = tuple(float(r) for r in self.ife_ratios) or DEFAULT_RATIOS.get(self.ife, ())
        object.__setattr__(self, "ife_ratios", ratios if self.ife != "none" else ())
        if self.ife != "none":
            if self.dim != 2:
                raise ValueError(f"IFE ({self.ife}) is defined for 2D networks, not {self.dim}D")
            if len(self.features) < 4:
                raise ValueError(f"IFE needs a U-Net of at least 4 levels (its middle stages), not {len(self.features)}")
            if len(ratios) != len(IFE_LEVELS) or not all(0 <= r <= 1 for r in ratios):
                raise ValueError(f"IFE ratios {ratios} must be {len(IFE_LEVELS)} values in [0, 1]")

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

    def enhancement_ratio(self, level: int) -> float | None:
        """IFE's ratio after encoder ``level``, or None where there is no enhancement."""
        if self.ife == "none" or level not in IFE_LEVELS:
            return None
        return self.ife_ratios[IFE_LEVELS.index(level)]

    def to_dict(self) -> dict:
        return asdict(self)


class ConvNormReLU(nn.Sequential):
    """Convolution (3^dim), instance normalisation with affine parameters, ReLU."""

    channels_last = False  # set by UNet.to_channels_last: normalise channels-last activations in their own order

    def __init__(self, dim: int, in_channels: int, out_channels: int) -> None:
        conv = nn.Conv3d if dim == 3 else nn.Conv2d
        norm = nn.InstanceNorm3d if dim == 3 else nn.InstanceNorm2d
        super().__init__()
        self.conv = conv(in_channels, out_channels, 3, padding=1)
        self.norm = norm(out_channels, affine=True)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.channels_last:
            return _instance_norm_relu_channels_last(x, self.norm)
        return self.relu(self.norm(x))


def _instance_norm_relu_channels_last(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    """``relu(norm(x))`` for a channels-last ``x`` (memory order N, D, H, W, C), without reordering it: the
    statistics per sample and channel over rows of channels, scale and shift in one pass."""
    n, c = x.shape[:2]
    rows = x.permute(0, 2, 3, 4, 1).reshape(n, -1, c)  # a view of channels-last memory
    variance, mean = torch.var_mean(rows.float(), dim=1, keepdim=True, correction=0)  # float32 under autocast too
    scale = norm.weight * torch.rsqrt(variance + norm.eps)
    normalised = torch.addcmul(norm.bias - mean * scale, rows, scale).relu_()
    return normalised.view(n, *x.shape[2:], c).permute(0, 4, 1, 2, 3)


class Stage(nn.Module):
    """The convolution blocks of one U-Net level."""

    def __init__(self, dim: int, in_channels: int, out_channels: int, count: int) -> None:
        super().__init__()
        channels = [in_channels] + [out_channels] * count
        self.blocks = nn.Sequential(*(ConvNormReLU(dim, a, b) for a, b in zip(channels[:-1], channels[1:])))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class UNet(nn.Module):
    """U-Net with ``len(features)`` levels, max-pool down, linear up-sampling and concatenating skips."""

    channels_last = False  # set by to_channels_last

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        f, n, d = config.features, config.convs_per_level, config.dim
        widths = [mind_channels(d) if config.input_features == "mind" else config.in_channels]
        self.enhance = nn.ModuleDict()
        for level in range(len(f) - 1):
            ratio = config.enhancement_ratio(level)
            widths.append(f[level] + (selected_channels(f[level], ratio) if ratio is not None else 0))
            if ratio is not None:
                self.enhance[str(level)] = FeatureEnhancement(config.ife, ratio)
        self.encoder = nn.ModuleList(Stage(d, widths[level], f[level], n) for level in range(len(f)))
        self.decoder = nn.ModuleList(Stage(d, f[level] + f[level + 1], f[level], n) for level in range(len(f) - 1))
        self.head = (nn.Conv3d if d == 3 else nn.Conv2d)(f[0], config.num_classes, 1)

    def to_channels_last(self) -> UNet:
        """For 3D inference on the CPU: weights and activations in channels-last memory order, where oneDNN's
        convolutions, pooling and up-sampling run faster; the same outputs to float rounding (2D: unchanged)."""
        if self.config.dim == 3:
            self._set_memory_order(torch.channels_last_3d)
        return self

    def in_default_order(self) -> UNet:
        """This network in default memory order, as exporters take it: itself, or a copy if it is channels-last."""
        if not self.channels_last:
            return self
        plain = copy.deepcopy(self)
        plain._set_memory_order(torch.contiguous_format)
        return plain

    def _set_memory_order(self, order: torch.memory_format) -> None:
        """Weights in ``order``; the modules that normalise channels-last activations in their own order told."""
        self.to(memory_format=order)
        for module in self.modules():
            if isinstance(module, (UNet, ConvNormReLU)):
                module.channels_last = order == torch.channels_last_3d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(batch, num_classes, *x.shape[2:])``; spatial sizes must divide ``config.divisor``."""
        if self.config.input_features == "mind":
            x = mind(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        pool = F.max_pool3d if self.config.dim == 3 else F.max_pool2d
        mode = "trilinear" if self.config.dim == 3 else "bilinear"
        skips = []
        for level, stage in enumerate(self.encoder):
            if level:
                x = pool(x, 2)
            x = stage(x)
            skips.append(x)
            if str(level) in self.enhance:
                x = self.enhance[str(level)](x)
        for level in reversed(range(len(self.decoder))):
            x = F.interpolate(x, scale_factor=2.0, mode=mode, align_corners=False)
            x = self.decoder[level](torch.cat([skips[level], x], dim=1))
        return self.head(x)


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
