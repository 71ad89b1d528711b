"""Training throughput: seconds per step of ``hyperspace train`` on the MNI152 template's training slabs.

    pip install --no-deps nilearn
    python benchmarks/training_bench.py [--processes 1 2] [--steps 12]

The dataset of ``scripts/train_default_model.py`` (the template's slabs outside the held-out band), the default
settings (HyperSpace, 64^3 patches, batch 2 per process, spacings 0.8-3.5 mm, augmentation on, patches loaded in
the training process), on the CPU: one process, and two under ``torchrun`` (gloo). Each setting runs twice, for
2 and for 2 + STEPS steps, with no checkpoint in between; the difference of the wall times over STEPS is the time
per step without start-up, loading and the final save. A step of two processes trains on twice the patches.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from train_default_model import prepare  # noqa: E402


def wall_seconds(dataset: Path, output: Path, steps: int, processes: int) -> float:
    train = ["train", str(dataset), "-o", str(output), "--iterations", str(steps), "--checkpoint-every",
             str(steps), "--device", "cpu", "--quiet", "--overwrite"]
    if processes == 1:
        command = [sys.executable, "-m", "HyperSpaceSegmentationLib.cli", *train]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                   "-m", "HyperSpaceSegmentationLib.cli", *train]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        dataset = prepare(Path(folder))
        print("| processes | seconds per step | steps per second | patches per second |\n|---|---|---|---|")
        for processes in args.processes:
            short = wall_seconds(dataset, Path(folder) / f"short{processes}", 2, processes)
            long = wall_seconds(dataset, Path(folder) / f"long{processes}", 2 + args.steps, processes)
            per_step = (long - short) / args.steps
            print(f"| {processes} | {per_step:.2f} | {1 / per_step:.2f} | {2 * processes / per_step:.2f} |", flush=True)


if __name__ == "__main__":
    main()
