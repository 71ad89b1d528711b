"""``hyperspace export``: write the plain U-Net a model uses at one spacing as ONNX or TorchScript."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import models
from ..models import DEFAULT_MODEL
from .options import add_allow_extrapolation, add_model_file, add_overwrite, add_quiet


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export`` command and its options."""
    parser = subparsers.add_parser(
        "export", help="write the plain U-Net a model uses at one spacing as ONNX or TorchScript",
        description="Write the U-Net that MODEL uses at one working spacing (HyperSpace: the one its hypernetwork "
                    "generates for that spacing; FS, AS: their own) as ONNX (.onnx) or TorchScript (.pt), to run "
                    "without this package, and next to it a JSON sidecar named OUTPUT.json (such as NET.onnx.json) "
                    "with labels, spacing, input layout, normalisation, size divisor and the meaning of the output.",
        epilog="ONNX needs the export extra: pip install hyperspace-segmentation[export]. Both take any batch size "
               "and any spatial sizes that are multiples of the sidecar's size_divisor.",
    )
    add_model_file(parser, f"model file, or 'default' (default: the embedded {DEFAULT_MODEL.name})")
    parser.add_argument("-o", "--output", required=True, help="network file: .onnx (ONNX) or .pt (TorchScript)")
    parser.add_argument("--spacing", nargs="+", metavar="S",
                        help="the working spacing the network is for, in mm: one value, or one per axis (SX SY SZ; "
                             "2D models: SX SY of the slice plane); required except for FS models (default: their "
                             "own)")
    add_allow_extrapolation(parser, "keep a spacing outside the model's trained range instead of clamping it")
    add_overwrite(parser, "replace OUTPUT and its sidecar if they exist")
    add_quiet(parser)


def run_export(args: argparse.Namespace) -> int:
    """Export the network for ``--spacing`` to ``-o`` and its JSON sidecar."""
    from ..export import check_export_output, choose_network, sidecar_path, write_network

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
    write_network(model, model_path, choice, network, path=args.output, overwrite=args.overwrite)
    if not args.quiet:
        print(f"wrote {args.output} and {sidecar_path(args.output)} (the network for {spacing})")
    return 0
