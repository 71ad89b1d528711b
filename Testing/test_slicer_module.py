"""The Slicer module without Slicer: the .ui is valid Qt Designer XML with known widget classes, every widget the
module code uses exists there, every parameter-node field is bound to a widget that can represent it, the module
imports nothing at start-up that Slicer lacks before Apply; the live estimate of the Spacing panel on real MRML
nodes (slicer-core); and, with stand-ins for what only Slicer's application has, the segmentation modes' arguments,
the panel following the chosen view's slice, and Apply on that slice."""

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
PANEL = sorted((MODULE / "HyperSpaceSegmentationPanel").glob("*.py"))  # the module file's own package
SOURCE = "\n".join(path.read_text(encoding="utf-8") for path in [MODULE / "HyperSpaceSegmentation.py", *PANEL])
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
    assert imported <= {"enum", "importlib.util", "math", "os", "pathlib", "sys", "typing", "qt", "vtk", "slicer",
                        "slicer.i18n", "slicer.parameterNodeWrapper", "slicer.ScriptedLoadableModule", "slicer.util",
                        "HyperSpaceSegmentationLib.errors", "HyperSpaceSegmentationLib.mrml_logic",
                        *(f"HyperSpaceSegmentationPanel.{path.stem}" for path in PANEL)}, imported
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


@pytest.fixture
def module(monkeypatch):
    """The module file imported with stand-ins for what only Slicer's application has (qt, slicer.i18n, the parameter
    node wrapper, the scripted-module base classes, slicer.app's layout): its functions and the widget's methods that
    need no Qt run on real MRML nodes. The layout shows the Red and Yellow views (``module.sliceNodes``)."""
    pytest.importorskip("slicer", reason="needs the slicer-core wheel")
    import contextlib
    import importlib.util
    import types

    import slicer
    import slicer.util

    stubs = {
        "qt": types.ModuleType("qt"),
        "slicer.i18n": types.SimpleNamespace(tr=lambda text: text,
                                             translate=lambda context, text: f"{context}:{text}"),
        "slicer.parameterNodeWrapper": types.SimpleNamespace(Choice=lambda choices: choices,
                                                             WithinRange=lambda low, high: (low, high),
                                                             parameterNodeWrapper=lambda cls: cls),
        "slicer.ScriptedLoadableModule": types.SimpleNamespace(**{name: type(name, (), {}) for name in (
            "ScriptedLoadableModule", "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleTest",
            "ScriptedLoadableModuleWidget")}),
    }
    for name, stub in stubs.items():
        monkeypatch.setitem(sys.modules, name, stub)
    monkeypatch.setattr(slicer.util, "tryWithErrorDisplay", lambda *args, **kwargs: contextlib.nullcontext())
    sliceNodes = {}
    layout = types.SimpleNamespace(sliceWidget=lambda name: types.SimpleNamespace(
        mrmlSliceNode=lambda: sliceNodes[name]) if name in sliceNodes else None)
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(layoutManager=lambda: layout), raising=False)
    spec = importlib.util.spec_from_file_location("HyperSpaceSegmentationModule", MODULE / "HyperSpaceSegmentation.py")
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    loaded.sliceNodes = sliceNodes
    return loaded


def settings(module, **fields):
    """The module's settings with their defaults (the wrapper is a plain class here), some of them changed."""
    parameters = module.HyperSpaceSegmentationParameterNode()
    parameters.useEmbeddedModel = True
    for name in module.HyperSpaceSegmentationParameterNode.__annotations__:
        if not hasattr(parameters, name):  # a node: None until one is chosen, as the wrapper's nodes are
            setattr(parameters, name, None)
    for name, value in fields.items():
        setattr(parameters, name, value)
    return parameters


