"""``hyperspace info`` (describe a model) and ``hyperspace demo`` (segment the bundled sample at two spacings)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .. import models
from ..errors import UserError
from ..models import DEFAULT_MODEL, SAMPLE_SCAN
from .options import SHORT_DEVICE_HELP, add_device, add_json, add_model_file, add_model_option, add_overwrite


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``info`` and ``demo`` commands and their options."""
    info = subparsers.add_parser("info", help="describe a model: labels, spacing range, dimensions, IFE, sizes",
                                 description="Describe a model file (default: the embedded model).")
    add_model_file(info, f"model file (default: {DEFAULT_MODEL.name})")
    add_json(info, "print JSON instead of text")

    demo = subparsers.add_parser("demo", help="segment the bundled sample scan at two spacings",
                                 description="Segment the bundled MNI152 sample at its native 1.5 mm and at 3 mm.")
    demo.add_argument("--output-dir", default="hyperspace-demo", help="folder for the results (default: hyperspace-demo)")
    add_model_option(demo)
    add_device(demo, SHORT_DEVICE_HELP)
    add_overwrite(demo, "replace results from an earlier demo")


def run_info(args: argparse.Namespace) -> int:
    """Print what a model file holds, as text or JSON."""
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
    """Segment the bundled sample at its native spacing and at 3 mm into ``--output-dir``."""
    from ..io.images import check_output_path, output_folder
    from . import build_parser
    from .segment import run_segment

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
            run_segment(build_parser().parse_args(argv))
            print(f"  {name}: {output} in {time.perf_counter() - start:.1f} s")
    print("open the .seg.nrrd files over the sample in 3D Slicer to compare them")
    return 0
