"""Reproduce the embedded default model (brain tissue on the MNI ICBM152 2009a template) and its model card.

    pip install --no-deps nilearn
    python scripts/train_default_model.py --work /tmp/hyperspace-default --iterations 2200

Steps: build the training set from the template (a 4-class tissue map from the GM/WM probability maps),
hold out a band of axial slices for validation (training sees two slabs, above and below it), train
HyperSpace with random spacings in 0.8-3.5 mm, score the held-out band at several spacings, then copy the
model, the model card and the demo sample into the engine's package data (HyperSpaceSegmentationLib/resources).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import SimpleITK as sitk
from mni152_recipe import (
    MARGIN, NOTICE, VALIDATION_BAND, add_recipe_options, card_ending, recipe_notes, template, tissue_map, write_dataset,
)

from HyperSpaceSegmentationLib.evaluation.metrics import METRICS, Comparison, compute
from HyperSpaceSegmentationLib.inference import Segmenter, SpacingRequest
from HyperSpaceSegmentationLib.io.model_file import load_model
from HyperSpaceSegmentationLib.models import DEFAULT_MODEL, SAMPLE_SCAN
from HyperSpaceSegmentationLib.progress import Reporter
from HyperSpaceSegmentationLib.training import TrainConfig, train

LABELS = {"0": "background", "1": "CSF", "2": "grey matter", "3": "white matter"}
COLORS = {"1": [0.35, 0.6, 0.95], "2": [0.85, 0.55, 0.45], "3": [0.95, 0.92, 0.8]}
EVAL_SPACINGS = [(1.0, 1.0, 1.0), (1.5, 1.5, 1.5), (2.0, 2.0, 2.0), (3.0, 3.0, 3.0), (3.5, 3.5, 3.5), (1.0, 1.0, 3.5)]
MODELS = DEFAULT_MODEL.parent
SAMPLES = SAMPLE_SCAN.parent


def prepare(work: Path, synthetic: float = 0.0) -> Path:
    """Write the training slabs, the full reference and the dataset JSON; returns the JSON path."""
    t1, labels = tissue_map()
    (work / "data").mkdir(parents=True, exist_ok=True)
    low, high = VALIDATION_BAND
    depth = t1.GetSize()[2]
    slabs = {"inferior": (0, low - MARGIN), "superior": (high + MARGIN, depth)}
    cases = []
    for name, (start, stop) in slabs.items():
        for kind, image in (("t1", t1), ("labels", labels)):
            sitk.WriteImage(image[:, :, start:stop], str(work / "data" / f"{name}_{kind}.nii.gz"))
        cases.append({"id": name, "image": f"data/{name}_t1.nii.gz", "label": f"data/{name}_labels.nii.gz"})
    sitk.WriteImage(t1, str(work / "data" / "full_t1.nii.gz"))
    sitk.WriteImage(labels, str(work / "data" / "full_labels.nii.gz"))
    for kind, image in (("t1", t1), ("labels", labels)):  # the held-out band, scored at every checkpoint
        sitk.WriteImage(image[:, :, low:high], str(work / "data" / f"band_{kind}.nii.gz"))
    spec = {"task": "brain tissue (MNI ICBM152 2009a)", "modality": "mr", "labels": LABELS, "colors": COLORS,
            "training": cases, "validation": [{"id": "band", "image": "data/band_t1.nii.gz", "label": "data/band_labels.nii.gz"}]}
    return write_dataset(work, spec, synthetic)


def validate(model_path: Path, work: Path) -> list[dict]:
    """Dice per class inside the held-out band, with the result on the 1 mm grid, at several spacings."""
    t1, labels = sitk.ReadImage(str(work / "data" / "full_t1.nii.gz")), sitk.ReadImage(str(work / "data" / "full_labels.nii.gz"))
    segmenter = Segmenter(load_model(model_path), device="auto")
    low, high = VALIDATION_BAND
    reference = sitk.GetArrayFromImage(labels)[low:high]
    rows = []
    for spacing in EVAL_SPACINGS:
        start = time.perf_counter()
        choice = segmenter.choose_spacing(t1, SpacingRequest("explicit", spacing))
        result = segmenter.segment(t1, choice.spacing, Reporter(3, quiet=True))
        seconds = time.perf_counter() - start
        predicted = sitk.GetArrayFromImage(result)[low:high]
        row = {"spacing": "x".join(f"{s:g}" for s in spacing), "seconds": round(seconds, 2)}
        for value, name in LABELS.items():
            if value != "0":
                comparison = Comparison(reference == int(value), predicted == int(value), (1.0, 1.0, 1.0))
                row[name] = round(compute(METRICS["dice"], comparison), 4)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def write_sample() -> Path:
    """The demo sample: the T1 template at 1.5 mm (NRRD), with the licence notice beside it."""
    SAMPLES.mkdir(parents=True, exist_ok=True)
    t1 = template("t1")
    grid = sitk.Image([round(n / 1.5) for n in t1.GetSize()], sitk.sitkUInt8)
    grid.SetSpacing((1.5, 1.5, 1.5))
    grid.SetDirection(t1.GetDirection())
    grid.SetOrigin(t1.TransformContinuousIndexToPhysicalPoint((0.25, 0.25, 0.25)))
    sample = sitk.Resample(sitk.SmoothingRecursiveGaussian(sitk.Cast(t1, sitk.sitkFloat32), 0.5), grid,
                           transform=sitk.Transform(), interpolator=sitk.sitkLinear, defaultPixelValue=0.0,
                           outputPixelType=sitk.sitkUInt8)
    path = SAMPLES / "MNI152-T1-1.5mm.nrrd"
    sitk.WriteImage(sample, str(path), useCompression=True)
    (SAMPLES / "MNI152-LICENSE.txt").write_text(
        "MNI152-T1-1.5mm.nrrd is the MNI ICBM152 2009a symmetric T1 template (skull-stripped),\n"
        "resampled to 1.5 mm by scripts/train_default_model.py.\n\n" + NOTICE + "\n", encoding="utf-8")
    return path


def model_card(rows: list[dict], command: str, model_path: Path, training: dict) -> str:
    names = [n for v, n in LABELS.items() if v != "0"]
    table = "| spacing (mm) | " + " | ".join(f"Dice {n}" for n in names) + " | time (s) |\n"
    table += "|" + "---|" * (len(names) + 2) + "\n"
    for row in rows:
        table += f"| {row['spacing']} | " + " | ".join(f"{row[n]:.3f}" for n in names) + f" | {row['seconds']:.1f} |\n"
    size_mb = model_path.stat().st_size / 2**20
    return f"""# Model card: brain-tissue-mni152 (HyperSpace, 3D)

