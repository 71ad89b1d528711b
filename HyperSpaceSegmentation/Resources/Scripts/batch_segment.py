"""Segment every volume of a folder with HyperSpace Segmentation, in 3D Slicer without a window:

    Slicer --no-main-window --python-script batch_segment.py -- INPUT_FOLDER OUTPUT_FOLDER
        [--spacing native|auto|S|SX SY SZ] [--model FILE [FILE ...]] [--device auto|cpu|cuda]
        [--tta [AXIS ...]] [--uncertainty] [--remove-smaller-than MM3 [LABEL ...]]
        [--largest-component [LABEL ...]] [--fill-holes [LABEL ...]]
        [--reference-folder FOLDER] [--tolerance MM] [--overwrite]

Writes OUTPUT_FOLDER/CASE.seg.nrrd per volume, with --uncertainty also CASE_uncertainty.nrrd (the normalised entropy
of the class probabilities, 0 certain to 1, on the case's grid) and, with references, OUTPUT_FOLDER/results.csv
(MIST's layout). The options mean what they mean for 'hyperspace segment': several --model files are an ensemble
(same labels; their probabilities averaged), --tta averages the flips of the axes given (0 L-R, 1 P-A, 2 S-I; none:
all), and the postprocessing options apply per class (labels: the model's label values; none: every class), in the
order remove, largest component, fill holes. Put the folders first: an option of several values takes the words
after it. Every option is checked before any work; a case that fails is reported and skipped. Exit code: 0 every
case done, 1 some failed, 2 none done or bad usage (one error line). The work is HyperSpaceMRMLLogic.segment_folder;
this file only reads the arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn, Sequence

MODULE_FOLDER = Path(__file__).resolve().parents[2]  # holds HyperSpaceSegmentationLib
if str(MODULE_FOLDER) not in sys.path:
    sys.path.insert(0, str(MODULE_FOLDER))

from HyperSpaceSegmentationLib.errors import UserError  # noqa: E402
from HyperSpaceSegmentationLib.mrml_logic import HyperSpaceMRMLLogic, PostprocessingOptions  # noqa: E402
from HyperSpaceSegmentationLib.postprocessing import add_options as add_postprocessing_options  # noqa: E402


class _Parser(argparse.ArgumentParser):
    """A usage error is a ``UserError``: one line, exit code 2; options only as spelled out."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **{**kwargs, "allow_abbrev": False})

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message}; run 'batch_segment.py --help' for the options")


def main(argv: Sequence[str]) -> int:
    """Run the batch on ``argv`` (the arguments after ``--``); returns the exit code."""
    parser = _Parser(prog="batch_segment.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("input_folder", help="folder of volumes (.nrrd, .nii.gz, .nii, .mha, ...)")
    parser.add_argument("output_folder", help="folder for CASE.seg.nrrd, CASE_uncertainty.nrrd and results.csv")
    parser.add_argument("--spacing", nargs="+", default=["native"], help="as hyperspace segment (default native)")
    parser.add_argument("--model", nargs="+", default=None, metavar="MODEL",
                        help="model file (default: the embedded one); several: an ensemble with the same labels")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    parser.add_argument("--tta", nargs="*", type=int, default=None, metavar="AXIS",
                        help="test-time augmentation over the flips of these axes (0 L-R, 1 P-A, 2 S-I; none: all)")
    parser.add_argument("--uncertainty", action="store_true", help="also write CASE_uncertainty.nrrd (0 to 1)")
    add_postprocessing_options(parser)
    parser.add_argument("--reference-folder", default=None, help="reference segmentations, same case names")
    parser.add_argument("--tolerance", type=float, default=1.0, help="surface Dice tolerance in mm (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing results")
    logic = HyperSpaceMRMLLogic()
    try:
        args = parser.parse_args([a for a in argv if a != "--"])
        tta = True if args.tta == [] else args.tta
        result = logic.segment_folder(
            args.input_folder, args.output_folder, " ".join(args.spacing), model=args.model, device=args.device,
            referenceFolder=args.reference_folder, tolerance=args.tolerance, overwrite=args.overwrite, tta=tta,
            uncertainty=args.uncertainty, postprocessing=PostprocessingOptions.from_arguments(args))
    except UserError as error:
        print(f"batch_segment: error: {error}", file=sys.stderr)
        return 2
    print(f"{len(result.done)} done, {len(result.failed)} failed" +
          "".join(f"\n  {case}: {why}" for case, why in result.failed.items()))
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
