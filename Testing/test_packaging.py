"""The Slicer extension's packaging: every file listed, the catalog entry valid, sizes within the index's rules."""

import importlib
import json
import pkgutil
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "HyperSpaceSegmentation"


def tracked(pattern: str) -> list[str]:
    result = subprocess.run(["git", "ls-files", pattern], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip("not a git checkout")
    return result.stdout.split()


def test_every_module_file_is_listed_in_cmake():
    cmake = (MODULE / "CMakeLists.txt").read_text().replace("${MODULE_NAME}", "HyperSpaceSegmentation")
    files = [f for f in tracked("HyperSpaceSegmentation") if not f.endswith("CMakeLists.txt")]
    missing = [f for f in files if f.removeprefix("HyperSpaceSegmentation/") not in cmake]
    assert not missing, f"not listed in HyperSpaceSegmentation/CMakeLists.txt: {missing}"
    listed = re.findall(r"^\s+((?:HyperSpaceSegmentationLib|Resources)/\S+)$", cmake, re.MULTILINE)
    assert all((MODULE / f).exists() for f in listed), "CMakeLists.txt lists a file that does not exist"


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
    for model in (MODULE / "Resources" / "Models").glob("*.pt"):
        assert model.stat().st_size <= 10 * 2**20
        card = model.with_suffix(".md").read_text()
        assert "Copyright (C) 1993-2009 Louis Collins" in card and "spacing" in card.lower()
    assert (ROOT / "LICENSE").exists()


def test_engine_imports_without_slicer():
    import HyperSpaceSegmentationLib as lib

    for module in pkgutil.walk_packages(lib.__path__, "HyperSpaceSegmentationLib."):
        importlib.import_module(module.name)
    assert "slicer" not in sys.modules


def test_console_script_entry_point():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["hyperspace"] == "HyperSpaceSegmentationLib.cli:main"
