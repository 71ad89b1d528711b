"""The ``hyperspace`` command: segment, train, info, demo, evaluate and export without 3D Slicer.

Errors a user can fix print one line, ``hyperspace: error: ...``, and exit with code 2; outputs are written
to a temporary file and renamed, so an interrupted or failed run leaves nothing half-written. A batch of scans
(``segment`` with several inputs) reports a failed case in one line, goes on with the others and exits with code 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import NoReturn, Sequence

from . import __version__
from . import models
from .errors import UserError, error_line
from .models import DEFAULT_MODEL, DEFAULT_MODEL_2D, SAMPLE_SCAN
from .postprocessing import add_options as add_postprocessing_options



class _Parser(argparse.ArgumentParser):
    """Usage errors end, like every other error, in one ``hyperspace: error:`` line that says what to do; options
    are taken only as spelled out (an abbreviation such as ``--mode`` must never be read as ``--model``); an empty
    value (an unset shell variable) is an error, never the current folder or a default."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **{**kwargs, "allow_abbrev": False})

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        for action in self._actions:  # a subcommand's parser checks its own arguments
            value = getattr(namespace, action.dest, None)
            if any(isinstance(v, str) and not v.strip() for v in (value if isinstance(value, list) else [value])):
                shown = "/".join(action.option_strings) or action.metavar or action.dest.upper()
                raise UserError(f"{shown} is empty (an unset shell variable?): give a value")
        return namespace, extras

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"hyperspace: error: {message}; run '{self.prog} --help' for the options\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hyperspace",
        description="Spacing-adaptive medical image segmentation (HyperSpace): one model, any voxel spacing.",
        epilog="Run 'hyperspace COMMAND --help' for the options of each command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    segment = commands.add_parser(
        "segment", help="segment an image with a model, at its native spacing or any other",
        description="Segment INPUT and write the labels on INPUT's own grid (size, spacing, origin, direction): as a "
                    "whole with a 3D model, or slice by slice with a 2D model (--mode 2d). Several inputs, a folder of "
                    "images, a glob pattern or a CSV make a batch: the models are loaded once, the next scan is read "
                    "while one is predicted, a failed case is reported and skipped (exit code 1), and a summary CSV "
                    "is written at the end. Under torchrun the processes share the cases (one GPU each) and rank 0 "
                    "writes the one summary; --shard does the same for the jobs of a job array.",
        epilog="Spacings per axis refer to the image axes after reorientation to the nearest L, P, S axes (with "
               "--mode 2d: the slice plane's two, in that order; the summary's spacing_axes names them). Memory "
               "figures: peak resident memory (RSS) of this process, and the area under its memory-time curve in MB s "
               "(memory_time_mb_s; sampled every 20 ms) as FLARE's efficiency measure, which FLARE takes of the GPU "
               "memory: on CUDA, gpu_memory_time_mb_s is that of the GPU memory PyTorch allocates.",
    )
    segment.add_argument("input", nargs="+",
                         help="image file (.nrrd, .nii.gz, .mha, ...; 2D: .png, .jpg, .tif, .bmp) or a DICOM series "
                              "folder; for a batch, several of them, a folder (its image files, else its DICOM series "
                              "subfolders), a quoted glob pattern such as 'scans/*.nii.gz', or a CSV file with the "
                              "columns id, image and optionally output (UTF-8, paths relative to the CSV)")
    segment.add_argument("-o", "--output", required=True,
                         help="output label image; the extension picks the format (.seg.nrrd: Slicer segmentation; "
                              ".png, .tif, .bmp: 2D results only); for a batch, the output folder (created if "
                              "missing), where each case's labels are named after it: ID plus --output-suffix")
    segment.add_argument("--output-suffix", default=None, metavar="SUFFIX",
                         help="batch: the end of each output's name after the case id (the input's name without its "
                              "image extension, or the CSV's id), whose extension picks the format (default .seg.nrrd)")
    segment.add_argument("--summary", default=None, metavar="FILE",
                         help="batch: the summary CSV (id, input, output, status, spacing_mm, seconds, peak_memory_mb, "
                              "memory_time_mb_s, gpu_memory_time_mb_s, error); default OUTPUT/summary.csv, with "
                              "--shard OUTPUT/summary-shard-I-of-N.csv")
    segment.add_argument("--shard", default=None, metavar="I/N",
                         help="batch: segment only part I (1 to N) of N, for the jobs of a job array: case i (0-based, "
                              "in the order listed) goes to part i %% N + 1; each part writes its own summary")
    segment.add_argument("--model", nargs="+", action="extend", default=None, metavar="MODEL",
                         help=f"model file (default: the embedded {DEFAULT_MODEL.name}; with --mode 2d, "
                              f"{DEFAULT_MODEL_2D.name}); several (--model A B, or --model A --model B): an ensemble, "
                              "each model at its own spacing, their probabilities averaged on INPUT's grid (same "
                              "labels and dimensions; each model once)")
    segment.add_argument("--mode", choices=["3d", "2d"], default=None,
                         help="3d: the volume as a whole (3D model); 2d: slice by slice (2D model); default: 2d for a "
                              "2D image or a single-slice volume (unless --model is a 3D model), else 3d")
    segment.add_argument("--axis", type=int, choices=[0, 1, 2], default=None,
                         help="--mode 2d: segment the planes of constant index along this index axis of the FILE, as "
                              "it stores the image (0 = i, 1 = j, 2 = k; not the L, P, S axes); default 2, or the axis "
                              "of a single-slice volume's one slice")
    segment.add_argument("--slice", type=int, default=None, metavar="K",
                         help="--mode 2d: segment only slice K (0-based index along --axis in the file); every other "
                              "slice of the output is 0 (default: every slice)")
    segment.add_argument("--spacing", nargs="+", metavar="S",
                         help="working spacing: native (the image's own), auto (finest that fits the budget), one "
                              "value in mm, or one per axis (SX SY SZ; with --mode 2d, SX SY of the slice plane); "
                              "default: native (FS models: their own)")
    segment.add_argument("--input-spacing", "--image-spacing", nargs="+", type=float, metavar="S", default=None,
                         help="the input's true voxel spacing in mm, one value per axis of the file (SX SY SZ, or SX "
                              "SY for a 2D image; or one for all), when its header's is wrong or missing (pictures "
                              "such as PNG have none); the output keeps the input's header")
    segment.add_argument("--max-voxels", type=float, default=None,
                         help="budget for --spacing auto: most voxels at working spacing (default 4e6; with --mode 2d, "
                              "the slice's voxels times the slices segmented)")
    segment.add_argument("--max-seconds", type=float, default=None,
                         help="budget for --spacing auto: most seconds of prediction, measured on this device")
    segment.add_argument("--allow-extrapolation", action="store_true",
                         help="use a spacing outside the model's trained range instead of clamping it")
    add_postprocessing_options(segment)
    segment.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda (default auto)")
    segment.add_argument("--patch", type=int, default=None,
                         help="sliding-window edge in voxels (default: the largest window, up to the whole working volume "
                              "or slice, whose memory need fits --max-memory; overlapping windows only beyond that)")
    segment.add_argument("--max-memory", type=float, default=None, metavar="MB",
                         help="memory budget in MB for the network's windows and buffers (default: 80%% of the "
                              "memory available on the device); larger windows are faster")
    segment.add_argument("--overwrite", action="store_true",
                         help="replace OUTPUT if it exists (without it, an OUTPUT written meanwhile by another run is kept)")
    segment.add_argument("--skip-existing", action="store_true",
                         help="batch: continue an interrupted batch: cases whose output exists are skipped (listed as "
                              "skipped in the summary, which is replaced); outputs are written to a temporary file "
                              "and renamed, so an existing one is complete. Not with --overwrite")
    segment.add_argument("--mask", default=None, metavar="FILE",
                         help="restrict the result to a mask: a label map or .seg.nrrd on any grid (its non-zero voxels, "
                              "resampled to the input's grid by nearest neighbour), such as a brain mask; background "
                              "outside it. One INPUT")
    segment.add_argument("--probabilities", default=None, metavar="FILE",
                         help="also write the class probabilities on INPUT's grid: a vector image (.nrrd, .nii.gz, "
                              ".nii, .mha), one uint8 component per class (probability * 255), classes in the order "
                              "of their sorted label values; the labels are their argmax (one INPUT only: not in a "
                              "batch)")
    segment.add_argument("--uncertainty", default=None, metavar="FILE",
                         help="also write the normalised entropy of the class probabilities on INPUT's grid, -sum p "
                              "log p / log(classes), from 0 (certain) to 1, as float32 (.nrrd, .nii.gz, .nii, .mha; "
                              "one INPUT only: not in a batch)")
    segment.add_argument("--tta", nargs="*", type=int, default=None, metavar="AXIS",
                         help="test-time augmentation: average the probabilities over every combination of flips of "
                              "these axes (0 L-R, 1 P-A, 2 S-I; --mode 2d: the slice plane's two, 0 and 1, in L, P, S "
                              "order); no AXIS: all axes (8 predictions in 3D, 4 in 2D). Put it after INPUT")
    segment.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    segment.add_argument("--quiet", action="store_true", help="no progress output")
    segment.add_argument("--progress-lines", action="store_true",
                         help="also print machine-readable progress on stderr, one JSON event a line after "
                              "'HYPERSPACE_PROGRESS ' (for programs such as the Slicer module); in a batch each event "
                              "also has case (1-based), cases and id")

    info = commands.add_parser("info", help="describe a model: labels, spacing range, dimensions, IFE, sizes",
                               description="Describe a model file (default: the embedded model).")
    info.add_argument("model", nargs="?", default=None, help=f"model file (default: {DEFAULT_MODEL.name})")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")

    demo = commands.add_parser("demo", help="segment the bundled sample scan at two spacings",
                               description="Segment the bundled MNI152 sample at its native 1.5 mm and at 3 mm.")
    demo.add_argument("--output-dir", default="hyperspace-demo", help="folder for the results (default: hyperspace-demo)")
    _model_argument(demo)
    demo.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    demo.add_argument("--overwrite", action="store_true", help="replace results from an earlier demo")

    train = commands.add_parser(
        "train", help="train a model on your own data (CPU, GPU, or several with torchrun)",
        description="Train HyperSpace or a baseline on a dataset JSON (see docs/training.md). For several processes or GPUs: "
                    "torchrun --nproc_per_node N $(which hyperspace) train ...",
    )
    train.add_argument("dataset", nargs="?",
                       help="dataset JSON: modality (mr or ct), labels, training and optional validation cases "
                            "(validation Dice is reported at every checkpoint); may be left out with --resume")
    train.add_argument("-o", "--output", required=True, help="run folder: checkpoint.pt and model.pt go here")
    # settings default to None so that --resume can tell the options given from the checkpoint's own settings
    train.add_argument("--method", choices=["hyperspace", "fs", "as"], default=None,
                       help="hyperspace (spacing-conditioned, the default), fs (fixed spacing) or as (spacing augmentation)")
    train.add_argument("--dim", type=int, choices=[2, 3], default=None,
                       help="2D or 3D model (default 3); a 2D model trains on 2D images or on slices of volumes")
    train.add_argument("--ife", choices=["none", "curvature", "entropy"], default=None,
                       help="2D models: Instructive Feature Enhancement variant (default none)")
    train.add_argument("--input", dest="input_features", choices=["intensity", "mind"], default=None,
                       help="what the network sees: the normalised intensities (default) or their MIND descriptors "
                            "(modality independent neighbourhood descriptors, computed inside the network)")
    train.add_argument("--ife-ratios", nargs=2, type=float, default=None, metavar=("R0", "R1"),
                       help="share of channels IFE appends after the two middle encoder levels, each in [0, 1] "
                            "(default: the paper's for the variant, 0.75 0.5 curvature, 0.5 0.5 entropy)")
    train.add_argument("--slice-axes", nargs="+", type=int, default=None, metavar="AXIS",
                       help="a 2D model on volumes: the LPS axes its slices are taken across, 0 L-R (sagittal), "
                            "1 P-A (coronal), 2 S-I (axial) (default: the dataset's slice_axes, else 0 1 2)")
    train.add_argument("--spacing-range", nargs=2, type=float, default=None, metavar=("MIN", "MAX"),
                       help="random training spacing per axis in mm (default 0.8 3.5)")
    train.add_argument("--fixed-spacing", type=float, default=None,
                       help="the spacing of an FS model, in mm (only with --method fs)")
    train.add_argument("--patch", type=int, default=None,
                       help="patch edge in voxels, a multiple of 2^(levels-1) of at least twice that (default 64)")
    train.add_argument("--batch-size", type=int, default=None, help="patches per step and process (default 2)")
    train.add_argument("--iterations", type=int, default=None,
                       help="training steps (default 1000); with --resume, a larger value extends the run "
                            "(the learning-rate decay is recomputed to end there)")
    train.add_argument("--learning-rate", type=float, default=None, help="Adam learning rate (default 2e-3)")
    train.add_argument("--features", type=int, nargs="+", default=None,
                       help="U-Net channels per level (default 8 16 32 64)")
    train.add_argument("--rank", type=int, default=None, help="rank of the hypernetwork heads (default 4)")
    train.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    train.add_argument("--init", default=None, metavar="MODEL",
                       help="start from this model file's weights (fine-tuning): same method, network and labels")
    train.add_argument("--workers", type=int, default=None, help="patch-loading processes (default 0: in the main one)")
    train.add_argument("--checkpoint-every", type=int, default=None,
                       help="steps between checkpoints and validation (default 100)")
    train.add_argument("--device", default=None, help="auto, cpu or cuda (default auto)")
    train.add_argument("--no-augment", dest="augment", action="store_const", const=False, default=None,
                       help="no spatial or intensity augmentation")
    train.add_argument("--resume", action="store_true",
                       help="continue from the run folder's checkpoint with its own settings; only --iterations "
                            "(to extend), --workers, --checkpoint-every and --device may be given anew")
    train.add_argument("--overwrite", action="store_true", help="train again over an existing model.pt")
    train.add_argument("--quiet", action="store_true", help="no progress bar")

    export = commands.add_parser(
        "export", help="write the plain U-Net a model uses at one spacing as ONNX or TorchScript",
        description="Write the U-Net that MODEL uses at one working spacing (HyperSpace: the one its hypernetwork "
                    "generates for that spacing; FS, AS: their own) as ONNX (.onnx) or TorchScript (.pt), to run "
                    "without this package, and next to it a JSON sidecar named OUTPUT.json (such as NET.onnx.json) "
                    "with labels, spacing, input layout, normalisation, size divisor and the meaning of the output.",
        epilog="ONNX needs the export extra: pip install hyperspace-segmentation[export]. Both take any batch size "
               "and any spatial sizes that are multiples of the sidecar's size_divisor.",
    )
    export.add_argument("model", nargs="?", default=None,
                        help=f"model file, or 'default' (default: the embedded {DEFAULT_MODEL.name})")
    export.add_argument("-o", "--output", required=True, help="network file: .onnx (ONNX) or .pt (TorchScript)")
    export.add_argument("--spacing", nargs="+", metavar="S",
                        help="the working spacing the network is for, in mm: one value, or one per axis (SX SY SZ; "
                             "2D models: SX SY of the slice plane); required except for FS models (default: their "
                             "own)")
    export.add_argument("--allow-extrapolation", action="store_true",
                        help="keep a spacing outside the model's trained range instead of clamping it")
    export.add_argument("--overwrite", action="store_true", help="replace OUTPUT and its sidecar if they exist")
    export.add_argument("--quiet", action="store_true", help="no progress output")

    analyze = commands.add_parser(
        "analyze", help="look inside the U-Nets a HyperSpace model generates (cka: similarity across spacings)",
        description="Analyses of the U-Nets that a HyperSpace model's hypernetwork generates for different spacings.",
    )
    analyses = analyze.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)
    cka = analyses.add_parser(
        "cka", help="linear CKA between the layers of the networks for several spacings, on one image region",
        description="Linear CKA (Kornblith et al. 2019) between the activations after every convolution and every "
                    "nonlinearity of the U-Nets MODEL generates for each spacing, on the same physical region of "
                    "IMAGE: each network sees the whole image as 'hyperspace segment' does, and every activation is "
                    "brought onto the coarsest network's grid of its level over the region before comparing (examples: "
                    "voxels, features: channels). Writes FOLDER/cka.csv (every pair of spacings and layers) and PNG "
                    "heatmaps: within each network, the finest network's layers against each coarser one's, and each "
                    "layer against itself across spacings; prints the mean CKA across spacings per U-Net level.",
        epilog="The heatmaps need the analysis extra: pip install hyperspace-segmentation[analysis].",
    )
    cka.add_argument("model", nargs="?", default=None,
                     help=f"HyperSpace model file (default: the embedded {DEFAULT_MODEL.name})")
    cka.add_argument("--spacings", nargs="+", type=float, required=True, metavar="S",
                     help="two or more isotropic spacings in mm, such as 1 1.5 2 3; outside the trained range they "
                          "are clamped to it, as by segment (see --allow-extrapolation)")
    cka.add_argument("-o", "--output", required=True, metavar="FOLDER", help="folder for the CSV and the heatmaps "
                                                                            "(created if missing)")
    cka.add_argument("--image", default=None,
                     help=f"3D image to run the networks on (default: the bundled sample, {SAMPLE_SCAN.name})")
    cka.add_argument("--region", nargs="+", type=float, default=None, metavar="MM",
                     help="the region compared: MM, the edge of a cube in mm along the image's axes, then optionally "
                          "X Y Z, its centre in the image's physical coordinates (LPS mm, as ITK; Slicer shows RAS: "
                          "negate X and Y); snapped to whole voxels of the coarsest network's deepest level (default: "
                          "a cube of up to 144 mm at the image centre)")
    cka.add_argument("--allow-extrapolation", action="store_true",
                     help="keep spacings outside the model's trained range instead of clamping them")
    cka.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda (default auto)")
    cka.add_argument("--overwrite", action="store_true", help="replace results of an earlier run in FOLDER")
    cka.add_argument("--quiet", action="store_true", help="no progress lines")

    evaluate = commands.add_parser(
        "evaluate", help="score segmentations against references (Dice, HD95, ASSD, surface Dice, ...)",
        description="Score PREDICTION against REFERENCE per class, or a batch of cases with --paths-csv. Distances "
                    "are in mm on the images' own grid. Metrics: " + ", ".join(_metric_names()) + ".",
    )
    evaluate.add_argument("reference", nargs="?", help="reference label image or .seg.nrrd")
    evaluate.add_argument("prediction", nargs="?", help="predicted label image or .seg.nrrd (or probabilities in [0, 1])")
    evaluate.add_argument("--paths-csv", help="batch: CSV with columns id, mask (reference) and prediction "
                                              "(UTF-8, paths relative to the CSV); exits 2 if every case fails")
    evaluate.add_argument("--labels", nargs="+", metavar="L",
                          help="classes: label values (2), groups (1,2,3) or segment names; default: every label present")
    evaluate.add_argument("--config", help="MIST-style JSON: {\"classes\": {name: [labels]}, \"metrics\": [...], \"tolerance\": mm}")
    evaluate.add_argument("--metrics", nargs="+", metavar="M", help="metrics to compute (default: all)")
    evaluate.add_argument("--tolerance", type=float, default=None, help="surface Dice tolerance in mm (default 1.0)")
    evaluate.add_argument("--resample-to-reference", action="store_true",
                          help="resample a prediction on another grid onto the reference's (nearest neighbour)")
    evaluate.add_argument("-o", "--output",
                          help="write a MIST-style results.csv (without it a batch prints the mean over cases)")
    evaluate.add_argument("--workers", type=int, default=1, help="processes for a batch, 1 or more (default 1)")
    evaluate.add_argument("--json", action="store_true", help="print the results as JSON")
    evaluate.add_argument("--overwrite", action="store_true", help="replace an existing results file")
    return parser


