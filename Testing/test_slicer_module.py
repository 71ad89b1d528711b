"""The Slicer module without Slicer: the .ui is valid Qt Designer XML with known widget classes, every widget the
module code uses exists there, every parameter-node field is bound to a widget that can represent it, the module
imports nothing at start-up that Slicer lacks before Apply; and the live estimate of the Spacing panel on real MRML
nodes (slicer-core)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from conftest import asymmetric_phantom
from HyperSpaceSegmentationLib.errors import UserError
from test_mrml_logic import NAMES, model_file, scene, volume_node  # noqa: F401  (fixtures)

MODULE = Path(__file__).resolve().parents[1] / "HyperSpaceSegmentation"
SOURCE = (MODULE / "HyperSpaceSegmentation.py").read_text()
UI = ElementTree.parse(MODULE / "Resources" / "UI" / "HyperSpaceSegmentation.ui").getroot()
QT_WIDGETS = {"QWidget", "QLabel", "QPushButton", "QCheckBox", "QComboBox", "QDoubleSpinBox", "QSpinBox", "QSlider",
              "QLineEdit", "QPlainTextEdit", "QTextEdit", "QProgressBar", "QGroupBox", "QTableView", "QFrame"}
SLICER_WIDGETS = {"qMRMLWidget", "qMRMLNodeComboBox", "qMRMLTableView", "qMRMLSegmentSelectorWidget",
                  "ctkCollapsibleButton", "ctkSliderWidget", "ctkPathLineEdit", "ctkDirectoryButton"}
# the widget classes Slicer's parameterNodeWrapper connects to each field type (guiConnectors.py)
CONNECTABLE = {"bool": {"QCheckBox", "QPushButton"}, "float": {"QDoubleSpinBox", "ctkSliderWidget"},
               "int": {"QSpinBox", "QSlider"}, "str": {"QLineEdit", "QComboBox"}, "pathlib.Path": {"ctkPathLineEdit"},
               "enum": {"QComboBox"}, "node": {"qMRMLNodeComboBox"}}


def widgets() -> dict[str, ElementTree.Element]:
    return {w.get("name"): w for w in UI.iter("widget")}


def parameter_fields() -> dict[str, str]:
    """The annotated fields of the @parameterNodeWrapper class, as source text of their (unannotated) types."""
    tree = ast.parse(SOURCE)
    (wrapper,) = [node for node in tree.body if isinstance(node, ast.ClassDef)
                  and any(ast.unparse(d) == "parameterNodeWrapper" for d in node.decorator_list)]
    fields = {}
    for statement in wrapper.body:
        if isinstance(statement, ast.AnnAssign):
            annotation = statement.annotation
            if isinstance(annotation, ast.Subscript) and ast.unparse(annotation.value) == "Annotated":
                annotation = annotation.slice.elts[0]
            fields[statement.target.id] = ast.unparse(annotation)
    return fields


def enums() -> set[str]:
    return {node.name for node in ast.parse(SOURCE).body if isinstance(node, ast.ClassDef)
            and any(ast.unparse(b) == "enum.Enum" for b in node.bases)}


def test_ui_is_qt_designer_xml_with_known_widgets():
    assert UI.tag == "ui" and UI.get("version") == "4.0" and UI.findtext("class") == "HyperSpaceSegmentation"
    assert UI.find("widget").get("class") == "qMRMLWidget"
    classes = {w.get("class") for w in UI.iter("widget")}
    assert classes <= QT_WIDGETS | SLICER_WIDGETS, classes - QT_WIDGETS - SLICER_WIDGETS
    declared = {c.findtext("class") for c in UI.iter("customwidget")}
    assert classes & SLICER_WIDGETS <= declared  # every CTK/MRML widget is declared for Designer
    names = [w.get("name") for w in UI.iter("widget")]
    assert len(names) == len(set(names))
    sections = [w.findtext("property[@name='text']/string") for w in UI.iter("widget")
                if w.get("class") == "ctkCollapsibleButton"]
    assert sections == ["Inputs", "Spacing", "Output", "Review", "Advanced"]
    # every MRML widget gets the scene from the top-level widget
    receivers = {c.findtext("receiver") for c in UI.iter("connection") if c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    assert receivers == {n for n, w in widgets().items() if w.get("class") in ("qMRMLNodeComboBox", "qMRMLTableView")}


def test_every_widget_the_module_uses_is_in_the_ui():
    used = set(re.findall(r"self\.ui\.(\w+)", SOURCE))
    assert used and used <= set(widgets()), used - set(widgets())


def test_every_parameter_is_bound_to_a_widget_that_can_represent_it():
    fields = parameter_fields()
    bound = {w.findtext("property[@name='SlicerParameterName']/string"): w for w in UI.iter("widget")
             if w.find("property[@name='SlicerParameterName']") is not None}
    assert set(bound) == set(fields)
    for name, annotation in fields.items():
        widget = bound[name]
        kind = "node" if annotation.startswith("vtkMRML") else "enum" if annotation in enums() else annotation
        assert widget.get("class") in CONNECTABLE[kind], (name, annotation, widget.get("class"))
        if kind == "node":  # the combo box offers the field's node type
            assert [s.text for s in widget.iter("string") if s.text.startswith("vtkMRML")] == [annotation]
    # every field reaches the logic: segmentArguments or a review/output call reads it
    for name in fields:
        assert re.search(rf"parameters\.{name}\b|_parameterNode\.{name}\b", SOURCE), name


def test_module_follows_the_scripted_module_template():
    tree = ast.parse(SOURCE)
    bases = {node.name: [ast.unparse(b) for b in node.bases] for node in tree.body if isinstance(node, ast.ClassDef)}
    assert bases["HyperSpaceSegmentation"] == ["ScriptedLoadableModule"]
    assert bases["HyperSpaceSegmentationWidget"] == ["ScriptedLoadableModuleWidget", "VTKObservationMixin"]
    assert bases["HyperSpaceSegmentationLogic"] == ["ScriptedLoadableModuleLogic", "HyperSpaceMRMLLogic"]
    assert bases["HyperSpaceSegmentationTest"] == ["ScriptedLoadableModuleTest"]
    assert "from slicer.i18n import tr as _" in SOURCE and "README_URL" in SOURCE
    assert "tryWithErrorDisplay" in SOURCE and 'connect("timeout()", self.onPoll)' in SOURCE
    assert "wait=False" in SOURCE and ".wait(" not in SOURCE  # the GUI thread never blocks on the job
    assert "registerCustomSampleDataSource" in SOURCE and 'connect("startupCompleted()"' in SOURCE
    sample = re.search(r'SAMPLE_FILE = os\.path\.join\(MODULE_DIR, (.+)\)\n', SOURCE).group(1)
    assert (MODULE.joinpath(*ast.literal_eval(f"({sample})"))).is_file()


def test_module_imports_only_what_slicer_has_before_apply():
    """Top-level imports are Slicer's own or the logic, which imports without torch, psutil, tqdm or SimpleITK."""
    imported = set()
    for node in ast.parse(SOURCE).body:
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    assert imported <= {"enum", "importlib.util", "os", "pathlib", "sys", "typing", "qt", "vtk", "slicer",
                        "slicer.i18n", "slicer.parameterNodeWrapper", "slicer.ScriptedLoadableModule", "slicer.util",
                        "HyperSpaceSegmentationLib.errors", "HyperSpaceSegmentationLib.mrml_logic"}, imported
    script = ("import sys\nfor name in ('torch', 'psutil', 'tqdm', 'SimpleITK', 'slicer', 'vtk'): sys.modules[name] = None\n"
              f"sys.path.insert(0, {str(MODULE)!r})\nimport HyperSpaceSegmentationLib.mrml_logic")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_estimate_follows_the_spacing_without_a_network_run(scene, model_file):
    from HyperSpaceSegmentationLib.mrml_logic import HyperSpaceMRMLLogic

    logic = HyperSpaceMRMLLogic()
    image, _ = asymmetric_phantom(size=(40, 36, 30), spacing=(1.0, 1.2, 2.0))
    volume = volume_node(image)
    native = logic.estimate(volume, "native", model_file, "cpu")
    assert native.native == pytest.approx((1.0, 1.2, 2.0)) and native.grid == (40, 36, 30)
    coarse = logic.estimate(volume, 3.0, model_file, "cpu")
    assert coarse.spacing == pytest.approx((3.0, 3.0, 3.0)) and coarse.grid == (13, 14, 20)
    assert 0 < coarse.memory_mb < native.memory_mb and coarse.available_mb > 0
    told = logic.estimate(volume, "native", model_file, "cpu", input_spacing=(2.0, 1.2, 1.0))
    assert told.native == pytest.approx((2.0, 1.2, 1.0)) and told.grid == (40, 36, 30)
    assert logic.estimate(volume, 3.0, model_file, "cpu", input_spacing=(2.0, 1.2, 1.0)).grid == (27, 14, 10)
    budget = logic.estimate(volume, "auto", model_file, "cpu", max_voxels=5000)
    assert budget.voxels <= 5000 or budget.notes
    low, high = logic.model_facts(model_file)["spacing_range_mm"]
    outside = logic.estimate(volume, high * 2, model_file, "cpu")
    assert outside.spacing == pytest.approx((high,) * 3) and "outside the trained range" in outside.notes[0]
    assert logic.model_facts(model_file)["labels"] == {str(k): v for k, v in NAMES.items()}
    with pytest.raises(UserError, match="applies to spacing"):
        logic.estimate(volume, 3.0, model_file, "cpu", max_voxels=5000)
    with pytest.raises(UserError, match="does not exist"):
        logic.estimate(volume, "native", "missing.pt")
