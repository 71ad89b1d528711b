"""The module panel's settings: the parameter node saved with the scene (each field bound to the widget of the .ui
whose SlicerParameterName is the field's name), its choices, and the settings as the logic's keyword arguments."""

import enum
from typing import Annotated

from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper


class SpacingMode(enum.Enum):
    """How the working spacing is chosen."""

    NATIVE = "native"
    ISOTROPIC = "isotropic"
    PER_AXIS = "per-axis"
    TIME_BUDGET = "time budget"
    VOXEL_BUDGET = "voxel budget"

    def label(self) -> str:
        return {
            SpacingMode.NATIVE: _("Native (the scan's own)"),
            SpacingMode.ISOTROPIC: _("Isotropic"),
            SpacingMode.PER_AXIS: _("Per axis"),
            SpacingMode.TIME_BUDGET: _("Finest within a time budget"),
            SpacingMode.VOXEL_BUDGET: _("Finest within a voxel budget"),
        }[self]


class SegmentationMode(enum.Enum):
    """3D, or 2D with a 2D model: every slice across a chosen volume axis, or only the slice a slice view shows."""

    VOLUME = "3d"
    SLICE_BY_SLICE = "2d"
    RED_VIEW = "2d Red"
    YELLOW_VIEW = "2d Yellow"
    GREEN_VIEW = "2d Green"

    def label(self) -> str:
        return {
            SegmentationMode.VOLUME: _("3D"),
            SegmentationMode.SLICE_BY_SLICE: _("2D, slice by slice"),
            SegmentationMode.RED_VIEW: _("2D, the slice shown in the Red view"),
            SegmentationMode.YELLOW_VIEW: _("2D, the slice shown in the Yellow view"),
            SegmentationMode.GREEN_VIEW: _("2D, the slice shown in the Green view"),
        }[self]

    def engineMode(self) -> str:
        """The logic's ``mode``: "3d" or "2d"."""
        return self.value.split()[0]

    def viewName(self) -> str | None:
        """The layout name of the slice view whose slice is segmented, or None."""
        words = self.value.split()
        return words[1] if len(words) > 1 else None


@parameterNodeWrapper
class HyperSpaceSegmentationParameterNode:
    """The module's settings, saved with the scene. Each field is bound to the widget whose SlicerParameterName
    (in the .ui) is the field's name."""

    inputVolume: vtkMRMLScalarVolumeNode
    maskSegmentation: vtkMRMLSegmentationNode
    maskSegmentName: str = ""
    useEmbeddedModel: bool = True
    modelFiles: str = ""
    segmentationMode: SegmentationMode = SegmentationMode.VOLUME
    sliceAxis: Annotated[str, Choice(["I", "J", "K"])] = "K"
    spacingMode: SpacingMode = SpacingMode.NATIVE
    isotropicSpacing: Annotated[float, WithinRange(0.5, 8.0)] = 3.0
    spacingX: Annotated[float, WithinRange(0.1, 20.0)] = 1.5
    spacingY: Annotated[float, WithinRange(0.1, 20.0)] = 1.5
    spacingZ: Annotated[float, WithinRange(0.1, 20.0)] = 1.5
    budgetSeconds: Annotated[float, WithinRange(1.0, 3600.0)] = 60.0
    budgetMegavoxels: Annotated[float, WithinRange(0.1, 1000.0)] = 4.0
    overrideInputSpacing: bool = False
    inputSpacingX: Annotated[float, WithinRange(0.01, 50.0)] = 1.0
    inputSpacingY: Annotated[float, WithinRange(0.01, 50.0)] = 1.0
    inputSpacingZ: Annotated[float, WithinRange(0.01, 50.0)] = 1.0
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    testTimeAugmentation: bool = False
    computeUncertainty: bool = False
    removeSmallObjects: bool = False
    smallObjectMm3: Annotated[float, WithinRange(0.0, 1e6)] = 100.0
    smallObjectClasses: str = ""
    keepLargestComponent: bool = False
    largestComponentClasses: str = ""
    fillHoles: bool = False
    fillHolesClasses: str = ""
    outputSegmentation: vtkMRMLSegmentationNode
    referenceSegmentation: vtkMRMLSegmentationNode
    toleranceMm: Annotated[float, WithinRange(0.0, 20.0)] = 1.0
    metricsTable: vtkMRMLTableNode
    uncertaintyThreshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.2


def segmentArguments(parameters: HyperSpaceSegmentationParameterNode) -> dict:
    """The settings as keyword arguments of ``HyperSpaceMRMLLogic.segment`` (and, less ``max_seconds``, of
    ``estimate``): a new option is a field above, a widget in the .ui and an entry here. For the modes on a view's
    slice, ``axis`` and ``slice_index`` come from the view at Apply (``viewSlice``)."""
    mode = parameters.spacingMode
    engineMode = parameters.segmentationMode.engineMode()
    perAxis = (parameters.spacingX, parameters.spacingY, parameters.spacingZ)
    spacing = {
        SpacingMode.NATIVE: "native",
        SpacingMode.ISOTROPIC: parameters.isotropicSpacing,
        SpacingMode.PER_AXIS: perAxis[:2] if engineMode == "2d" else perAxis,  # 2D: the slice plane's two axes
    }.get(mode, "auto")
    postprocessing = {}
    if parameters.removeSmallObjects:
        postprocessing["remove_smaller_than"] = (parameters.smallObjectMm3, classList(parameters.smallObjectClasses))
    if parameters.keepLargestComponent:
        postprocessing["largest_component"] = classList(parameters.largestComponentClasses)
    if parameters.fillHoles:
        postprocessing["fill_holes"] = classList(parameters.fillHolesClasses)
    return {
        "spacing": spacing, "model": None if parameters.useEmbeddedModel else modelFileList(parameters.modelFiles),
        "device": parameters.device,
        "max_voxels": parameters.budgetMegavoxels * 1e6 if mode == SpacingMode.VOXEL_BUDGET else None,
        "max_seconds": parameters.budgetSeconds if mode == SpacingMode.TIME_BUDGET else None,
        "input_spacing": ((parameters.inputSpacingX, parameters.inputSpacingY, parameters.inputSpacingZ)
                          if parameters.overrideInputSpacing else None),
        "mode": engineMode, "axis": "IJK".index(parameters.sliceAxis),
        "slice_index": None,
        "tta": True if parameters.testTimeAugmentation else None, "uncertainty": parameters.computeUncertainty,
        "postprocessing": postprocessing or None,
        "restrict_to": ((parameters.maskSegmentation, parameters.maskSegmentName)
                        if parameters.maskSegmentation else None),
    }


def modelFileList(text: str) -> list[str]:
    """The model files typed or added in the panel, separated by ';' (several: an ensemble)."""
    return [path.strip() for path in text.split(";") if path.strip()]


def classList(text: str) -> list | bool:
    """The classes typed for a postprocessing step, label values or class names separated by commas, as
    ``segment``'s postprocessing labels; empty: True (every class)."""
    words = [word.strip() for word in text.split(",") if word.strip()]
    return [int(word) if word.isdigit() else word for word in words] or True