def _metric_names() -> list[str]:
    from .evaluation import METRICS

    return list(METRICS)


def _model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help=f"model file (default: the embedded {DEFAULT_MODEL.name})")


def _mode_and_model(args: argparse.Namespace, size: Sequence[int], name: str, load=models.load):
    """``(mode, model)`` for segmenting the input ``name``, an image of ``size`` voxels: ``--mode``, by default 2d for
    a 2D image or a single-slice volume unless ``--model`` is a 3D model, else 3d; ``--model``, by default the
    embedded model of the mode (read with ``load``). A ``UserError`` for a model that does not fit the mode or the
    image, or for slices chosen in 3d mode."""
    planar = len(size) == 2 or 1 in size
    path = args.model[0] if args.model else None  # an ensemble's first model (see models.ensemble_member for the others)
    model = load(path) if path else None
    mode = args.mode or ("2d" if planar and (model is None or model.dim == 2) else "3d")
    if mode == "3d" and (args.axis is not None or args.slice is not None):
        raise UserError("--axis and --slice choose the slices of --mode 2d (slice by slice, with a 2D model): "
                        "add --mode 2d")
    model = model or load(None, models.embedded_model(mode))
    model_name = path or models.embedded_model(mode).name
    if mode == "2d" and model.dim == 3:
        raise UserError(f"--mode 2d segments slice by slice with a 2D model, but {model_name} is a 3D model: pass a 2D "
                        "model with --model, or drop --mode 2d")
    if mode == "3d" and model.dim == 2:
        if planar:
            raise UserError(f"--mode 3d needs a 3D model, but {model_name} is a 2D model: drop --mode 3d, or pass a 3D "
                            "model")
        raise UserError(f"{name} is a 3D image of {' x '.join(map(str, size))} voxels and {model_name} is a 2D model: "
                        "pass --mode 2d (slice by slice; --axis, --slice choose the slices) or use a 3D model")
    if mode == "3d" and len(size) == 2:
        drop = "--model" if path else "--mode 3d"
        raise UserError(f"{name} is a 2D image, which a 3D model cannot segment: use a 2D model (the default "
                        f"for 2D images: drop {drop})")
    return mode, model


