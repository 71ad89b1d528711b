"""Training of HyperSpace and its baselines (FS, AS) with one code path, on CPU, one GPU or many (DDP).

Launch several processes with ``torchrun --nproc_per_node N -m HyperSpaceSegmentationLib.cli train ...``
(or the ``hyperspace`` script): each process draws its own patches, gradients are averaged by
DistributedDataParallel (NCCL on GPUs, gloo on CPUs), and process 0 writes checkpoints and the model.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from ..errors import UserError, error_line
from ..evaluation.metrics import METRICS, Comparison, compute
from ..inference import Segmenter, Slices, SpacingRequest
from ..inference.cases import process_rank
from ..io.input_files import input_file
from ..io.outputs import atomic_output, check_writable, output_folder
from ..io.model_file import METHODS, SegmentationModel, build_network, load_model, save_model
from ..networks import HyperConfig, HyperSpaceNet, UNetConfig
from ..networks.unet import INPUT_FEATURES
from ..preprocessing import fit_normalisation
from ..progress import Reporter
from ..system import resolve_device
from .dataset import SLICE_AXES, Dataset, load_dataset, slice_axes_problem
from .sampling import IGNORE, LoadedCase, PatchSampler, PatchStream, SamplingConfig, read_case, read_generation


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved in checkpoints so that a resume matches)."""

    dataset: str
    output: str
    method: str = "hyperspace"
    dim: int = 3
    ife: str = "none"  # 2D: Instructive Feature Enhancement variant (networks.ife)
    ife_ratios: tuple[float, ...] = ()  # empty: the paper's for the variant
    input_features: str = "intensity"  # or "mind": the network sees MIND descriptors (networks.mind)
    slice_axes: tuple[int, ...] = ()  # a 2D model on volumes: axes slices are taken across (empty: dataset's, or all)
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
    init: str | None = None  # a model file whose weights the run starts from
    notes: dict = field(default_factory=dict)

    def check(self) -> None:
        """Reject settings that cannot give a sensible run, with a one-line ``UserError`` naming the option."""
        if self.method not in METHODS:
            raise UserError(f"--method {self.method}: choose one of {', '.join(METHODS)}")
        if self.method == "fs" and self.fixed_spacing is None:
            raise UserError("--method fs needs --fixed-spacing MM (the one spacing it trains and segments at)")
        if self.method != "fs" and self.fixed_spacing is not None:
            raise UserError(f"--fixed-spacing applies to --method fs only, not {self.method}: drop it, or add --method fs")
        if not 0 < self.spacing_min <= self.spacing_max:
            raise UserError(f"--spacing-range {self.spacing_min:g} {self.spacing_max:g}: give 0 < MIN <= MAX in mm")
        if self.fixed_spacing is not None and not self.fixed_spacing > 0:
            raise UserError(f"--fixed-spacing {self.fixed_spacing:g}: give a positive spacing in mm")
        if self.input_features not in INPUT_FEATURES:
            raise UserError(f"--input {self.input_features}: choose one of {', '.join(INPUT_FEATURES)}")
        if not self.features or min(self.features) < 1:
            raise UserError(f"--features {' '.join(map(str, self.features))}: give positive feature counts, one per level")
        if self.ife != "none" and self.dim != 2:
            raise UserError(f"--ife {self.ife} enhances 2D networks only: add --dim 2, or leave --ife out")
        if self.ife_ratios and self.ife == "none":
            raise UserError("--ife-ratios needs an IFE variant: add --ife curvature or --ife entropy, or leave it out")
        try:
            unet_config = self.unet_config(num_classes=2)
        except ValueError as error:  # IFE settings the U-Net cannot take
            raise UserError(f"--ife {self.ife}: {error}: give --ife-ratios R0 R1 in [0, 1] and 4 or more --features "
                            "levels") from None
        if problem := unet_config.patch_problem(self.patch):
            raise UserError(f"--patch {self.patch}: {problem}")
        if self.slice_axes and self.dim != 2:
            raise UserError("--slice-axes applies to 2D models trained on volumes: add --dim 2, or leave it out")
        if self.slice_axes and (problem := slice_axes_problem(list(self.slice_axes))):
            raise UserError(f"--slice-axes {' '.join(map(str, self.slice_axes))}: {problem}")
        for option, value in (("--iterations", self.iterations), ("--batch-size", self.batch_size),
                              ("--checkpoint-every", self.checkpoint_every), ("--rank", self.rank)):
            if value < 1:
                raise UserError(f"{option} {value}: give 1 or more")
        if not self.learning_rate > 0:
            raise UserError(f"--learning-rate {self.learning_rate:g}: give a positive rate, such as 2e-3")
        if self.workers < 0:
            raise UserError(f"--workers {self.workers}: give 0 (load patches in the main process) or more")

    def unet_config(self, num_classes: int) -> UNetConfig:
        """The U-Net these settings train (one input channel)."""
        return UNetConfig(self.dim, 1, num_classes, tuple(self.features), ife=self.ife,
                          input_features=self.input_features,
                          ife_ratios=tuple(self.ife_ratios))


