"""Reproduce the embedded 2D model (white matter on slices of the MNI ICBM152 2009a template) and its model card.

    pip install --no-deps nilearn
    python scripts/train_default_model_2d.py --work /tmp/hyperspace-2d --ife entropy --iterations 1500

Steps: a binary white-matter map of the template (the 3D model's tissue map, white matter against the rest),
the same held-out band of axial slices as the 3D model (training sees the two slabs beside it), HyperSpace
with d = 2 trained on slices of all three orientations at random in-plane spacings in 0.6-3 mm, then every
orientation's held-out slices scored at several in-plane spacings through ``hyperspace segment --mode 2d``;
with ``--install``, the model and its card go into the engine's package data. ``benchmarks/ife_ablation.py``
runs the same recipe for each IFE variant; the shipped variant is the one the ablation picked.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from mni152_recipe import MARGIN, VALIDATION_BAND, add_recipe_options, card_ending, recipe_notes, tissue_map, write_dataset

from HyperSpaceSegmentationLib.evaluation.metrics import METRICS, Comparison, compute
from HyperSpaceSegmentationLib.geometry import canonical
from HyperSpaceSegmentationLib.io.model_file import load_model
from HyperSpaceSegmentationLib.models import DEFAULT_MODEL_2D
from HyperSpaceSegmentationLib.training import TrainConfig, train

LABELS = {"0": "background", "1": "white matter"}
COLORS = {"1": [0.95, 0.92, 0.8]}
SPACING_RANGE = (0.6, 3.0)
EVAL_SPACINGS = (1.0, 1.5, 2.0, 3.0)
ORIENTATIONS = {0: "sagittal", 1: "coronal", 2: "axial"}  # LPS axis across which the slices are taken
SCORES = ("dice", "haus95", "conformity", "fbeta", "mae", "avg_surf", "rel_vol_diff")
FEATURES = (8, 16, 32, 64)
PATCH, BATCH = 128, 8


def prepare(work: Path, synthetic: float = 0.0) -> Path:
    """Training slabs, the held-out band and the full template (LPS axes, NRRD) with white-matter labels, and the
    dataset JSON; returns the JSON path. With ``synthetic``, that share of the training slices is synthesised from
    the 4-class tissue map (the generation labels), with heads around the brain."""
    t1, tissue = tissue_map()
    wm = sitk.Cast(tissue == 3, sitk.sitkUInt8)
    (work / "data").mkdir(parents=True, exist_ok=True)
    low, high = VALIDATION_BAND
    depth = t1.GetSize()[2]
    slabs = {"inferior": (0, low - MARGIN), "superior": (high + MARGIN, depth), "band": (low, high)}
    for name, (start, stop) in slabs.items():
        for kind, image in (("t1", t1), ("wm", wm), ("tissue", tissue)):
            sitk.WriteImage(image[:, :, start:stop], str(work / "data" / f"{name}_{kind}.nii.gz"))
    band = sitk.Image(t1.GetSize(), sitk.sitkUInt8)
    band.CopyInformation(t1)
    band[:, :, low:high] = 1
    for kind, image in (("t1", t1), ("wm", wm), ("band", band)):  # the full volume, for scoring the held-out band
        sitk.WriteImage(canonical(image), str(work / "data" / f"full_{kind}.nrrd"), useCompression=True)
    spec = {"task": "white matter (MNI ICBM152 2009a)", "modality": "mr", "labels": LABELS, "colors": COLORS,
            "slice_axes": list(ORIENTATIONS),
            "training": [{"id": n, "image": f"data/{n}_t1.nii.gz", "label": f"data/{n}_wm.nii.gz",
                          "generation": f"data/{n}_tissue.nii.gz"} for n in ("inferior", "superior")],
            "validation": [{"id": "band", "image": "data/band_t1.nii.gz", "label": "data/band_wm.nii.gz"}]}
    return write_dataset(work, spec, synthetic)


def train_model(work: Path, dataset: Path, ife: str, iterations: int, seed: int, device: str,
                init: str | None = None, learning_rate: float = 2e-3,
                input_features: str = "intensity") -> tuple[Path, float]:
    """Train one 2D model into ``work/run-IFE`` (from ``init``'s weights if given); returns the model path and the
    training seconds."""
    config = TrainConfig(dataset=str(dataset), output=str(work / f"run-{ife}"), dim=2, ife=ife,
                         features=FEATURES, patch=PATCH, batch_size=BATCH, iterations=iterations, seed=seed,
                         spacing_min=SPACING_RANGE[0], spacing_max=SPACING_RANGE[1], device=device, init=init,
                         learning_rate=learning_rate, input_features=input_features,
                         notes={"machine": machine(), "synthetic_fraction": synthetic_share(dataset)})
    start = time.perf_counter()
    path = train(config, overwrite=True, quiet=True)
    return path, time.perf_counter() - start


def synthetic_share(dataset: Path) -> float:
    return float(json.loads(dataset.read_text(encoding="utf-8")).get("synthetic", {}).get("fraction", 0.0))


def machine() -> str:
    import os

    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}"


def score(model: Path, work: Path, device: str = "cpu") -> list[dict]:
    """Every orientation's slices segmented by ``hyperspace segment --mode 2d`` at each in-plane spacing; the
    held-out band scored (axial: its slices; sagittal and coronal: the band's rows of every slice)."""
    full = work / "data" / "full_t1.nrrd"
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(work / "data" / "full_wm.nrrd"))).astype(bool)
    band = sitk.GetArrayFromImage(sitk.ReadImage(str(work / "data" / "full_band.nrrd"))).astype(bool)
    rows = np.flatnonzero(band.any(axis=(1, 2)))  # the band's k range (array axis 0)
    kept = slice(rows[0], rows[-1] + 1)
    results = []
    for axis, orientation in ORIENTATIONS.items():
        for spacing in EVAL_SPACINGS:
            with tempfile.TemporaryDirectory() as folder:
                output = Path(folder) / "wm.nrrd"
                command = [sys.executable, "-m", "HyperSpaceSegmentationLib.cli", "segment", str(full), "-o", str(output),
                           "--model", str(model), "--mode", "2d", "--axis", str(axis), "--spacing", str(spacing),
                           "--device", device, "--json", "--quiet"]
                start = time.perf_counter()
                summary = json.loads(subprocess.run(command, capture_output=True, text=True, encoding="utf-8", check=True).stdout)
                seconds = time.perf_counter() - start
                predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(output)))[kept] == 1
            predict = sum(s["seconds"] for s in summary["stages"] if s["name"].startswith("predict"))
            comparison = Comparison(reference[kept], predicted, (1.0, 1.0, 1.0))
            row = {"orientation": orientation, "spacing_mm": spacing, "seconds": round(seconds, 2),
                   "predict_ms_per_slice": round(1000 * predict / reference.shape[2 - axis], 2)}
            row.update({name: round(float(compute(METRICS[name], comparison)), 4) for name in SCORES})
            results.append(row)
            print(json.dumps(row), flush=True)
    return results


