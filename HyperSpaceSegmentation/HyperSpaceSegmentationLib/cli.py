"""The ``hyperspace`` command: segment, train, info, demo and evaluate without 3D Slicer.

Errors a user can fix print one line, ``hyperspace: error: ...``, and exit with code 2; outputs are written
to a temporary file and renamed, so an interrupted or failed run leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import NoReturn, Sequence

from . import __version__
from .errors import UserError

RESOURCES = Path(__file__).resolve().parent / "resources"  # package data: installed with the engine
DEFAULT_MODEL = RESOURCES / "models" / "brain-tissue-mni152.pt"
DEFAULT_MODEL_2D = RESOURCES / "models" / "white-matter-2d-mni152.pt"  # for --mode 2d and 2D images
SAMPLE_SCAN = RESOURCES / "samples" / "MNI152-T1-1.5mm.nrrd"


class _Parser(argparse.ArgumentParser):
    """Usage errors end, like every other error, in one ``hyperspace: error:`` line that says what to do; options
    are taken only as spelled out (an abbreviation such as ``--mode`` must never be read as ``--model``)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **{**kwargs, "allow_abbrev": False})

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
                    "whole with a 3D model, or slice by slice with a 2D model (--mode 2d).",
        epilog="Spacings per axis refer to the image axes after reorientation to the nearest L, P, S axes (with "
               "--mode 2d: the slice plane's two, in that order; the summary's spacing_axes names them).",
    )
    segment.add_argument("input", help="image file (.nrrd, .nii.gz, .mha, ...; 2D: .png, .jpg, .tif, .bmp) or a "
                                       "DICOM series folder")
    segment.add_argument("-o", "--output", required=True,
                         help="output label image; the extension picks the format (.seg.nrrd: Slicer segmentation; "
                              ".png, .tif, .bmp: 2D results only)")
    segment.add_argument("--model", nargs="+", default=None, metavar="MODEL",
                         help=f"model file (default: the embedded {DEFAULT_MODEL.name}; with --mode 2d, "
                              f"{DEFAULT_MODEL_2D.name}); several: an ensemble, each model at its own spacing, their "
                              "probabilities averaged on INPUT's grid (same labels and dimensions)")
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
    segment.add_argument("--remove-smaller-than", nargs="+", type=float, action="append", metavar=("MM3", "LABEL"),
                         help="postprocess: remove objects (connected components) smaller than MM3 mm^3 of the "
                              "classes LABEL (default: every class); may be given again with another size")
    segment.add_argument("--largest-component", nargs="*", type=int, metavar="LABEL",
                         help="postprocess: keep only the largest object of the classes LABEL (default: every class)")
    segment.add_argument("--fill-holes", nargs="*", type=int, metavar="LABEL",
                         help="postprocess: fill enclosed holes of the classes LABEL (default: every class); applied "
                              "after --remove-smaller-than, then --largest-component")
    segment.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda (default auto)")
    segment.add_argument("--patch", type=int, default=None,
                         help="sliding-window size in voxels (default 128 in 3D, 512 in 2D)")
    segment.add_argument("--overwrite", action="store_true",
                         help="replace OUTPUT if it exists (without it, an OUTPUT written meanwhile by another run is kept)")
    segment.add_argument("--probabilities", default=None, metavar="FILE",
                         help="also write the class probabilities on INPUT's grid: a vector image (.nrrd, .nii.gz, "
                              ".nii, .mha), one uint8 component per class (probability * 255), classes in the order "
                              "of their sorted label values; the labels are their argmax")
    segment.add_argument("--uncertainty", default=None, metavar="FILE",
                         help="also write the normalised entropy of the class probabilities on INPUT's grid, -sum p "
                              "log p / log(classes), from 0 (certain) to 1, as float32 (.nrrd, .nii.gz, .nii, .mha)")
    segment.add_argument("--tta", nargs="*", type=int, default=None, metavar="AXIS",
                         help="test-time augmentation: average the probabilities over every combination of flips of "
                              "these axes (0 L-R, 1 P-A, 2 S-I; --mode 2d: the slice plane's two, 0 and 1, in L, P, S "
                              "order); no AXIS: all axes (8 predictions in 3D, 4 in 2D). Put it after INPUT")
    segment.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    segment.add_argument("--quiet", action="store_true", help="no progress output")
    segment.add_argument("--progress-lines", action="store_true",
                         help="also print machine-readable progress on stderr, one JSON event a line after "
                              "'HYPERSPACE_PROGRESS ' (for programs such as the Slicer module)")

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
        description="Train HyperSpace or a baseline on a dataset JSON (see README). For several processes or GPUs: "
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


