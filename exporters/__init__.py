"""Export image classifiers to deployable ONNX / OpenVINO artifacts, load them, and gate them.

Standalone: depends only on torch, numpy, onnx, onnxscript, onnxruntime, openvino and nncf, and
imports the runtimes lazily (``import exporters`` stays cheap).

Typical use::

    art = exporters.export(model, "onnx", "int8", out_dir, example_input=x[:2], calibration=calib)
    pred = exporters.load(art, "onnx", threads=1)
    report = exporters.validate(pred, model, x_test, y_test, max_accuracy_drop=1.0)

Registry
--------
``FORMATS`` maps a format name to an :class:`~exporters.registry.Exporter` instance and ``PRECISIONS``
maps it to the precisions it supports. Each format lives in one module (``exporters/onnx.py``,
``exporters/openvino.py``) and registers itself with the ``@register`` decorator from
``exporters/registry.py`` when imported below. :func:`export` and :func:`load` only validate their
arguments and dispatch to the registered exporter. Every ONNX export is checked to really run with
other batch sizes (not just declared symbolic) before it is accepted.

Adding a format
---------------
1. Create ``exporters/<fmt>.py`` with a subclass of ``Exporter`` that sets ``name = "<fmt>"`` and
   ``precisions = (...)`` and implements ``export`` (write only the final files into ``out_dir``,
   intermediates in a temp dir; return an :class:`Artifact` listing *every* file), ``load`` (return an
   object with ``predict(x) -> logits`` and ``runtime``) and ``runtime``; decorate it with ``@register``.
   Import the runtime lazily through ``_common.require(module, pip_name)`` so a missing runtime raises
   :class:`BackendMissingError`.
2. Import the module in this file next to ``from . import onnx`` and add a default tolerance for any
   new precision to ``TOLERANCES`` in ``exporters/validate.py``.
3. ``tests/test_exporters.py`` parametrizes over ``PRECISIONS``, so the new format is exported and
   validated there automatically; add format-specific checks (file layout, batch) as needed.

Precision choices: ONNX int8 is onnxruntime static QDQ, per-channel QInt8 weights, QInt8 activations
(S8S8) with 7-bit weights (``reduce_range``: no int16 saturation on AVX2 CPUs without VNNI); OpenVINO
int8 is NNCF post-training quantization with full bias correction. fp32 artifacts must match PyTorch to
1e-4, fp16 to 5e-2 (weights rounded to fp16, error scales with the logits), int8 is judged by accuracy
drop and top-1 agreement (see ``exporters/onnx.py``, ``exporters/openvino.py``, ``exporters/validate.py``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ._common import Artifact, BackendMissingError, ExportError, Predictor, artifact_bytes
from .registry import FORMATS, PRECISIONS, Exporter, get_exporter, register
from .validate import Validation, default_tolerance, validate

# Format modules register themselves on import (they import their runtimes lazily).
from . import onnx as _onnx_format  # noqa: E402,F401
from . import openvino as _openvino_format  # noqa: E402,F401
from .size import measure_bytes  # noqa: E402

__all__ = [
    "FORMATS",
    "PRECISIONS",
    "Artifact",
    "BackendMissingError",
    "ExportError",
    "Exporter",
    "Predictor",
    "Validation",
    "artifact_bytes",
    "default_tolerance",
    "export",
    "load",
    "measure_bytes",
    "register",
    "validate",
]


def _check_precision(fmt: str, precision: str) -> None:
    valid = PRECISIONS[fmt]
    if precision not in valid:
        raise ExportError(f"unknown precision {precision!r} for format {fmt!r}; valid precisions: {', '.join(valid)}")


def _check_calibration(calibration: np.ndarray, example_input: torch.Tensor) -> np.ndarray:
    calib = np.ascontiguousarray(calibration, dtype=np.float32)
    if calib.ndim != 4 or len(calib) == 0:
        raise ExportError(f"calibration must be a non-empty (N,C,H,W) float32 array, got shape {calib.shape}")
    if tuple(calib.shape[1:]) != tuple(example_input.shape[1:]):
        raise ExportError(
            f"calibration samples have shape {tuple(calib.shape[1:])} but example_input has "
            f"{tuple(example_input.shape[1:])}; pass real preprocessed samples of the model's input shape"
        )
    if not np.isfinite(calib).all():
        raise ExportError("calibration contains NaN/inf values")
    return calib


def export(
    model: torch.nn.Module,
    fmt: str,
    precision: str,
    out_dir: str | os.PathLike[str],
    *,
    example_input: torch.Tensor,
    calibration: np.ndarray | None = None,
    name: str = "model",
    opset: int = 18,
) -> Artifact:
    """Export an image classifier (float32 (B,C,H,W) -> (B,num_classes) logits) into ``out_dir``.

    ``fmt`` is a key of :data:`FORMATS` and ``precision`` one of ``PRECISIONS[fmt]``; anything else raises
    :class:`ExportError` listing the valid names. ``int8`` needs ``calibration``: real samples, an (N,C,H,W)
    float32 array. Files are named after ``name`` (``name.onnx``; ``name.xml`` + ``name.bin``), so use a
    distinct ``name`` or ``out_dir`` per precision. The batch dimension stays dynamic. The model is
    exported in eval mode under ``torch.no_grad``; its train/eval mode is restored afterwards.
    """
    exporter = get_exporter(fmt)
    _check_precision(fmt, precision)
    if not isinstance(example_input, torch.Tensor) or example_input.ndim != 4:
        raise ExportError("example_input must be a float32 (B,C,H,W) torch.Tensor")
    calib: np.ndarray | None = None
    if precision == "int8":
        if calibration is None:
            raise ExportError(
                f"{fmt} int8 needs calibration data: pass calibration=<(N,C,H,W) float32 real samples, "
                "e.g. a few hundred training images>"
            )
        calib = _check_calibration(calibration, example_input)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return exporter.export(
                model,
                precision,
                out,
                example_input=example_input.detach().to(torch.float32),
                calibration=calib,
                name=name,
                opset=opset,
            )
    finally:
        model.train(was_training)


def load(
    artifact_or_files: Artifact | str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    fmt: str,
    *,
    device: str = "CPU",
    threads: int | None = None,
) -> Predictor:
    """Open an artifact (an :class:`Artifact`, one path, or its list of files) in ``fmt``'s runtime.

    onnx: onnxruntime, CPUExecutionProvider (CUDA provider for ``device`` "cuda"/"GPU" when available),
    ``intra_op_num_threads=threads``, one inter-op thread. openvino: ``core.compile_model(xml, device)``
    with ``PERFORMANCE_HINT=LATENCY`` and ``INFERENCE_NUM_THREADS=threads`` when given.
    The returned object has ``predict(x: float32 (B,C,H,W)) -> float32 logits`` and ``runtime``.
    """
    exporter = get_exporter(fmt)
    if isinstance(artifact_or_files, Artifact):
        if artifact_or_files.format != fmt:
            raise ExportError(f"artifact is {artifact_or_files.format!r}, not {fmt!r}")
        files = list(artifact_or_files.files)
    elif isinstance(artifact_or_files, (str, os.PathLike)):
        files = [Path(artifact_or_files)]
    else:
        files = [Path(f) for f in artifact_or_files]
    missing = [str(f) for f in files if not Path(f).exists()]
    if missing:
        raise ExportError(f"artifact files not found: {', '.join(missing)}")
    return exporter.load([Path(f) for f in files], device=device, threads=threads)
