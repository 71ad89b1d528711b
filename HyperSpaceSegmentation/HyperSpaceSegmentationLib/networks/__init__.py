"""Segmentation networks: the U-Net and the HyperSpace hypernetwork that generates its weights."""

from .hypernet import HyperConfig, HyperNetwork, HyperSpaceNet
from .unet import UNet, UNetConfig

__all__ = ["HyperConfig", "HyperNetwork", "HyperSpaceNet", "UNet", "UNetConfig"]
