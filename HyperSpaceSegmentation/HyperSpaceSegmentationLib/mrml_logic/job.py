"""A segmentation job on MRML nodes, without Qt: ``SegmentationJob`` runs ``hyperspace segment`` in a separate process
(``PythonSlicer`` in Slicer), follows its output and loads its result into the scene (``load_segmentation``,
``load_uncertainty``).

Its life cycle: the job ends done, failed or cancelled, and in every case its temporary folder (an uncompressed copy
of the scan) is removed and its process tree ended; a job that is never polled to its end, or dropped, does the same
when it is garbage collected or Python exits, and closing the scene of its volume cancels it, so that nothing is
loaded into the next scene. By default a job runs in the session's warm engine (``warm_engine.py``); cancelling such a
job kills the worker, and the next job starts a fresh one. The engine's output is read as UTF-8 (the child is told to
write UTF-8), an undecodable byte is replaced and never ends the reader. ``slicer`` is imported inside the functions.
"""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import time
import weakref
from typing import Any

from ..errors import UserError
from .process import END_TIMEOUT_S, ENGINE_MODULE, ERROR_PREFIX, end_process_tree, launch, process_events, start_reader
from .warm_engine import END_PREFIX, READY_PREFIX, WarmEngine

UNCERTAINTY_REFERENCE_ROLE = "hyperspaceUncertainty"
"""The node reference role from a segmentation node to the uncertainty volume node of the same run."""
HEAT_MAP_COLORS = ("Inferno", "PET-Heat", "ColdToHotRainbow")
"""The colour tables tried, in this order, for an uncertainty volume (Slicer has Inferno; the Qt-free core, PET-Heat)."""


def _release(held: dict, folder: str, scene: Any, tag: Any) -> None:
    """End what a job holds (see ``SegmentationJob``); runs once, also when the job is garbage collected. ``held``:
    the job's process, and whether it outlives the job (a warm engine's worker that finished the job)."""
    if scene is not None and tag is not None:
        try:
            scene.RemoveObserver(tag)
        except Exception:  # the scene is being torn down (Python exiting)
            pass
    if not held["keep"]:
        end_process_tree(held["process"])
    shutil.rmtree(folder, ignore_errors=True)


def _on_scene_close(job_ref: weakref.ref) -> None:
    job = job_ref()
    if job is not None and job.status == "running":
        job.cancel()
        job.log.append("cancelled: the scene was closed")