def test_segmentation_modes_map_to_the_logic_arguments(module):
    Mode = module.SegmentationMode
    labels = [mode.label() for mode in Mode]
    assert len(set(labels)) == len(Mode) and labels[0] == "3D"
    assert [w.get("class") for w in UI.iter("widget") if w.get("name") in ("segmentationModeComboBox",
                                                                           "sliceAxisComboBox")] == ["QComboBox"] * 2
    expected = {Mode.VOLUME: ("3d", None), Mode.SLICE_BY_SLICE: ("2d", None), Mode.RED_VIEW: ("2d", "Red"),
                Mode.YELLOW_VIEW: ("2d", "Yellow"), Mode.GREEN_VIEW: ("2d", "Green")}
    for mode, (engine_mode, view) in expected.items():
        for axis, index in (("I", 0), ("J", 1), ("K", 2)):
            arguments = module.segmentArguments(settings(module, segmentationMode=mode, sliceAxis=axis))
            assert (arguments["mode"], arguments["axis"], arguments["slice_index"]) == (engine_mode, index, None)
            assert arguments["model"] is None  # the embedded model of the mode: the logic passes no --model
        assert mode.viewName() == view
        perAxis = module.segmentArguments(settings(module, segmentationMode=mode, spacingX=1.1, spacingY=1.2,
                                                   spacingZ=1.3, spacingMode=module.SpacingMode.PER_AXIS))
        assert perAxis["spacing"] == ((1.1, 1.2) if engine_mode == "2d" else (1.1, 1.2, 1.3))  # 2D: the slice plane
    assert module.HyperSpaceSegmentationParameterNode.segmentationMode == Mode.VOLUME  # 3D unless chosen
    plain = module.segmentArguments(settings(module))
    assert (plain["tta"], plain["uncertainty"]) == (None, False)  # review outputs only when asked
    review = module.segmentArguments(settings(module, testTimeAugmentation=True, computeUncertainty=True))
    assert (review["tta"], review["uncertainty"]) == (True, True)


def test_model_description_shows_dimensions_and_ife(module):
    from HyperSpaceSegmentationPanel.texts import modelDescription

    assert modelDescription({"labels": {}}) == ""  # an engine without these keys
    assert modelDescription({"dimensions": 3}) == "3D model."
    assert modelDescription({"dimensions": 2, "ife": "none", "ife_ratios": []}) == "2D model, without IFE."
    assert modelDescription({"dimensions": 2, "ife": "curvature", "ife_ratios": [0.75, 0.5]}) == \
        "2D model with IFE (curvature; ratios 0.75, 0.5)."


def view_widget(module, volume, mode):
    """The module's widget, less its Qt parts, on ``volume`` in ``mode``, with a stand-in for its labels."""
    import types

    from slicer.util import VTKObservationMixin

    widget = object.__new__(module.HyperSpaceSegmentationWidget)
    VTKObservationMixin.__init__(widget)
    widget.logic = module.HyperSpaceMRMLLogic()
    widget._followedSliceNode = None
    widget._viewAxis = None
    widget.estimates = []
    widget._showModelAndEstimate = widget.estimates.append
    widget._parameterNode = settings(module, inputVolume=volume, segmentationMode=mode)
    widget.ui = types.SimpleNamespace(viewSliceLabel=types.SimpleNamespace(text=""))
    return widget


def test_the_panel_follows_the_slice_of_the_chosen_view(module, scene):
    import numpy as np

    image, _ = asymmetric_phantom(size=(20, 18, 14), spacing=(1.5, 1.0, 2.5), origin=(10.0, -20.0, 5.0))
    volume = volume_node(image)
    red = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    red.SetLayoutName("Red")
    red.SetSliceToRASByNTP(0, 0, 1, 1, 0, 0, 0, 0, 5.0 + 6 * 2.5, 0)  # axial, on slice K = 6
    yellow = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    yellow.SetLayoutName("Yellow")
    yellow.SetSliceToRASByNTP(np.sin(0.2), 0, np.cos(0.2), 1, 0, 0, 0, 0, 20.0, 0)  # tilted
    module.sliceNodes.update(Red=red, Yellow=yellow)

    widget = view_widget(module, volume, module.SegmentationMode.RED_VIEW)
    widget._followView("Red")
    assert widget.ui.viewSliceLabel.text == "Slice 6 of 0-13 across the volume's K axis."
    red.SetSliceOffset(5.0 + 9 * 2.5)  # the view moves: the panel follows
    assert widget.ui.viewSliceLabel.text == "Slice 9 of 0-13 across the volume's K axis."
    assert widget.viewSlice("Red") == (2, 9) and widget.estimates == []  # same axis: the estimate stands
    red.SetSliceToRASByNTP(1, 0, 0, 0, 1, 0, -(10.0 + 4 * 1.5), 0, 0, 0)  # turned sagittal, on slice I = 4
    assert widget.ui.viewSliceLabel.text == "Slice 4 of 0-19 across the volume's I axis."
    assert len(widget.estimates) == 1  # another axis: the estimate follows
    red.SetSliceToRASByNTP(0, 0, 1, 1, 0, 0, 0, 0, 5.0 + 9 * 2.5, 0)  # back to axial
    assert len(widget.estimates) == 2 and widget.viewSlice("Red") == (2, 9)
    widget._parameterNode.segmentationMode = module.SegmentationMode.YELLOW_VIEW
    widget._followView("Yellow")
    assert "Rotate to volume plane" in widget.ui.viewSliceLabel.text
    red.SetSliceOffset(5.0 + 3 * 2.5)  # no longer followed
    assert "Rotate to volume plane" in widget.ui.viewSliceLabel.text
    with pytest.raises(UserError, match="Green view is not in the layout"):
        widget.viewSlice("Green")
    widget._parameterNode.segmentationMode = module.SegmentationMode.VOLUME
    widget._followView(None)
    assert widget._followedSliceNode is None and widget.ui.viewSliceLabel.text == ""


