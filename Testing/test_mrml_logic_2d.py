"""The 2D mode of the Slicer layer on real MRML nodes (slicer-core, headless): ``slice_in_view`` finds the volume
axis and slice that a slice view shows (oblique, anisotropic, permuted and flipped grids, under linear parent
transforms; misaligned and outside views refused), ``segment`` passes the 2D options, and end to end a view's slice
is segmented alone by a 2D model. Expected slices are computed here from the SimpleITK image's own geometry."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import OBLIQUE, asymmetric_phantom, tiny_model
from HyperSpaceSegmentationLib.errors import UserError
from HyperSpaceSegmentationLib.io.model_file import save_model
from test_mrml_logic import labels_on_volume_grid, logic, scene, volume_node  # noqa: F401  (fixtures)

SIZE, SPACING, ORIGIN = (22, 20, 14), (1.3, 0.9, 2.2), (12.5, -30.0, 7.25)
PERMUTED_FLIPPED = np.array([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # I, J, K: -y, -z, -x
TRANSFORM = np.array([[0.8, -0.6, 0.0, 40.0], [0.6, 0.8, 0.0, -5.0], [0.0, 0.0, 1.0, 12.0], [0, 0, 0, 1]])
SHEAR_SCALE = np.array([[1.2, 0.3, 0.0, -7.0], [0.0, 0.9, 0.0, 3.0], [0.1, 0.0, 1.1, 0.5], [0, 0, 0, 1]])
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def oblique_image(direction: np.ndarray | None = None) -> sitk.Image:
    """A phantom on an oblique, anisotropic grid with a non-zero origin (``direction``: 3x3, default OBLIQUE)."""
    direction = np.array(OBLIQUE).reshape(3, 3) if direction is None else direction
    image, _ = asymmetric_phantom(size=SIZE, spacing=SPACING, origin=ORIGIN, direction=tuple(direction.ravel()))
    return image


def world_point(image: sitk.Image, ijk, to_world: np.ndarray) -> np.ndarray:
    """The world (RAS) position of continuous voxel index ``ijk``, from SimpleITK's geometry (LPS)."""
    lps = image.TransformContinuousIndexToPhysicalPoint([float(v) for v in ijk])
    return (to_world @ LPS_TO_RAS @ np.append(lps, 1.0))[:3]


def plane_normal(image: sitk.Image, axis: int, to_world: np.ndarray) -> np.ndarray:
    """The world normal of the planes of constant index ``axis``: across the two other axes' world directions."""
    steps = [world_point(image, np.eye(3)[a], to_world) - world_point(image, (0, 0, 0), to_world) for a in range(3)]
    others = [steps[a] for a in range(3) if a != axis]
    normal = np.cross(*others)
    return normal / np.linalg.norm(normal)


def perpendicular(normal: np.ndarray) -> np.ndarray:
    helper = np.eye(3)[int(np.argmin(np.abs(normal)))]
    transverse = np.cross(normal, helper)
    return transverse / np.linalg.norm(transverse)


def tilted(normal: np.ndarray, angle: float) -> np.ndarray:
    """``normal`` turned by ``angle`` (rad) about a perpendicular axis."""
    return np.cos(angle) * normal + np.sin(angle) * perpendicular(normal)


def red_view(scene, normal: np.ndarray, point: np.ndarray):
    """A slice node (layout name Red) whose plane has ``normal`` and passes through ``point`` (RAS)."""
    node = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    node.SetLayoutName("Red")
    node.SetSliceToRASByNTP(*normal, *perpendicular(normal), *point, 0)
    return node


def place(volume, transforms: list[np.ndarray]) -> np.ndarray:
    """Put ``volume`` under a chain of linear transform nodes (innermost first); returns their product, to world."""
    import slicer.util

    child = volume
    for matrix in transforms:
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
        node.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(matrix))
        child.SetAndObserveTransformNodeID(node.GetID())
        child = node
    return functools.reduce(np.matmul, reversed(transforms), np.eye(4))


