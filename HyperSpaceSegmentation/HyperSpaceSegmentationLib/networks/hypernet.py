"""HyperSpace: an MLP hypernetwork that maps a voxel spacing (mm) to every weight and bias of a U-Net.

The MLP (3 hidden layers, ReLU) turns the normalised spacing into an embedding. Low-rank heads turn the
embedding into the U-Net's parameters: for each U-Net tensor ``l`` with ``n_l`` values,

    u_l = c_l + B_l @ (A_l e)        c_l: (n_l,), B_l: (n_l, rank), A_l: (rank, hidden)
    p_l = offset_l + scale_l * 5 tanh(u_l)

``5 tanh`` is the paper's output activation; ``scale_l`` and ``offset_l`` make the generated U-Net start
He-initialised (``scale = sqrt(2 / fan_in)`` for convolution kernels, instance-norm gains start at 1).
Full-rank heads would cost ``hidden * n`` parameters (the reference code's heads reach about 1 GB); these
cost ``(rank + 1) * n``, which keeps a model file of a few megabytes.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.func import functional_call, vmap

from .unet import ParameterSpec, UNet, UNetConfig, parameter_specs

_INIT_STD = 0.2  # std of u for kernels at initialisation: 5 * tanh(u) then has a std close to 1
_KIND_SCALE = {"bias": 0.1, "norm.weight": 0.2, "norm.bias": 0.2}


@dataclass(frozen=True)
class HyperConfig:
    """Size of the hypernetwork and the spacing range (mm) it is trained on."""

    hidden: int = 64
    hidden_layers: int = 3
    rank: int = 4
    spacing_min: float = 0.8
    spacing_max: float = 3.5

    def to_dict(self) -> dict:
        return asdict(self)


class HyperNetwork(nn.Module):
    """Spacing ``(batch, dim)`` in mm -> flat vector of all U-Net parameters ``(batch, total)``."""

    def __init__(self, specs: list[ParameterSpec], dim: int, config: HyperConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        width = dim
        for _ in range(config.hidden_layers):
            layers += [nn.Linear(width, config.hidden), nn.ReLU()]
            width = config.hidden
        self.mlp = nn.Sequential(*layers)
        sizes = [math.prod(s.shape) for s in specs]
        total = sum(sizes)
        self.coefficients = nn.Linear(config.hidden, config.rank * len(specs))
        self.centre = nn.Parameter(torch.zeros(total))
        self.basis = nn.Parameter(torch.zeros(total, config.rank))
        segment = torch.repeat_interleave(torch.arange(len(specs)), torch.tensor(sizes))
        scale = torch.cat([torch.full((n,), _scale(s)) for s, n in zip(specs, sizes)])
        offset = torch.cat([torch.full((n,), 1.0 if s.kind == "norm.weight" else 0.0) for s, n in zip(specs, sizes)])
        is_kernel = torch.cat([torch.full((n,), s.kind == "weight") for s, n in zip(specs, sizes)])
        self.register_buffer("segment", segment, persistent=False)
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("offset", offset, persistent=False)
        with torch.no_grad():
            self.centre.copy_(torch.randn(total) * _INIT_STD * is_kernel)
            self.basis.normal_(0.0, 0.5 * _INIT_STD / math.sqrt(config.rank))
        log_min, log_max = math.log(config.spacing_min), math.log(config.spacing_max)
        self.log_centre = 0.5 * (log_min + log_max)
        self.log_half_width = max(0.5 * (log_max - log_min), 1e-3)

    def normalise(self, spacing: torch.Tensor) -> torch.Tensor:
        """Log-spacing mapped so that the trained range covers [-1, 1] on each axis."""
        return (torch.log(spacing) - self.log_centre) / self.log_half_width

    def forward(self, spacing: torch.Tensor) -> torch.Tensor:
        embedding = self.mlp(self.normalise(spacing))
        coefficients = self.coefficients(embedding).view(spacing.shape[0], -1, self.config.rank)
        u = self.centre + torch.einsum("nr,bnr->bn", self.basis, coefficients[:, self.segment])
        return self.offset + self.scale * 5.0 * torch.tanh(u)


def _scale(spec: ParameterSpec) -> float:
    if spec.kind == "weight":
        return math.sqrt(2.0 / spec.fan_in) if spec.name != "head.weight" else math.sqrt(1.0 / spec.fan_in)
    return _KIND_SCALE[spec.kind]


class HyperSpaceNet(nn.Module):
    """A U-Net whose weights come from a hypernetwork of the voxel spacing; only the hypernetwork trains."""

    def __init__(self, unet_config: UNetConfig, hyper_config: HyperConfig) -> None:
        super().__init__()
        self.unet = UNet(unet_config).requires_grad_(False)
        self.specs = parameter_specs(self.unet)
        self.hypernet = HyperNetwork(self.specs, unet_config.dim, hyper_config)

    def generate(self, spacing: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sample U-Net weights ``{name: (batch, *shape)}`` for spacings ``(batch, dim)`` in mm."""
        flat = self.hypernet(spacing)
        weights, start = {}, 0
        for spec in self.specs:
            size = math.prod(spec.shape)
            weights[spec.name] = flat[:, start:start + size].reshape(-1, *spec.shape)
            start += size
        return weights

    def forward(self, x: torch.Tensor, spacing: torch.Tensor) -> torch.Tensor:
        """Logits for a batch whose samples may each have their own spacing ``(batch, dim)``: the U-Net module
        itself runs each sample with that sample's generated weights (vectorised over the batch)."""

        def one_sample(weights: dict[str, torch.Tensor], sample: torch.Tensor) -> torch.Tensor:
            return functional_call(self.unet, weights, (sample[None],))[0]

        return vmap(one_sample)(self.generate(spacing), x)

    @torch.no_grad()
    def static_unet(self, spacing: tuple[float, ...]) -> UNet:
        """A plain U-Net holding the weights generated for one spacing (mm)."""
        device = self.hypernet.centre.device
        weights = self.generate(torch.tensor([spacing], dtype=torch.float32, device=device))
        unet = copy.deepcopy(self.unet)
        unet.load_state_dict({name: value[0] for name, value in weights.items()})
        return unet.eval()
