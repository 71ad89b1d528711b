"""``hyperspace analyze``: looks inside the U-Nets a HyperSpace model generates (``cka``: their similarity across
spacings)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import models
from ..errors import UserError
from ..models import DEFAULT_MODEL, SAMPLE_SCAN
from .options import add_allow_extrapolation, add_device, add_model_file, add_overwrite, add_quiet


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``analyze`` command, its analyses and their options."""
    analyze = subparsers.add_parser(
        "analyze", help="look inside the U-Nets a HyperSpace model generates (cka: similarity across spacings)",
        description="Analyses of the U-Nets that a HyperSpace model's hypernetwork generates for different spacings.",
    )
    analyses = analyze.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)
    parser = analyses.add_parser(
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
    add_model_file(parser, f"HyperSpace model file (default: the embedded {DEFAULT_MODEL.name})")
    parser.add_argument("--spacings", nargs="+", type=float, required=True, metavar="S",
                        help="two or more isotropic spacings in mm, such as 1 1.5 2 3; outside the trained range they "
                             "are clamped to it, as by segment (see --allow-extrapolation)")
    parser.add_argument("-o", "--output", required=True, metavar="FOLDER", help="folder for the CSV and the heatmaps "
                                                                               "(created if missing)")
    parser.add_argument("--image", default=None,
                        help=f"3D image to run the networks on (default: the bundled sample, {SAMPLE_SCAN.name})")
    parser.add_argument("--region", nargs="+", type=float, default=None, metavar="MM",
                        help="the region compared: MM, the edge of a cube in mm along the image's axes, then optionally "
                             "X Y Z, its centre in the image's physical coordinates (LPS mm, as ITK; Slicer shows RAS: "
                             "negate X and Y); snapped to whole voxels of the coarsest network's deepest level (default: "
                             "a cube of up to 144 mm at the image centre)")
    add_allow_extrapolation(parser, "keep spacings outside the model's trained range instead of clamping them")
    add_device(parser)
    add_overwrite(parser, "replace results of an earlier run in FOLDER")
    add_quiet(parser, "no progress lines")


def run_analyze(args: argparse.Namespace) -> int:
    """Run ``analyze cka``: write the CKA table and heatmaps, print the mean CKA per U-Net level."""
    from ..analysis import (
        analyse, check_model, choose_region, cka_spacings, output_names, require_matplotlib, summary, write_results,
    )
    from ..io.images import check_image, check_writable, output_folder, read_image

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
    region = choose_region(image, spacings, len(model.unet_config.features), size_mm=size, centre_lps=centre)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    with output_folder(args.output, "-o") as folder:
        for name in output_names(spacings):  # every output checked before any work
            check_writable(folder / name, args.overwrite)
        log = None if args.quiet else (lambda line: print(line, file=sys.stderr))
        result = analyse(model, image, spacings, region, device=args.device, log=log)
        paths = write_results(result, folder, args.overwrite)
    print("\n".join(summary(result)))
    print(f"wrote {paths[0]} and {len(paths) - 1} heatmaps in {folder}")
    return 0
