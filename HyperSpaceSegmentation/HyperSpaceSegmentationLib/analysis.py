"""Inside the generated networks: linear CKA between the layer activations of the U-Nets that a HyperSpace model
generates for different spacings, on the same physical image region (the paper's Sec. 3.2 and 4.3, Fig. 3).

Each network sees the whole image as ``hyperspace segment`` does with one window: reoriented to LPS, normalised,
resampled to its spacing (``geometry.resample_to_spacing``) and padded to a multiple of the size divisor. Forward
hooks record the activations after every convolution and every nonlinearity, and the logits of the head.

Activations are compared at the same physical positions. On each U-Net level the common grid is the coarsest
network's grid of that level over the region, which is snapped to that network's deepest voxels so that each
level's voxels tile it exactly. An activation map goes onto the grid of its level by Gaussian anti-aliasing (the
engine's own, ``geometry.resample_array``) and trilinear interpolation at the grid's voxel centres; compared with a
deeper layer it goes onto the deeper level's grid by averaging whole voxels. Examples are the grid's voxels,
features the channels, and with ``X``, ``Y`` centred per channel (Kornblith et al. 2019):

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)

With few examples for many channels (the deepest level of a small region) CKA is biased high; the summary gives a
chance level per level, the CKA of the same layer at two spacings with the examples of one side shuffled.
"""

from __future__ import annotations

import csv
import importlib
import itertools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError
from .geometry import antialias_sigmas, canonical, grid_size, physical_size, resample_array, resample_to_spacing, \
    working_grid
from .inference.segmenter import Segmenter, SpacingRequest
from .inference.sliding_window import patch_size_for
from .io.images import SPACING_LIMITS_MM, atomic_output, check_writable
from .io.model_file import SegmentationModel
from .networks import HyperSpaceNet
from .networks.unet import ConvNormReLU

DEFAULT_REGION_MM = 144.0  # the 3 mm network's deepest voxels are 24 mm: 6^3 examples for its 64 channels
MATPLOTLIB_MISSING = "the CKA heatmaps need matplotlib: pip install hyperspace-segmentation[analysis]"
CSV_NAME = "cka.csv"
_CHUNK = 16384  # examples per step when summing cross-products
_EDGE_TOLERANCE_MM = 1e-3


@dataclass(frozen=True)
class Layer:
    """One recorded activation: ``enc0.1.conv`` (encoder level 0, block 1, after the convolution), ``dec2.3.relu``
    (decoder level 2, block 3, after the nonlinearity) or ``head`` (the logits, level 0)."""

    name: str
    level: int
    channels: int

    @property
    def encoder(self) -> bool:
        return self.name.startswith("enc")


@dataclass(frozen=True)
class Region:
    """The box compared, along the axes of the image reoriented to LPS: its first edge and its size per axis
    (x, y, z; mm from the image's first voxel edge), in whole deepest voxels ``cell`` (mm) of the coarsest network,
    whose U-Net has ``levels`` levels."""

    start: tuple[float, ...]
    size: tuple[float, ...]
    cell: tuple[float, ...]
    levels: int

    def grid(self, level: int) -> tuple[tuple[float, ...], tuple[int, ...]]:
        """Voxel size (mm) and voxel count per axis (x, y, z) of the common grid of ``level``."""
        split = 2 ** (self.levels - 1 - level)
        return (tuple(c / split for c in self.cell),
                tuple(round(s / c) * split for s, c in zip(self.size, self.cell)))


@dataclass
class CKAResult:
    """CKA between every recorded layer of the networks for ``spacings`` (mm, ascending):
    ``cka[a, i, b, j]`` compares layer ``i`` at spacing ``a`` with layer ``j`` at spacing ``b``."""

    spacings: list[float]
    layers: list[Layer]
    cka: np.ndarray
    region: Region
    centre_lps: tuple[float, ...]
    chance: dict[int, float]

    def examples(self, level: int) -> int:
        return math.prod(self.region.grid(level)[1])


def require_matplotlib() -> None:
    """A ``UserError`` naming the extra to install unless matplotlib can be imported."""
    try:
        importlib.import_module("matplotlib")
    except ImportError:
        raise UserError(MATPLOTLIB_MISSING) from None