def _load(path: str | None, default: Path = DEFAULT_MODEL):
    from .io.model_file import load_model

    if path is None and not default.exists():
        what = "2D model" if default == DEFAULT_MODEL_2D else "model"
        raise UserError(f"the embedded {what} {default} is missing: reinstall hyperspace-segmentation, or pass --model")
    return load_model(path or default)


def _mode_and_model(args: argparse.Namespace, size: Sequence[int]):
    """``(mode, model)`` for segmenting the input, an image of ``size`` voxels: ``--mode``, by default 2d for a 2D
    image or a single-slice volume unless ``--model`` is a 3D model, else 3d; ``--model``, by default the embedded
    model of the mode. A ``UserError`` for a model that does not fit the mode or the image, or for slices chosen
    in 3d mode."""
    planar = len(size) == 2 or 1 in size
    path = args.model[0] if args.model else None  # an ensemble's first model (see _ensemble_member for the others)
    model = _load(path) if path else None
    mode = args.mode or ("2d" if planar and (model is None or model.dim == 2) else "3d")
    if mode == "3d" and (args.axis is not None or args.slice is not None):
        raise UserError("--axis and --slice choose the slices of --mode 2d (slice by slice, with a 2D model): "
                        "add --mode 2d")
    model = model or _load(None, DEFAULT_MODEL_2D if mode == "2d" else DEFAULT_MODEL)
    name = path or (DEFAULT_MODEL_2D if mode == "2d" else DEFAULT_MODEL).name
    if mode == "2d" and model.dim == 3:
        raise UserError(f"--mode 2d segments slice by slice with a 2D model, but {name} is a 3D model: pass a 2D model "
                        "with --model, or drop --mode 2d")
    if mode == "3d" and model.dim == 2:
        if planar:
            raise UserError(f"--mode 3d needs a 3D model, but {name} is a 2D model: drop --mode 3d, or pass a 3D model")
        raise UserError(f"{args.input} is a 3D image of {' x '.join(map(str, size))} voxels and {name} is a 2D model: "
                        "pass --mode 2d (slice by slice; --axis, --slice choose the slices) or use a 3D model")
    if mode == "3d" and len(size) == 2:
        drop = "--model" if path else "--mode 3d"
        raise UserError(f"{args.input} is a 2D image, which a 3D model cannot segment: use a 2D model (the default "
                        f"for 2D images: drop {drop})")
    return mode, model


def _ensemble_member(path: str, first, first_path: str):
    """Model ``path`` of an ensemble whose first model is ``first``, read from ``first_path``; a ``UserError``
    unless both have the same dimensions and labels (values and names)."""
    model = _load(path)
    if model.dim != first.dim:
        raise UserError(f"--model {first_path} is a {first.dim}D model but {path} is a {model.dim}D one: an ensemble's "
                        "models must have the same dimensions and labels")
    if model.labels != first.labels:
        shown = [", ".join(f"{v} {n}" for v, n in sorted(m.labels.items())) for m in (first, model)]
        raise UserError(f"--model {first_path} and {path} have different labels ({shown[0]}; {shown[1]}): an "
                        "ensemble's models must segment the same classes")
    return model