# settings a resumed run may change: how it runs, and (extending the run) how long
_CHANGEABLE_ON_RESUME = {"output", "iterations", "workers", "checkpoint_every", "device", "notes", "init"}


def resumed_config(output: str | os.PathLike, options: dict) -> TrainConfig:
    """The configuration saved in ``output``'s checkpoint, with the explicitly given ``options`` applied.

    ``train(..., resume=True)`` then refuses any option that conflicts with the checkpoint.
    """
    path = Path(output) / "checkpoint.pt"
    saved = _load_checkpoint(path)["config"]
    return _config_of(path, {**saved, **options, "output": str(output)})


def _config_of(path: Path, values: dict) -> TrainConfig:
    """The ``TrainConfig`` of the settings ``values`` saved in the checkpoint ``path``; a one-line ``UserError`` for
    settings this version does not know (a checkpoint of another version or program)."""
    try:
        return TrainConfig(**values)
    except TypeError as error:
        raise UserError(f"--resume: {path} holds settings this version does not know ({error_line(error)}): resume "
                        "it with the version that wrote it, or train again without --resume") from None


def _check_resume(config: TrainConfig, saved: TrainConfig, step: int) -> None:
    """A resumed run continues the checkpoint's run: only ``_CHANGEABLE_ON_RESUME`` settings may differ."""
    for name in (f.name for f in fields(TrainConfig)):
        if name in _CHANGEABLE_ON_RESUME:
            continue
        given, kept = getattr(config, name), getattr(saved, name)
        if name == "dataset":
            given, kept = Path(given).resolve(), Path(kept).resolve()
        if name == "features":
            given, kept = tuple(given), tuple(kept)
        if given != kept:
            option = {"spacing_min": "--spacing-range", "spacing_max": "--spacing-range", "augment": "--no-augment",
                      "dataset": "DATASET"}.get(name, "--" + name.replace("_", "-"))
            raise UserError(f"--resume: {option} ({name} {given}) conflicts with the checkpoint's {kept}: "
                            "leave it out to continue the run as it was, or train a new run in another folder")
    if config.iterations < step:
        raise UserError(f"--resume: --iterations {config.iterations} is below the checkpoint's step {step}: "
                        f"give {step} or more (or leave it out to finish the run as planned)")


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy plus soft Dice over the batch, averaged over the foreground classes.

    Voxels labelled ``IGNORE`` (outside the image) count in neither term.
    """
    valid = target != IGNORE
    ce = F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="sum") / valid.sum().clamp(min=1)
    mask = valid.unsqueeze(1).float()
    probabilities = torch.softmax(logits, dim=1) * mask
    one_hot = F.one_hot(torch.where(valid, target, 0), logits.shape[1]).movedim(-1, 1).float() * mask
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


def train(config: TrainConfig, resume: bool = False, overwrite: bool = False, quiet: bool = False) -> Path:
    """Train a model as ``config`` says and write ``output/model.pt``; returns its path.

    With ``resume``, the run continues from ``output/checkpoint.pt``: ``config`` must agree with the checkpoint's
    configuration (see ``resumed_config``) except for how the run is executed and a longer ``iterations``.
    """
    config.check()
    config = replace(config, dataset=str(Path(config.dataset).resolve()), features=tuple(config.features),
                     ife_ratios=tuple(config.ife_ratios), slice_axes=tuple(config.slice_axes))
    with output_folder(config.output, "-o") as output:  # removed again if the run fails before writing anything
        check_writable(output / "model.pt", overwrite=True)
        return _train(config, output, resume=resume, overwrite=overwrite, quiet=quiet)


def _train(config: TrainConfig, output: Path, resume: bool, overwrite: bool, quiet: bool) -> Path:
    checkpoint_path, model_path = output / "checkpoint.pt", output / "model.pt"
    rank, world, local_rank = process_rank()
    if model_path.exists() and not (overwrite or resume):
        raise UserError(f"{model_path} exists: pass --overwrite to train again or --resume to continue")
    checkpoint = _load_checkpoint(checkpoint_path) if resume else None
    if checkpoint:
        _check_resume(config, _config_of(checkpoint_path, checkpoint["config"]), checkpoint["step"])
    device = resolve_device(config.device, local_rank)
    dataset = load_dataset(config.dataset)
    label_values = sorted(dataset.labels)
    # every case is read and checked before any training
    training = [read_case(case, label_values, config.dim) for case in dataset.training]
    validation = [(case.id, *read_case(case, label_values, config.dim)) for case in dataset.validation]
    config = _with_slice_axes(config, dataset, [image for image, _ in training] + [image for _, image, _ in validation])
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    _seed(config.seed + rank)
    sampler, model = _sampler_and_model(config, dataset, training, device)
    if config.init and not checkpoint:
        _initialise(model, config.init)
    optimizer = torch.optim.Adam(model.trainable().parameters(), lr=config.learning_rate)
    progress = _Progress()
    if checkpoint:
        progress = _resumed(checkpoint, checkpoint_path, model, optimizer)
        if rank == 0:
            print(f"resuming {output} at step {progress.step} of {config.iterations} with the checkpoint's settings: "
                  f"{_describe(config)}", file=sys.stderr, flush=True)
    seconds = _optimise(config, model=model, optimizer=optimizer, sampler=sampler, validation=validation,
                        progress=progress, checkpoint_path=checkpoint_path, device=device, quiet=quiet)
    if rank == 0:
        _save_trained(model, model_path, config=config, progress=progress, world=world, device=device,
                      seconds=seconds)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return model_path


@dataclass
class _Progress:
    """How far a run has come: its step, the loss of each step, and the validation Dice at each checkpoint."""

    step: int = 0
    history: list[float] = field(default_factory=list)
    validation: list[dict] = field(default_factory=list)


def _sampler_and_model(config: TrainConfig, dataset: Dataset, training: list[tuple[sitk.Image, np.ndarray]],
                       device: torch.device) -> tuple[PatchSampler, SegmentationModel]:
    """The patch sampler over the training cases (with the intensity normalisation fitted to them) and the untrained
    model, its network on ``device``."""
    normalisation = fit_normalisation(
        dataset.modality, [(sitk.GetArrayViewFromImage(image), classes) for image, classes in training]
    )
    synthesise = dataset.synthetic is not None
    if synthesise and all(image.GetDimension() == 2 for image, _ in training):
        raise UserError(f"dataset file {config.dataset}: 'synthetic' images are drawn from volumes (heads around "
                        "3D label maps), and its images are 2D: remove 'synthetic', or give volumes")
    cases = [LoadedCase(image, classes, normalisation, config.dim, synthesise=synthesise,
                        generation=read_generation(case) if synthesise else None)
             for (image, classes), case in zip(training, dataset.training)]
    fixed = (config.fixed_spacing,) * config.dim if config.fixed_spacing else None
    sampler = PatchSampler(cases, SamplingConfig(
        (config.patch,) * config.dim, config.spacing_min, config.spacing_max, fixed, augment=config.augment,
        slice_axes=config.slice_axes, synthesis=dataset.synthetic,
    ))
    unet_config = config.unet_config(len(dataset.labels))
    hyper_config = HyperConfig(hidden=config.hidden, hidden_layers=3, rank=config.rank, spacing_min=config.spacing_min,
                               spacing_max=config.spacing_max)
    network = build_network(config.method, unet_config, hyper_config).to(device)
    model = SegmentationModel(
        config.method, network, dataset.labels, (config.spacing_min, config.spacing_max), normalisation=normalisation,
        fixed_spacing=fixed, colors=dataset.colors,
    )
    return sampler, model


def _resumed(checkpoint: dict, path: Path, model: SegmentationModel, optimizer: torch.optim.Optimizer) -> _Progress:
    """The weights and optimizer state of the checkpoint (read from ``path``) set in ``model`` and ``optimizer``;
    returns its progress."""
    try:
        model.trainable().load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
    except (KeyError, RuntimeError, TypeError, ValueError, IndexError) as error:
        raise UserError(f"--resume: the weights in {path} do not fit this run's network "
                        f"({error_line(error)}): it is damaged or from another run; train again without "
                        "--resume") from None
    return _Progress(checkpoint["step"], checkpoint["history"], checkpoint.get("validation", []))


def _optimise(config: TrainConfig, *, model: SegmentationModel, optimizer: torch.optim.Optimizer,
              sampler: PatchSampler, validation: list, progress: _Progress, checkpoint_path: Path,
              device: torch.device, quiet: bool) -> float:
    """Train ``model`` from ``progress`` to ``config.iterations`` steps (DDP across a ``torchrun`` group), process 0
    scoring the validation cases and writing a checkpoint every ``checkpoint_every`` steps; returns the seconds."""
    rank, world, local_rank = process_rank()
    network, trainable = model.network, model.trainable()
    schedule = polynomial_schedule(optimizer, progress.step, config.iterations)
    wrapped = torch.nn.parallel.DistributedDataParallel(  # buffers are constants (no batch norm): never re-sent
        network, device_ids=[local_rank] if device.type == "cuda" else None, broadcast_buffers=False,
    ) if world > 1 else network
    stream = PatchStream(sampler, config.batch_size, config.seed, rank, first_step=progress.step)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=config.workers,
                                         persistent_workers=config.workers > 0)
    bar = tqdm(total=config.iterations, initial=progress.step, desc=f"train {config.method}",
               disable=quiet or rank != 0, dynamic_ncols=True, mininterval=2.0)
    network.train()
    start = time.perf_counter()
    batches = iter(loader)
    while progress.step < config.iterations:
        images, labels, spacings = (t.to(device, non_blocking=True) for t in next(batches))
        logits = wrapped(images, spacings) if isinstance(network, HyperSpaceNet) else wrapped(images)
        loss = dice_ce_loss(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable.parameters(), 12.0)
        optimizer.step()
        schedule.step()
        progress.step += 1
        progress.history.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(progress.history[-20:]):.3f}")
        if rank == 0 and (progress.step % config.checkpoint_every == 0 or progress.step == config.iterations):
            if validation:
                dice = validation_dice(model, validation, device, config.slice_axes)
                progress.validation.append({"step": progress.step, "dice": dice})
                if not quiet:
                    for line in _dice_lines(dice):
                        bar.write(f"validation at step {progress.step}, {line}", file=sys.stderr)
            _save_checkpoint(checkpoint_path, config, trainable, optimizer, step=progress.step,
                             history=progress.history, validation=progress.validation)
    bar.close()
    return time.perf_counter() - start


def _save_trained(model: SegmentationModel, path: Path, *, config: TrainConfig, progress: _Progress, world: int,
                  device: torch.device, seconds: float) -> None:
    """Write the trained ``model`` to ``path`` with the record of its training (``model.training``)."""
    model.training = {
        "method": config.method, "iterations": config.iterations, "processes": world,
        "device": device.type, "seconds": round(seconds, 1),
        "final_loss": float(np.mean(progress.history[-50:])), "config": _json_config(config), **config.notes,
    }
    if config.slice_axes:
        model.training["slice_axes"] = list(config.slice_axes)
    if progress.validation:
        model.training["validation_dice"] = progress.validation[-1]["dice"]
        model.training["validation_history"] = progress.validation
    model.network.eval()
    save_model(model, path, overwrite=True)


def _initialise(model: SegmentationModel, path: str) -> None:
    """``model``'s trained weights set to those of the model file ``path``, which must be of the same method, network
    shape and label count (``--init``); a one-line ``UserError`` otherwise."""
    source = load_model(path)
    ours = (model.method, model.unet_config.to_dict(), _hyper_dict(model), len(model.labels))
    theirs = (source.method, source.unet_config.to_dict(), _hyper_dict(source), len(source.labels))
    for what, a, b in zip(("method", "U-Net", "hypernetwork", "label count"), ours, theirs):
        if a != b:
            raise UserError(f"--init {path}: its {what} ({b}) differs from this run's ({a}): start from a model trained "
                            "with the same --method, --dim, --features, --rank and labels, or leave --init out")
    model.trainable().load_state_dict(source.trainable().state_dict())


def _hyper_dict(model: SegmentationModel) -> dict | None:
    network = model.network
    return network.hypernet.config.to_dict() if isinstance(network, HyperSpaceNet) else None


def validation_dice(
    model: SegmentationModel, cases: list[tuple[str, sitk.Image, np.ndarray]], device: torch.device,
    slice_axes: tuple[int, ...] = (),
) -> dict[str, dict[str, float]]:
    """Mean Dice per class over the validation cases (LPS axes), segmented as ``hyperspace segment`` would.

    HyperSpace and AS models are scored at each case's native spacing and at the coarse end of the trained
    range, an FS model at its fixed spacing. A 2D model segments a volume slice by slice across each of
    ``slice_axes`` in turn, one score per axis; the mean is over cases and axes. Returns ``{spacing: {class: Dice}}``.
    """
    whole = Segmenter(model, device=str(device))
    by_axis = [Segmenter(model, device=str(device), slices=Slices(axis)) for axis in slice_axes]
    if model.method == "fs":
        requests = {f"{model.fixed_spacing[0]:g} mm (fixed)": SpacingRequest("model")}
    else:
        requests = {"native": SpacingRequest("native"),
                    f"{model.spacing_range[1]:g} mm": SpacingRequest("explicit", (model.spacing_range[1],))}
    values = sorted(model.labels)
    network_mode = model.network.training
    model.network.eval()
    scores: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        for name, request in requests.items():
            per_class: dict[str, list[float]] = {model.labels[v]: [] for v in values[1:]}
            for _, image, classes in cases:
                spacing_zyx = tuple(reversed(image.GetSpacing()))
                for segmenter in by_axis if image.GetDimension() > model.dim else [whole]:
                    spacing = segmenter.choose_spacing(image, request).spacing
                    predicted = sitk.GetArrayFromImage(segmenter.segment(image, spacing, Reporter(3, quiet=True)))
                    for index, value in enumerate(values[1:], start=1):
                        comparison = Comparison(classes == index, predicted == value, spacing_zyx)
                        per_class[model.labels[value]].append(compute(METRICS["dice"], comparison))
            scores[name] = {label: round(float(np.mean(dice)), 4) for label, dice in per_class.items()}
    model.network.train(network_mode)
    return scores


def _dice_lines(dice: dict[str, dict[str, float]]) -> list[str]:
    """One line per spacing: ``native: Dice CSF 0.81, grey matter 0.77``."""
    return [f"{spacing}: Dice " + ", ".join(f"{name} {value:.3f}" for name, value in per_class.items())
            for spacing, per_class in dice.items()]


def _with_slice_axes(config: TrainConfig, dataset: Dataset, images: list[sitk.Image]) -> TrainConfig:
    """``config`` with the axes a 2D model takes the slices of volumes across: ``--slice-axes``, else the dataset's
    ``slice_axes``, else all three; none for a 3D model. Giving them for a dataset of 2D images is an error."""
    if config.dim != 2:
        return config
    axes = config.slice_axes or dataset.slice_axes
    if any(image.GetDimension() == 3 for image in images):
        return replace(config, slice_axes=axes or tuple(SLICE_AXES))
    if config.slice_axes:
        raise UserError(f"--slice-axes {' '.join(map(str, config.slice_axes))}: the dataset's images are 2D, and slice "
                        "axes are for 3D volumes: leave --slice-axes out")
    if dataset.slice_axes:
        raise UserError(f"dataset file {config.dataset}: 'slice_axes' is given, but its images are 2D and slice axes "
                        "are for 3D volumes: remove 'slice_axes'")
    return config


def _describe(config: TrainConfig) -> str:
    spacing = (f"fixed spacing {config.fixed_spacing:g} mm" if config.fixed_spacing
               else f"spacing {config.spacing_min:g}-{config.spacing_max:g} mm")
    network = f"{config.dim}D" + (f" with IFE {config.ife}" if config.ife != "none" else "")
    network += " on MIND descriptors" if config.input_features == "mind" else ""
    slices = f", slices across axes {' '.join(map(str, config.slice_axes))}" if config.slice_axes else ""
    return (f"method {config.method}, {network}{slices}, {spacing}, patch {config.patch}, batch {config.batch_size}, "
            f"learning rate {config.learning_rate:g}, features {' '.join(map(str, config.features))}, "
            f"seed {config.seed}, iterations {config.iterations}")


CHECKPOINT_KEYS = {"config": dict, "model": dict, "optimizer": dict, "step": int, "history": list}


def _load_checkpoint(path: Path) -> dict:
    """A checkpoint of ``_save_checkpoint``, loaded with ``weights_only=True`` (tensors, dicts, lists, numbers and
    strings; no code from the file runs); a one-line ``UserError`` for a missing, damaged, truncated or foreign one."""
    input_file(path, folder="--resume: {path} is a folder, not a checkpoint: remove it, or train without --resume",
               missing="--resume: no checkpoint at {path}; start without --resume")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for damaged, truncated or foreign files
        if "weights only load failed" in str(error).lower():
            detail = "it holds objects other than tensors, numbers and text, which are not loaded: they could run code"
        else:
            detail = error_line(error)
        raise UserError(f"--resume: {path} is damaged, truncated or not a checkpoint of 'hyperspace train' "
                        f"({detail}): train again without --resume, or put an intact checkpoint.pt in its place") from None
    if not isinstance(checkpoint, dict):
        raise UserError(f"--resume: {path} is not a checkpoint of 'hyperspace train' (it holds a "
                        f"{type(checkpoint).__name__}): train again without --resume")
    wrong = [key for key, kind in CHECKPOINT_KEYS.items() if not isinstance(checkpoint.get(key), kind)
             or kind is int and (isinstance(checkpoint[key], bool) or checkpoint[key] < 0)]
    if wrong:
        raise UserError(f"--resume: {path} is not a checkpoint of 'hyperspace train' (no valid "
                        f"{', '.join(wrong)}): train again without --resume")
    return checkpoint


def _json_config(config: TrainConfig) -> dict:
    return json.loads(json.dumps(asdict(config)))


def _save_checkpoint(path: Path, config, trainable, optimizer, step: int, history: list[float],
                     validation: list[dict]) -> None:
    state = {"config": asdict(config), "model": trainable.state_dict(), "optimizer": optimizer.state_dict(),
             "step": step, "history": history, "validation": validation}
    with atomic_output(path, overwrite=True) as temporary:
        torch.save(state, temporary)


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def loss_history(output: str | os.PathLike) -> list[float]:
    """The per-step losses recorded in a run's checkpoint."""
    return _load_checkpoint(Path(output) / "checkpoint.pt")["history"]

