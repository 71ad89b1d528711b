"""``hyperspace segment``: its options, and the choice between one INPUT (``segment_single``) and a batch (see
``segment_batch``); what every case shares and the segmentation of one case are in ``segment_run``."""

from __future__ import annotations

import argparse
import json

from ..errors import UserError
from ..models import DEFAULT_MODEL, DEFAULT_MODEL_2D
from ..postprocessing import add_options as add_postprocessing_options
from .options import add_allow_extrapolation, add_device, add_json, add_overwrite, add_quiet
from .segment_run import MapFiles, SegmentationRun, model_inputs, read_scan, segment_case


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``segment`` command and its options, in the order ``--help`` lists them."""
    parser = subparsers.add_parser(
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
    parser.add_argument("input", nargs="+",
                        help="image file (.nrrd, .nii.gz, .mha, ...; 2D: .png, .jpg, .tif, .bmp) or a DICOM series "
                             "folder; for a batch, several of them, a folder (its image files, else its DICOM series "
                             "subfolders), a quoted glob pattern such as 'scans/*.nii.gz', or a CSV file with the "
                             "columns id, image and optionally output (UTF-8, paths relative to the CSV)")
    parser.add_argument("-o", "--output", required=True,
                        help="output label image; the extension picks the format (.seg.nrrd: Slicer segmentation; "
                             ".png, .tif, .bmp: 2D results only); for a batch, the output folder (created if "
                             "missing), where each case's labels are named after it: ID plus --output-suffix")
    parser.add_argument("--output-suffix", default=None, metavar="SUFFIX",
                        help="batch: the end of each output's name after the case id (the input's name without its "
                             "image extension, or the CSV's id), whose extension picks the format (default .seg.nrrd)")
    parser.add_argument("--summary", default=None, metavar="FILE",
                        help="batch: the summary CSV (id, input, output, status, spacing_mm, seconds, peak_memory_mb, "
                             "memory_time_mb_s, gpu_memory_time_mb_s, error); default OUTPUT/summary.csv, with "
                             "--shard OUTPUT/summary-shard-I-of-N.csv")
    parser.add_argument("--shard", default=None, metavar="I/N",
                        help="batch: segment only part I (1 to N) of N, for the jobs of a job array: case i (0-based, "
                             "in the order listed) goes to part i %% N + 1; each part writes its own summary")
    _add_model_options(parser)
    _add_spacing_options(parser)
    add_postprocessing_options(parser)
    add_device(parser)
    _add_window_options(parser)
    _add_output_options(parser)


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--mode`` and the slices of ``--mode 2d``."""
    parser.add_argument("--model", nargs="+", action="extend", default=None, metavar="MODEL",
                        help=f"model file (default: the embedded {DEFAULT_MODEL.name}; with --mode 2d, "
                             f"{DEFAULT_MODEL_2D.name}); several (--model A B, or --model A --model B): an ensemble, "
                             "each model at its own spacing, their probabilities averaged on INPUT's grid (same "
                             "labels and dimensions; each model once)")
    parser.add_argument("--mode", choices=["3d", "2d"], default=None,
                        help="3d: the volume as a whole (3D model); 2d: slice by slice (2D model); default: 2d for a "
                             "2D image or a single-slice volume (unless --model is a 3D model), else 3d")
    parser.add_argument("--axis", type=int, choices=[0, 1, 2], default=None,
                        help="--mode 2d: segment the planes of constant index along this index axis of the FILE, as "
                             "it stores the image (0 = i, 1 = j, 2 = k; not the L, P, S axes); default 2, or the axis "
                             "of a single-slice volume's one slice")
    parser.add_argument("--slice", type=int, default=None, metavar="K",
                        help="--mode 2d: segment only slice K (0-based index along --axis in the file); every other "
                             "slice of the output is 0 (default: every slice)")


def _add_spacing_options(parser: argparse.ArgumentParser) -> None:
    """The working spacing, the input's true spacing and the budgets of ``--spacing auto``."""
    parser.add_argument("--spacing", nargs="+", metavar="S",
                        help="working spacing: native (the image's own), auto (finest that fits the budget), one "
                             "value in mm, or one per axis (SX SY SZ; with --mode 2d, SX SY of the slice plane); "
                             "default: native (FS models: their own)")
    parser.add_argument("--input-spacing", "--image-spacing", nargs="+", type=float, metavar="S", default=None,
                        help="the input's true voxel spacing in mm, one value per axis of the file (SX SY SZ, or SX "
                             "SY for a 2D image; or one for all), when its header's is wrong or missing (pictures "
                             "such as PNG have none); the output keeps the input's header")
    parser.add_argument("--max-voxels", type=float, default=None,
                        help="budget for --spacing auto: most voxels at working spacing (default 4e6; with --mode 2d, "
                             "the slice's voxels times the slices segmented)")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="budget for --spacing auto: most seconds of prediction, measured on this device")
    add_allow_extrapolation(parser, "use a spacing outside the model's trained range instead of clamping it")