def test_apply_segments_the_slice_the_view_shows(module, scene, monkeypatch):
    import types

    image, _ = asymmetric_phantom(size=(20, 18, 14), spacing=(1.5, 1.0, 2.5), origin=(10.0, -20.0, 5.0))
    volume = volume_node(image)
    green = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    green.SetLayoutName("Green")
    green.SetSliceToRASByNTP(0, 1, 0, 1, 0, 0, 0, -(-20.0 + 4 * 1.0), 0, 0)  # coronal, on slice J = 4 (RAS y = -LPS y)
    module.sliceNodes["Green"] = green
    calls = []
    widget = view_widget(module, volume, module.SegmentationMode.GREEN_VIEW)
    widget.logic.segment = lambda volumeNode, **arguments: calls.append((volumeNode, arguments))
    widget.ui = types.SimpleNamespace(logTextEdit=types.SimpleNamespace(clear=lambda: None),
                                      progressBar=types.SimpleNamespace(value=0))
    widget._timer = types.SimpleNamespace(start=lambda: None)
    widget.updateGUI = lambda: None
    widget.resourcePath = lambda path: path
    monkeypatch.setattr(module, "ensureDependencies", lambda requirements: None)

    widget.onApply()
    ((node, arguments),) = calls
    assert node is volume and arguments["wait"] is False
    assert (arguments["mode"], arguments["axis"], arguments["slice_index"]) == ("2d", 1, 4)
    widget._parameterNode.segmentationMode = module.SegmentationMode.SLICE_BY_SLICE
    widget._parameterNode.sliceAxis = "I"
    widget.onApply()
    assert (calls[1][1]["mode"], calls[1][1]["axis"], calls[1][1]["slice_index"]) == ("2d", 0, None)


def test_postprocessing_and_model_files_map_to_the_logic_arguments(module):
    from HyperSpaceSegmentationLib.mrml_logic import postprocessing_words
    from HyperSpaceSegmentationPanel.settings import classList

    assert classList("") is True and classList(" , ") is True  # every class
    assert classList("3, white matter ,7") == [3, "white matter", 7]
    assert module.modelFileList(" a.pt;b b.pt ; ") == ["a.pt", "b b.pt"]
    plain = module.segmentArguments(settings(module))
    assert plain["postprocessing"] is None and plain["model"] is None
    chosen = module.segmentArguments(settings(
        module, useEmbeddedModel=False, modelFiles="a.pt; b.pt", removeSmallObjects=True, smallObjectMm3=50.0,
        smallObjectClasses="3", keepLargestComponent=True, fillHoles=True, fillHolesClasses="ball"))
    assert chosen["model"] == ["a.pt", "b.pt"]  # an ensemble
    assert chosen["postprocessing"] == {"remove_smaller_than": (50.0, [3]), "largest_component": True,
                                        "fill_holes": ["ball"]}
    assert postprocessing_words(chosen["postprocessing"], NAMES) == [  # what the logic passes to the engine
        "--remove-smaller-than", "50.0", "3", "--largest-component", "--fill-holes", "7"]
    unchecked = module.segmentArguments(settings(module, smallObjectClasses="3", fillHolesClasses="ball"))
    assert unchecked["postprocessing"] is None  # class lists alone do nothing