GRIDS = {
    "oblique": (None, []),
    "permuted and flipped": (np.array(OBLIQUE).reshape(3, 3) @ PERMUTED_FLIPPED, []),
    "under linear transforms": (None, [SHEAR_SCALE, TRANSFORM]),
}


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("axis, index", [(2, 5), (1, 13), (0, 3), (2, 0), (0, 21)])
def test_slice_in_view_finds_the_axis_and_slice_of_a_view(scene, logic, grid, axis, index):
    direction, transforms = GRIDS[grid]
    image = oblique_image(direction)
    volume = volume_node(image)
    to_world = place(volume, transforms)
    normal = plane_normal(image, axis, to_world)
    elsewhere = np.array([-4.0, 30.0, 9.0])  # a point of the plane far from the volume's centre, in-plane
    elsewhere[axis] = index
    for sign in (1, -1):  # the view may look from either side
        view = red_view(scene, sign * normal, world_point(image, elsewhere, to_world))
        assert logic.slice_in_view(volume, view) == (axis, index)
    # placed by its offset along the normal, from a view through the volume's centre
    centre = world_point(image, (np.array(SIZE) - 1) / 2, to_world)
    view = red_view(scene, normal, centre)
    ijk = np.array((np.array(SIZE) - 1) / 2)
    ijk[axis] = index
    view.SetSliceOffset(float(normal @ world_point(image, ijk, to_world)))
    assert logic.slice_in_view(volume, view) == (axis, index)


def test_slice_in_view_rounds_to_the_nearest_slice_within_the_volume(scene, logic):
    image = oblique_image()
    volume = volume_node(image)
    normal = plane_normal(image, 2, np.eye(4))
    last = SIZE[2] - 1
    for position, expected in ((4.4, 4), (4.6, 5), (-0.45, 0), (last + 0.45, last)):
        view = red_view(scene, normal, world_point(image, (10, 10, position), np.eye(4)))
        assert logic.slice_in_view(volume, view) == (2, expected)
    for position in (-0.55, last + 0.55, 40.0):
        view = red_view(scene, normal, world_point(image, (10, 10, position), np.eye(4)))
        with pytest.raises(UserError, match=r"lies outside scan .*move it into the volume") as error:
            logic.slice_in_view(volume, view)
        assert "\n" not in str(error.value)


def test_slice_in_view_refuses_a_misaligned_view_in_one_line(scene, logic):
    image = oblique_image()
    volume = volume_node(image)
    normal = plane_normal(image, 1, np.eye(4))
    point = world_point(image, (10, 7, 6), np.eye(4))
    assert logic.slice_in_view(volume, red_view(scene, tilted(normal, 5e-4), point)) == (1, 7)  # within tolerance
    for angle in (2e-3, 0.3):
        with pytest.raises(UserError, match=r"^the Red view is turned .* degrees off the slices of scan: align it "
                                            r"with the view's \"Rotate to volume plane\" action$") as error:
            logic.slice_in_view(volume, red_view(scene, tilted(normal, angle), point))
        assert "\n" not in str(error.value)
    axial = red_view(scene, np.array([0.0, 0.0, 1.0]), point)  # Slicer's default Red view on an oblique scan
    with pytest.raises(UserError, match="Rotate to volume plane"):
        logic.slice_in_view(volume, axial)


def test_slice_in_view_takes_the_slice_where_a_slightly_turned_view_crosses_the_volume(scene, logic):
    """A view within the tolerance but centred 2 m away: there its plane is almost a slice off (2000 mm x 9e-4 rad
    = 1.8 mm, 0.8 of a 2.2 mm slice); the slice it shows is where it crosses the volume."""
    image = oblique_image()
    volume = volume_node(image)
    normal = tilted(plane_normal(image, 2, np.eye(4)), 9e-4)
    crossing = world_point(image, (10.5, 9.5, 6.0), np.eye(4))
    far = crossing + 2000.0 * perpendicular(normal)
    assert abs(normal @ (far - crossing)) < 1e-9  # the far centre lies on the view's plane
    assert logic.slice_in_view(volume, red_view(scene, normal, far)) == (2, 6)


def test_slice_in_view_refuses_a_non_linear_transform_and_bad_nodes(scene, logic):
    import vtk

    image = oblique_image()
    volume = volume_node(image)
    view = red_view(scene, plane_normal(image, 2, np.eye(4)), world_point(image, (1, 1, 3), np.eye(4)))
    with pytest.raises(UserError, match="select a scalar volume"):
        logic.slice_in_view(None, view)
    with pytest.raises(UserError, match="select a slice view"):
        logic.slice_in_view(volume, volume)
    warp = scene.AddNewNodeByClass("vtkMRMLTransformNode", "warp")
    spline, source, target = vtk.vtkThinPlateSplineTransform(), vtk.vtkPoints(), vtk.vtkPoints()
    for point in ((0, 0, 0), (50, 0, 0), (0, 50, 0), (0, 0, 50)):
        source.InsertNextPoint(point)
        target.InsertNextPoint(point[0] + 2, point[1], point[2])
    spline.SetSourceLandmarks(source)
    spline.SetTargetLandmarks(target)
    spline.SetBasisToR()
    warp.SetAndObserveTransformToParent(spline)
    volume.SetAndObserveTransformNodeID(warp.GetID())
    with pytest.raises(UserError, match=r"^scan is under a non-linear transform \(warp\)"):
        logic.slice_in_view(volume, view)