class _Run:
    """What every case of a run shares: the settings, checked once; the models, loaded once; and their segmenters,
    built once per mode and slices, which keep the networks generated for each spacing."""

    cache = None
    """A process-wide cache of models and segmenters kept from run to run (``worker.EngineCache``, set by the Slicer
    module's worker); None: each run reads its own."""

    def __init__(self, args: argparse.Namespace, device, world: int = 1) -> None:
        import torch

        from .inference import SpacingRequest, parse_spacing
        from .inference.segmenter import check_memory_budget
        from .postprocessing import steps_from_options

        self.args, self.device = args, device
        self.paths = args.model or [None]  # several: an ensemble
        self.mode = None  # a batch's mode for every case (see batch_mode); None: each case's own
        self.steps = steps_from_options(args.remove_smaller_than, args.largest_component, args.fill_holes)
        self.stages = 3 + 3 * len(self.paths) + bool(self.steps)
        request = parse_spacing(args.spacing)
        if args.max_voxels is not None or args.max_seconds is not None:
            if request.mode != "auto":
                raise UserError("--max-voxels and --max-seconds apply to --spacing auto: add --spacing auto")
        self.request = SpacingRequest(request.mode, request.values, args.max_voxels, args.max_seconds,
                                      args.allow_extrapolation)
        check_memory_budget(args.max_memory)  # before any case of a batch
        self._models: dict[str, object] = {}
        self._segmenters: dict[tuple, list] = {}
        for path in args.model or []:  # a missing or damaged model file fails the run, before any case
            self.load(path)
        models.check_models_differ(args.model or [], self.load)
        if world > 1 and device.type == "cpu":  # processes on one machine share its cores
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))

    def load(self, path: str | None, default: Path | None = None):
        """The model of file ``path`` (``None``: ``default``, the embedded 3D model when not given), read once."""
        default = models.DEFAULT_MODEL if default is None else default
        key = path or str(default)
        if key not in self._models:
            cache = _Run.cache
            self._models[key] = models.load(path, default) if cache is None else cache.model(path, default, self.device)
        return self._models[key]

    def segmenters(self, mode: str, models: list, slices) -> list:
        """The segmenters of ``models`` (those of ``mode``) for ``slices``, built once."""
        from .inference import Segmenter

        key = (mode, slices)
        if key not in self._segmenters:
            args = self.args
            make = Segmenter if _Run.cache is None else _Run.cache.segmenter
            self._segmenters[key] = [make(m, device=str(self.device), patch=args.patch, slices=slices,
                                               tta=args.tta, max_memory_mb=args.max_memory) for m in models]
        return self._segmenters[key]


