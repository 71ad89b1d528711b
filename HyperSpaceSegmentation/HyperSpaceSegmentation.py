"""3D Slicer module: thin glue between MRML nodes and the HyperSpaceSegmentationLib engine.

The logic writes the input volume to a temporary file, runs ``hyperspace segment`` in a separate
PythonSlicer process (so the GUI stays responsive and Cancel can stop it), and loads the resulting
``.seg.nrrd`` as a segmentation node on the input's own grid. It never pops up a dialog, so it also works
in batch mode (``Slicer --no-main-window --python-script``).
"""

import os
import shutil
import sys
import tempfile

import qt
import slicer
from slicer.i18n import tr as _
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

MODULE_DIR = os.path.dirname(__file__)
if MODULE_DIR not in sys.path:
    sys.path.insert(0, MODULE_DIR)


class HyperSpaceSegmentation(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("HyperSpace Segmentation")
        self.parent.categories = [_("Segmentation")]
        self.parent.contributors = ["HyperSpace Segmentation developers"]
        self.parent.helpText = _(
            "Spacing-adaptive segmentation: one model segments a scan at its native spacing or at a coarser one. "
            "See the <a href='https://github.com/hyperspace-segmentation/SlicerHyperSpaceSegmentation#readme'>README</a>."
        )
        self.parent.acknowledgementText = _("Based on HyperSpace (MICCAI 2024). Default model trained on the MNI ICBM152 template.")


class HyperSpaceSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.logic = HyperSpaceSegmentationLogic()
        form = qt.QFormLayout()
        self.layout.addLayout(form)
        self.inputSelector = slicer.qMRMLNodeComboBox()
        self.inputSelector.nodeTypes = ["vtkMRMLScalarVolumeNode"]
        self.inputSelector.setMRMLScene(slicer.mrmlScene)
        form.addRow(_("Input volume:"), self.inputSelector)
        self.spacingEdit = qt.QLineEdit("native")
        self.spacingEdit.toolTip = _("native, auto, one spacing in mm, or three (x y z)")
        form.addRow(_("Working spacing:"), self.spacingEdit)
        self.applyButton = qt.QPushButton(_("Apply"))
        self.cancelButton = qt.QPushButton(_("Cancel"))
        self.cancelButton.enabled = False
        form.addRow(self.applyButton, self.cancelButton)
        self.progressBar = qt.QProgressBar()
        form.addRow(self.progressBar)
        self.log = qt.QPlainTextEdit()
        self.log.readOnly = True
        form.addRow(self.log)
        self.layout.addStretch(1)
        self.applyButton.connect("clicked(bool)", self.onApply)
        self.cancelButton.connect("clicked(bool)", self.logic.cancel)

    def onApply(self):
        with slicer.util.tryWithErrorDisplay(_("Segmentation failed."), waitCursor=True):
            self.log.clear()
            self.applyButton.enabled, self.cancelButton.enabled = False, True
            try:
                self.logic.segment(
                    self.inputSelector.currentNode(), self.spacingEdit.text.split(),
                    log=self.log.appendPlainText, progress=self.progressBar.setValue,
                )
            finally:
                self.applyButton.enabled, self.cancelButton.enabled = True, False


class HyperSpaceSegmentationLogic(ScriptedLoadableModuleLogic):
    """Segments volume nodes with the engine in a background PythonSlicer process."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self._process = None

    def segment(self, volumeNode, spacing=("native",), model=None, log=print, progress=None):
        """Segment ``volumeNode`` and return a new segmentation node; waits for the process to finish."""
        import slicer.util

        if volumeNode is None:
            raise ValueError(_("Select an input volume."))
        folder = tempfile.mkdtemp(prefix="hyperspace-")
        try:
            inputPath = os.path.join(folder, "input.nrrd")
            outputPath = os.path.join(folder, "output.seg.nrrd")
            slicer.util.exportNode(volumeNode, inputPath)
            command = [shutil.which("PythonSlicer") or sys.executable, "-m", "HyperSpaceSegmentationLib.cli",
                       "segment", inputPath, "-o", outputPath, "--spacing", *spacing]
            if model:
                command += ["--model", model]
            self._process = slicer.util.launchConsoleProcess(command, useStartupEnvironment=False, cwd=MODULE_DIR)
            stages = 5
            for line in self._process.stdout:
                log(line.rstrip())
                if progress and line.startswith("[") and "/" in line:
                    done = int(line[1:line.index("/")])
                    progress(int(100 * (done - 1) / stages))
            if self._process.wait() != 0:
                raise RuntimeError(_("Segmentation process failed; see the log."))
            if progress:
                progress(100)
            segmentation = slicer.util.loadSegmentation(outputPath)
            segmentation.SetName(slicer.mrmlScene.GenerateUniqueName(volumeNode.GetName() + " segmentation"))
            segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
            return segmentation
        finally:
            self._process = None
            shutil.rmtree(folder, ignore_errors=True)

    def cancel(self):
        """Stop a running segmentation process (its temporary files are removed)."""
        if self._process is not None:
            self._process.kill()


class HyperSpaceSegmentationTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_engine_imports_and_describes_default_model()

    def test_engine_imports_and_describes_default_model(self):
        from HyperSpaceSegmentationLib.cli import DEFAULT_MODEL, describe
        from HyperSpaceSegmentationLib.io.model_file import load_model

        facts = describe(load_model(DEFAULT_MODEL), DEFAULT_MODEL)
        self.assertEqual(facts["labels"]["3"], "white matter")
        self.delayDisplay("Engine and default model OK")
