"""Packaging: every Slicer module file listed, the catalog entry valid, sizes within the index's rules, and a
wheel built from the repository that runs on its own."""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "HyperSpaceSegmentation"
ENGINE = MODULE / "HyperSpaceSegmentationLib"
UNIX_ONLY_MODULES = {"resource", "fcntl", "termios", "pwd", "grp", "posix"}


def tracked(pattern: str) -> list[str]:
    """The files git would commit under ``pattern`` (tracked or new, not ignored) that exist."""
    result = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", pattern],
                            cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip("not a git checkout")
    return [f for f in result.stdout.splitlines() if (ROOT / f).is_file()]


def test_every_module_file_is_listed_in_cmake():
    cmake = (MODULE / "CMakeLists.txt").read_text().replace("${MODULE_NAME}", "HyperSpaceSegmentation")
    files = [f for f in tracked("HyperSpaceSegmentation") if not f.endswith("CMakeLists.txt")]
    missing = [f for f in files if f.removeprefix("HyperSpaceSegmentation/") not in cmake]
    assert not missing, f"not listed in HyperSpaceSegmentation/CMakeLists.txt: {missing}"
    listed = re.findall(r"^\s+((?:HyperSpaceSegmentationLib|HyperSpaceSegmentationPanel|Resources)/\S+)$", cmake, re.MULTILINE)
    assert all((MODULE / f).exists() for f in listed), "CMakeLists.txt lists a file that does not exist"


def test_module_icon_is_a_128_pixel_png():
    header = (MODULE / "Resources" / "Icons" / "HyperSpaceSegmentation.png").read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and header[12:16] == b"IHDR"
    assert (int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")) == (128, 128)


def test_catalog_entry_matches_the_extension():
    entry = json.loads((ROOT / "HyperSpaceSegmentation.json").read_text())
    assert set(entry) <= {"$schema", "category", "scm_url", "scm_revision", "build_dependencies", "tier"}
    assert entry["category"] == "Segmentation" and entry["scm_revision"] == "main"
    cmake = (ROOT / "CMakeLists.txt").read_text()
    depends = re.search(r'set\(EXTENSION_DEPENDS "([^"]*)"\)', cmake).group(1).split()
    assert entry["build_dependencies"] == depends == ["PyTorch"]
    for variable in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL",
                     "EXTENSION_SCREENSHOTURLS"):
        assert f"set({variable} " in cmake
    assert "add_subdirectory(HyperSpaceSegmentation)" in cmake and "Slicer_EXTENSION_CPACK" in cmake


def test_repository_stays_small():
    sizes = [(ROOT / f).stat().st_size for f in tracked(".") if (ROOT / f).is_file()]
    assert sum(sizes) < 100 * 2**20
    for model in (ENGINE / "resources" / "models").glob("*.pt"):
        assert model.stat().st_size <= 10 * 2**20
        card = model.with_suffix(".md").read_text()
        assert "Copyright (C) 1993-2009 Louis Collins" in card and "spacing" in card.lower()
    assert (ROOT / "LICENSE").exists()


def test_engine_imports_without_slicer():
    """Every engine module imports without importing slicer, in a fresh interpreter (other tests import slicer)."""
    script = ("import importlib, pkgutil, sys, HyperSpaceSegmentationLib as lib\n"
              "for module in pkgutil.walk_packages(lib.__path__, 'HyperSpaceSegmentationLib.'):\n"
              "    importlib.import_module(module.name)\n"
              "sys.exit('slicer' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr or "importing the engine imported slicer"


def test_slicer_requirements_declare_the_same_bounds_as_the_package():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {re.split("[<>=]", d)[0].lower(): d for d in project["dependencies"]}
    lines = (MODULE / "Resources" / "requirements.txt").read_text().splitlines()
    required = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert required and all(declared[re.split("[<>=]", r)[0].lower()] == r for r in required)


def test_console_script_entry_point():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["hyperspace"] == "HyperSpaceSegmentationLib.cli:main"


def test_engine_uses_no_unix_only_modules_or_proc():
    """The engine must start on Windows and macOS: no Unix-only imports (even inside functions), no /proc."""
    offenders = []
    for path in ENGINE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                names = []
            offenders += [f"{path.name}: import {n}" for n in names if n.split(".")[0] in UNIX_ONLY_MODULES]
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and "/proc/" in node.value:
                offenders.append(f"{path.name}: reads {node.value!r}")
    assert not offenders


def test_wheel_built_from_the_repository_runs_the_demo(tmp_path):
    """A non-editable install carries the embedded model and the sample: ``hyperspace demo`` works from it."""
    source = tmp_path / "source"
    for name in tracked("."):  # a clean copy: no build/ folder left over from an earlier build
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp_path / "dist"),
                    str(source)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    target = tmp_path / "installed"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    shutil.rmtree(source)
    script = ("import sys, HyperSpaceSegmentationLib.cli as cli; print(cli.__file__, file=sys.stderr); "
              "sys.exit(cli.main(['demo', '--output-dir', 'results', '--device', 'cpu']))")
    work = tmp_path / "work"
    work.mkdir()
    result = subprocess.run([sys.executable, "-c", script], cwd=work, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(target)})
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[0].startswith(str(target))  # the installed copy ran, not the repository's
    assert sorted(p.name for p in (work / "results").iterdir()) == ["coarse-3mm.seg.nrrd", "native-1.5mm.seg.nrrd"]
