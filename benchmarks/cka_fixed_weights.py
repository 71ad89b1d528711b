"""CKA control: how much of the change across spacings comes from the generated weights, how much from the input.

For each stage of the U-Net, the mean CKA with the finest network on the image at its own spacing of (a) that same
finest network run on the image at the coarse spacing (the weights unchanged) and (b) the network the hypernetwork
generates for the coarse spacing on that image (what ``hyperspace analyze cka`` compares). Same region, grids and
layers as ``hyperspace analyze cka`` (default region, bundled sample, embedded model).

    python benchmarks/cka_fixed_weights.py [--fine 1] [--coarse 3] [--image IMAGE] [--model MODEL]
"""

from __future__ import annotations

import argparse

import numpy as np
import SimpleITK as sitk
import torch

from HyperSpaceSegmentationLib.analysis import choose_region, linear_cka, network_activations
from HyperSpaceSegmentationLib.models import DEFAULT_MODEL, SAMPLE_SCAN
from HyperSpaceSegmentationLib.geometry import canonical, resample_to_spacing
from HyperSpaceSegmentationLib.inference import Segmenter
from HyperSpaceSegmentationLib.io.model_file import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fine", type=float, default=1.0)
    parser.add_argument("--coarse", type=float, default=3.0)
    parser.add_argument("--image", default=str(SAMPLE_SCAN))
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    args = parser.parse_args()
    model, image = load_model(args.model), sitk.ReadImage(args.image)
    region = choose_region(image, [args.fine, args.coarse], len(model.unet_config.features))
    segmenter = Segmenter(model, "cpu")
    oriented = canonical(image)
    normalised = sitk.GetImageFromArray(model.normalisation.apply(sitk.GetArrayViewFromImage(oriented)))
    normalised.CopyInformation(oriented)

    def run(network_spacing: float, image_spacing: float):
        working = resample_to_spacing(normalised, [image_spacing] * 3)
        volume = torch.from_numpy(sitk.GetArrayFromImage(working))
        return network_activations(segmenter.network_for((network_spacing,) * 3), volume, working.GetSpacing(),
                                   region, model.normalisation.outside_value)

    layers, reference = run(args.fine, args.fine)
    fixed, generated = run(args.fine, args.coarse)[1], run(args.coarse, args.coarse)[1]
    stages: dict[str, list[int]] = {}
    for index, layer in enumerate(layers):
        stages.setdefault(f"{'encoder' if layer.encoder else 'decoder'} level {layer.level}", []).append(index)

    def cka(a: torch.Tensor, b: torch.Tensor) -> float:
        return linear_cka(a.reshape(len(a), -1).T, b.reshape(len(b), -1).T)

    print(f"mean CKA with the {args.fine:g} mm network on the {args.fine:g} mm image, per stage:")
    print(f"| stage | {args.fine:g} mm network on the {args.coarse:g} mm image | {args.coarse:g} mm network on it |")
    print("|---|---|---|")
    for stage, indices in stages.items():
        unchanged = np.mean([cka(reference[i], fixed[i]) for i in indices])
        adapted = np.mean([cka(reference[i], generated[i]) for i in indices])
        print(f"| {stage} | {unchanged:.3f} | {adapted:.3f} |")


if __name__ == "__main__":
    main()