def _add_window_options(parser: argparse.ArgumentParser) -> None:
    """The sliding window, its memory budget and the backend; replacing or keeping existing outputs."""
    from ..inference.backends import BACKENDS, PRECISIONS

    parser.add_argument("--patch", type=int, default=None,
                        help="sliding-window edge in voxels (default: the largest window, up to the whole working volume "
                             "or slice, whose memory need fits --max-memory; overlapping windows only beyond that)")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="what runs the network: torch, or onnxruntime (exported once per model and spacing, "
                             "cached; faster on the CPU; needs the onnxruntime, onnx and onnxscript packages); auto: "
                             "ONNX Runtime for a 3D model on the CPU where installed, when that network is exported or "
                             "the prediction is large enough for the export to pay off, else torch (default auto)")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32",
                        help="what the network computes in with the torch backend: float16 (a GPU only) or bfloat16 "
                             "need less GPU memory and change a few voxels' labels (docs/BENCHMARKS.md) (default "
                             "float32)")
    parser.add_argument("--max-memory", type=float, default=None, metavar="MB",
                        help="memory budget in MB for the network's windows and buffers (default: 80%% of the "
                             "memory available on the device); larger windows are faster")
    add_overwrite(parser, "replace OUTPUT if it exists (without it, an OUTPUT written meanwhile by another run is kept)")
    parser.add_argument("--skip-existing", action="store_true",
                        help="batch: continue an interrupted batch: cases whose output exists are skipped (listed as "
                             "skipped in the summary, which is replaced); outputs are written to a temporary file "
                             "and renamed, so an existing one is complete. Not with --overwrite")


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    """The mask, the review maps, test-time augmentation and what is printed."""
    parser.add_argument("--mask", default=None, metavar="FILE",
                        help="restrict the result to a mask: a label map or .seg.nrrd on any grid (its non-zero voxels, "
                             "resampled to the input's grid by nearest neighbour), such as a brain mask; background "
                             "outside it. One INPUT")
    parser.add_argument("--probabilities", default=None, metavar="FILE",
                        help="also write the class probabilities on INPUT's grid: a vector image (.nrrd, .nii.gz, "
                             ".nii, .mha), one uint8 component per class (probability * 255), classes in the order "
                             "of their sorted label values; the labels are their argmax (one INPUT only: not in a "
                             "batch)")
    parser.add_argument("--uncertainty", default=None, metavar="FILE",
                        help="also write the normalised entropy of the class probabilities on INPUT's grid, -sum p "
                             "log p / log(classes), from 0 (certain) to 1, as float32 (.nrrd, .nii.gz, .nii, .mha; "
                             "one INPUT only: not in a batch)")
    parser.add_argument("--tta", nargs="*", type=int, default=None, metavar="AXIS",
                        help="test-time augmentation: average the probabilities over every combination of flips of "
                             "these axes (0 L-R, 1 P-A, 2 S-I; --mode 2d: the slice plane's two, 0 and 1, in L, P, S "
                             "order); no AXIS: all axes (8 predictions in 3D, 4 in 2D). Put it after INPUT")
    add_json(parser, "print a machine-readable summary on stdout")
    add_quiet(parser)
    parser.add_argument("--progress-lines", action="store_true",
                        help="also print machine-readable progress on stderr, one JSON event a line after "
                             "'HYPERSPACE_PROGRESS ' (for programs such as the Slicer module); in a batch each event "
                             "also has case (1-based), cases and id")


def run_segment(args: argparse.Namespace) -> int:
    """Segment one image into the file ``-o``, or a batch of cases into the folder ``-o``."""
    from ..inference.backends import check_inference_options
    from ..inference.cases import collect_cases, process_rank
    from ..system import resolve_device
    from .segment_batch import segment_batch

    if args.skip_existing and args.overwrite:
        raise UserError("--skip-existing keeps the outputs that exist and --overwrite replaces them: give one of them")
    cases, batch = collect_cases(args.input)
    rank, world, local_rank = process_rank()
    device = resolve_device(args.device, local_rank)
    check_inference_options(args.backend, args.precision, device)  # before any case: one error, not one per case
    if batch or world > 1 or args.shard is not None:
        return segment_batch(args, cases, device=device, rank=rank, world=world)
    if args.summary is not None or args.output_suffix is not None or args.skip_existing:
        raise UserError("--summary, --output-suffix and --skip-existing apply to a batch (several inputs, a folder, a "
                        "glob pattern or a CSV): for one INPUT, -o names the output file")
    return segment_single(args, cases[0].image, device)


def segment_single(args: argparse.Namespace, name: str, device) -> int:
    """Segment the one image ``name`` into ``-o``; a ``UserError`` (exit code 2) for any problem."""
    from ..io.images import check_map_output, check_not_an_input, check_output_path
    from ..progress import Reporter

    inputs = {"input image": name, "mask": args.mask, **model_inputs(args)}
    check_not_an_input(args.output, inputs)
    check_output_path(args.output, args.overwrite)
    maps = MapFiles(probabilities=args.probabilities, uncertainty=args.uncertainty)
    for option, path in maps.by_option().items():
        if path is not None:
            others = {f"{other} output": p for other, p in maps.by_option().items() if other != option}
            check_not_an_input(path, {**inputs, "label output (-o)": args.output, **others})
            check_map_output(path, args.overwrite, option)
    run = SegmentationRun(args, device)
    reporter = Reporter(stages=run.stages, quiet=args.quiet, progress_lines=args.progress_lines, device=device)
    summary = segment_case(run, name=name, output=args.output, read=lambda: read_scan(name, args.input_spacing),
                           reporter=reporter, maps=maps)
    if args.json:
        print(json.dumps(summary, indent=2))
    elif not args.quiet:
        print(f"wrote {args.output} ({sum(r.seconds for r in reporter.records):.1f} s)")
    return 0