def batch_mode(args: argparse.Namespace, cases: Sequence) -> str | None:
    """The one mode of a batch given neither ``--mode`` nor ``--model``: ``3d`` (the embedded 3D model) when any case
    is a volume, so that a 2D image among volumes fails clearly instead of being segmented by the 2D model with
    other labels; ``None`` (each case's own: 2D images and single slices, the 2D model) otherwise."""
    from .inference.cases import image_size, is_volume

    if args.mode is not None or args.model:
        return None
    return "3d" if any(is_volume(image_size(case.image)) for case in cases) else None


def _read_scan(path: str, input_spacing: Sequence[float] | None):
    """``(image, scan, notes)``: the image of ``path`` (a colour picture as grey), the same with ``input_spacing``
    when given, checked, and notes for the user. Safe to run in a background thread."""
    from .geometry import with_spacing
    from .io.images import check_image, direction_note, nonfinite_note, picture_as_grey, picture_spacing_note, read_image

    image, colour_note = picture_as_grey(read_image(path), path)
    scan = with_spacing(image, input_spacing, "--input-spacing") if input_spacing else image
    check_image(scan, str(path))
    notes = [colour_note, None if input_spacing else picture_spacing_note(image, path), nonfinite_note(image),
             direction_note(image, Path(path).name)]
    return image, scan, [note for note in notes if note]


