"""How a generated U-Net runs: ``torch`` (the network itself; channels-last for 3D on the CPU) or ``onnxruntime``
(the network exported to ONNX once per model and spacing, cached on disk, and run by ONNX Runtime's CPU provider,
which fuses operators and normalises in two passes over a feature map: 1.2-2.4x faster per pass on a 2-core CPU,
docs/BENCHMARKS.md).

``auto`` takes ONNX Runtime for a 3D model on the CPU where the ``onnxruntime``, ``onnx`` and ``onnxscript``
packages are installed, when the network of that spacing is already exported, or when the working grid is large
enough that exporting it (seconds, once) pays for itself in the same run (``EXPORT_PAYS_VOXELS``); else torch.
The cache lies in the user's cache folder (``HYPERSPACE_CACHE_DIR`` overrides it), one file per model content,
spacing, opset and torch version, written atomically so that runs in parallel can share it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..errors import UserError, error_line
from ..networks import UNet

BACKENDS = ("auto", "torch", "onnxruntime")
PRECISIONS = ("float32", "float16", "bfloat16")
EXPORT_FORMAT = 2  # raised whenever what is exported changes (2: the plain U-Net, never its channels-last form)
EXPORT_PAYS_VOXELS = 8_000_000  # working voxels from which one export (5-9 s) costs less than ONNX Runtime saves
ONNXRUNTIME_PACKAGES = ("onnxruntime", "onnx", "onnxscript")
ONNXRUNTIME_MISSING = ("--backend onnxruntime needs the onnxruntime, onnx and onnxscript packages: pip install "
                       "onnxruntime onnx onnxscript, or use --backend torch")


def check_backend(name: str) -> str:
    """``name`` if it is a backend; a ``UserError`` otherwise."""
    if name not in BACKENDS:
        raise UserError(f"--backend {name}: give one of {', '.join(BACKENDS)}")
    return name


def check_inference_options(backend: str, precision: str, device: torch.device) -> torch.dtype:
    """The type of ``precision`` (``resolve_precision``) once ``backend``, ``precision`` and ``device`` can run
    together; else a one-line ``UserError``, before any work: ONNX Runtime needs the CPU, float32 and its packages."""
    check_backend(backend)
    dtype = resolve_precision(precision, device)
    if backend == "onnxruntime":
        if device.type != "cpu":
            raise UserError("--backend onnxruntime runs on the CPU: add --device cpu, or use --backend torch")
        if dtype != torch.float32:
            raise UserError(f"--precision {precision} runs on torch: use --backend torch, or --precision float32")
        if not onnxruntime_installed():
            raise UserError(ONNXRUNTIME_MISSING)
    return dtype


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    """The type the network's convolutions compute in (autocast): float32, float16 (a GPU only) or bfloat16 (a GPU
    that computes in it, or the CPU). Half precision changes a few labels and saves GPU memory, but no time on an H200
    (docs/BENCHMARKS.md, "On a GPU"). A ``UserError`` otherwise."""
    if name not in PRECISIONS:
        raise UserError(f"--precision {name}: give one of {', '.join(PRECISIONS)}")
    if name == "float16" and device.type != "cuda":
        raise UserError("--precision float16 runs on a GPU: add --device cuda, or use bfloat16 or float32 on the CPU")
    if name == "bfloat16" and device.type == "cuda" and not _computes_in_bfloat16():
        raise UserError("--precision bfloat16: this GPU does not compute in bfloat16: use float16 or float32")
    return getattr(torch, name)


def _computes_in_bfloat16() -> bool:
    """Whether this process's GPU has bfloat16 arithmetic of its own (not emulated; torch < 2.4 cannot tell)."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:
        return torch.cuda.is_bf16_supported()


def autocast(device: torch.device, precision: torch.dtype) -> contextlib.AbstractContextManager:
    """The context in which a network computes in ``precision`` (torch's autocast; nothing for float32)."""
    if precision == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=precision)


def onnxruntime_installed() -> bool:
    """Whether ONNX Runtime imports (a broken install, such as a DLL that does not load, counts as missing) and the
    ONNX exporter's packages are there."""
    try:
        importlib.import_module("onnxruntime")
    except Exception:  # noqa: BLE001  (any failure to import: not usable)
        return False
    return all(importlib.util.find_spec(name) is not None for name in ONNXRUNTIME_PACKAGES[1:])


