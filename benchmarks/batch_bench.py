"""Many scans in one process: the per-case time of a batch against the in-process time of one case.

    pip install --no-deps nilearn
    python benchmarks/batch_bench.py [--cases 20] [--spacing 3] [--device cpu]

The cases are crops of the MNI152 T1 template at 1 mm, each with its own extent (so their working grids differ,
as real scans' do), written as NIfTI. One ``hyperspace segment`` process segments a single case (``--json``:
the sum of its stages is the in-process time of one case, without start-up and imports); one more process
segments the whole folder (``-o FOLDER``); the batch's per-case time is its wall time, start-up included,
divided by the number of cases. The goal is at most 1.1 times the single case's in-process time.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk

from segment_runs import template_t1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--spacing", default="3")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    t1 = sitk.ReadImage(template_t1())
    size = t1.GetSize()
    with tempfile.TemporaryDirectory() as folder:
        inputs = Path(folder) / "scans"
        inputs.mkdir()
        for case in range(args.cases):  # crops of 10-29 voxels less per axis, at different corners
            trim = [10 + (case * step) % 20 for step in (3, 7, 11)]
            start = [(case * step) % (t + 1) for step, t in zip((5, 2, 3), trim)]
            crop = sitk.RegionOfInterest(t1, [n - t for n, t in zip(size, trim)], start)
            sitk.WriteImage(crop, str(inputs / f"case{case:02d}.nii.gz"))
        common = ["--spacing", args.spacing, "--device", args.device, "--quiet"]
        command = [sys.executable, "-m", "HyperSpaceSegmentationLib.cli", "segment"]
        single = subprocess.run([*command, str(inputs / "case00.nii.gz"), "-o", str(Path(folder) / "one.seg.nrrd"),
                                 *common, "--json"], capture_output=True, text=True, encoding="utf-8", check=True)
        in_process = sum(stage["seconds"] for stage in json.loads(single.stdout)["stages"])
        start = time.perf_counter()
        subprocess.run([*command, str(inputs), "-o", str(Path(folder) / "out"), *common], check=True)
        wall = time.perf_counter() - start
        with open(Path(folder) / "out" / "summary.csv", newline="", encoding="utf-8") as summary:
            rows = list(csv.DictReader(summary))
    done = sum(row["status"] == "done" for row in rows)
    per_case = wall / args.cases
    print(f"device: {args.device}; {args.cases} scans of 168-187 x 204-223 x 160-179 voxels at 1 mm, "
          f"--spacing {args.spacing}")
    print("| one case in process (s) | batch wall (s) | batch per case (s) | per case / one case | cases done |")
    print("|---|---|---|---|---|")
    print(f"| {in_process:.2f} | {wall:.1f} | {per_case:.2f} | {per_case / in_process:.2f} | {done}/{len(rows)} |")


if __name__ == "__main__":
    main()