def test_review_panel_walks_disagreement_and_uncertainty_side_by_side():
    review = next(w for w in UI.iter("widget") if w.get("name") == "reviewCollapsibleButton")
    items = {w.get("name"): int(item.get("row")) for item in review.find("layout").findall("item")
             for w in item.findall("widget")}
    assert items["uncertainWidget"] == items["disagreementWidget"] + 1
    texts = {w.get("name"): w.findtext("property[@name='text']/string") for w in review.iter("widget")}
    assert (texts["largestDisagreementButton"], texts["mostUncertainButton"]) == (
        "Go to largest disagreement", "Go to most uncertain region")
    slider = widgets()["uncertaintyThresholdSlider"]
    assert slider.get("class") == "ctkSliderWidget" and slider in set(review.iter("widget"))
    assert [float(slider.findtext(f"property[@name='{p}']/double")) for p in ("minimum", "maximum")] == [0.0, 1.0]
    output = next(w for w in UI.iter("widget") if w.get("name") == "outputCollapsibleButton")
    bound = {w.findtext("property[@name='SlicerParameterName']/string") for w in output.iter("widget")}
    assert {"removeSmallObjects", "smallObjectMm3", "smallObjectClasses", "keepLargestComponent",
            "largestComponentClasses", "fillHoles", "fillHolesClasses"} <= bound


def test_the_threshold_slider_shows_the_output_s_uncertainty_above_it(module, scene):
    import types

    import numpy as np
    import slicer.util

    uncertainty = slicer.util.addVolumeFromArray(np.linspace(0, 1, 24, dtype=np.float32).reshape(2, 3, 4))
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segmentation.SetNodeReferenceID(module.UNCERTAINTY_REFERENCE_ROLE, uncertainty.GetID())
    widget = object.__new__(module.HyperSpaceSegmentationWidget)
    widget.logic = module.HyperSpaceMRMLLogic()
    widget.ui = types.SimpleNamespace(uncertaintyThresholdSlider=types.SimpleNamespace(enabled=None))
    widget._parameterNode = settings(module, outputSegmentation=segmentation, uncertaintyThreshold=0.35)
    widget.showUncertainty()
    display = uncertainty.GetDisplayNode()
    assert display.GetApplyThreshold() == 1 and (display.GetLowerThreshold(), display.GetUpperThreshold()) == (0.35, 1)
    assert widget.ui.uncertaintyThresholdSlider.enabled is True
    widget._parameterNode.outputSegmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")  # no map
    widget.showUncertainty()
    assert widget.ui.uncertaintyThresholdSlider.enabled is False


def test_model_facts_and_estimate_show_an_ensemble(module, scene, model_file, tmp_path):
    import types

    from conftest import tiny_model
    from HyperSpaceSegmentationLib.io.model_file import save_model

    second = tiny_model(seed=1)
    second.labels = NAMES
    second_file = save_model(second, tmp_path / "second.pt")
    widget = object.__new__(module.HyperSpaceSegmentationWidget)
    widget.logic = module.HyperSpaceMRMLLogic()
    widget.ui = types.SimpleNamespace(**{name: types.SimpleNamespace(text="") for name in (
        "modelInfoLabel", "nativeSpacingLabel", "estimateLabel", "spacingWarningLabel")})
    refreshes = []
    widget._estimateTimer = types.SimpleNamespace(start=lambda: refreshes.append(1))
    volume = volume_node(asymmetric_phantom(size=(20, 18, 14))[0])
    shown = {}
    for files in ([model_file], [model_file, second_file], []):
        parameters = settings(module, inputVolume=volume, useEmbeddedModel=False,
                              modelFiles="; ".join(map(str, files)), spacingMode=module.SpacingMode.ISOTROPIC)
        widget._showModelAndEstimate(parameters)
        shown[len(files)] = {name: label.text for name, label in vars(widget.ui).items()}
    assert shown[1]["modelInfoLabel"].startswith("Labels: 3 box, 7 ball.") and "nsemble" not in str(shown[1])
    assert shown[2]["modelInfoLabel"].startswith(shown[1]["modelInfoLabel"])  # the first model's facts
    assert "Ensemble of 2 models" in shown[2]["modelInfoLabel"]
    assert shown[2]["estimateLabel"].split(" (")[0] == shown[1]["estimateLabel"].split(" (")[0]  # memory free varies
    assert shown[2]["estimateLabel"].endswith("about 2 times as long.") and shown[1]["estimateLabel"].startswith(
        "Working grid 7 x 6 x 5 at 3 x 3 x 3 mm")
    assert "Add a model file" in shown[0]["spacingWarningLabel"] and shown[0]["modelInfoLabel"] == ""
    # device auto: the GPU's free memory is asked for in a separate process; until it is known the panel says so
    # and refreshes itself (the stand-in's answer comes in well after these calls: it imports torch)
    assert shown[1]["estimateLabel"].endswith("(? MB free).") and refreshes
    assert "being checked" in shown[1]["spacingWarningLabel"]


