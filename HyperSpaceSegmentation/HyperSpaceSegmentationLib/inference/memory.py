"""Whether a segmentation fits the memory budget, and if not, advice that works: a coarser spacing, a larger budget,
or extrapolation, each estimated as the run that follows it would be (``Segmenter.estimate_memory_mb``)."""

from __future__ import annotations

import math
from typing import Any, Sequence

import SimpleITK as sitk

from ..errors import UserError
from .. import system

EXTRAPOLATION_REACH = 4.0  # with --allow-extrapolation, auto may go this far beyond the coarsest trained spacing


def check_memory(segmenter: Any, image: sitk.Image, spacing: Sequence[float], allow_extrapolation: bool = False
                 ) -> float:
    """The memory (MB) ``segmenter`` (a ``Segmenter``) needs to segment ``image`` at ``spacing``; a ``UserError`` if
    even the smallest windows exceed its budget (``max_memory_mb``) or what is free on the device, with only advice
    that works (see ``_memory_advice``)."""
    need = segmenter.estimate_memory_mb(image, spacing)
    free = system.available_memory_mb(segmenter.device)
    limit = segmenter.memory_limit_mb(free)
    if need > limit:
        what = (f"the budget is {megabytes(segmenter.max_memory_mb)} MB (--max-memory)" if limit < 0.9 * free
                else f"{free:,.0f} MB are free on {segmenter.device.type}")
        raise UserError(
            f"segmenting at spacing ({', '.join(f'{s:.3g}' for s in spacing)}) mm needs about "
            f"{megabytes(need)} MB but {what}: "
            f"{_memory_advice(segmenter, image, spacing, need, free, allow_extrapolation)}"
        )
    return need


def _memory_advice(segmenter: Any, image: sitk.Image, spacing: Sequence[float], need: float, free: float,
                   allow_extrapolation: bool) -> str:
    """What to do when segmenting ``image`` at ``spacing`` needs ``need`` MB, more than the budget allows: only
    what fits (each estimated as the run that follows it would): a coarser spacing in the trained range (beyond
    it with ``allow_extrapolation`` or an FS model, whose spacing is not clamped), else a larger ``--max-memory``
    where the device has the memory, else a spacing beyond the trained range with ``--allow-extrapolation``."""
    low, high = segmenter.model.spacing_range
    unclamped = allow_extrapolation or segmenter.model.method == "fs"
    advice = []
    coarser = _coarser_spacing_that_fits(segmenter, image, spacing, need, None if unclamped else high)
    if coarser is not None:
        return f"use a coarser spacing such as --spacing {' '.join(f'{s:g}' for s in coarser)}"
    if segmenter.max_memory_mb is not None and need * 1.1 <= 0.9 * free:
        advice.append(f"give a larger budget such as --max-memory {math.ceil(need * 1.1)} ({free:,.0f} MB are free "
                      f"on {segmenter.device.type})")
    if not unclamped:
        beyond = _coarser_spacing_that_fits(segmenter, image, spacing, need, None)
        if beyond is not None:
            advice.append(f"use --spacing {' '.join(f'{s:g}' for s in beyond)} --allow-extrapolation (coarser "
                          f"than the trained range {low:g}-{high:g} mm: less accurate)")
    if advice:
        return " or ".join(advice)
    return (f"even the coarsest spacing and smallest windows need more: free memory on {segmenter.device.type} "
            "(close other programs), or segment on a machine with more memory")


def _coarser_spacing_that_fits(segmenter: Any, image: sitk.Image, spacing: Sequence[float], need: float,
                               high: float | None) -> tuple[float, ...] | None:
    """A coarser spacing (at most ``high`` per axis; ``None``: up to ``EXTRAPOLATION_REACH`` times the coarsest
    axis or the trained range) whose estimated need fits the budget, rounded up to 0.01 mm as printed; or
    ``None`` if none does."""
    limit = segmenter.memory_limit_mb(system.available_memory_mb(segmenter.device))
    reach = high if high is not None else max(max(spacing), segmenter.model.spacing_range[1]) * EXTRAPOLATION_REACH
    factor = max((need / (0.55 * limit)) ** (1 / len(spacing)), 1.01)
    previous = None
    for _ in range(200):
        candidate = tuple(max(s, min(math.ceil(s * factor * 100) / 100, reach)) for s in spacing)
        if candidate == previous:  # every axis at the reach: nothing coarser to try
            return None
        if segmenter.estimate_memory_mb(image, candidate) <= limit:
            return candidate
        previous, factor = candidate, factor * 1.15
    return None


def megabytes(value: float) -> str:
    """MB as shown in messages: whole numbers with thousands separators, two digits below 10 MB."""
    return f"{value:,.0f}" if value >= 10 else f"{value:.2g}"