def test_segment_checks_the_2d_options_before_any_work(scene, logic, tmp_path):
    volume = volume_node(oblique_image())
    logic.pythonExecutable = str(tmp_path / "no-such-python")  # reaching the process start would say "cannot start"
    for options, message in (({"mode": "2.5d"}, "mode '2.5d'"), ({"slice_index": 3}, "applies to mode"),
                             ({"mode": "2d", "axis": 3}, "axis 3"), ({"mode": "2d", "axis": 1.0}, "axis 1.0"),
                             ({"mode": "2d", "axis": 2, "slice_index": 14}, "from 0 to 13 along K"),
                             ({"mode": "2d", "axis": 0, "slice_index": -1}, "from 0 to 21 along I")):
        with pytest.raises(UserError, match=message):
            logic.segment(volume, **options)
    for options in ({"mode": "2d", "axis": 0, "slice_index": 21}, {"mode": "2d"}, {}):
        with pytest.raises(UserError, match="cannot start"):
            logic.segment(volume, **options)


def test_segment_passes_the_2d_options_to_the_command_line(scene, logic, tmp_path):
    """The command the logic runs: a stand-in interpreter records its arguments and fails."""
    if os.name == "nt":
        pytest.skip("the stand-in interpreter is a POSIX shell script")
    record = tmp_path / "arguments.txt"
    stand_in = tmp_path / "python"
    stand_in.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{record}"\necho "hyperspace: error: stand-in"\nexit 2\n')
    stand_in.chmod(0o755)
    logic.pythonExecutable = str(stand_in)
    volume = volume_node(oblique_image())
    expected = {(): [], ("2d", 2, None): ["--mode", "2d", "--axis", "2"],
                ("2d", 0, 7): ["--mode", "2d", "--axis", "0", "--slice", "7"]}
    for options, words in expected.items():
        keywords = dict(zip(("mode", "axis", "slice_index"), options))
        with pytest.raises(UserError, match="stand-in"):
            logic.segment(volume, **keywords)
        arguments = record.read_text().splitlines()
        assert [a for a in arguments if a in ("--mode", "--axis", "--slice")] == words[::2]
        for option, value in zip(words[::2], words[1::2]):
            assert arguments[arguments.index(option) + 1] == value
        assert "--model" not in arguments  # the command line picks the embedded model of the mode


def test_estimate_in_2d_follows_the_slices_and_their_plane(scene, logic, tmp_path):
    """The live estimate in 2D: the spacings and grid of each slice, in the slice plane's LPS axes, the slices
    segmented, and the memory of them all."""
    model = save_model(tiny_model(dim=2), tmp_path / "tiny-2d.pt")
    image, _ = asymmetric_phantom(size=(40, 36, 30), spacing=(1.0, 1.2, 2.0))
    volume = volume_node(image)
    every = logic.estimate(volume, "native", model, "cpu", mode="2d", axis=2)
    assert (every.native, every.axes, every.grid, every.slices) == (pytest.approx((1.0, 1.2)), "LP", (40, 36), 30)
    assert every.voxels == 40 * 36 * 30
    one = logic.estimate(volume, "native", model, "cpu", mode="2d", axis=2, slice_index=7)
    assert (one.grid, one.slices, one.voxels) == ((40, 36), 1, 40 * 36) and 0 < one.memory_mb < every.memory_mb
    across_i = logic.estimate(volume, (1.5, 2.5), model, "cpu", mode="2d", axis=0)
    assert (across_i.native, across_i.axes) == (pytest.approx((1.2, 2.0)), "PS")
    assert across_i.spacing == pytest.approx((1.5, 2.5)) and across_i.grid == (29, 24) and across_i.slices == 40
    coarse = logic.estimate(volume, 3.0, model, "cpu", mode="2d", axis=1)
    assert coarse.spacing == pytest.approx((3.0, 3.0)) and coarse.grid == (13, 20) and coarse.slices == 36
    told = logic.estimate(volume, "native", model, "cpu", input_spacing=(2.0, 1.2, 1.0), mode="2d", axis=2)
    assert told.native == pytest.approx((2.0, 1.2)) and told.grid == (40, 36)
    mirrored = volume_node(oblique_image(np.array(OBLIQUE).reshape(3, 3) @ PERMUTED_FLIPPED), "mirrored")
    across_mirrored_i = logic.estimate(mirrored, "native", model, "cpu", mode="2d", axis=0)  # J, K along -z, -x
    assert across_mirrored_i.axes == "LS" and across_mirrored_i.slices == SIZE[0]
    assert across_mirrored_i.native == pytest.approx((SPACING[2], SPACING[1]), rel=1e-4)
    assert across_mirrored_i.grid == (SIZE[2], SIZE[1])
    with pytest.raises(UserError, match=r"tiny-2d.pt is a 2D model and mode \"3d\" needs a 3D one"):
        logic.estimate(volume, "native", model, "cpu")
    with pytest.raises(UserError, match="from 0 to 29 along K"):
        logic.estimate(volume, "native", model, "cpu", mode="2d", axis=2, slice_index=30)
    with pytest.raises(UserError, match="axis 3"):
        logic.estimate(volume, "native", model, "cpu", mode="2d", axis=3)