def _segment_case(run: _Run, name: str, output: str | os.PathLike, read, reporter, maps: dict[str, str | None]) -> dict:
    """Segment one case, the image ``name`` that ``read()`` returns (see ``_read_scan``), into ``output`` (and the
    maps of ``maps``: ``{option: file or None}``); the summary that ``--json`` prints."""
    from .evaluation.labels import read_mask
    from .inference import Slices, labels_from_probabilities, labels_on_input_grid, normalised_entropy
    from .io.images import check_picture_output, write_labels, write_probabilities, write_uncertainty
    from .postprocessing import postprocess, resolve_steps

    args, paths = run.args, run.paths
    with reporter.stage("load model and image"):
        image, scan, notes = read()
        check_picture_output(output, image, name)
        if run.mode == "3d" and scan.GetDimension() == 2:
            raise UserError(f"{name} is a 2D image in a batch of volumes, which the 3D model segments: segment the 2D "
                            "images in a batch of their own (the 2D model, with other labels, segments them)")
        given = args if run.mode is None else argparse.Namespace(**{**vars(args), "mode": run.mode})
        mode, model = _mode_and_model(given, scan.GetSize(), name, run.load)
        members = [model] + [models.ensemble_member(path, model, paths[0], run.load) for path in paths[1:]]
        steps = resolve_steps(run.steps, model.labels)
        for note in notes:
            reporter.log(f"note: {note}")
        slices = Slices(args.axis, args.slice).resolved(scan) if mode == "2d" else Slices()
        segmenters = run.segmenters(mode, members, slices)
        segmenter, view = segmenters[0], segmenters[0].view(scan)
        choices = [s.choose_spacing(scan, run.request) for s in segmenters]  # each model at its own spacing
        memory = max(s.check_memory(scan, choice.spacing, run.request.allow_extrapolation)
                     for s, choice in zip(segmenters, choices))
        mask = read_mask(args.mask, image) if args.mask else None
    spacing_notes = [note for choice in choices for note in choice.notes]
    for note in spacing_notes:
        reporter.log(f"note: {note}")
    where = ""
    if mode == "2d":
        count = f"{view.slices} slice" + ("s" if view.slices > 1 else "")
        where = f" in the slice plane ({' x '.join(view.axes)}), {count} along file axis {slices.axis}"
    for path, choice in zip(paths, choices):
        of = f" of {path}" if len(paths) > 1 else ""
        reporter.log(f"working spacing{of}: {' x '.join(f'{s:.3g}' for s in choice.spacing)} mm{where} "
                     f"(estimated memory need {memory:,.0f} MB)")
    if maps["--probabilities"] is None and maps["--uncertainty"] is None:  # labels only: interpolate where it matters
        parts = [s.working_probabilities(scan, c.spacing, reporter, mask) for s, c in zip(segmenters, choices)]
        labels = labels_on_input_grid(parts, sorted(model.labels), image, reporter, mask)
    else:
        probabilities = segmenter.probabilities(scan, choices[0].spacing, reporter, mask)
        for other, choice in zip(segmenters[1:], choices[1:]):  # an ensemble's mean, on the input grid
            probabilities += other.probabilities(scan, choice.spacing, reporter, mask)
        with reporter.stage("labels"):
            probabilities /= len(segmenters)
            # on the input's own header, whatever spacing was used for the work
            labels = labels_from_probabilities(probabilities, sorted(model.labels), image)
    applied = []
    if steps:
        with reporter.stage("postprocess"):
            labels, applied = postprocess(labels, steps, scan.GetSpacing())  # --input-spacing's, if given
    with reporter.stage("write"):
        write_labels(labels, output, model.labels, model.colors, overwrite=args.overwrite)
        if maps["--probabilities"] is not None:
            write_probabilities(probabilities, image, maps["--probabilities"], overwrite=args.overwrite)
        if maps["--uncertainty"] is not None:
            write_uncertainty(normalised_entropy(probabilities), image, maps["--uncertainty"], overwrite=args.overwrite)
    summary = {
        "input": str(name), "output": str(output), "mode": mode, "spacing_mm": list(choices[0].spacing),
        "native_spacing_mm": list(view.spacing), "spacing_axes": view.axes, "method": model.method,
        "device": segmenter.device.type, "notes": spacing_notes, "postprocessing": applied,
        "models": [{"model": path, "spacing_mm": list(choice.spacing)} for path, choice in zip(paths, choices)],
        "probabilities": maps["--probabilities"], "uncertainty": maps["--uncertainty"],
        "tta_predictions": len(segmenter.flips), **_memory_time(reporter.records),
        "stages": [{"name": r.name, "seconds": round(r.seconds, 3), "peak_memory_mb": round(r.peak_memory_mb, 1),
                    "peak_gpu_memory_mb": r.peak_gpu_memory_mb, **_memory_time([r])} for r in reporter.records],
    }
    if mode == "2d":
        summary.update(axis=slices.axis, slice=slices.index, slices=view.slices)
    return summary


def _memory_time(records) -> dict:
    """The area under the memory-time curve of ``records`` (stages), resident and GPU (``None`` off CUDA), MB s."""
    gpu = [r.gpu_memory_time_mb_s for r in records if r.gpu_memory_time_mb_s is not None]
    return {"memory_time_mb_s": round(sum(r.memory_time_mb_s for r in records), 1) if records else None,
            "gpu_memory_time_mb_s": round(sum(gpu), 1) if gpu else None}


def run_segment(args: argparse.Namespace) -> int:
    """Segment one image into the file ``-o``, or a batch of cases into the folder ``-o``."""
    from .inference.cases import collect_cases, process_rank
    from .system import resolve_device

    if args.skip_existing and args.overwrite:
        raise UserError("--skip-existing keeps the outputs that exist and --overwrite replaces them: give one of them")
    cases, batch = collect_cases(args.input)
    rank, world, local_rank = process_rank()
    device = resolve_device(args.device, local_rank)
    if batch or world > 1 or args.shard is not None:
        return _segment_batch(args, cases, device, rank, world)
    if args.summary is not None or args.output_suffix is not None or args.skip_existing:
        raise UserError("--summary, --output-suffix and --skip-existing apply to a batch (several inputs, a folder, a "
                        "glob pattern or a CSV): for one INPUT, -o names the output file")
    return _segment_single(args, cases[0].image, device)


def _model_inputs(args: argparse.Namespace) -> dict[str, str]:
    """The model files of ``--model`` as inputs that no output may replace: ``{role: path}``."""
    return {f"model {path}": path for path in args.model or []}