def check_model(model: SegmentationModel, name: str) -> None:
    """Refuse models whose U-Net does not change with the spacing, and 2D models."""
    if not isinstance(model.network, HyperSpaceNet):
        raise UserError(f"{name} is an {model.method.upper()} model, one U-Net for every spacing: CKA across spacings "
                        "needs a HyperSpace model, whose hypernetwork generates a U-Net per spacing")
    if model.dim != 3:
        raise UserError(f"{name} is a 2D model: the CKA analysis takes 3D HyperSpace models")


def cka_spacings(model: SegmentationModel, image: sitk.Image, values: Sequence[float],
                 allow_extrapolation: bool) -> tuple[list[float], list[str]]:
    """The isotropic spacings (mm, ascending) to compare, each clamped to the trained range as ``hyperspace
    segment`` does (unless extrapolating), and the notes that say so; a ``UserError`` for fewer than two distinct."""
    if len(values) < 2:
        raise UserError("give at least two spacings to compare, such as --spacings 1 1.5 2 3")
    segmenter = Segmenter(model, device="cpu")
    chosen, notes = {}, []
    smallest, largest = SPACING_LIMITS_MM
    for value in values:
        if not (math.isfinite(value) and smallest <= value <= largest):
            raise UserError(f"--spacings {value:g}: give spacings in mm from {smallest:g} to {largest:g}, such as "
                            "1 1.5 2 3")
        choice = segmenter.choose_spacing(image, SpacingRequest("explicit", (value,),
                                                                allow_extrapolation=allow_extrapolation))
        spacing = round(choice.spacing[0], 2)  # the networks are generated for the spacing rounded to 0.01 mm
        if spacing in chosen:
            low, high = model.spacing_range
            raise UserError(f"--spacings {chosen[spacing]:g} and {value:g} give the same network, for {spacing:g} mm "
                            f"(spacings are clamped to the trained range {low:g}-{high:g} mm unless "
                            "--allow-extrapolation, and rounded to 0.01 mm): give distinct spacings")
        chosen[spacing] = value
        notes += choice.notes
    return sorted(chosen), notes