class SegmentationJob:
    """A ``hyperspace segment`` run in a background process; ``poll()`` it from the main thread (e.g. a QTimer).

    ``status`` is running, done, failed or cancelled; ``progress`` the finished fraction (0 to 1) from the engine's
    progress lines; ``log`` the other output lines; ``result`` the segmentation node when done; ``uncertainty`` the
    uncertainty volume node when done and asked for (``segment(..., uncertainty=True)``), else None; ``error`` the
    reason when failed. ``cancel()`` ends the process tree and removes the temporary folder: no node, no file is left.
    Closing the volume's scene cancels the job; a job dropped while running is cancelled when collected.

    ``command`` is the one-shot engine command line (``PYTHON -m HyperSpaceSegmentationLib.cli segment ...``). With
    ``engine`` (a ``WarmEngine``) the job runs in its worker instead, unless the worker is busy or unavailable;
    ``process`` is then the worker's, cancelling the job kills it, and ``worker_report`` holds the worker's end report
    (``models_loaded``: model files read for this job, 0 when all came from its cache). A worker that does not start
    (``engine.unavailable``) makes the job run in a process of its own; one that stops during the job fails it.
    """

    def __init__(self, command: list[str], folder: str, output: str, volumeNode: Any,
                 uncertainty: str | None = None, engine: WarmEngine | None = None) -> None:
        import slicer

        self.command = list(command)
        self.status = "running"
        self.progress = 0.0
        self.log: list[str] = []
        self.result = None
        self.uncertainty = None
        self.error: str | None = None
        self.folder = folder
        self._output = output
        self._uncertainty_file = uncertainty
        self._volumeNode = volumeNode
        self.worker_report: dict | None = None
        self._engine: WarmEngine | None = None
        self._before_ready: list[str] = []  # a worker's lines before it said it is ready
        warm = (engine is not None and engine.unavailable is None and not engine.busy
                and self.command[1:3] == ["-m", ENGINE_MODULE])
        if warm:
            self.process = engine.submit(self, self.command[3:], folder)
            self._engine, self._lines, self._reader, self._ready = engine, engine.lines, engine.reader, engine.ready
        else:
            self._start_process()
        self._held = {"process": self.process, "keep": False}
        scene, tag = volumeNode.GetScene(), None
        if scene is not None:
            job_ref = weakref.ref(self)
            tag = scene.AddObserver(slicer.vtkMRMLScene.StartCloseEvent, lambda caller, event: _on_scene_close(job_ref))
        self._release = weakref.finalize(self, _release, self._held, folder, scene, tag)

    def _start_process(self) -> None:
        """Run the job in a one-shot engine process of its own."""
        self.process = launch(self.command, self.folder)
        self._lines, self._reader = start_reader(self.process.stdout)
        if hasattr(self, "_held"):
            self._held["process"] = self.process

    def poll(self) -> str:
        """Take in the output so far (never blocks); when the process has ended, load its result. Returns status."""
        from ..progress import parse_progress_line, progress_fraction

        while self.status == "running":
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is None:
                try:
                    code = self.process.wait(timeout=END_TIMEOUT_S)  # its output ends as it exits
                except subprocess.TimeoutExpired:  # it closed its output but goes on: it is ended
                    end_process_tree(self.process)
                    self.log.append(f"{ERROR_PREFIX}the engine process closed its output but did not end")
                    code = -1
                if self._engine is not None and not self._ready:  # no worker here: a process of its own
                    self._fall_back(code)
                    continue
                why = None
                if self._engine is not None:
                    last = self.log[-1] if self.log else "no output"
                    why = (f"the engine worker stopped during the job (exit code {code}): {last}; the next run starts "
                           "a new one")
                    code = code or -1
                self._finish(code, why)
                break
            if self._engine is not None:
                if not self._ready:
                    if line.startswith(READY_PREFIX):
                        self._ready = self._engine.ready = True
                        self.log.extend(self._before_ready)
                    else:
                        self._before_ready.append(line)
                    continue
                if line.startswith(END_PREFIX):
                    self._end_of_worker_job(line[len(END_PREFIX):])
                    break
            event = parse_progress_line(line)
            if event is not None:
                self.progress = progress_fraction(event)
            elif line:
                self.log.append(line)
        return self.status

    def _fall_back(self, code: int) -> None:
        """The warm engine did not start (an engine without ``worker.py``, or a stand-in): run this job, and the
        executable's next ones, in a process of their own."""
        reason = self._before_ready[-1] if self._before_ready else f"exit code {code}"
        self._engine.unavailable = reason
        self._engine = None
        self.log.append(f"the warm engine did not start ({reason}): each run starts its own engine process")
        try:
            self._start_process()
        except UserError as error:
            self._finish(-1, str(error))

    def _end_of_worker_job(self, text: str) -> None:
        try:
            report = json.loads(text)
            code = int(report["exit_code"])
        except (ValueError, KeyError, TypeError):
            report, code = {"exit_code": -1, "message": f"unreadable end line: {text}"}, -1
        self.worker_report = report
        self._held["keep"] = True  # the worker lives on for the next job
        message = report.get("message")
        self._finish(code, f"segmentation failed (exit code {code}): {message}" if message else None)

    def wait(self, timeout: float | None = None) -> Any:
        """Poll until the job ends (Slicer's window stays responsive) and return the segmentation node; raise
        ``UserError`` (a problem with the input or settings), ``RuntimeError`` (the process failed or was cancelled)
        or ``TimeoutError`` after ``timeout`` seconds, when the job is cancelled (its process ended)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() == "running":
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise TimeoutError(f"segmentation still running after {timeout:g} s, so it was cancelled: give a "
                                   "longer timeout, or none")
            process_events()
            time.sleep(0.05)
        if self.status == "failed":
            raise (UserError if self._user_error else RuntimeError)(self.error)
        if self.status == "cancelled":
            raise RuntimeError("segmentation was cancelled")
        return self.result

    def cancel(self) -> None:
        """End the process and all its children (on every platform, within ``END_TIMEOUT_S`` or so, never for ever)
        and remove the temporary folder."""
        if self.status != "running":
            return
        if not end_process_tree(self.process):
            self.log.append(f"the engine process {self.process.pid} could not be ended: end it in the system's task "
                            "manager")
        self._reader.join(timeout=1.0)
        self.status = "cancelled"
        self._release()

    @property
    def _user_error(self) -> bool:
        return any(line.startswith(ERROR_PREFIX) for line in self.log)

    def _finish(self, code: int, why: str | None = None) -> None:
        """End the job: load its result (``code`` 0), else fail with the engine's one-line error, or ``why``."""
        loaded: list[Any] = []
        try:
            if code != 0:
                errors = [line[len(ERROR_PREFIX):] for line in self.log if line.startswith(ERROR_PREFIX)]
                last = self.log[-1] if self.log else "no output"
                self.error = errors[-1] if errors else why or f"segmentation process failed (exit code {code}): {last}"
                self.status = "failed"
                return
            scene = self._volumeNode.GetScene()
            if scene is None or not scene.IsNodePresent(self._volumeNode):
                raise RuntimeError(f"{self._volumeNode.GetName()} was removed from the scene while it was segmented: "
                                   "nothing was loaded")
            result = load_segmentation(self._output, self._volumeNode)
            loaded.append(result)
            if self._uncertainty_file is not None:
                self.uncertainty = load_uncertainty(self._uncertainty_file, self._volumeNode)
                loaded.append(self.uncertainty)
                result.SetNodeReferenceID(UNCERTAINTY_REFERENCE_ROLE, self.uncertainty.GetID())
            self.result = result
            self.progress = 1.0
            self.status = "done"
        except Exception as error:  # whatever went wrong, the job ends failed with the reason, and no node is left
            for node in loaded:
                if node.GetScene() is not None:
                    node.GetScene().RemoveNode(node)
            self.uncertainty = None
            self.error, self.status = str(error) or type(error).__name__, "failed"
        finally:
            self._release()


