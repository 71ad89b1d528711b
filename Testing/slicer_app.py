"""A headless 3D Slicer core application from Kitware's ``slicer-core`` wheel (MRML and the Qt-free module logics),
for testing the Slicer layer without Slicer. Import it only after ``pytest.importorskip("slicer")``.

The setup follows Slicer's own start-up: an application logic with the scene and the colour logic (registered as
"Colors"), then each module logic given the application logic before the scene, registered by name, and reachable
as ``slicer.modules.<name>.logic()`` as in Slicer. VTK does not raise errors: it prints them and returns 0/None, so
``VtkErrors`` collects the error events of VTK's output window for a test to check.
"""

from __future__ import annotations

import types

import slicer
import vtk

MODULE_LOGICS = {
    "volumes": slicer.vtkSlicerVolumesLogic,
    "segmentations": slicer.vtkSlicerSegmentationsModuleLogic,
    "subjecthierarchy": slicer.vtkSlicerSubjectHierarchyModuleLogic,
    "tables": slicer.vtkSlicerTablesLogic,
}


class VtkErrors:
    """Collects the messages of ``vtkCommand.ErrorEvent`` on VTK's output window while it is active."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self._window = vtk.vtkOutputWindow.GetInstance()
        self._tag: int | None = None

    def _on_error(self, caller, event, message=None) -> None:
        self.messages.append(str(message))

    def start(self) -> VtkErrors:
        self._on_error.__func__.CallDataType = vtk.VTK_STRING
        self._tag = self._window.AddObserver(vtk.vtkCommand.ErrorEvent, self._on_error)
        return self

    def stop(self) -> None:
        if self._tag is not None:
            self._window.RemoveObserver(self._tag)
            self._tag = None


def start_application() -> slicer.vtkMRMLScene:
    """A new scene with the application, colour and module logics registered; sets ``slicer.mrmlScene`` and
    ``slicer.modules``."""
    scene = slicer.vtkMRMLScene()
    application = slicer.vtkSlicerApplicationLogic()
    application.SetMRMLScene(scene)
    colors = application.GetColorLogic()
    colors.SetMRMLScene(scene)
    colors.AddDefaultColorNodes()
    application.SetModuleLogic("Colors", colors)
    modules = {"colors": colors}
    for name, cls in MODULE_LOGICS.items():
        logic = cls()
        logic.SetMRMLApplicationLogic(application)  # before the scene, as Slicer's module loader does
        logic.SetMRMLScene(scene)
        application.SetModuleLogic(name.capitalize(), logic)
        modules[name] = logic
    slicer.mrmlScene = scene
    slicer.modules = types.SimpleNamespace(
        **{name: types.SimpleNamespace(logic=(lambda logic=logic: logic)) for name, logic in modules.items()})
    slicer._hyperspace_logics = (application, modules)  # keeps the logics alive as long as the scene
    return scene


def stop_application(scene: slicer.vtkMRMLScene) -> None:
    """Clear the scene and forget the application."""
    scene.Clear(True)
    for name in ("mrmlScene", "modules", "_hyperspace_logics"):
        if hasattr(slicer, name):
            delattr(slicer, name)