def choose_region(image: sitk.Image, spacings: Sequence[float], levels: int, size_mm: float | None = None,
                  centre_lps: Sequence[float] | None = None) -> Region:
    """The cube of ``size_mm`` (default: ``DEFAULT_REGION_MM``, within the image) centred at ``centre_lps`` (default
    the image centre), along the axes of the image reoriented to LPS, snapped to whole deepest voxels of the network
    for the coarsest of ``spacings``; a ``UserError`` if it reaches beyond the image or is too small to compare."""
    oriented = canonical(image)
    extent = physical_size(oriented)
    if centre_lps is None:
        centre = [e / 2 for e in extent]
    else:
        index = oriented.TransformPhysicalPointToContinuousIndex([float(c) for c in centre_lps])
        centre = [(i + 0.5) * s for i, s in zip(index, oriented.GetSpacing())]
    if size_mm is None:
        sizes = [min(DEFAULT_REGION_MM, e) for e in extent]
    else:
        if not (size_mm > 0 and math.isfinite(size_mm)):
            raise UserError(f"--region {size_mm:g}: give the edge of the cube in mm, such as 96")
        sizes = [size_mm] * 3
    if any(c - s / 2 < -_EDGE_TOLERANCE_MM or c + s / 2 > e + _EDGE_TOLERANCE_MM
           for c, s, e in zip(centre, sizes, extent)):
        box, whole_image = (" x ".join(f"{v:.4g}" for v in values) for values in (sizes, extent))
        raise UserError(f"--region: a {box} mm box at that centre reaches beyond the image ({whole_image} mm): give "
                        "a smaller cube or a centre further inside")
    coarsest = working_grid(oriented, [max(spacings)] * 3)
    factor = 2 ** (levels - 1)
    cell = tuple(s * factor for s in coarsest.GetSpacing())
    whole = [n // factor for n in coarsest.GetSize()]  # deepest voxels that lie inside the image
    counts = [min(grid_size([s], [c])[0], w) for s, c, w in zip(sizes, cell, whole)]
    if math.prod(counts) < 2:
        raise UserError(f"the region holds {math.prod(counts)} voxel of the {max(spacings):g} mm network's deepest "
                        f"level ({' x '.join(f'{c:.3g}' for c in cell)} mm): give a larger --region, or a finer "
                        "coarsest spacing")
    starts = [min(max(round(c / d - n / 2), 0), w - n) for c, d, n, w in zip(centre, cell, counts, whole)]
    return Region(tuple(j * d for j, d in zip(starts, cell)), tuple(n * d for n, d in zip(counts, cell)), cell, levels)


def region_centre_lps(image: sitk.Image, region: Region) -> tuple[float, ...]:
    """The physical centre (LPS, mm) of ``region``."""
    oriented = canonical(image)
    index = [(a + s / 2) / p - 0.5 for a, s, p in zip(region.start, region.size, oriented.GetSpacing())]
    return tuple(oriented.TransformContinuousIndexToPhysicalPoint(index))


def on_grid(activation: torch.Tensor, voxel: Sequence[float], region: Region, level: int) -> torch.Tensor:
    """``activation`` ``(channels, z, y, x)``, whose voxels of ``voxel`` mm (x, y, z) tile the image from its first
    voxel edge, on the common grid of ``level``: anti-aliased, then interpolated trilinearly at the grid's voxel
    centres; ``(channels, z, y, x)`` of that grid, float32 on the CPU."""
    step, count = region.grid(level)
    sigmas = [s / v for s, v in zip(antialias_sigmas(voxel, step), voxel)]  # in voxels of the activation
    crop, positions = [], []
    for axis in (2, 1, 0):  # array order z, y, x
        index = (region.start[axis] + (np.arange(count[axis]) + 0.5) * step[axis]) / voxel[axis] - 0.5
        margin = math.ceil(4 * sigmas[axis]) + 1
        low = max(math.floor(index[0]) - margin, 0)
        high = min(math.ceil(index[-1]) + margin + 1, activation.shape[3 - axis])
        crop.append(slice(low, high))
        positions.append(torch.from_numpy((2 * (index - low) + 1) / (high - low) - 1).float())
    block = activation[(slice(None), *crop)].float().cpu().contiguous()
    block = resample_array(block, block.shape[1:], sigmas[::-1])  # smoothing only: the shape stays
    z, y, x = torch.meshgrid(*positions, indexing="ij")
    grid = torch.stack([x, y, z], dim=-1)[None]  # grid_sample takes (x, y, z) in [-1, 1], voxel edges at +-1
    return F.grid_sample(block[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]


def network_activations(network: nn.Module, volume: torch.Tensor, voxel: Sequence[float], region: Region,
                        outside: float) -> tuple[list[Layer], list[torch.Tensor]]:
    """Run ``network`` on ``volume`` ``(z, y, x)``, whose voxels are ``voxel`` mm (x, y, z), padded at the far ends
    with ``outside`` to a size it takes; its layers in the order they run, each activation on the common grid of
    its level (``on_grid``)."""
    divisor = 2 ** (region.levels - 1)
    padded = patch_size_for(volume.shape, volume.shape, divisor)
    pad = [p for n, size in zip(reversed(volume.shape), reversed(padded)) for p in (0, size - n)]
    layers, samples = [], []

    def recorder(name: str, level: int) -> Callable:
        def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            layers.append(Layer(name, level, output.shape[1]))
            samples.append(on_grid(output[0], [v * 2 ** level for v in voxel], region, level))
        return record

    points = [(network.head, "head", 0)]
    for name, module in network.named_modules():
        if isinstance(module, ConvNormReLU):  # encoder.L.blocks.B: after the convolution, after the ReLU
            branch, level, _, block = name.split(".")
            label = f"{branch[:3]}{level}.{int(block) + 1}"
            points += [(module.conv, f"{label}.conv", int(level)), (module, f"{label}.relu", int(level))]
    handles = [module.register_forward_hook(recorder(name, level)) for module, name, level in points]
    try:
        with torch.inference_mode():
            network(F.pad(volume, pad, value=outside)[None, None])
    finally:
        for handle in handles:
            handle.remove()
    return layers, samples


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two activation matrices ``(examples, features)`` of the same examples (NaN if either is
    constant)."""
    x, y = (m.double() - m.double().mean(0) for m in (x, y))
    return _cka(y.T @ x, _norm(x.T @ x), _norm(y.T @ y))


def _norm(matrix: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(matrix))


def _cka(cross: torch.Tensor, gram_norm_x: float, gram_norm_y: float) -> float:
    """CKA from ``Y^T X`` of centred ``X``, ``Y`` and the Frobenius norms of ``X^T X`` and ``Y^T Y``."""
    scale = gram_norm_x * gram_norm_y
    return _norm(cross) ** 2 / scale if scale > 0 else math.nan


def _channels(sample: torch.Tensor, levels_down: int = 0) -> torch.Tensor:
    """``sample`` ``(channels, z, y, x)``, averaged over blocks of ``2 ** levels_down`` voxels per axis, as
    ``(channels, examples)``."""
    if levels_down:
        sample = F.avg_pool3d(sample[None], 2 ** levels_down)[0]
    return sample.reshape(sample.shape[0], -1)


def cka_matrix(samples: Sequence[torch.Tensor], levels: Sequence[int]) -> np.ndarray:
    """CKA between every two of ``samples``, each on the common grid of its level in ``levels``, compared on the
    grid of the deeper of the two; centred in float32, cross-products of blocks of examples summed in float64."""
    count = len(samples)
    result = np.full((count, count), np.nan)
    for level in sorted(set(levels)):
        members = [k for k in range(count) if levels[k] <= level]
        features = [_channels(samples[k], level - levels[k]) for k in members]
        means = [f.double().mean(1, keepdim=True).float() for f in features]
        edges = np.cumsum([0] + [len(f) for f in features])
        spans = [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]
        rows = [i for i, k in enumerate(members) if levels[k] == level]
        others = [i for i, k in enumerate(members) if levels[k] < level]
        row_features = torch.cat([torch.arange(spans[i].start, spans[i].stop) for i in rows])
        products = torch.zeros(len(row_features), int(edges[-1]), dtype=torch.float64)  # Y X^T, Y of this level
        grams = {i: torch.zeros(len(features[i]), len(features[i]), dtype=torch.float64) for i in others}
        for start in range(0, features[0].shape[1], _CHUNK):
            block = torch.cat([f[:, start:start + _CHUNK] - m for f, m in zip(features, means)])
            products += (block[row_features] @ block.T).double()
            for i, gram in grams.items():
                gram += (block[spans[i]] @ block[spans[i]].T).double()
        offsets = dict(zip(rows, np.cumsum([0] + [len(features[i]) for i in rows])))
        norms = {i: _norm(gram) for i, gram in grams.items()}
        norms.update({i: _norm(products[offsets[i]:offsets[i] + len(features[i]), spans[i]]) for i in rows})
        for i in rows:
            crosses = products[offsets[i]:offsets[i] + len(features[i])]
            for j, k in enumerate(members):
                result[members[i], k] = result[k, members[i]] = _cka(crosses[:, spans[j]], norms[i], norms[j])
    return result


def chance_levels(samples: Sequence[torch.Tensor], layers: Sequence[Layer]) -> dict[int, float]:
    """Per level, the mean CKA of a layer of the finest network with the same layer of the coarsest one, the
    examples of one side shuffled (fixed seed): what unrelated activations of these shapes score."""
    generator = torch.Generator().manual_seed(0)
    values: dict[int, list[float]] = {}
    for layer, finest, coarsest in zip(layers, samples, samples[-len(layers):]):
        x, y = _channels(finest), _channels(coarsest)
        shuffled = y[:, torch.randperm(y.shape[1], generator=generator)]
        values.setdefault(layer.level, []).append(linear_cka(x.T, shuffled.T))
    return {level: float(np.nanmean(v)) for level, v in sorted(values.items())}


def analyse(model: SegmentationModel, image: sitk.Image, spacings: Sequence[float], region: Region,
            device: str = "auto", log: Callable[[str], None] | None = None) -> CKAResult:
    """CKA between the layers of the networks ``model`` generates for ``spacings`` (from ``cka_spacings``) on
    ``region`` of ``image`` (from ``choose_region``); ``log`` hears one line per network."""
    segmenter = Segmenter(model, device)
    oriented = canonical(image)
    normalised = sitk.GetImageFromArray(model.normalisation.apply(sitk.GetArrayViewFromImage(oriented)))
    normalised.CopyInformation(oriented)
    layers: list[Layer] = []
    samples: list[torch.Tensor] = []
    for number, spacing in enumerate(spacings, 1):
        start = time.perf_counter()
        working = resample_to_spacing(normalised, [spacing] * 3)
        volume = torch.from_numpy(sitk.GetArrayFromImage(working)).to(segmenter.device)
        found, sampled = network_activations(segmenter.network_for((spacing,) * 3), volume, working.GetSpacing(),
                                             region, model.normalisation.outside_value)
        layers = layers or found  # one architecture: the same layers for every spacing
        samples += sampled
        if log:
            log(f"network {number} of {len(spacings)} ({spacing:g} mm): {len(found)} layers, "
                f"{' x '.join(map(str, working.GetSize()))} voxels, {time.perf_counter() - start:.1f} s")
    count = len(spacings)
    matrix = cka_matrix(samples, [layer.level for layer in layers] * count)
    return CKAResult(list(spacings), layers, matrix.reshape(count, len(layers), count, len(layers)), region,
                     region_centre_lps(image, region), chance_levels(samples, layers))


def _mm(spacing: float) -> str:
    return f"{spacing:g}mm"


def output_names(spacings: Sequence[float]) -> list[str]:
    """The files ``write_results`` writes for ``spacings`` (ascending): the CSV, a within-network map per spacing,
    a map of the finest network's layers against each coarser one's, and the same-layer map."""
    finest = spacings[0]
    return ([CSV_NAME] + [f"within-{_mm(s)}.png" for s in spacings]
            + [f"across-{_mm(finest)}-{_mm(s)}.png" for s in spacings[1:]] + ["same-layer.png"])


def write_results(result: CKAResult, folder: str | Path, overwrite: bool = False) -> list[Path]:
    """The CSV of every pair (spacing_a <= spacing_b, every layer pair) and the PNG heatmaps, each written
    atomically; their paths."""
    folder = Path(folder)
    names = output_names(result.spacings)
    for name in names:  # every output checked before any is written
        check_writable(folder / name, overwrite)
    spacings, layers, cka = result.spacings, result.layers, result.cka
    with atomic_output(folder / CSV_NAME, overwrite) as temporary:
        with open(temporary, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["spacing_a", "spacing_b", "layer_a", "layer_b", "cka"])
            for a, b in itertools.combinations_with_replacement(range(len(spacings)), 2):
                for i, j in itertools.product(range(len(layers)), repeat=2):
                    writer.writerow([f"{spacings[a]:g}", f"{spacings[b]:g}", layers[i].name, layers[j].name,
                                     f"{cka[a, i, b, j]:.6f}"])
    names_of = [layer.name for layer in layers]
    figures = [_heatmap(cka[a, :, a, :], names_of, names_of, f"CKA within the U-Net for {s:g} mm",
                        f"layer ({s:g} mm)", f"layer ({s:g} mm)") for a, s in enumerate(spacings)]
    figures += [_heatmap(cka[0, :, b, :], names_of, names_of, f"CKA across networks: {spacings[0]:g} mm vs {s:g} mm",
                         f"layer ({spacings[0]:g} mm)", f"layer ({s:g} mm)") for b, s in enumerate(spacings) if b]
    same = np.stack([cka[0, range(len(layers)), b, range(len(layers))] for b in range(len(spacings))], axis=1)
    figures.append(_heatmap(same, names_of, [f"{s:g}" for s in spacings],
                            f"CKA with the same layer at {spacings[0]:g} mm", "layer",
                            "spacing of the other network (mm)"))
    for name, figure in zip(names[1:], figures):
        with atomic_output(folder / name, overwrite) as temporary:
            figure.savefig(temporary, format="png")
    return [folder / name for name in names]


def _heatmap(matrix: np.ndarray, rows: Sequence[str], columns: Sequence[str], title: str, row_title: str,
             column_title: str):
    """A CKA matrix as a heatmap with a colour bar (a matplotlib ``Figure``, without pyplot; fixed margins in
    inches, which draws faster than an automatic layout)."""
    from matplotlib.figure import Figure

    cell = 0.11  # inches per row and column
    left, right, bottom, top = 0.9, 0.9, 0.9, 0.35
    width, height = left + right + max(cell * len(columns), 3.0), bottom + top + cell * len(rows)
    figure = Figure(figsize=(width, height), dpi=90)
    axes = figure.add_axes((left / width, bottom / height, 1 - (left + right) / width, 1 - (bottom + top) / height))
    shown = axes.imshow(matrix, vmin=0.0, vmax=1.0, cmap="magma", interpolation="nearest", aspect="auto")
    axes.set_xticks(range(len(columns)), columns, rotation=90 if max(map(len, columns)) > 4 else 0, fontsize=5)
    axes.set_yticks(range(len(rows)), rows, fontsize=5)
    axes.set_xlabel(column_title, fontsize=7)
    axes.set_ylabel(row_title, fontsize=7)
    axes.set_title(title, fontsize=8)
    bar = figure.add_axes((1 - (right - 0.2) / width, bottom / height, 0.12 / width, 1 - (bottom + top) / height))
    figure.colorbar(shown, cax=bar).set_label("linear CKA", fontsize=7)
    bar.tick_params(labelsize=6)
    return figure


def summary(result: CKAResult) -> list[str]:
    """Lines for the user: the region, and per level the mean CKA of each layer with itself across spacings (the
    paper: early layers stay similar, the deepest change most)."""
    spacings, layers, cka = result.spacings, result.layers, result.cka
    pairs = list(itertools.combinations(range(len(spacings)), 2))
    region = " x ".join(f"{s:.4g}" for s in result.region.size)
    centre = ", ".join(f"{c:.1f}" for c in result.centre_lps)
    lines = [f"region: {region} mm centred at ({centre}) mm (LPS), along the image's axes",
             f"CKA of each layer with the same layer at another spacing, mean over every pair of "
             f"{', '.join(f'{s:g}' for s in spacings)} mm:",
             f"{'level':>5}  {'grid mm':>7}  {'examples':>8}  {'channels':>8}  {'encoder':>7}  {'decoder':>7}  "
             f"{'chance':>6}"]
    means, few = {}, []
    for level in sorted({layer.level for layer in layers}):
        cells = []
        for encoder in (True, False):
            values = [cka[a, i, b, i] for i, layer in enumerate(layers) if layer.level == level
                      and layer.encoder == encoder for a, b in pairs]
            cells.append(f"{np.nanmean(values):7.3f}" if values else f"{'-':>7}")
            if encoder:
                means[level] = float(np.nanmean(values))
        channels = max(layer.channels for layer in layers if layer.level == level and layer.name != "head")
        step = result.region.grid(level)[0]
        if result.examples(level) < channels:
            few.append(level)
        lines.append(f"{level:>5}  {max(step):7.3g}  {result.examples(level):>8}  {channels:>8}  {cells[0]}  "
                     f"{cells[1]}  {result.chance[level]:6.3f}")
    deepest = max(means)
    lowest = min(means, key=means.get)
    verdict = ("the deepest level changes most across spacings, as the paper observes" if lowest == deepest
               else f"encoder level {lowest} changes most across spacings, not the deepest ({deepest}) as in the paper")
    lines.append(f"encoder: level 0 {means[0]:.3f}, deepest level {deepest} {means[deepest]:.3f}: {verdict}")
    if few:
        lines.append(f"note: fewer examples than channels at level {', '.join(map(str, few))}, too few for CKA to be "
                     "trusted there: give a larger --region")
    return lines
