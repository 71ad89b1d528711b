"""Training of HyperSpace and its baselines (FS, AS) with one code path, on CPU, one GPU or many (DDP).

Launch several processes with ``torchrun --nproc_per_node N -m HyperSpaceSegmentationLib.cli train ...``
(or the ``hyperspace`` script): each process draws its own patches, gradients are averaged by
DistributedDataParallel (NCCL on GPUs, gloo on CPUs), and process 0 writes checkpoints and the model.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from ..errors import UserError
from ..io.images import atomic_output, read_image
from ..io.model_file import SegmentationModel, build_network, save_model
from ..networks import HyperConfig, HyperSpaceNet, UNetConfig
from ..preprocessing import fit_normalisation
from ..system import resolve_device
from .dataset import load_dataset
from .sampling import LoadedCase, PatchSampler, PatchStream, SamplingConfig


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved in checkpoints so that a resume matches)."""

    dataset: str
    output: str
    method: str = "hyperspace"
    dim: int = 3
    spacing_min: float = 0.8
    spacing_max: float = 3.5
    fixed_spacing: float | None = None
    patch: int = 64
    batch_size: int = 2
    iterations: int = 1000
    learning_rate: float = 2e-3
    features: tuple[int, ...] = (8, 16, 32, 64)
    rank: int = 4
    hidden: int = 64
    seed: int = 0
    workers: int = 0
    checkpoint_every: int = 100
    device: str = "auto"
    augment: bool = True
    notes: dict = field(default_factory=dict)


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy plus soft Dice over the batch, averaged over the foreground classes."""
    ce = F.cross_entropy(logits, target)
    probabilities = torch.softmax(logits, dim=1)
    one_hot = F.one_hot(target, logits.shape[1]).movedim(-1, 1).float()
    axes = [0] + list(range(2, logits.ndim))
    intersection = (probabilities * one_hot).sum(axes)
    total = probabilities.sum(axes) + one_hot.sum(axes)
    dice = (2 * intersection + 1e-5) / (total + 1e-5)
    return ce + 1 - dice[1:].mean()


def polynomial_schedule(optimizer: torch.optim.Optimizer, first_step: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning rate ``lr * (1 - step / total) ** 0.9``, for a run that starts (or resumes) at ``first_step``."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: max(1 - (first_step + s) / max(total, 1), 0.0) ** 0.9
    )


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) for one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


def train(config: TrainConfig, resume: bool = False, overwrite: bool = False, quiet: bool = False) -> Path:
    """Train a model as ``config`` says and write ``output/model.pt``; returns its path."""
    output = Path(config.output)
    checkpoint_path, model_path = output / "checkpoint.pt", output / "model.pt"
    rank, world, local_rank = _distributed()
    if model_path.exists() and not (overwrite or resume):
        raise UserError(f"{model_path} exists: pass --overwrite to train again or --resume to continue")
    if resume and not checkpoint_path.exists():
        raise UserError(f"--resume: no checkpoint at {checkpoint_path}; start without --resume")
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False) if resume else None
    if checkpoint:
        config = TrainConfig(**{**checkpoint["config"], "iterations": config.iterations, "output": config.output})
    if config.method == "fs" and config.fixed_spacing is None:
        raise UserError("--method fs needs --fixed-spacing MM (the one spacing it trains and segments at)")
    device = resolve_device(config.device, local_rank)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    _seed(config.seed + rank)

    dataset = load_dataset(config.dataset)
    label_values = sorted(dataset.labels)
    normalisation = fit_normalisation(dataset.modality, _foreground_samples(dataset) if dataset.modality == "ct" else [])
    cases = [LoadedCase(case, normalisation, label_values, config.dim) for case in dataset.training]
    fixed = (config.fixed_spacing,) * config.dim if config.fixed_spacing else None
    sampler = PatchSampler(cases, SamplingConfig(
        (config.patch,) * config.dim, config.spacing_min, config.spacing_max, fixed, augment=config.augment,
    ))
    unet_config = UNetConfig(config.dim, 1, len(label_values), tuple(config.features))
    hyper_config = HyperConfig(config.hidden, 3, config.rank, config.spacing_min, config.spacing_max)
    network = build_network(config.method, unet_config, hyper_config).to(device)
    model = SegmentationModel(
        config.method, network, dataset.labels, (config.spacing_min, config.spacing_max), normalisation,
        fixed, dataset.colors,
    )
    trainable = model.trainable()
    optimizer = torch.optim.Adam(trainable.parameters(), lr=config.learning_rate)
    step, history = 0, []
    if checkpoint:
        trainable.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        step, history = checkpoint["step"], checkpoint["history"]
    schedule = polynomial_schedule(optimizer, step, config.iterations)
    wrapped = torch.nn.parallel.DistributedDataParallel(
        network, device_ids=[local_rank] if device.type == "cuda" else None
    ) if world > 1 else network
    # a resumed run draws new patches rather than replaying the first ones
    stream = PatchStream(sampler, config.batch_size, seed=config.seed * 7919 + rank * 104729 + step)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=config.workers,
                                         persistent_workers=config.workers > 0)
    if rank == 0:
        output.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=config.iterations, initial=step, desc=f"train {config.method}", disable=quiet or rank != 0,
               dynamic_ncols=True, mininterval=2.0)
    network.train()
    start = time.perf_counter()
    batches = iter(loader)
    while step < config.iterations:
        images, labels, spacings = (t.to(device, non_blocking=True) for t in next(batches))
        logits = wrapped(images, spacings) if isinstance(network, HyperSpaceNet) else wrapped(images)
        loss = dice_ce_loss(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable.parameters(), 12.0)
        optimizer.step()
        schedule.step()
        step += 1
        history.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(history[-20:]):.3f}")
        if rank == 0 and (step % config.checkpoint_every == 0 or step == config.iterations):
            _save_checkpoint(checkpoint_path, config, trainable, optimizer, step, history)
    bar.close()
    if rank == 0:
        model.training = {
            "method": config.method, "iterations": config.iterations, "processes": world,
            "device": device.type, "seconds": round(time.perf_counter() - start, 1),
            "final_loss": float(np.mean(history[-50:])), "config": _json_config(config), **config.notes,
        }
        network.eval()
        save_model(model, model_path, overwrite=True)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return model_path


def _foreground_samples(dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    return [
        (sitk.GetArrayFromImage(read_image(c.image)), sitk.GetArrayFromImage(read_image(c.label)))
        for c in dataset.training
    ]


def _json_config(config: TrainConfig) -> dict:
    return json.loads(json.dumps(asdict(config)))


def _save_checkpoint(path: Path, config, trainable, optimizer, step: int, history: list[float]) -> None:
    state = {"config": asdict(config), "model": trainable.state_dict(), "optimizer": optimizer.state_dict(),
             "step": step, "history": history}
    with atomic_output(path, overwrite=True) as temporary:
        torch.save(state, temporary)


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def loss_history(output: str | os.PathLike) -> list[float]:
    """The per-step losses recorded in a run's checkpoint."""
    return torch.load(Path(output) / "checkpoint.pt", map_location="cpu", weights_only=False)["history"]

