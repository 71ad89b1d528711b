"""What the engine needs installed at Apply: PyTorch through the PyTorch extension, then the packages of
requirements.txt that Slicer lacks, each after asking the user."""

import importlib.util
import pathlib

import slicer
from slicer.i18n import tr as _

from HyperSpaceSegmentationLib.errors import UserError

MINIMUM_TORCH = "2.0"
ENGINE_PACKAGES = ("torch", "psutil", "tqdm", "skimage", "slicerio")  # what the engine imports beyond Slicer's own


def missingEnginePackages() -> list[str]:
    """The engine's packages not installed in Slicer's Python (``ensureDependencies`` installs them at Apply)."""
    return [name for name in ENGINE_PACKAGES if importlib.util.find_spec(name) is None]


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
    for line in pathlib.Path(requirementsPath).read_text(encoding="utf-8").splitlines():
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
