"""``hyperspace train``: its options, and a training run (new, or resumed from a run folder's checkpoint)."""

from __future__ import annotations

import argparse

from ..errors import UserError
from .options import SHORT_DEVICE_HELP, add_device, add_overwrite, add_quiet

_SETTINGS = ("dataset", "method", "dim", "ife", "ife_ratios", "slice_axes", "fixed_spacing", "patch", "batch_size",
             "iterations", "learning_rate", "features", "rank", "seed", "workers", "checkpoint_every", "device",
             "augment", "init", "input_features")
"""The options that are settings of ``TrainConfig`` under their own names."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` command and its options."""
    parser = subparsers.add_parser(
        "train", help="train a model on your own data (CPU, GPU, or several with torchrun)",
        description="Train HyperSpace or a baseline on a dataset JSON (see docs/training.md). For several processes or GPUs: "
                    "torchrun --nproc_per_node N $(which hyperspace) train ...",
    )
    parser.add_argument("dataset", nargs="?",
                        help="dataset JSON: modality (mr or ct), labels, training and optional validation cases "
                             "(validation Dice is reported at every checkpoint); may be left out with --resume")
    parser.add_argument("-o", "--output", required=True, help="run folder: checkpoint.pt and model.pt go here")
    # settings default to None so that --resume can tell the options given from the checkpoint's own settings
    parser.add_argument("--method", choices=["hyperspace", "fs", "as"], default=None,
                        help="hyperspace (spacing-conditioned, the default), fs (fixed spacing) or as (spacing augmentation)")
    parser.add_argument("--dim", type=int, choices=[2, 3], default=None,
                        help="2D or 3D model (default 3); a 2D model trains on 2D images or on slices of volumes")
    parser.add_argument("--ife", choices=["none", "curvature", "entropy"], default=None,
                        help="2D models: Instructive Feature Enhancement variant (default none)")
    parser.add_argument("--input", dest="input_features", choices=["intensity", "mind"], default=None,
                        help="what the network sees: the normalised intensities (default) or their MIND descriptors "
                             "(modality independent neighbourhood descriptors, computed inside the network)")
    parser.add_argument("--ife-ratios", nargs=2, type=float, default=None, metavar=("R0", "R1"),
                        help="share of channels IFE appends after the two middle encoder levels, each in [0, 1] "
                             "(default: the paper's for the variant, 0.75 0.5 curvature, 0.5 0.5 entropy)")
    parser.add_argument("--slice-axes", nargs="+", type=int, default=None, metavar="AXIS",
                        help="a 2D model on volumes: the LPS axes its slices are taken across, 0 L-R (sagittal), "
                             "1 P-A (coronal), 2 S-I (axial) (default: the dataset's slice_axes, else 0 1 2)")
    parser.add_argument("--spacing-range", nargs=2, type=float, default=None, metavar=("MIN", "MAX"),
                        help="random training spacing per axis in mm (default 0.8 3.5)")
    parser.add_argument("--fixed-spacing", type=float, default=None,
                        help="the spacing of an FS model, in mm (only with --method fs)")
    parser.add_argument("--patch", type=int, default=None,
                        help="patch edge in voxels, a multiple of 2^(levels-1) of at least twice that (default 64)")
    parser.add_argument("--batch-size", type=int, default=None, help="patches per step and process (default 2)")
    parser.add_argument("--iterations", type=int, default=None,
                        help="training steps (default 1000); with --resume, a larger value extends the run "
                             "(the learning-rate decay is recomputed to end there)")
    parser.add_argument("--learning-rate", type=float, default=None, help="Adam learning rate (default 2e-3)")
    parser.add_argument("--features", type=int, nargs="+", default=None,
                        help="U-Net channels per level (default 8 16 32 64)")
    parser.add_argument("--rank", type=int, default=None, help="rank of the hypernetwork heads (default 4)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    parser.add_argument("--init", default=None, metavar="MODEL",
                        help="start from this model file's weights (fine-tuning): same method, network and labels")
    parser.add_argument("--workers", type=int, default=None, help="patch-loading processes (default 0: in the main one)")
    parser.add_argument("--checkpoint-every", type=int, default=None,
                        help="steps between checkpoints and validation (default 100)")
    add_device(parser, SHORT_DEVICE_HELP, default=None)
    parser.add_argument("--no-augment", dest="augment", action="store_const", const=False, default=None,
                        help="no spatial or intensity augmentation")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the run folder's checkpoint with its own settings; only --iterations "
                             "(to extend), --workers, --checkpoint-every and --device may be given anew")
    add_overwrite(parser, "train again over an existing model.pt")
    add_quiet(parser, "no progress bar")


def run_train(args: argparse.Namespace) -> int:
    """Train a model into the run folder ``-o`` (or continue one with ``--resume``)."""
    from ..training import TrainConfig, train
    from ..training.trainer import resumed_config

    given = {name: getattr(args, name) for name in _SETTINGS if getattr(args, name) is not None}
    if args.spacing_range is not None:
        given["spacing_min"], given["spacing_max"] = args.spacing_range
    for name in ("features", "ife_ratios", "slice_axes"):
        if name in given:
            given[name] = tuple(given[name])
    if args.resume:
        config = resumed_config(args.output, given)
    elif "dataset" not in given:
        raise UserError("give the dataset JSON (only --resume may leave it out)")
    else:
        config = TrainConfig(output=args.output, **given)
    path = train(config, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet)
    print(f"wrote {path}")
    return 0