def _segment_single(args: argparse.Namespace, name: str, device) -> int:
    """Segment the one image ``name`` into ``-o``; a ``UserError`` (exit code 2) for any problem."""
    from .io.images import check_map_output, check_not_an_input, check_output_path
    from .progress import Reporter

    inputs = {"input image": name, "mask": args.mask, **_model_inputs(args)}
    check_not_an_input(args.output, inputs)
    check_output_path(args.output, args.overwrite)
    maps = {"--probabilities": args.probabilities, "--uncertainty": args.uncertainty}
    for option, path in maps.items():
        if path is not None:
            others = {f"{other} output": p for other, p in maps.items() if other != option}
            check_not_an_input(path, {**inputs, "label output (-o)": args.output, **others})
            check_map_output(path, args.overwrite, option)
    run = _Run(args, device)
    reporter = Reporter(stages=run.stages, quiet=args.quiet, progress_lines=args.progress_lines, device=device)
    summary = _segment_case(run, name, args.output, lambda: _read_scan(name, args.input_spacing), reporter, maps)
    if args.json:
        print(json.dumps(summary, indent=2))
    elif not args.quiet:
        print(f"wrote {args.output} ({sum(r.seconds for r in reporter.records):.1f} s)")
    return 0


def _segment_batch(args: argparse.Namespace, cases: list, device, rank: int, world: int) -> int:
    """Segment this process's share of ``cases`` into the folder ``-o`` and write the summary CSV (rank 0 of a
    ``torchrun`` group: the one of every process); exit code 1 if a case of this process failed. Interrupted
    (Ctrl+C, SIGTERM), a single process writes the summary of the cases it went through before it stops."""
    from .inference.cases import (
        check_output_suffix, check_picture_outputs, check_summary, close_group, gather, parse_shard, plan_outputs,
        share, write_summary,
    )
    from .io.images import IMAGE_EXTENSIONS, extension, output_folder

    if args.probabilities is not None or args.uncertainty is not None:
        raise UserError("--probabilities and --uncertainty name one file each, for one INPUT: segment the scans to "
                        "review one at a time with them")
    if args.mask is not None:
        raise UserError("--mask is the mask of one scan, for one INPUT: segment the scans with masks one at a time")
    suffix = ".seg.nrrd" if args.output_suffix is None else args.output_suffix
    check_output_suffix(suffix)
    if extension(args.output) in (*IMAGE_EXTENSIONS, ".csv") and not Path(args.output).is_dir():
        raise UserError(f"-o {args.output} looks like a file name, but the inputs make a batch, whose outputs go in a "
                        "folder: give -o a folder name (such as results), or segment one INPUT")
    if args.shard is not None and world > 1:
        raise UserError("--shard splits the cases among separate jobs, but under torchrun the processes share them "
                        "already: drop --shard")
    part, parts = parse_shard(args.shard) if args.shard is not None else (rank + 1, world)
    cases = _scans_of_batch(args, cases, suffix, rank)
    mine = share(cases, part - 1, parts)
    csv_inputs = {item: f"cases CSV {item}" for item in args.input
                  if item.lower().endswith(".csv") and Path(item).is_file()}
    other_inputs = {**csv_inputs, **{path: role for role, path in _model_inputs(args).items()}}
    with output_folder(args.output, "-o") as folder:  # removed again if the run fails before any case
        default = f"summary-shard-{part}-of-{parts}.csv" if args.shard is not None else "summary.csv"
        summary = Path(args.summary) if args.summary else folder / default
        problem = None
        try:  # every output checked before any work
            outputs, skip = plan_outputs(mine, cases, folder, suffix, args.overwrite, other_inputs, args.skip_existing)
            check_picture_outputs(mine, outputs)
            if rank == 0:
                check_summary(summary, {**{c.image: f"input of case {c.id}" for c in cases}, **other_inputs,
                                        **{str(o): f"output of case {c.id}" for c, o in zip(mine, outputs)}},
                              args.skip_existing, args.overwrite)
        except UserError as error:
            problem = str(error)
        problems = [p for p in gather(problem, world) if p]  # under torchrun: every process stops, or none
        if problems:
            close_group()
            raise UserError(problems[0])
        run = _Run(args, device, world)
        run.mode = batch_mode(args, cases)
        rows, interrupted = _segment_cases(args, run, mine, outputs, skip, len(cases))
        if interrupted:  # Ctrl+C: the cases done so far, in this process alone (other processes may be gone)
            if rank == 0 and world == 1 and rows:
                with contextlib.suppress(UserError, OSError):
                    write_summary(rows, summary, args.overwrite or args.skip_existing)
                    print(f"hyperspace: interrupted; the summary of the {len(rows)} cases gone through is in "
                          f"{summary} (run again with --skip-existing to continue)", file=sys.stderr)
            raise interrupted
        every = sorted((row for rows_of in gather(rows, world) for row in rows_of), key=lambda row: row["index"])
        if rank == 0:
            write_summary(every, summary, args.overwrite or args.skip_existing)
        gather(None, world)  # every process ends after the summary is written (torchrun stops all when one fails)
        close_group()
    failed = sum(row["status"] == "failed" for row in rows)
    skipped = sum(row["status"] == "skipped" for row in rows)
    if args.json:
        print(json.dumps({"summary": str(summary) if rank == 0 else None,
                          "cases": [{k: v for k, v in row.items() if k != "index"} for row in rows]}, indent=2))
    elif not args.quiet:
        where = f"; summary: {summary}" if rank == 0 else ""
        notes = ([f"{failed} failed"] if failed else []) + \
            ([f"{skipped} skipped: their outputs exist"] if skipped else [])
        print(f"segmented {len(rows) - failed - skipped} of {len(rows)} cases into {folder}"
              + (f" ({'; '.join(notes)})" if notes else "") + where)
    return 1 if failed else 0


def _scans_of_batch(args: argparse.Namespace, cases: list, suffix: str, rank: int) -> list:
    """``cases`` without the files that a folder or pattern found but are outputs of this batch (an earlier run's,
    with a note), their ids checked: unique."""
    from .inference.cases import check_unique_ids, drop_own_outputs

    cases, dropped = drop_own_outputs(cases, Path(args.output), suffix)
    if dropped and rank == 0 and not args.quiet:
        names = ", ".join(Path(case.image).name for case in dropped[:3]) + (", ..." if len(dropped) > 3 else "")
        print(f"note: {len(dropped)} file(s) found are outputs of this batch, not scans, and are left out: {names}",
              file=sys.stderr)
    if not cases:
        raise UserError(f"every file found is an output of this batch ({args.output}): give the scans to segment")
    check_unique_ids(cases)
    return cases