def run_segment(args: argparse.Namespace) -> int:
    from .geometry import with_spacing
    from .inference import (
        Segmenter, Slices, SpacingRequest, labels_from_probabilities, normalised_entropy, parse_spacing,
    )
    from .io.images import (
        check_image, check_map_output, check_not_an_input, check_output_path, check_picture_output, nonfinite_note,
        picture_as_grey, picture_spacing_note, read_image, write_labels, write_probabilities, write_uncertainty,
    )
    from .postprocessing import postprocess, resolve_steps, steps_from_options
    from .progress import Reporter

    if not args.output.strip():
        raise UserError("the output name is empty: give a file name such as labels.seg.nrrd with -o")
    check_not_an_input(args.output, {"input image": args.input})
    check_output_path(args.output, args.overwrite)
    maps = {"--probabilities": args.probabilities, "--uncertainty": args.uncertainty}
    for option, path in maps.items():
        if path is not None:
            others = {f"{other} output": p for other, p in maps.items() if other != option}
            check_not_an_input(path, {"input image": args.input, "label output (-o)": args.output, **others})
            check_map_output(path, args.overwrite, option)
    steps = steps_from_options(args.remove_smaller_than, args.largest_component, args.fill_holes)
    paths = args.model or [None]  # several: an ensemble
    reporter = Reporter(stages=2 + 3 * len(paths) + bool(steps), quiet=args.quiet, progress_lines=args.progress_lines)
    with reporter.stage("load model and image"):
        image, colour_note = picture_as_grey(read_image(args.input), args.input)
        scan = with_spacing(image, args.input_spacing, "--input-spacing") if args.input_spacing else image
        check_image(scan, str(args.input))
        check_picture_output(args.output, image, str(args.input))
        mode, model = _mode_and_model(args, scan.GetSize())
        models = [model] + [_ensemble_member(path, model, paths[0]) for path in paths[1:]]
        steps = resolve_steps(steps, model.labels)
        notes = [colour_note, None if args.input_spacing else picture_spacing_note(image, args.input),
                 nonfinite_note(image)]
        for note in filter(None, notes):
            reporter.log(f"note: {note}")
        request = parse_spacing(args.spacing)
        if args.max_voxels is not None or args.max_seconds is not None:
            if request.mode != "auto":
                raise UserError("--max-voxels and --max-seconds apply to --spacing auto: add --spacing auto")
        request = SpacingRequest(request.mode, request.values, args.max_voxels, args.max_seconds,
                                 args.allow_extrapolation)
        slices = Slices(args.axis, args.slice).resolved(scan) if mode == "2d" else Slices()
        segmenters = [Segmenter(m, device=args.device, patch=args.patch, slices=slices, tta=args.tta) for m in models]
        segmenter, view = segmenters[0], segmenters[0].view(scan)
        choices = [s.choose_spacing(scan, request) for s in segmenters]  # each model at its own spacing
        memory = max(s.check_memory(scan, choice.spacing) for s, choice in zip(segmenters, choices))
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
    probabilities = segmenter.probabilities(scan, choices[0].spacing, reporter)
    for other, choice in zip(segmenters[1:], choices[1:]):  # an ensemble's mean, on the input grid
        probabilities += other.probabilities(scan, choice.spacing, reporter)
    probabilities /= len(segmenters)
    # on the input's own header, whatever spacing was used for the work
    labels = labels_from_probabilities(probabilities, sorted(model.labels), image)
    applied = []
    if steps:
        with reporter.stage("postprocess"):
            labels, applied = postprocess(labels, steps)
    with reporter.stage("write"):
        write_labels(labels, args.output, model.labels, model.colors, overwrite=args.overwrite)
        if args.probabilities is not None:
            write_probabilities(probabilities, image, args.probabilities, overwrite=args.overwrite)
        if args.uncertainty is not None:
            write_uncertainty(normalised_entropy(probabilities), image, args.uncertainty, overwrite=args.overwrite)
    summary = {
        "input": str(args.input), "output": str(args.output), "mode": mode, "spacing_mm": list(choices[0].spacing),
        "native_spacing_mm": list(view.spacing), "spacing_axes": view.axes, "method": model.method,
        "device": segmenter.device.type, "notes": spacing_notes, "postprocessing": applied,
        "models": [{"model": path, "spacing_mm": list(choice.spacing)} for path, choice in zip(paths, choices)],
        "probabilities": args.probabilities, "uncertainty": args.uncertainty, "tta_predictions": len(segmenter.flips),
        "stages": [{"name": r.name, "seconds": round(r.seconds, 3), "peak_memory_mb": round(r.peak_memory_mb, 1),
                    "peak_gpu_memory_mb": r.peak_gpu_memory_mb} for r in reporter.records],
    }
    if mode == "2d":
        summary.update(axis=slices.axis, slice=slices.index, slices=view.slices)
    if args.json:
        print(json.dumps(summary, indent=2))
    elif not args.quiet:
        print(f"wrote {args.output} ({sum(r.seconds for r in reporter.records):.1f} s)")
    return 0


def describe(model, path: Path) -> dict:
    """What ``hyperspace info`` reports about a model."""
    counts = model.parameter_counts()
    return {
        "file": str(path), "file_size_mb": round(path.stat().st_size / 2**20, 2), "method": model.method,
        "dimensions": model.dim, "labels": {str(k): v for k, v in sorted(model.labels.items())},
        "spacing_range_mm": list(model.spacing_range),
        "fixed_spacing_mm": list(model.fixed_spacing) if model.fixed_spacing else None,
        "modality": model.normalisation.modality, "unet_features": list(model.unet_config.features),
        "ife": model.unet_config.ife, "ife_ratios": list(model.unet_config.ife_ratios),
        "unet_parameters": counts["unet"], "hypernetwork_parameters": counts.get("hypernetwork"),
        "training": {k: v for k, v in model.training.items() if k != "config"},
    }


def run_info(args: argparse.Namespace) -> int:
    path = Path(args.model) if args.model else DEFAULT_MODEL
    facts = describe(_load(str(path)), path)
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    print(f"model file:        {facts['file']} ({facts['file_size_mb']} MB)")
    print(f"method:            {facts['method']} ({facts['dimensions']}D, {facts['modality']})")
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


COMMANDS = {"segment": run_segment, "info": run_info, "demo": run_demo, "train": run_train, "evaluate": run_evaluate}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hyperspace`` script; returns the exit code."""
    if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # terminated: remove temporary files on the way out
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UserError as error:
        print(f"hyperspace: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hyperspace: cancelled", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