def test_restrict_to_segment_maps_to_the_logic_arguments(module):
    assert module.segmentArguments(settings(module))["restrict_to"] is None  # no mask unless chosen
    brain = object()  # a segmentation node
    arguments = module.segmentArguments(settings(module, maskSegmentation=brain, maskSegmentName="brain"))
    assert arguments["restrict_to"] == (brain, "brain")
    assert module.segmentArguments(settings(module, maskSegmentation=brain))["restrict_to"] == (brain, "")


def test_estimate_plans_for_the_jobs_device_without_cuda_in_slicers_process(scene, model_file, monkeypatch):
    """The free memory and the windows are those of the device the job runs on; the GPU is asked about in a separate
    process (never CUDA in this one), without blocking: NaN and a note until the answer is in."""
    import math

    import torch

    from HyperSpaceSegmentationLib.mrml_logic import process as mrml_process
    from HyperSpaceSegmentationLib.mrml_logic import HyperSpaceMRMLLogic

    def no_cuda_here(*args, **kwargs):
        raise AssertionError("CUDA was touched in Slicer's process")

    monkeypatch.setattr(torch.cuda, "is_available", no_cuda_here)
    monkeypatch.setattr(torch.cuda, "mem_get_info", no_cuda_here)
    logic = HyperSpaceMRMLLogic()
    logic.pythonExecutable = sys.executable
    volume = volume_node(asymmetric_phantom(size=(40, 36, 30))[0])
    on_cpu = logic.estimate(volume, "native", model_file, "cpu")
    assert on_cpu.available_mb > 100 and not on_cpu.notes
    pending = logic.estimate(volume, "native", model_file, "auto")  # the probe has just started
    assert math.isnan(pending.available_mb) and "being checked" in pending.notes[0]
    assert logic._gpu.wait(120) == {"cuda": False, "free_mb": None}  # this machine, as the engine sees it
    auto = logic.estimate(volume, "native", model_file, "auto")  # no GPU: the job runs on the CPU
    assert auto.available_mb > 100 and not auto.notes and auto.memory_mb == on_cpu.memory_mb
    with pytest.raises(UserError, match="no CUDA GPU is available"):
        logic.estimate(volume, "native", model_file, "cuda")

    monkeypatch.setattr(mrml_process, "GPU_PROBE", "print('{\"cuda\": true, \"free_mb\": 10.0}')")  # a nearly full GPU
    gpu = HyperSpaceMRMLLogic()
    gpu.pythonExecutable = sys.executable
    gpu.estimate(volume, "native", model_file, "cuda")
    gpu._gpu.wait(120)
    small = gpu.estimate(volume, "native", model_file, "cuda")
    assert small.available_mb == 10.0 and small.memory_mb <= 0.8 * 10.0 < on_cpu.memory_mb  # smaller windows
    assert small.grid == on_cpu.grid and not small.notes


def job_widget(module, parameterNode=None):
    """The module's widget, less its Qt parts, as the poll timer finds it: stand-ins for the log box, progress bar and
    timer; the logic's parameter node (the one saved with the scene) is ``widget.saved``."""
    import types

    from slicer.util import VTKObservationMixin

    widget = object.__new__(module.HyperSpaceSegmentationWidget)
    VTKObservationMixin.__init__(widget)
    widget.saved = settings(module)
    widget.logic = module.HyperSpaceMRMLLogic()
    widget.logic.getParameterNode = lambda: widget.saved
    widget._parameterNode = parameterNode
    widget._shownLogLines = 0
    widget._followedSliceNode = None
    widget.lines = []
    widget.timer = types.SimpleNamespace(running=True)
    widget._timer = types.SimpleNamespace(stop=lambda: setattr(widget.timer, "running", False))
    widget.ui = types.SimpleNamespace(logTextEdit=types.SimpleNamespace(appendPlainText=widget.lines.append),
                                      progressBar=types.SimpleNamespace(value=0))
    return widget


