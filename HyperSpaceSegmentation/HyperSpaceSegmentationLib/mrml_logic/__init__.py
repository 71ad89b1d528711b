"""The Slicer module's logic and scripting API on MRML nodes, without Qt: it runs in 3D Slicer and on Kitware's
``slicer-core`` wheel. ``from HyperSpaceSegmentationLib.mrml_logic import HyperSpaceMRMLLogic`` is the scripting API;
every name below is importable from here.

Which module owns what:

- ``logic.py``: ``HyperSpaceMRMLLogic``, a thin facade over the modules below, with the session's caches (model,
  grid, GPU probe) and the spacing estimate (``SpacingEstimate``).
- ``request.py``: ``SegmentationRequest``, the settings a job is started with, checked once and turned into the
  engine's command-line words in one place; ``PostprocessingOptions`` and ``postprocessing_words``.
- ``job.py``: ``SegmentationJob`` (a ``hyperspace segment`` run in the background: progress, cancel, its life
  cycle) and loading its results into the scene.
- ``warm_engine.py``: ``WarmEngine``, the session's worker that keeps models loaded between jobs.
- ``process.py``: the engine's processes: environment, temporary folder, launch, output reader, ending a process
  tree, and the GPU probe (``GpuProbe``).
- ``batch.py``: ``segment_folder``'s work (the batch script's): cases of a folder, one engine batch, the scores.
- ``review.py``: the metrics table, the slice walks (largest disagreement, most uncertain) and the uncertainty display.
- ``slice_geometry.py``: IJK/RAS matrices, slice normals, the slice a view shows, moving a view to a slice.
- ``nodes.py``: MRML node helpers: scan checks, a segment's voxels, the ``restrict_to`` mask, ``no_new_nodes``.

``slicer``, ``vtk``, ``psutil``, ``SimpleITK`` and the engine's torch-based parts are imported inside the functions,
so that this package imports without Slicer, and in Slicer before the module installs its dependencies. Nothing here
opens a dialog.
"""

from .batch import SEGMENTATION_SUFFIXES, VOLUME_SUFFIXES, BatchResult, run_engine_batch
from .job import HEAT_MAP_COLORS, UNCERTAINTY_REFERENCE_ROLE, SegmentationJob, load_segmentation, load_uncertainty
from .logic import HyperSpaceMRMLLogic, SpacingEstimate, python_slicer_executable
from .process import (
    END_TIMEOUT_S, ENGINE_MODULE, ENGINE_PARENT, ERROR_PREFIX, GPU_PROBE, GpuProbe, end_process_tree,
    engine_environment, process_events, temporary_folder,
)
from .request import IJK, MODES, POSTPROCESSING_KEYS, PostprocessingOptions, SegmentationRequest, postprocessing_words
from .slice_geometry import VIEW_ALIGNMENT_TOLERANCE_RAD
from .warm_engine import END_PREFIX, READY_PREFIX, WORKER_MODULE, WarmEngine, stop_warm_engines, warm_engine

__all__ = [
    "END_PREFIX", "END_TIMEOUT_S", "ENGINE_MODULE", "ENGINE_PARENT", "ERROR_PREFIX", "GPU_PROBE", "HEAT_MAP_COLORS",
    "IJK", "MODES", "POSTPROCESSING_KEYS", "READY_PREFIX", "SEGMENTATION_SUFFIXES", "UNCERTAINTY_REFERENCE_ROLE",
    "VIEW_ALIGNMENT_TOLERANCE_RAD", "VOLUME_SUFFIXES", "WORKER_MODULE", "BatchResult", "GpuProbe",
    "HyperSpaceMRMLLogic", "PostprocessingOptions", "SegmentationJob", "SegmentationRequest", "SpacingEstimate",
    "WarmEngine", "end_process_tree", "engine_environment", "load_segmentation", "load_uncertainty",
    "postprocessing_words", "process_events", "python_slicer_executable", "run_engine_batch", "stop_warm_engines",
    "temporary_folder", "warm_engine",
]
