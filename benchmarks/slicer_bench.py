"""Apply-to-result in the Slicer module, through the logic on real MRML nodes (issue 18's Slicer goal).

    pip install --no-deps nilearn    # and the slicer-core wheel (pip install -e ".[test]")
    python benchmarks/slicer_bench.py [--spacings 3 2 native] [--device cpu]

The MNI152 T1 template at 1 mm (197x233x189) as a volume node in a headless slicer-core scene (Testing/slicer_app.py),
the embedded 3D model, and ``HyperSpaceMRMLLogic.segment(volume, spacing, wait=True)`` in the order of an interactive
review (by default 3 mm, then 2 mm, then native), three times: with the warm engine started when the module is entered
(``logic.start_engine()``, the module's default, ``--entry-seconds`` before the first Apply: the user choosing the
inputs), with the warm engine started by the first Apply, and with one engine process per Apply
(``logic.warmEngine = False``, as before issue 18). For each Apply it prints the wall time from the call to the result node, the engine's in-process stage sum
(the stage lines of the job's log: load, resample, predict, restore, labels, write), their ratio, the model files the
worker read for it, and the overhead (wall - stage sum: process start, imports, writing the volume for the engine,
loading the result into the scene). The goal: the second and later Applies within 1.3x of the stage sum.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT / "Testing")]

from train_default_model import tissue_map  # noqa: E402

STAGE_LINE = re.compile(r"^\[\d+/\d+\] (?P<name>.+): (?P<seconds>\d+(?:\.\d+)?) s, peak memory")


def stage_seconds(log: list[str]) -> dict[str, float]:
    """The seconds of each stage of a job, from the engine's stage lines in its log."""
    return {match["name"]: float(match["seconds"]) for match in map(STAGE_LINE.match, log) if match}


def volume_from_file(path: Path):
    """A scalar volume node read by Slicer's own storage node, as Slicer loads a file."""
    import slicer

    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "MNI152 T1 1mm")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        raise RuntimeError(f"{path} could not be read into a volume node")
    return node


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spacings", nargs="+", default=["3", "2", "native"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--entry-seconds", type=float, default=5.0,
                        help="from entering the module to the first Apply (default 5)")
    args = parser.parse_args()
    from slicer_app import start_application, stop_application

    from HyperSpaceSegmentationLib.mrml_logic import HyperSpaceMRMLLogic

    t1, _ = tissue_map()
    print(f"device: {args.device}; threads of this process: {torch.get_num_threads()}; the 1 mm template "
          f"{'x'.join(map(str, t1.GetSize()))}")
    print("| engine | Apply | spacing (mm) | Apply-to-result (s) | stage sum (s) | ratio | overhead (s) | "
          "models loaded | predict (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "t1.nrrd"
        sitk.WriteImage(t1, str(path))
        for engine in ("warm, started on entry", "warm", "one process per Apply"):
            scene = start_application()
            volume = volume_from_file(path)
            logic = HyperSpaceMRMLLogic()
            logic.pythonExecutable = sys.executable
            logic.warmEngine = engine.startswith("warm")
            logic.stop_engine()  # a fresh session
            if engine == "warm, started on entry":
                logic.start_engine()
                time.sleep(args.entry_seconds)
            for number, spacing in enumerate(args.spacings, 1):
                began = time.perf_counter()
                job = logic.segment(volume, spacing, device=args.device, wait=False)
                result = job.wait()
                wall = time.perf_counter() - began
                stages = stage_seconds(job.log)
                total = sum(stages.values())
                predict = sum(seconds for name, seconds in stages.items() if name.startswith("predict"))
                loaded = job.worker_report["models_loaded"] if job.worker_report else "-"
                print(f"| {engine} | {number} | {spacing} | {wall:.2f} | {total:.2f} | {wall / total:.2f} | "
                      f"{wall - total:.2f} | {loaded} | {predict:.2f} |", flush=True)
                scene.RemoveNode(result)
            logic.stop_engine()
            stop_application(scene)


if __name__ == "__main__":
    main()