def cache_folder() -> Path:
    """Where exported networks are kept: ``HYPERSPACE_CACHE_DIR``, else the platform's per-user cache folder."""
    if os.environ.get("HYPERSPACE_CACHE_DIR"):
        return Path(os.environ["HYPERSPACE_CACHE_DIR"]).expanduser()
    try:
        if sys.platform == "win32":
            base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
        elif sys.platform == "darwin":
            base = Path.home() / "Library" / "Caches"
        else:
            base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    except RuntimeError:  # no home folder (a container's user without one)
        raise UserError("no folder for the network cache (this user has no home folder): set HYPERSPACE_CACHE_DIR, "
                        "or use --backend torch") from None
    return base / "hyperspace-segmentation" / "networks"


def model_digest(model: Any) -> str:
    """A digest of a ``SegmentationModel``'s U-Net architecture and saved weights (the hypernetwork's for HyperSpace;
    not the template U-Net a HyperSpace model builds at load): the same in every process, wherever its file lies."""
    digest = hashlib.sha256(repr(model.unet_config).encode())
    for name, tensor in model.trainable().state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def exported_path(digest: str, spacing_key: tuple[float, ...] | None) -> Path:
    """The cache file of the network of model ``digest`` at ``spacing_key`` (None: a fixed-spacing model's own)."""
    from ..export import ONNX_OPSET

    spacing = "x".join(f"{s:g}" for s in spacing_key) if spacing_key else "fixed"
    torch_version = torch.__version__.split("+")[0]
    return cache_folder() / digest / f"{spacing}mm-opset{ONNX_OPSET}-torch{torch_version}-v{EXPORT_FORMAT}.onnx"


class OnnxRuntimeNetwork:
    """A network exported to ONNX, run by ONNX Runtime on the CPU: called like the torch network it replaces,
    with a float32 tensor ``(batch, channels, *shape)``, it returns the logits as a tensor."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: no notes on the console of a run
        options.enable_cpu_mem_arena = False  # an arena keeps the largest pass's memory (GBs at 1 mm) after the run
        self.path = path
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if [i.name for i in inputs] != ["image"] or len(outputs) != 1 or len(inputs[0].shape) != len(outputs[0].shape):
            raise ValueError(f"{path} is not a network of this version's interface")  # another writer's: re-export

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        array = images.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {"image": array})[0])


def onnxruntime_network(unet: nn.Module, digest: str, spacing_key: tuple[float, ...] | None,
                        note: Callable[[str], None] | None = None) -> OnnxRuntimeNetwork:
    """``unet`` (a plain U-Net) as an ``OnnxRuntimeNetwork``: the cached export of model ``digest`` at
    ``spacing_key``, exported first (in default memory order) if missing, unreadable or of another interface (saying
    so through ``note``). A ``UserError`` if the packages are missing or the export fails."""
    if not onnxruntime_installed():
        raise UserError(ONNXRUNTIME_MISSING)
    path = exported_path(digest, spacing_key)
    threads = torch.get_num_threads()
    if path.is_file():
        try:
            return OnnxRuntimeNetwork(path, threads)
        except Exception:  # noqa: BLE001  (a damaged cache file, of any error type: export it again)
            pass
    if note is not None:
        note(f"note: exporting the network for ONNX Runtime (once per model and spacing) to {path.parent}")
    _export(unet.in_default_order() if isinstance(unet, UNet) else unet, path)
    try:
        return OnnxRuntimeNetwork(path, threads)
    except Exception as error:  # noqa: BLE001  (ONNX Runtime raises its own types)
        raise UserError(f"ONNX Runtime could not load the exported network ({error_line(error)}): use --backend "
                        "torch") from None


def _export(unet: nn.Module, path: Path) -> None:
    """Export ``unet`` to ``path`` through a temporary file, so that no reader sees half a file; a ``UserError`` if
    the exporter fails."""
    from ..export import write_onnx
    from ..io.outputs import atomic_output

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path, overwrite=True) as temporary:
            write_onnx(unet, unet.config, temporary, instead="use --backend torch")
    except OSError as error:
        raise UserError(f"cannot write to the network cache {path.parent} ({error.strerror or error}): set "
                        "HYPERSPACE_CACHE_DIR to a writable folder, or use --backend torch") from None
