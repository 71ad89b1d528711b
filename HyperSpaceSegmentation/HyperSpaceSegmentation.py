"""3D Slicer module: the user interface of HyperSpace Segmentation.

All work is done by ``HyperSpaceSegmentationLib.mrml_logic.HyperSpaceMRMLLogic`` (Qt-free, tested on Slicer's core):
this file holds the widget (a QTimer polls the background job), the sample data registration and Slicer's self-test;
the package HyperSpaceSegmentationPanel holds the settings (a parameter node bound to the .ui), the panel's texts and
the dependency installation at Apply time.
"""

import importlib.util
import math
import os
import pathlib
import sys

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.i18n import translate
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
from HyperSpaceSegmentationPanel.dependencies import ensureDependencies, missingEnginePackages  # noqa: E402
from HyperSpaceSegmentationPanel.settings import (  # noqa: E402
    HyperSpaceSegmentationParameterNode, SegmentationMode, SpacingMode, modelFileList, segmentArguments,
)
from HyperSpaceSegmentationPanel.texts import (  # noqa: E402
    ensembleNote, estimateText, estimateWarnings, modelFacts, nativeSpacingText, timeBudgetText,
)

README_URL = "https://github.com/hyperspace-segmentation/SlicerHyperSpaceSegmentation#3d-slicer"
SAMPLE_FILE = os.path.join(MODULE_DIR, "HyperSpaceSegmentationLib", "resources", "samples", "MNI152-T1-1.5mm.nrrd")
SAMPLE_NAME = "MNI152 T1 1.5mm"
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


def uncertaintyOf(segmentation):
    """The uncertainty volume node made with ``segmentation`` (segment with uncertainty), or None."""
    return segmentation.GetNodeReference(UNCERTAINTY_REFERENCE_ROLE) if segmentation is not None else None


def viewSliceNode(viewName: str):
    """The slice node of the slice view ``viewName`` (Red, Yellow, Green), or None when the layout does not show it."""
    layoutManager = slicer.app.layoutManager()
    sliceWidget = layoutManager.sliceWidget(viewName) if layoutManager is not None else None
    return sliceWidget.mrmlSliceNode() if sliceWidget is not None else None


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
        """Developer reload: forget the modules of the engine and panel packages too, so that the reloaded module
        file imports the edited logic, engine and panel afresh (Slicer's reload re-reads this file only)."""
        packages = ("HyperSpaceSegmentationLib", "HyperSpaceSegmentationPanel")
        for name in [name for name in sys.modules if name.split(".")[0] in packages]:
            del sys.modules[name]
        ScriptedLoadableModuleWidget.onReload(self)

    def enter(self) -> None:
        self.initializeParameterNode()
        if not missingEnginePackages():  # the engine's imports (seconds) done before the first Apply
            with slicer.util.tryWithErrorDisplay(_("Failed to start the segmentation engine.")):
                self.logic.start_engine()

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
        try:
            if models == []:
                raise UserError(_("Add a model file (several make an ensemble), or check \"Embedded model\"."))
            model = models[0] if models else None
            self.ui.modelInfoLabel.text = modelFacts(self.logic.model_facts(model, arguments["mode"]),
                                                     ensembleNote(models))
            if parameters.inputVolume is None:
                return
            viewName = parameters.segmentationMode.viewName()
            if viewName is not None:
                try:
                    arguments["axis"], arguments["slice_index"] = self.viewSlice(viewName)
                except UserError:
                    return  # the Inputs section says why (showViewSlice)
            timed = arguments["max_seconds"] is not None  # chosen at run time: estimate the native spacing only
            estimate = self.logic.estimate(
                parameters.inputVolume, "native" if timed else arguments["spacing"], model=model,
                device=arguments["device"], max_voxels=arguments["max_voxels"], input_spacing=arguments["input_spacing"],
                mode=arguments["mode"], axis=arguments["axis"], slice_index=arguments["slice_index"])
            self.ui.nativeSpacingLabel.text = nativeSpacingText(estimate, arguments["mode"],
                                                                overridden=bool(arguments["input_spacing"]))
            if timed:
                self.ui.estimateLabel.text = timeBudgetText(arguments["max_seconds"])
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
        self.ui.estimateLabel.text = estimateText(estimate, arguments["mode"], models)
        self.ui.spacingWarningLabel.text = estimateWarnings(estimate)

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
                                                  name, sliceNode, rank=rank)
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
        missing = missingEnginePackages()
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