def card(rows: list[dict], command: str, model: Path, ife: str, training: dict) -> str:
    """The model card: data, licence notice, labels, spacing range, variant, the exact command, validation."""
    config = training["config"]
    table = "| orientation | in-plane spacing (mm) | Dice | HD95 (mm) | ASSD (mm) |\n|---|---|---|---|---|\n"
    table += "".join(f"| {r['orientation']} | {r['spacing_mm']:g} | {r['dice']:.3f} | {r['haus95']:.2f} | "
                     f"{r['avg_surf']:.2f} |\n" for r in rows)
    ratios = load_model(model).unet_config.ife_ratios
    variant = f"IFE by {ife}, ratios {ratios}" if ife != "none" else "no IFE"
    return f"""# Model card: white-matter-2d-mni152 (HyperSpace, 2D, {variant})

**File**: `{DEFAULT_MODEL_2D.name}` ({model.stat().st_size / 2**20:.1f} MB), the default model of `hyperspace segment
--mode 2d` and of 2D input files (PNG, JPEG, TIFF, BMP, single-slice volumes).

**Task**: white matter on one slice of a T1-weighted brain MRI, skull-stripped or a raw head, any orientation:
0 background, 1 white matter.

**Method**: HyperSpace with d = 2: an MLP hypernetwork (3 hidden layers of {config['hidden']}, low-rank heads of
rank {config['rank']}) generates all weights of a 4-level 2D U-Net (features {config['features']}) from the in-plane
spacing; {variant} after the two middle encoder stages (Instructive Feature Enhancement, chosen by the ablation in
docs/BENCHMARKS.md). Trained on slices of all three orientations, a random in-plane spacing per sample,
log-uniform in **{config['spacing_min']}-{config['spacing_max']} mm per axis** (isotropic half of the time),
patches of {config['patch']}^2 pixels, batch {config['batch_size']}, Adam (learning rate {config['learning_rate']},
polynomial decay), Dice + cross-entropy, {training['iterations']} iterations ({training['seconds'] / 60:.0f} min on
{training['device']}, {training.get('machine', '')}); augmentation: rotation, scaling, elastic deformation,
contrast, gamma, smooth multiplicative field, noise, blur, flips. {recipe_notes(training, "training slices")} MR
normalisation version {load_model(model).normalisation.version}.

**Data**: the MNI ICBM152 2009a nonlinear symmetric template (one averaged brain, 1 mm), as shipped in nilearn.
Label: white matter where it is the most likely of (1 - GM - WM, GM, WM) inside the brain mask. The held-out
band is the 3D model's: axial slices {VALIDATION_BAND[0]}-{VALIDATION_BAND[1] - 1} (training uses the slabs below slice
{VALIDATION_BAND[0] - MARGIN} and from slice {VALIDATION_BAND[1] + MARGIN}).

**Validation** (the held-out band: its axial slices, and the band's rows of every sagittal and coronal slice,
segmented with `hyperspace segment --mode 2d --axis A --spacing S`, results on the 1 mm grid):

{table}
**Robustness** (raw head slices, halo, bias field, another contrast; against the previous model):
docs/BENCHMARKS.md, "Scans users load", measured with `benchmarks/head_robustness.py --model-2d`.

**Limits**: one averaged brain and images synthesised from it are all it has seen: expect lower accuracy on real
scans, other contrasts or pathology. Use it to try the 2D mode, then train your own (`hyperspace train --dim 2`).

""" + card_ending(command)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/hyperspace-2d"))
    parser.add_argument("--ife", choices=["none", "curvature", "entropy"], required=True)
    parser.add_argument("--iterations", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    add_recipe_options(parser, "share of training slices synthesised from the tissue map, with heads (0: real only)")
    parser.add_argument("--reuse", action="store_true",
                        help="score and install the model an earlier run (or benchmarks/ife_ablation.py) trained in --work")
    parser.add_argument("--install", action="store_true", help="copy the model and its card into the package data")
    args = parser.parse_args()
    command = "python scripts/train_default_model_2d.py " + " ".join(sys.argv[1:])
    dataset = prepare(args.work, args.synthetic)
    model = args.work / f"run-{args.ife}" / "model.pt"
    if not (args.reuse and model.is_file()):
        model, _ = train_model(args.work, dataset, args.ife, args.iterations, seed=args.seed, device=args.device,
                               init=args.init, learning_rate=args.learning_rate, input_features=args.input)
    rows = score(model, args.work)
    text = card(rows, command, model, ife=args.ife, training=load_model(model).training)
    (args.work / "model-card.md").write_text(text, encoding="utf-8")
    (args.work / "validation.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    if args.install:
        shutil.copy(model, DEFAULT_MODEL_2D)
        DEFAULT_MODEL_2D.with_suffix(".md").write_text(text, encoding="utf-8")
        DEFAULT_MODEL_2D.with_suffix(".validation.json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
        print("wrote", DEFAULT_MODEL_2D)


if __name__ == "__main__":
    main()
