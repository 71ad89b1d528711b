"""The texts of the Spacing panel: the model's facts, and the estimate of the working grid and memory."""

import math

from slicer.i18n import tr as _

from HyperSpaceSegmentationLib.mrml_logic import SpacingEstimate


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


def ensembleNote(models: list[str] | None) -> str:
    """What the panel says of an ensemble (several model files); "" for one model."""
    if not models or len(models) < 2:
        return ""
    return _("Ensemble of {count} models: their probabilities are averaged, each model at its own spacing "
             "(the facts and estimate are the first model's).").format(count=len(models))


def modelFacts(facts: dict, ensemble: str) -> str:
    """The model's labels, trained range, dimensionality and IFE variant (from ``model_facts``), then ``ensemble``."""
    low, high = facts["spacing_range_mm"]
    return " ".join(filter(None, [
        _("Labels: {labels}. Trained on spacings {low:g}-{high:g} mm.").format(
            labels=", ".join(f"{value} {name}" for value, name in facts["labels"].items() if value != "0"),
            low=low, high=high),
        modelDescription(facts), ensemble]))


def nativeSpacingText(estimate: SpacingEstimate, mode: str, overridden: bool) -> str:
    """The scan's own spacing (in 2D mode with the slice plane's axes), and whether the user overrode it."""
    plane = f" ({' x '.join(estimate.axes)})" if mode == "2d" else ""  # the slice plane's axes
    return " x ".join(f"{s:.3g}" for s in estimate.native) + " mm" + plane + (_(" (overridden)") if overridden else "")


def timeBudgetText(seconds: float) -> str:
    """The estimate's place for a time budget, whose spacing is only chosen at run time."""
    return _("The finest spacing within {seconds:g} s is chosen at run time, by timing the network on the "
             "device.").format(seconds=seconds)


def estimateText(estimate: SpacingEstimate, mode: str, models: list[str] | None) -> str:
    """The working grid, voxels and memory (free memory "?" until known), per slice in 2D mode; for an ensemble
    (several ``models``), how much longer it runs."""
    text = _("Working grid {grid} at {spacing} mm: {voxels:,} voxels; memory about {memory:,.0f} MB "
             "({available} free).") if mode == "3d" else _(
        "{slices:,} slice(s), each on a working grid {grid} at {spacing} mm ({axes}): {voxels:,} voxels in all; "
        "memory about {memory:,.0f} MB ({available} free).")
    return text.format(
        grid=" x ".join(map(str, estimate.grid)), spacing=" x ".join(f"{s:.3g}" for s in estimate.spacing),
        axes=" x ".join(estimate.axes), voxels=estimate.voxels, memory=estimate.memory_mb,
        available=_("? MB") if math.isnan(estimate.available_mb) else f"{estimate.available_mb:,.0f} MB",
        slices=estimate.slices) + (_(
            " The ensemble runs each of its {count} models: about {count} times as long.").format(
            count=len(models)) if models and len(models) > 1 else "")


def estimateWarnings(estimate: SpacingEstimate) -> str:
    """The engine's notes on the estimate, and a warning when it needs more memory than is free."""
    warnings = list(estimate.notes)
    if estimate.memory_mb > 0.9 * estimate.available_mb:
        warnings.append(_("This needs more memory than is free: choose a coarser spacing."))
    return "\n".join(warnings)