def _segment_cases(args: argparse.Namespace, run: _Run, cases: list, outputs: list[Path], skip: list[bool],
                   total: int) -> tuple[list[dict], BaseException | None]:
    """Segment ``cases`` one after the other into ``outputs`` (those marked in ``skip`` not: their outputs exist),
    reading each next case in a background thread while one is predicted; a case that fails is reported in one line
    on stderr and skipped. ``(rows, interrupted)``: one summary row per case gone through, and the
    ``KeyboardInterrupt`` (Ctrl+C) or ``SystemExit`` (SIGTERM) that stopped the batch (its case listed as
    cancelled), if one did."""
    from concurrent.futures import ThreadPoolExecutor

    from .progress import CasePosition, CaseProgress, Reporter

    progress = CaseProgress(len(cases), quiet=args.quiet)
    maps = {"--probabilities": None, "--uncertainty": None}
    rows = []
    todo = [number for number, skipped in enumerate(skip) if not skipped]  # the cases to read, in order
    interrupted = None
    with ThreadPoolExecutor(max_workers=1) as pool:
        reads = {}

        def read_ahead(number: int) -> None:  # the next case to segment after case ``number`` (0-based)
            following = next((n for n in todo if n > number), None)
            if following is not None and following not in reads:
                reads[following] = pool.submit(_read_scan, cases[following].image, args.input_spacing)

        read_ahead(-1)
        for number, (case, output) in enumerate(zip(cases, outputs), 1):
            row = {"index": case.index, "id": case.id, "input": case.image, "output": str(output), "status": "done",
                   "spacing_mm": None, "error": None}
            if skip[number - 1]:
                rows.append({**row, "status": "skipped", "error": "output exists (--skip-existing)"})
                continue
            read_ahead(number - 1)  # read the next case while this one is predicted
            position = CasePosition(number, len(cases), case.id)
            progress.start(position)
            reporter = Reporter(stages=run.stages, quiet=args.quiet or progress.bar is not None,
                                progress_lines=args.progress_lines, device=run.device, case=position,
                                on_stage=progress.stage)
            start = time.perf_counter()
            try:
                row["spacing_mm"] = _segment_case(run, case.image, output, reads[number - 1].result, reporter,
                                                  maps)["spacing_mm"]
            except (UserError, RuntimeError, MemoryError, OSError) as error:
                row.update(output=None, status="failed", error=error_line(error))
                progress.error(f"hyperspace: case {case.id} ({case.index + 1} of {total}) failed: {row['error']}")
            except (KeyboardInterrupt, SystemExit) as error:  # Ctrl+C, or terminated (SIGTERM, see main): this case
                row.update(output=None, status="cancelled", error="interrupted")  # is not written (nor its temporary)
                interrupted = error
                for future in reads.values():
                    if future is not None:
                        future.cancel()
            reads[number - 1] = None  # the image is no longer needed
            records = reporter.records  # the stages that ran to their end
            row.update(seconds=round(time.perf_counter() - start, 3),
                       peak_memory_mb=round(max(r.peak_memory_mb for r in records), 1) if records else None,
                       **_memory_time(records))
            rows.append(row)
            if interrupted:
                break
            progress.finish(position, row["status"], row["seconds"])
    progress.close()
    return rows, interrupted


def run_info(args: argparse.Namespace) -> int:
    path = Path(args.model) if args.model else DEFAULT_MODEL
    facts = models.describe(models.load(str(path)), path)
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    print(f"model file:        {facts['file']} ({facts['file_size_mb']} MB)")
    print(f"method:            {facts['method']} ({facts['dimensions']}D, {facts['modality']}, normalisation "
          f"version {facts['normalisation_version']})")
    if facts["input_features"] != "intensity":
        print(f"input:             {facts['input_features']} descriptors of the normalised image")
    print("labels:            " + ", ".join(f"{k} {v}" for k, v in facts["labels"].items()))
    print(f"spacing range:     {facts['spacing_range_mm'][0]:g}-{facts['spacing_range_mm'][1]:g} mm per axis")
    if facts["fixed_spacing_mm"]:
        print(f"fixed spacing:     {facts['fixed_spacing_mm']} mm")
    print(f"dimensions:        {facts['dimensions']}D" + (" (slice by slice for volumes: --mode 2d)"
                                                            if facts["dimensions"] == 2 else ""))
    print(f"U-Net:             {facts['unet_parameters']:,} parameters, features {facts['unet_features']}")
    if facts["dimensions"] == 2:
        ratios = ", ".join(f"{r:g}" for r in facts["ife_ratios"])
        print(f"IFE:               {facts['ife']}" + (f" (ratios {ratios})" if ratios else ""))
    if facts["hypernetwork_parameters"]:
        print(f"hypernetwork:      {facts['hypernetwork_parameters']:,} parameters")
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from .io.images import check_output_path, output_folder

    if not SAMPLE_SCAN.is_file():
        raise UserError(f"the bundled sample {SAMPLE_SCAN} is missing: reinstall hyperspace-segmentation")
    runs = (("native", "native-1.5mm"), ("3", "coarse-3mm"))
    with output_folder(args.output_dir, "--output-dir") as folder:  # removed again if the demo fails
        for _, name in runs:  # every result checked before any is written
            check_output_path(folder / f"{name}.seg.nrrd", args.overwrite)
        print(f"sample: {SAMPLE_SCAN.name} (MNI152 T1 template at 1.5 mm); results in {folder.resolve()}")
        for spacing, name in runs:
            output = folder / f"{name}.seg.nrrd"
            start = time.perf_counter()
            argv = ["segment", str(SAMPLE_SCAN), "-o", str(output), "--spacing", spacing, "--device", args.device,
                    "--quiet"]
            if args.model:
                argv += ["--model", args.model]
            if args.overwrite:
                argv.append("--overwrite")
            run_segment(_parser().parse_args(argv))
            print(f"  {name}: {output} in {time.perf_counter() - start:.1f} s")
    print("open the .seg.nrrd files over the sample in 3D Slicer to compare them")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from .training import TrainConfig, train
    from .training.trainer import resumed_config

    given = {name: getattr(args, name) for name in (
        "dataset", "method", "dim", "ife", "ife_ratios", "slice_axes", "fixed_spacing", "patch", "batch_size",
        "iterations", "learning_rate", "features", "rank", "seed", "workers", "checkpoint_every", "device", "augment",
        "init", "input_features",
    ) if getattr(args, name) is not None}
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