def load_segmentation(path: str, volumeNode: Any) -> Any:
    """A new segmentation node from the engine's ``.seg.nrrd`` (segment names, label values and colours kept),
    with the volume's reference geometry, under its parent transform and next to it in the subject hierarchy."""
    import slicer

    scene = slicer.mrmlScene
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(
        f"{volumeNode.GetName()} segmentation"))
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(path)
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        raise RuntimeError(f"the segmentation written by the engine ({path}) could not be read")
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
    _place_next_to(node, volumeNode)
    return node


def _place_next_to(node: Any, volumeNode: Any) -> None:
    """Put ``node`` under the volume's parent transform and next to it in the subject hierarchy."""
    import slicer

    node.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    volume_item = hierarchy.GetItemByDataNode(volumeNode)
    if volume_item:  # Slicer's Qt plugins give every node an item; the Qt-free core does not
        parent, item = hierarchy.GetItemParent(volume_item), hierarchy.GetItemByDataNode(node)
        if item:
            hierarchy.SetItemParent(item, parent)
        else:
            hierarchy.CreateItem(parent, node)


def load_uncertainty(path: str, volumeNode: Any) -> Any:
    """A new scalar volume node "<volume> uncertainty" from the engine's ``--uncertainty`` file (on the volume's grid),
    under the volume's parent transform and next to it in the subject hierarchy, shown as a heat map from 0 to 1."""
    import slicer

    scene = slicer.mrmlScene
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(
        f"{volumeNode.GetName()} uncertainty"))
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(path)
    storage.SetSingleFile(True)
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        raise RuntimeError(f"the uncertainty written by the engine ({path}) could not be read")
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    colors = next((c for c in (_color_node(scene, name) for name in HEAT_MAP_COLORS) if c is not None), None)
    if colors is not None:
        display.SetAndObserveColorNodeID(colors.GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 1.0)
    _place_next_to(node, volumeNode)
    return node


def _color_node(scene: Any, name: str) -> Any:
    nodes = scene.GetNodesByClassByName("vtkMRMLColorNode", name)
    return nodes.GetItemAsObject(0) if nodes.GetNumberOfItems() else None
