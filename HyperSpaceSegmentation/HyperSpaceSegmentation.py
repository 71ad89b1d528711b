"""3D Slicer module: the user interface of HyperSpace Segmentation.

All work is done by ``HyperSpaceSegmentationLib.mrml_logic.HyperSpaceMRMLLogic`` (Qt-free, tested on Slicer's core):
this file holds the widget (settings in a parameter node bound to the .ui, a QTimer that polls the background
job), the dependency installation at Apply time, the sample data registration and Slicer's self-test.
"""

import enum
import importlib.util
import math
import os
import pathlib
import sys
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

MODULE_DIR = os.path.dirname(os.path.abspath(__file__))
if MODULE_DIR not in sys.path:
    sys.path.insert(0, MODULE_DIR)

from HyperSpaceSegmentationLib.errors import UserError  # noqa: E402
from HyperSpaceSegmentationLib.mrml_logic import UNCERTAINTY_REFERENCE_ROLE, HyperSpaceMRMLLogic  # noqa: E402

README_URL = "https://github.com/hyperspace-segmentation/SlicerHyperSpaceSegmentation#3d-slicer"
SAMPLE_FILE = os.path.join(MODULE_DIR, "HyperSpaceSegmentationLib", "resources", "samples", "MNI152-T1-1.5mm.nrrd")
SAMPLE_NAME = "MNI152 T1 1.5mm"
MINIMUM_TORCH = "2.0"
POLL_MS = 200
WARM_ENGINE_SETTING = "HyperSpaceSegmentation/WarmEngine"  # false: one engine process per Apply


class HyperSpaceSegmentation(ScriptedLoadableModule):
    """Module description for Slicer's module list."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("HyperSpace Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]  # Slicer's own category
        self.parent.dependencies = []
        self.parent.contributors = ["HyperSpace Segmentation developers"]
        self.parent.helpText = _(
            "Spacing-adaptive segmentation: one model segments a scan at its native spacing or any coarser one, "
            "in the background, with a live estimate of the working grid and memory, and a review panel that scores "
            "the result against a reference and walks to the worst slices. "
            "See the <a href='{url}'>documentation</a>.").format(url=README_URL)
        self.parent.acknowledgementText = _(
            "Based on HyperSpace (MICCAI 2024). The embedded model was trained on the MNI ICBM152 template "
            "(Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre).")
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData() -> None:
    """Add the bundled MNI152 T1 scan to the Sample Data module (a local file, no download)."""
    import SampleData

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="HyperSpace Segmentation",
        sampleName=SAMPLE_NAME,
        thumbnailFileName=os.path.join(MODULE_DIR, "Resources", "Icons", "HyperSpaceSegmentation.png"),
        uris=pathlib.Path(SAMPLE_FILE).as_uri(),
        fileNames=os.path.basename(SAMPLE_FILE),
        nodeNames=SAMPLE_NAME,
    )


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


def uncertaintyOf(segmentation):
    """The uncertainty volume node made with ``segmentation`` (segment with uncertainty), or None."""
    return segmentation.GetNodeReference(UNCERTAINTY_REFERENCE_ROLE) if segmentation is not None else None


def viewSliceNode(viewName: str):
    """The slice node of the slice view ``viewName`` (Red, Yellow, Green), or None when the layout does not show it."""
    layoutManager = slicer.app.layoutManager()
    sliceWidget = layoutManager.sliceWidget(viewName) if layoutManager is not None else None
    return sliceWidget.mrmlSliceNode() if sliceWidget is not None else None


def modelDescription(facts: dict) -> str:
    """The model's dimensionality and IFE variant, from ``model_facts`` (keys it lacks are left out)."""
    dimensions, variant = facts.get("dimensions"), facts.get("ife")
    if not dimensions:
        return ""
    if dimensions != 2:
        return _("{dimensions}D model.").format(dimensions=dimensions)
    if not variant or variant == "none":
        return _("2D model, without IFE.")
    return _("2D model with IFE ({variant}; ratios {ratios}).").format(
        variant=variant, ratios=", ".join(f"{ratio:g}" for ratio in facts.get("ife_ratios") or ()))


class HyperSpaceSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel: settings, Apply/Cancel with a polled background job, review."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._shownLogLines = 0
        self._disagreementRank = 0
        self._uncertainRank = 0
        self._followedSliceNode = None
        self._viewAxis = None  # the volume axis across which the followed view showed a slice, or None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/HyperSpaceSegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = HyperSpaceSegmentationLogic()
        # Apply runs in the session's warm engine (models and networks stay loaded); the setting
        # HyperSpaceSegmentation/WarmEngine = false starts one engine process per run instead
        self.logic.warmEngine = slicer.util.settingsValue(WARM_ENGINE_SETTING, True, converter=slicer.util.toBool)
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_MS)
        self._timer.connect("timeout()", self.onPoll)
        self._estimateTimer = qt.QTimer()  # refreshes the estimate once the GPU's free memory is known
        self._estimateTimer.setSingleShot(True)
        self._estimateTimer.setInterval(1000)
        self._estimateTimer.connect("timeout()", self.updateGUI)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.addModelButton.connect("clicked(bool)", self.onAddModels)
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.show3DButton.connect("clicked(bool)", self.onShow3D)
        self.ui.computeMetricsButton.connect("clicked(bool)", self.onComputeMetrics)
        self.ui.exportCsvButton.connect("clicked(bool)", self.onExportCsv)
        self.ui.largestDisagreementButton.connect("clicked(bool)", lambda: self.onDisagreement(0))
        self.ui.mostUncertainButton.connect("clicked(bool)", lambda: self.onUncertain(0))
        self.ui.nextUncertainButton.connect("clicked(bool)", lambda: self.onUncertain(self._uncertainRank + 1))
        self.ui.nextDisagreementButton.connect("clicked(bool)", lambda: self.onDisagreement(self._disagreementRank + 1))
        self.ui.metricsTableSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onMetricsTableChanged)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self._job is not None:
            self._job.cancel()
        self.logic.stop_engine()  # Slicer closes, or the module is reloaded (its engine code may have changed)
        self._timer.stop()
        self._estimateTimer.stop()
        self.removeObservers()

    def onReload(self) -> None:
        """Developer reload: forget the engine package's modules too, so that the reloaded module file imports the
        edited logic and engine afresh (Slicer's reload re-reads this file only)."""
        for name in [name for name in sys.modules if name.split(".")[0] == "HyperSpaceSegmentationLib"]:
            del sys.modules[name]
        ScriptedLoadableModuleWidget.onReload(self)

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        """Closing the scene cancels a running job (its result would belong to no scene) and drops the settings."""
        self.setParameterNode(None)
        if self._job is not None:
            self._job.cancel()  # the job also cancels itself on the close; this ends the polling here
            self.onPoll()

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def setParameterNode(self, parameterNode) -> None:
        """Bind the GUI to ``parameterNode`` (two-way, through connectGui) and follow its changes."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
            self._followView(None)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
            self.updateGUI()

    # settings -------------------------------------------------------------------------------------
    def updateGUI(self, caller=None, event=None) -> None:
        """Show the widgets of the chosen segmentation and spacing modes, the model's facts and the live estimate."""
        parameters = self._parameterNode
        if parameters is None:
            return
        mode = parameters.spacingMode
        viewName = parameters.segmentationMode.viewName()
        for widgets, shown in (
            ((self.ui.sliceAxisLabel, self.ui.sliceAxisComboBox),
             parameters.segmentationMode == SegmentationMode.SLICE_BY_SLICE),
            ((self.ui.viewSliceTitleLabel, self.ui.viewSliceLabel), viewName is not None),
            ((self.ui.isotropicSpacingLabel, self.ui.isotropicSpacingSlider), mode == SpacingMode.ISOTROPIC),
            ((self.ui.perAxisSpacingLabel, self.ui.perAxisSpacingWidget), mode == SpacingMode.PER_AXIS),
            ((self.ui.budgetSecondsLabel, self.ui.budgetSecondsSpinBox), mode == SpacingMode.TIME_BUDGET),
            ((self.ui.budgetMegavoxelsLabel, self.ui.budgetMegavoxelsSpinBox), mode == SpacingMode.VOXEL_BUDGET),
        ):
            for widget in widgets:
                widget.visible = shown
        planar = parameters.segmentationMode.engineMode() == "2d"
        self.ui.spacingZSpinBox.visible = not planar
        self.ui.perAxisSpacingLabel.text = (_("Spacing in the slice plane (mm):") if planar
                                            else _("Spacing x, y, z (mm):"))
        self._followView(viewName)
        self.ui.inputSpacingWidget.enabled = parameters.overrideInputSpacing
        self.ui.modelFilesWidget.enabled = not parameters.useEmbeddedModel
        for widgets, checked in (
            ((self.ui.smallObjectSpinBox, self.ui.smallObjectClassesLineEdit), parameters.removeSmallObjects),
            ((self.ui.largestComponentClassesLineEdit,), parameters.keepLargestComponent),
            ((self.ui.fillHolesClassesLineEdit,), parameters.fillHoles),
        ):
            for widget in widgets:
                widget.enabled = checked
        self.showUncertainty()
        running = self._job is not None
        self.ui.applyButton.enabled = parameters.inputVolume is not None and not running
        self.ui.cancelButton.enabled = running
        self._showModelAndEstimate(parameters)

    def _followView(self, viewName) -> None:
        """Observe the slice node of the view whose slice is segmented (none in the other modes), so that the panel
        shows the slice the view is on as it moves."""
        sliceNode = viewSliceNode(viewName) if viewName is not None else None
        if sliceNode is not self._followedSliceNode:
            if self._followedSliceNode is not None:
                self.removeObserver(self._followedSliceNode, vtk.vtkCommand.ModifiedEvent, self.showViewSlice)
            if sliceNode is not None:
                self.addObserver(sliceNode, vtk.vtkCommand.ModifiedEvent, self.showViewSlice)
            self._followedSliceNode = sliceNode
        self.showViewSlice()

    def viewSlice(self, viewName: str) -> tuple[int, int]:
        """The input volume's axis and slice that the slice view ``viewName`` shows (``UserError`` if none)."""
        sliceNode = viewSliceNode(viewName)
        if sliceNode is None:
            raise UserError(_("The {view} view is not in the layout: choose a layout that shows it, or another "
                              "view.").format(view=viewName))
        return self.logic.slice_in_view(self._parameterNode.inputVolume, sliceNode)

    def showViewSlice(self, caller=None, event=None) -> None:
        """The slice the chosen view shows, or why it cannot be segmented; when the view moves (``caller``) onto
        another axis, or off every axis, the estimate follows (it depends on the axis alone)."""
        parameters = self._parameterNode
        viewName = parameters.segmentationMode.viewName() if parameters is not None else None
        if viewName is None or parameters.inputVolume is None:
            self.ui.viewSliceLabel.text = ""
            return
        try:
            axis, index = self.viewSlice(viewName)
            count = parameters.inputVolume.GetImageData().GetDimensions()[axis]
            self.ui.viewSliceLabel.text = _("Slice {index} of 0-{last} across the volume's {axis} axis.").format(
                index=index, last=count - 1, axis="IJK"[axis])
        except UserError as error:
            axis = None
            self.ui.viewSliceLabel.text = str(error)
        if caller is not None and axis != self._viewAxis:
            self._showModelAndEstimate(parameters)
        self._viewAxis = axis

    def _showModelAndEstimate(self, parameters) -> None:
        """The model's labels, trained range, dimensionality and IFE variant, and the working grid and memory at the
        chosen spacing (no network run; needs PyTorch, which Apply installs)."""
        labels = (self.ui.modelInfoLabel, self.ui.nativeSpacingLabel, self.ui.estimateLabel, self.ui.spacingWarningLabel)
        for label in labels:
            label.text = ""
        if importlib.util.find_spec("torch") is None:
            self.ui.modelInfoLabel.text = _("Model details and estimates appear once PyTorch is installed (at Apply).")
            return
        arguments = segmentArguments(parameters)
        models = arguments["model"]  # None: the embedded model; else one file, or several (an ensemble)
        ensemble = _("Ensemble of {count} models: their probabilities are averaged, each model at its own spacing "
                     "(the facts and estimate are the first model's).").format(count=len(models)) \
            if models and len(models) > 1 else ""
        try:
            if models == []:
                raise UserError(_("Add a model file (several make an ensemble), or check \"Embedded model\"."))
            model = models[0] if models else None
            facts = self.logic.model_facts(model, arguments["mode"])
            low, high = facts["spacing_range_mm"]
            self.ui.modelInfoLabel.text = " ".join(filter(None, [
                _("Labels: {labels}. Trained on spacings {low:g}-{high:g} mm.").format(
                    labels=", ".join(f"{value} {name}" for value, name in facts["labels"].items() if value != "0"),
                    low=low, high=high),
                modelDescription(facts), ensemble]))
            if parameters.inputVolume is None:
                return
            viewName = parameters.segmentationMode.viewName()
            if viewName is not None:
                try:
                    arguments["axis"], arguments["slice_index"] = self.viewSlice(viewName)
                except UserError:
                    return  # the Inputs section says why (showViewSlice)
            timed = arguments["max_seconds"] is not None  # chosen at run time: estimate the native spacing only
            estimate = self.logic.estimate(parameters.inputVolume, "native" if timed else arguments["spacing"],
                                           model, arguments["device"], arguments["max_voxels"],
                                           arguments["input_spacing"], arguments["mode"], arguments["axis"],
                                           arguments["slice_index"])
            plane = f" ({' x '.join(estimate.axes)})" if arguments["mode"] == "2d" else ""  # the slice plane's axes
            self.ui.nativeSpacingLabel.text = " x ".join(f"{s:.3g}" for s in estimate.native) + " mm" + plane + (
                _(" (overridden)") if arguments["input_spacing"] else "")
            if timed:
                self.ui.estimateLabel.text = _("The finest spacing within {seconds:g} s is chosen at run time, by "
                                               "timing the network on the device.").format(seconds=arguments["max_seconds"])
                return
        except UserError as error:
            self.ui.spacingWarningLabel.text = str(error)
            return
        except ImportError as error:  # torch is there, another engine dependency is not: say so, no traceback
            self.ui.modelInfoLabel.text = _(
                "The Python package {package} is missing: click Apply to install it. Model details and estimates "
                "appear then.").format(package=error.name or str(error))
            return
        if math.isnan(estimate.available_mb):  # the GPU's free memory is being asked for, in a separate process
            self._estimateTimer.start()
        text = _("Working grid {grid} at {spacing} mm: {voxels:,} voxels; memory about {memory:,.0f} MB "
                 "({available} free).") if arguments["mode"] == "3d" else _(
            "{slices:,} slice(s), each on a working grid {grid} at {spacing} mm ({axes}): {voxels:,} voxels in all; "
            "memory about {memory:,.0f} MB ({available} free).")
        self.ui.estimateLabel.text = text.format(
            grid=" x ".join(map(str, estimate.grid)), spacing=" x ".join(f"{s:.3g}" for s in estimate.spacing),
            axes=" x ".join(estimate.axes), voxels=estimate.voxels, memory=estimate.memory_mb,
            available=_("? MB") if math.isnan(estimate.available_mb) else f"{estimate.available_mb:,.0f} MB",
            slices=estimate.slices) + (_(
                " The ensemble runs each of its {count} models: about {count} times as long.").format(
                count=len(models)) if ensemble else "")
        warnings = list(estimate.notes)
        if estimate.memory_mb > 0.9 * estimate.available_mb:
            warnings.append(_("This needs more memory than is free: choose a coarser spacing."))
        self.ui.spacingWarningLabel.text = "\n".join(warnings)

    def onAddModels(self) -> None:
        """Add model files chosen in a file dialog to the list (several: an ensemble) and use them."""
        paths = qt.QFileDialog.getOpenFileNames(None, _("Add model files"), "", _("Model files (*.pt)"))
        if paths:
            self._parameterNode.modelFiles = "; ".join([*modelFileList(self._parameterNode.modelFiles), *paths])
            self._parameterNode.useEmbeddedModel = False

    def showUncertainty(self) -> None:
        """Show the output's uncertainty map (if any) only above the chosen threshold; the slider follows it."""
        uncertainty = uncertaintyOf(self._parameterNode.outputSegmentation)
        self.ui.uncertaintyThresholdSlider.enabled = uncertainty is not None
        if uncertainty is not None:
            self.logic.show_uncertainty_above(uncertainty, self._parameterNode.uncertaintyThreshold)

    # running --------------------------------------------------------------------------------------
    def onApply(self) -> None:
        """Install what is missing, then start the segmentation in the background; the timer follows it."""
        with slicer.util.tryWithErrorDisplay(_("Failed to start the segmentation."), waitCursor=True):
            ensureDependencies(self.resourcePath("requirements.txt"))
            self.ui.logTextEdit.clear()
            self.ui.progressBar.value = 0
            self._shownLogLines = 0
            arguments = segmentArguments(self._parameterNode)
            viewName = self._parameterNode.segmentationMode.viewName()
            if viewName is not None:
                arguments["axis"], arguments["slice_index"] = self.viewSlice(viewName)
            self._job = self.logic.segment(self._parameterNode.inputVolume, wait=False, **arguments)
            self._timer.start()
            self.updateGUI()

    def onPoll(self) -> None:
        """Take in the job's progress and log (never blocks); when it has ended, show the result or the reason. The
        job goes on while the user is in another module: its result is then selected in the module's parameter node,
        and shown when they come back."""
        job = self._job
        if job is None:
            self._timer.stop()
            return
        status = job.poll()
        for line in job.log[self._shownLogLines:]:
            self.ui.logTextEdit.appendPlainText(line)
        self._shownLogLines = len(job.log)
        self.ui.progressBar.value = int(round(100 * job.progress))
        if status == "running":
            return
        self._timer.stop()
        self._job = None
        if status == "done":
            parameters = self._parameterNode if self._parameterNode is not None else self.logic.getParameterNode()
            parameters.outputSegmentation = job.result
            self.ui.logTextEdit.appendPlainText(_("Done: {name}").format(name=job.result.GetName()))
            if job.uncertainty is not None:  # shown over the input, half transparent
                slicer.util.setSliceViewerLayers(foreground=job.uncertainty, foregroundOpacity=0.5)
        elif status == "failed":
            self.ui.logTextEdit.appendPlainText(job.error)
            slicer.util.errorDisplay(_("Segmentation failed: {error}").format(error=job.error))
        else:
            self.ui.logTextEdit.appendPlainText(_("Cancelled: nothing was added to the scene."))
        self.updateGUI()

    def onCancel(self) -> None:
        if self._job is not None:
            self._job.cancel()
            self.onPoll()

    def onShow3D(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to show the segmentation in 3D."), waitCursor=True):
            segmentation = self._parameterNode.outputSegmentation
            if segmentation is None:
                raise UserError(_("Run the segmentation first, or select a segmentation."))
            segmentation.CreateClosedSurfaceRepresentation()
            segmentation.GetDisplayNode().SetVisibility3D(True)
            slicer.app.layoutManager().threeDWidget(0).threeDView().resetFocalPoint()

    # review ---------------------------------------------------------------------------------------
    def onComputeMetrics(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to compute the metrics."), waitCursor=True):
            parameters = self._parameterNode
            ensureDependencies(self.resourcePath("requirements.txt"))
            parameters.metricsTable = self.logic.evaluate(parameters.referenceSegmentation,
                                                          parameters.outputSegmentation, parameters.toleranceMm)

    def onMetricsTableChanged(self, table) -> None:
        """Show the table and list its segments for the walk through the disagreements."""
        self.ui.metricsTableView.setMRMLTableNode(table)
        self.ui.reviewSegmentComboBox.clear()
        if table is not None and table.GetTable().GetColumnByName("segment") is not None:
            column = table.GetTable().GetColumnByName("segment")
            for row in range(column.GetNumberOfValues()):
                self.ui.reviewSegmentComboBox.addItem(column.GetValue(row))
        self._disagreementRank = 0
        self.ui.disagreementLabel.text = ""

    def onExportCsv(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to export the table."), waitCursor=True):
            table = self._parameterNode.metricsTable
            if table is None:
                raise UserError(_("Compute the metrics first."))
            path = qt.QFileDialog.getSaveFileName(None, _("Export metrics"), f"{table.GetName()}.csv",
                                                  _("CSV files (*.csv)"))
            if path and not slicer.util.saveNode(table, path):
                raise UserError(_("The table could not be written to {path}.").format(path=path))

    def onDisagreement(self, rank: int) -> None:
        """Move the Red slice view to the slice of rank ``rank`` (0: the worst) for the chosen segment."""
        with slicer.util.tryWithErrorDisplay(_("Failed to find the slice."), waitCursor=True):
            parameters = self._parameterNode
            name = self.ui.reviewSegmentComboBox.currentText
            sliceNode = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode()
            self.logic.largest_disagreement_slice(parameters.referenceSegmentation, parameters.outputSegmentation,
                                                  name, sliceNode, rank)
            self._disagreementRank = rank
            self.ui.disagreementLabel.text = _("{name}: slice with the #{rank} largest difference.").format(
                name=name, rank=rank + 1)

    def onUncertain(self, rank: int) -> None:
        """Move the Red slice view to the slice of rank ``rank`` (0: the most uncertain) of the output's uncertainty."""
        with slicer.util.tryWithErrorDisplay(_("Failed to find the slice."), waitCursor=True):
            uncertainty = uncertaintyOf(self._parameterNode.outputSegmentation)
            if uncertainty is None:
                raise UserError(_("Segment with \"Uncertainty map\" checked first."))
            sliceNode = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode()
            self.logic.most_uncertain_slice(uncertainty, sliceNode, rank)
            self._uncertainRank = rank
            self.ui.disagreementLabel.text = _("Region with the #{rank} highest uncertainty.").format(rank=rank + 1)


def ensureDependencies(requirementsPath: str) -> None:
    """PyTorch through the PyTorch extension (asking the user, with a minimum version), then the packages of
    requirements.txt that are missing; Slicer's own SimpleITK, numpy and requests are left alone."""
    if slicer.util.getModuleLogic("PyTorchUtils") is None:
        raise UserError(_("This module needs the PyTorch extension: install it from the Extensions Manager and "
                          "restart Slicer."))
    import PyTorchUtils

    torchLogic = PyTorchUtils.PyTorchUtilsLogic()
    if not torchLogic.torchInstalled():
        if torchLogic.installTorch(askConfirmation=True, torchVersionRequirement=f">={MINIMUM_TORCH}") is None:
            raise UserError(_("PyTorch is needed to segment; it was not installed. Click Apply again to install it, "
                              "or install it from the PyTorch Utils module."))
    try:
        import slicer.pydeps as pydeps  # Slicer >= 5.12 (slicer.packaging in some 5.11 builds)
    except ImportError:
        try:
            import slicer.packaging as pydeps
        except ImportError:
            pydeps = None
    if pydeps is not None and hasattr(pydeps, "pip_ensure"):
        pydeps.pip_ensure(pydeps.load_requirements(requirementsPath), requester="HyperSpace Segmentation")
        return
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement

    missing = []
    for line in pathlib.Path(requirementsPath).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            try:
                if version(requirement.name) in requirement.specifier:
                    continue
            except PackageNotFoundError:
                pass
            missing.append(line.strip())
    if missing:
        if not slicer.util.confirmOkCancelDisplay(
                _("HyperSpace Segmentation needs these Python packages: {packages}. Install them now?").format(
                    packages=", ".join(missing))):
            raise UserError(_("The packages {packages} are needed; they were not installed.").format(
                packages=", ".join(missing)))
        slicer.util.pip_install(missing)


class HyperSpaceSegmentationLogic(ScriptedLoadableModuleLogic, HyperSpaceMRMLLogic):
    """The engine's MRML logic (``HyperSpaceMRMLLogic``: segment, evaluate, largest_disagreement_slice, estimate,
    segment_folder) with Slicer's scripted-module base and parameter node."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        HyperSpaceMRMLLogic.__init__(self)

    def getParameterNode(self) -> HyperSpaceSegmentationParameterNode:
        return HyperSpaceSegmentationParameterNode(super().getParameterNode())


class HyperSpaceSegmentationTest(ScriptedLoadableModuleTest):
    """End to end in Slicer (also in its testing mode, ``Slicer --testing``, where no dialog may open): the bundled
    sample scan, read from the module's own files (no download, no Sample Data module), segmented at 3 mm and
    evaluated against itself."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_segment_sample_and_evaluate()

    def test_segment_sample_and_evaluate(self) -> None:
        missing = [name for name in ("torch", "psutil", "tqdm", "skimage", "slicerio")
                   if importlib.util.find_spec(name) is None]
        if missing:  # installing needs the network and a confirmation: not in a test run
            self.skipTest(f"the engine's packages {', '.join(missing)} are not installed: click Apply once to install "
                          "them, then run the test again")
        self.delayDisplay(_("Loading the sample scan"))
        volume = slicer.util.loadVolume(SAMPLE_FILE, {"name": SAMPLE_NAME, "show": False})
        self.assertIsNotNone(volume)
        logic = HyperSpaceSegmentationLogic()

        self.delayDisplay(_("Segmenting at 3 mm"))
        segmentation = logic.segment(volume, 3, device="cpu")  # the window stays responsive while it waits
        segments = segmentation.GetSegmentation()
        names = {segments.GetNthSegment(i).GetName() for i in range(segments.GetNumberOfSegments())}
        self.assertIn("white matter", names)
        self.assertIs(segmentation.GetNodeReference(segmentation.GetReferenceImageGeometryReferenceRole()), volume)

        self.delayDisplay(_("Evaluating the result against itself"))
        table = logic.evaluate(segmentation, segmentation, tolerance=1.0)
        self.assertEqual(table.GetNumberOfRows(), len(names))
        dice = table.GetTable().GetColumnByName("dice")
        self.assertTrue(all(abs(dice.GetValue(row) - 1.0) < 1e-9 for row in range(dice.GetNumberOfValues())))
        self.delayDisplay(_("Test passed"))