def run_evaluate(args: argparse.Namespace) -> int:
    import math

    from .evaluation import DEFAULT_METRICS, evaluate_batch, evaluate_files, write_results_csv
    from .evaluation.evaluate import (
        check_metrics, class_names, empty_class_notes, read_paths_csv, results_table,
    )
    from .evaluation.labels import classes_from_labels, load_config
    from .io.images import check_not_an_input, check_writable
    from .progress import Reporter

    if bool(args.paths_csv) == bool(args.reference and args.prediction):
        raise UserError("give either REFERENCE and PREDICTION, or --paths-csv CASES.csv")
    if args.workers < 1:
        raise UserError(f"--workers {args.workers}: give 1 or more processes")
    classes, metrics, tolerance = load_config(args.config) if args.config else (None, None, None)
    if args.labels:
        classes = classes_from_labels(args.labels)
    metrics = check_metrics(args.metrics or metrics or list(DEFAULT_METRICS))
    tolerance = args.tolerance if args.tolerance is not None else tolerance if tolerance is not None else 1.0
    if not (tolerance >= 0 and math.isfinite(tolerance)):
        raise UserError(f"--tolerance {tolerance}: give a distance of 0 mm or more")
    if args.output:
        if not args.output.lower().endswith(".csv"):
            raise UserError(f"{args.output}: results are written as CSV; give a name ending in .csv")
        check_not_an_input(args.output, {"paths CSV": args.paths_csv, "reference": args.reference,
                                         "prediction": args.prediction})
        check_writable(args.output, args.overwrite)
    if args.paths_csv:
        cases = read_paths_csv(args.paths_csv)
        reporter = Reporter(stages=1, quiet=args.json)
        with reporter.stage(f"evaluate {len(cases)} cases", total=len(cases)) as update:
            rows = evaluate_batch(cases, classes, metrics, tolerance, args.resample_to_reference, args.workers, update)
        failed = [row for row in rows if "error" in row]
        for row in failed:
            print(f"hyperspace: case {row['id']} failed: {row['error']}", file=sys.stderr)
        if len(failed) == len(rows):
            raise UserError(f"all {len(rows)} cases failed (reasons above): fix them in {args.paths_csv} and run again")
    else:
        rows = [{"id": Path(args.prediction).name, **evaluate_files(
            args.reference, args.prediction, classes, metrics, tolerance, args.resample_to_reference)}]
    if not any(class_names(row) for row in rows):
        source = f"any case of {args.paths_csv}" if args.paths_csv else f"{args.reference} or {args.prediction}"
        raise UserError(f"no foreground label in {source}, so there is nothing to score: pass --labels (or a "
                        "config's classes) to score classes anyway (a class in neither image scores as a perfect match)")
    for note in empty_class_notes(rows):
        print(f"note: {note}", file=sys.stderr)
    if args.output:
        write_results_csv(rows, args.output, args.overwrite)
    if args.json:
        print(json.dumps(rows if args.paths_csv else rows[0], indent=2, default=str))
    elif args.paths_csv:
        columns, table = results_table(rows)
        print(f"mean over the {len(rows) - len(failed)} scored of {len(rows)} cases"
              + ("" if args.output else " (-o results.csv keeps every case, --json prints them)") + ":")
        _print_case(table[len(rows)], class_names(columns), metrics)
    else:
        _print_case(rows[0], class_names(rows[0]), metrics)
    if args.output and not args.json:
        print(f"wrote {args.output}")
    return 0


def _print_case(row: dict, classes: list[str], metrics: list[str]) -> None:
    """One line per class, one column per metric."""
    width = max([len(c) for c in classes] + [5])
    print(f"{'class':<{width}}  " + "  ".join(f"{m:>12}" for m in metrics))
    for name in classes:
        print(f"{name:<{width}}  " + "  ".join(f"{row[f'{name}_{m}']:>12.4g}" for m in metrics))


def run_export(args: argparse.Namespace) -> int:
    from .export import check_export_output, choose_network, sidecar_path, write_network

    embedded = args.model in (None, "default")
    model_path = DEFAULT_MODEL if embedded else Path(args.model)
    fmt = check_export_output(args.output, args.overwrite, model_path)  # before the model is read
    model = models.load(None if embedded else args.model)
    choice, network = choose_network(model, args.spacing, args.allow_extrapolation)
    for note in choice.notes:
        print(f"note: {note}", file=sys.stderr)
    spacing = " x ".join(f"{s:g}" for s in choice.spacing) + " mm"
    if not args.quiet:
        what = "ONNX (a minute or more)" if fmt == "onnx" else "TorchScript"
        print(f"exporting the network for {spacing} as {what}", file=sys.stderr)
    write_network(model, model_path, choice, network, args.output, args.overwrite)
    if not args.quiet:
        print(f"wrote {args.output} and {sidecar_path(args.output)} (the network for {spacing})")
    return 0


def run_analyze(args: argparse.Namespace) -> int:
    from .analysis import (
        analyse, check_model, choose_region, cka_spacings, output_names, require_matplotlib, summary, write_results,
    )
    from .io.images import check_image, check_writable, output_folder, read_image

    require_matplotlib()
    if args.region is not None and len(args.region) not in (1, 4):
        raise UserError(f"--region takes MM, or MM X Y Z (the cube's edge, then its centre), not {len(args.region)} "
                        "values")
    model = models.load(args.model)
    check_model(model, Path(args.model).name if args.model else DEFAULT_MODEL.name)
    image_path = args.image or str(SAMPLE_SCAN)
    image = read_image(image_path)
    check_image(image, image_path)
    if image.GetDimension() != 3:
        raise UserError(f"{image_path} is a 2D image: the CKA analysis runs 3D networks on a 3D image")
    spacings, notes = cka_spacings(model, image, args.spacings, args.allow_extrapolation)
    size, centre = (args.region[0], args.region[1:] or None) if args.region else (None, None)
    region = choose_region(image, spacings, len(model.unet_config.features), size, centre)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    with output_folder(args.output, "-o") as folder:
        for name in output_names(spacings):  # every output checked before any work
            check_writable(folder / name, args.overwrite)
        log = None if args.quiet else (lambda line: print(line, file=sys.stderr))
        result = analyse(model, image, spacings, region, args.device, log)
        paths = write_results(result, folder, args.overwrite)
    print("\n".join(summary(result)))
    print(f"wrote {paths[0]} and {len(paths) - 1} heatmaps in {folder}")
    return 0


COMMANDS = {"segment": run_segment, "info": run_info, "demo": run_demo, "train": run_train, "evaluate": run_evaluate,
            "export": run_export, "analyze": run_analyze}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hyperspace`` script; returns the exit code."""
    if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # terminated: remove temporary files on the way out
    for stream in (sys.stdout, sys.stderr):  # a console that cannot show a name (cp1252 on Windows) gets \N escapes
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        args = _parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except UserError as error:
        print(f"hyperspace: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hyperspace: cancelled", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
