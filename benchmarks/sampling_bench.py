"""Training patch sampling speed: seconds per 64^3 patch drawn from the MNI152 T1 template at 1 mm.

    pip install --no-deps nilearn
    python benchmarks/sampling_bench.py [--patches 40] [--patch 64]

The sampler of ``hyperspace train`` (random spacing, foreground oversampling, rotation, scaling, elastic
deformation, intensity augmentation) on the template and its 4-class tissue map, in one process with one thread
as a loading worker has: the mean CPU time per patch over spacings drawn from the default range (0.8-3.5 mm), and at
fixed spacings of 1, 2 and 3.5 mm (the coarser, the larger the region a patch covers).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from train_default_model import tissue_map  # noqa: E402

from HyperSpaceSegmentationLib.preprocessing import Normalisation  # noqa: E402
from HyperSpaceSegmentationLib.training.sampling import LoadedCase, PatchSampler, SamplingConfig  # noqa: E402


def seconds_per_patch(case: LoadedCase, config: SamplingConfig, patches: int) -> float:
    sampler = PatchSampler([case], config)
    rng = np.random.default_rng(0)
    sampler.sample(rng)  # warm-up
    start = time.process_time()  # CPU time: one thread, so it is the wall time of a quiet machine
    for _ in range(patches):
        sampler.sample(rng)
    return (time.process_time() - start) / patches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patches", type=int, default=40)
    parser.add_argument("--patch", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    t1, tissue = tissue_map()
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    classes = sitk.GetArrayFromImage(tissue).astype(np.uint8)
    case = LoadedCase(t1, classes, Normalisation("mr"), 3)
    patch = (args.patch,) * 3
    print(f"| spacing (mm) | seconds per {args.patch}^3 patch |\n|---|---|")
    runs = [("0.8-3.5 (random)", SamplingConfig(patch, 0.8, 3.5))]
    runs += [(f"{s:g}", SamplingConfig(patch, s, s, fixed_spacing=(s, s, s))) for s in (1.0, 2.0, 3.5)]
    for name, config in runs:
        print(f"| {name} | {seconds_per_patch(case, config, args.patches):.3f} |", flush=True)


if __name__ == "__main__":
    main()