def test_a_job_that_ends_after_the_user_left_the_module_selects_its_result(module, scene, monkeypatch):
    """exit() drops the panel's parameter node; the job goes on, and its end is not lost: the result is selected in
    the module's parameter node (shown when the user comes back) and the uncertainty is shown over the scan."""
    import types

    import slicer.util

    result = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "scan segmentation")
    uncertainty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "scan uncertainty")
    shown = []
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", lambda **layers: shown.append(layers))
    widget = job_widget(module, parameterNode=None)  # the user is in another module
    widget._job = types.SimpleNamespace(poll=lambda: "done", log=["[5/5] write"], progress=1.0, result=result,
                                        uncertainty=uncertainty, error=None)
    widget.onPoll()
    assert widget.saved.outputSegmentation is result and widget._job is None and not widget.timer.running
    assert shown == [{"foreground": uncertainty, "foregroundOpacity": 0.5}]
    assert widget.lines == ["[5/5] write", "Done: scan segmentation"] and widget.ui.progressBar.value == 100
    widget.onPoll()  # a last timer tick after the end changes nothing
    assert widget.lines[-1] == "Done: scan segmentation"


def test_closing_the_scene_cancels_the_panels_job(module, scene, tmp_path):
    from test_mrml_job import start

    widget = job_widget(module, parameterNode=settings(module))
    widget._parameterNode = None  # setParameterNode(None) needs no GUI binding to undo
    job, folder = start(["-c", "import time; time.sleep(120)"], tmp_path, volume_node(asymmetric_phantom(
        size=(12, 10, 8))[0]))
    widget._job = job
    widget.onSceneStartClose(None, None)
    assert job.status == "cancelled" and job.process.poll() is not None and not folder.exists()
    assert widget._job is None and not widget.timer.running
    assert widget.lines[-1] == "Cancelled: nothing was added to the scene."


def test_a_missing_engine_package_is_one_message_without_traceback(module, scene, model_file, capsys):
    import types

    def engine_without_tqdm(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'tqdm'", name="tqdm")  # torch is there, tqdm is not

    widget = object.__new__(module.HyperSpaceSegmentationWidget)
    widget.logic = module.HyperSpaceMRMLLogic()
    widget.logic.model_facts = engine_without_tqdm
    widget.ui = types.SimpleNamespace(**{name: types.SimpleNamespace(text="") for name in (
        "modelInfoLabel", "nativeSpacingLabel", "estimateLabel", "spacingWarningLabel")})
    parameters = settings(module, inputVolume=volume_node(asymmetric_phantom(size=(12, 10, 8))[0]))
    for change in range(3):  # every parameter change
        widget._showModelAndEstimate(parameters)
    assert widget.ui.modelInfoLabel.text == ("The Python package tqdm is missing: click Apply to install it. Model "
                                             "details and estimates appear then.")
    assert widget.ui.estimateLabel.text == widget.ui.spacingWarningLabel.text == ""
    assert capsys.readouterr() == ("", "")


def test_reload_takes_the_engine_package_afresh_and_the_category_is_slicers(module, monkeypatch):
    import types

    reloaded = []
    monkeypatch.setattr(module.ScriptedLoadableModuleWidget, "onReload", lambda self: reloaded.append(
        sorted(name for name in sys.modules if name.startswith("HyperSpaceSegmentationLib"))), raising=False)
    saved = {name: mod for name, mod in sys.modules.items() if name.split(".")[0] == "HyperSpaceSegmentationLib"}
    assert "HyperSpaceSegmentationLib.mrml_logic" in saved
    try:
        object.__new__(module.HyperSpaceSegmentationWidget).onReload()
    finally:
        sys.modules.update(saved)
    assert reloaded == [[]]  # the module file is re-read with no engine module left to reuse

    monkeypatch.setattr(module.ScriptedLoadableModule, "__init__", lambda self, parent: setattr(self, "parent", parent),
                        raising=False)
    monkeypatch.setattr(module.slicer.app, "connect", lambda *args: None, raising=False)
    parent = types.SimpleNamespace()
    module.HyperSpaceSegmentation(parent)
    assert parent.categories == ["qSlicerAbstractCoreModule:Segmentation"]  # translated as Slicer's own category
    assert parent.title == "HyperSpace Segmentation"