**File**: `brain-tissue-mni152.pt` ({size_mb:.1f} MB), the default model of the `hyperspace` command.

**Task**: tissue classes of T1-weighted brain MRI, skull-stripped or a raw head with skull and scalp: 0 background
(everything outside the brain), 1 CSF (and other non-GM/WM tissue inside the brain mask), 2 grey matter, 3 white
matter.

**Method**: HyperSpace: an MLP hypernetwork (3 hidden layers of {training['config']['hidden']}, low-rank heads of rank
{training['config']['rank']}) generates all weights of a 4-level 3D U-Net (features {training['config']['features']}, 3
convolution blocks per level) from the voxel spacing. Trained with a random spacing per sample, log-uniform in
**{training['config']['spacing_min']}-{training['config']['spacing_max']} mm per axis** (isotropic half of the time, anisotropic
otherwise), patches of {training['config']['patch']}^3 voxels, batch {training['config']['batch_size']}, Adam
(learning rate {training['config']['learning_rate']}, polynomial decay), Dice + cross-entropy, {training['iterations']}
iterations ({training['seconds'] / 60:.0f} min on {training['device']}, {training.get('machine', 'see BENCHMARKS')}).
{recipe_notes(training, "samples")} MR normalisation version {training.get('normalisation_version', 2)}: background 0, the 95th
percentile of Otsu's foreground 1 (see docs/training.md).

**Data**: the MNI ICBM152 2009a nonlinear symmetric template (one averaged brain, 1 mm), as shipped in nilearn.
Labels: the most likely of (1 - GM - WM, GM, WM) inside the T1 brain mask. Axial slices {VALIDATION_BAND[0]}-{VALIDATION_BAND[1] - 1}
are held out (training uses the slabs below slice {VALIDATION_BAND[0] - MARGIN} and from slice {VALIDATION_BAND[1] + MARGIN}); augmentation:
rotation, scaling, elastic deformation, contrast, gamma, smooth multiplicative field, noise, blur, flips.

**Validation** (Dice per class in the held-out band, the result brought back to the 1 mm grid; time for the
whole 197x233x189 volume on the training machine's CPU):

{table}
**Robustness** (raw heads, halo, bias field, noise, low resolution, other contrasts, real heads from packages):
docs/BENCHMARKS.md, "Scans users load", measured with `benchmarks/head_robustness.py`.

**Limits**: one subject (a template) and images synthesised from it are all it has seen: expect lower accuracy on
real scans with other contrast, field strength or pathology. Use it to try the tool, then train your own.

""" + card_ending(command)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/hyperspace-default"))
    parser.add_argument("--iterations", type=int, default=2200)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--resume", action="store_true")
    add_recipe_options(parser, "share of training samples synthesised from the labels, with heads (0: real images only)")
    parser.add_argument("--machine", default="", help="a description of the machine, for the model card")
    parser.add_argument("--model", type=Path, default=None,
                        help="validate and install this trained model instead of training (a run of this recipe)")
    args = parser.parse_args()
    words = sys.argv[1:]
    if "--model" in words:  # the card shows the command that trains the model, not the one that installs it
        at = words.index("--model")
        words = words[:at] + words[at + 2:]
    command = "python scripts/train_default_model.py " + " ".join(words)
    dataset = prepare(args.work, args.synthetic)
    config = TrainConfig(dataset=str(dataset), output=str(args.work / "run"), iterations=args.iterations,
                         workers=args.workers, device=args.device, init=args.init, learning_rate=args.learning_rate,
                         input_features=args.input, notes={"machine": args.machine, "synthetic_fraction": args.synthetic})
    model_path = args.model or train(config, resume=args.resume, overwrite=True)
    rows = validate(model_path, args.work)
    MODELS.mkdir(parents=True, exist_ok=True)
    shutil.copy(model_path, MODELS / "brain-tissue-mni152.pt")
    training = load_model(model_path).training
    (MODELS / "brain-tissue-mni152.md").write_text(model_card(rows, command, model_path, training), encoding="utf-8")
    (MODELS / "brain-tissue-mni152.validation.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    write_sample()
    print("wrote", MODELS / "brain-tissue-mni152.pt")


if __name__ == "__main__":
    main()
