"""Segment every volume of a folder with HyperSpace Segmentation, in 3D Slicer without a window:

    Slicer --no-main-window --python-script batch_segment.py -- INPUT_FOLDER OUTPUT_FOLDER
        [--spacing native|auto|S|SX SY SZ] [--model FILE] [--device auto|cpu|cuda]
        [--reference-folder FOLDER] [--tolerance MM] [--overwrite]

Writes OUTPUT_FOLDER/CASE.seg.nrrd per volume and, with references, OUTPUT_FOLDER/results.csv (MIST's layout).
A case that fails is reported and skipped. Exit code: 0 every case done, 1 some failed, 2 none done or bad usage.
The work is HyperSpaceMRMLLogic.segment_folder; this file only reads the arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

MODULE_FOLDER = Path(__file__).resolve().parents[2]  # holds HyperSpaceSegmentationLib
if str(MODULE_FOLDER) not in sys.path:
    sys.path.insert(0, str(MODULE_FOLDER))

from HyperSpaceSegmentationLib.errors import UserError  # noqa: E402
from HyperSpaceSegmentationLib.mrml_logic import HyperSpaceMRMLLogic  # noqa: E402


def main(argv: Sequence[str]) -> int:
    """Run the batch on ``argv`` (the arguments after ``--``); returns the exit code."""
    parser = argparse.ArgumentParser(prog="batch_segment.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("input_folder", help="folder of volumes (.nrrd, .nii.gz, .nii, .mha, ...)")
    parser.add_argument("output_folder", help="folder for CASE.seg.nrrd and results.csv")
    parser.add_argument("--spacing", nargs="+", default=["native"], help="as hyperspace segment (default native)")
    parser.add_argument("--model", default=None, help="model file (default: the embedded one)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    parser.add_argument("--reference-folder", default=None, help="reference segmentations, same case names")
    parser.add_argument("--tolerance", type=float, default=1.0, help="surface Dice tolerance in mm (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing results")
    args = parser.parse_args([a for a in argv if a != "--"])
    logic = HyperSpaceMRMLLogic()
    try:
        result = logic.segment_folder(args.input_folder, args.output_folder, " ".join(args.spacing), args.model,
                                      args.device, args.reference_folder, args.tolerance, args.overwrite)
    except UserError as error:
        print(f"batch_segment: error: {error}", file=sys.stderr)
        return 2
    print(f"{len(result.done)} done, {len(result.failed)} failed" +
          "".join(f"\n  {case}: {why}" for case, why in result.failed.items()))
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