def test_the_embedded_model_follows_the_mode(scene, logic, tmp_path, monkeypatch):
    from HyperSpaceSegmentationLib import models

    embedded_2d = save_model(tiny_model(dim=2), tmp_path / "embedded-2d.pt")
    monkeypatch.setattr(models, "DEFAULT_MODEL_2D", embedded_2d)  # the real one is trained separately
    facts = logic.model_facts(None, "2d")
    assert facts["dimensions"] == 2 and Path(facts["file"]).name == "embedded-2d.pt"
    assert logic.model_facts(None)["dimensions"] == 3
    volume = volume_node(asymmetric_phantom(size=(20, 18, 14))[0])
    assert logic.estimate(volume, mode="2d", axis=1).grid == (20, 14)


ORACLE_ENGINE = """import runpy, sys
sys.path[:0] = {paths!r}
from conftest import oracle_model
from HyperSpaceSegmentationLib.io import model_file
model_file.load_model = lambda path: oracle_model(dim=2)
sys.argv[1:3] = []  # -m HyperSpaceSegmentationLib.cli
runpy.run_module("HyperSpaceSegmentationLib.cli", run_name="__main__", alter_sys=True)
"""


@pytest.fixture
def oracle_engine(logic, tmp_path):
    """The logic's background process made to run the real command line with a 2D intensity-oracle network (box 3
    at -100, ball 7 at 100: labels known from the image alone) in place of the model file's: model files hold U-Nets,
    whose instance normalisation forgets absolute intensities. Returns the (placeholder) model file to pass."""
    if os.name == "nt":
        pytest.skip("the launcher is a POSIX shell script")
    engine = tmp_path / "oracle_engine.py"
    engine.write_text(ORACLE_ENGINE.format(paths=[str(Path(__file__).parent), *map(str, sys.path)]))
    launcher = tmp_path / "PythonSlicer"
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{engine}" "$@"\n')
    launcher.chmod(0o755)
    logic.pythonExecutable = str(launcher)
    model = tmp_path / "oracle-2d.pt"
    model.write_bytes(b"stands for the oracle")
    return model


@pytest.mark.parametrize("axis, index", [(2, 5), (1, 8)])
def test_segment_the_slice_a_view_shows(scene, logic, oracle_engine, axis, index):
    """A view placed on a known slice of an oblique, anisotropic volume under a transform: exactly that slice is
    segmented (the phantom's labels there), every other slice is empty."""
    image, labels = asymmetric_phantom(size=SIZE, spacing=SPACING, origin=ORIGIN, direction=OBLIQUE)
    volume = volume_node(image)
    place(volume, [TRANSFORM])
    ijk = np.array([3.0, 2.0, 1.0])
    ijk[axis] = index
    view = red_view(scene, plane_normal(image, axis, TRANSFORM), world_point(image, ijk, TRANSFORM))

    found_axis, found_index = logic.slice_in_view(volume, view)
    result = logic.segment(volume, model=oracle_engine, device="cpu", mode="2d", axis=found_axis,
                           slice_index=found_index)

    expected = np.zeros(sitk.GetArrayViewFromImage(labels).shape, np.int32)
    kji = [slice(None)] * 3
    kji[2 - axis] = index
    expected[tuple(kji)] = sitk.GetArrayFromImage(labels)[tuple(kji)]
    assert {3, 7} <= set(np.unique(expected))  # both objects on the slice: a swap or a shift would show
    np.testing.assert_array_equal(labels_on_volume_grid(result, volume), expected)
    assert result.GetTransformNodeID() == volume.GetTransformNodeID()


def test_segment_slice_by_slice_labels_every_slice(scene, logic, oracle_engine):
    image, labels = asymmetric_phantom(size=SIZE, spacing=SPACING, origin=ORIGIN, direction=OBLIQUE)
    volume = volume_node(image)
    result = logic.segment(volume, model=oracle_engine, device="cpu", mode="2d", axis=0)
    np.testing.assert_array_equal(labels_on_volume_grid(result, volume), sitk.GetArrayFromImage(labels))
