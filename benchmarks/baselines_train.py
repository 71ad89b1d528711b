"""Train HyperSpace and the paper's baselines alike, for ``benchmarks/baselines_accuracy.py``.

    pip install --no-deps nilearn
    python benchmarks/baselines_train.py --work /tmp/hyperspace-baselines --iterations 900

The dataset of ``scripts/train_default_model.py`` (the MNI152 template's slabs outside the held-out axial band),
and three runs of ``hyperspace train`` with the same architecture, patch size, batch, augmentation, seed and
number of steps, which differ only in ``--method``:

- ``hyperspace``: the hypernetwork, a random spacing per sample in 0.8-3.5 mm per axis;
- ``fs``: a plain U-Net at the data's median spacing (1 mm, the template's);
- ``as``: a plain U-Net on the same random spacings as HyperSpace, not told the spacing.

FSNR is the FS model run at the test scan's own spacing, so it needs no run of its own. The three runs go in
parallel, one thread each (on a 2-core machine that is the same throughput as one after the other, and the three
finish together); each keeps a checkpoint every 100 steps, so ``--resume`` continues an interrupted run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from train_default_model import prepare  # noqa: E402

METHODS = {"hyperspace": [], "fs": ["--fixed-spacing", "1"], "as": []}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/hyperspace-baselines"))
    parser.add_argument("--iterations", type=int, default=900)
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--resume", action="store_true", help="continue the runs from their checkpoints")
    args = parser.parse_args()
    dataset = prepare(args.work)
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    runs = {}
    for method in args.methods:
        output = args.work / method
        command = [sys.executable, "-m", "HyperSpaceSegmentationLib.cli", "train", "-o", str(output),
                   "--iterations", str(args.iterations), "--device", args.device, "--quiet"]
        if args.resume:
            command += ["--resume"]
        else:
            command += [str(dataset), "--method", method, *METHODS[method], "--seed", "0", "--overwrite"]
        output.mkdir(parents=True, exist_ok=True)
        log = open(output / "train.log", "a", encoding="utf-8")
        runs[method] = (subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT), time.time())
        print(f"{method}: {' '.join(command)}", flush=True)
    for method, (process, start) in runs.items():
        if process.wait():
            sys.exit(f"{method}: training failed, see {args.work / method / 'train.log'}")
        print(f"{method}: {args.iterations} steps in {(time.time() - start) / 60:.0f} min", flush=True)


if __name__ == "__main__":
    main()
