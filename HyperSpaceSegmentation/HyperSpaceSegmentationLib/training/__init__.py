"""Training: dataset JSON, random-spacing patch sampling with augmentation, and the training loop."""

from .trainer import TrainConfig, train

__all__ = ["TrainConfig", "train"]
