"""Export image and text classifiers to deployable ONNX / OpenVINO artifacts, load them, and gate them.

Standalone: depends only on torch, numpy, onnx, onnxscript, onnxruntime, openvino and nncf, and
imports the runtimes lazily (``import exporters`` stays cheap).

Typical use::

    art = exporters.export(model, "onnx", "int8", out_dir, example_input=x[:2], calibration=calib)
    pred = exporters.load(art, "onnx", threads=1)
    report = exporters.validate(pred, model, x_test, y_test, max_accuracy_drop=1.0)

Inputs
------
Image classifier: ``forward(x)`` takes one float32 (B,C,H,W) tensor; the graph input is ``input``.

Text classifier ("packed text input"): ``forward(x)`` takes ONE int64 tensor of shape (B, 2, L) with
``x[:, 0]`` = input_ids and ``x[:, 1]`` = attention_mask (1 = real token, 0 = padding), and returns
(B, num_classes) float logits. Text mode is detected from ``example_input`` (:func:`is_text_input`:
an integer dtype, 3 dims, ``shape[1] == 2``). The exported graphs have two int64 inputs named
``input_ids`` and ``attention_mask`` (:data:`TEXT_INPUT_NAMES`), each (batch, sequence) with both dims
symbolic, and the output ``logits`` (batch, classes); every ONNX export is run at (batch, sequence)
(1, 5) and (3, 37) before it is accepted (lengths capped at ``example_input``'s: pass an example as
long as the longest input the model takes, e.g. padded to its max length).
``calibration`` is then a packed (N,2,L) integer array of real samples, and the loaded predictors,
:func:`validate` and :func:`measure_bytes` take packed (B,2,L) arrays (predictors detect a text model
from its two inputs named ``input_ids``/``attention_mask``)::

    x = np.stack([input_ids, attention_mask], axis=1)       # (N, 2, L) int64
    art = exporters.export(model, "openvino", "int8", out_dir, example_input=torch.from_numpy(x[:2]),
                           calibration=x[:300])
    logits = exporters.load(art, "openvino").predict(x[:8])    # (8, num_classes) float32

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
A format is one file and one registration line; nothing else in the project names a format (the planner,
export, bench, bundle, the reference exports, int8 diagnosis and the fingerprint read it from the registry):

1. Create ``exporters/<fmt>.py`` with a subclass of ``Exporter``, decorated with ``@register``, that declares

   - ``name = "<fmt>"``, ``precisions = (...)`` and ``main_suffix`` (how the file a runtime opens ends);
   - ``export`` (write only the final files into ``out_dir``, intermediates in a temp dir; return an
     :class:`Artifact` listing *every* file; ``starts_from_onnx = True`` if it can start from a given fp32
     ONNX file), ``load`` (an object with ``predict(x) -> logits`` and ``runtime``: the accuracy gate) and
     ``runtime`` (name and version); ``size`` if its exact size is not the sum of its files;
   - ``runner``: how the torch-free timing harness (``prokt_deploy/harness``) runs its artifacts on the host,
     in worker processes and on boards: a built-in runner's name (``"onnxruntime"``, ``"openvino"``), or a
     runner class written in the same file, self-contained (it imports its runtime in its methods and uses
     only numpy): the harness runs that class's source alone and bundles ship it (see
     ``prokt_deploy/harness/runners.py`` for what a runner declares, what ``--device`` means for it included);
   - optionally the int8 hooks: ``executed_graph`` (int8 diagnosis: the runtime's executed graph) and
     ``accuracy_aware`` (accuracy-aware int8); a format without them is benchmarked and gated all the same.

   Import the runtime lazily through ``_common.require(module, pip_name)`` so a missing runtime raises
   :class:`BackendMissingError`.
2. Import the module in this file next to ``from . import onnx`` (the registration line), and add a default
   tolerance for any new precision to ``TOLERANCES`` in ``exporters/validate.py``.
3. ``tests/test_exporters_image.py`` parametrizes over ``PRECISIONS``, so the new format is exported and
   validated there automatically; add format-specific checks (file layout, batch) as needed.
   ``tests/extra_format.py`` is a complete example registered from one file (``tests/test_extra_format.py``).

Precision choices: ONNX int8 is onnxruntime static QDQ, per-channel QInt8 weights, QUInt8 activations
(U8S8: the type onnxruntime fuses into QLinearConv everywhere; global average pooling exported as
GlobalAveragePool so it runs as QLinearGlobalAveragePool; a first conv reading 1-3 channels stays fp32,
which onnxruntime runs 6x faster than its int8 kernel) with 7-bit weights (``reduce_range``: no int16 saturation on AVX2 CPUs without VNNI); OpenVINO
int8 is NNCF post-training quantization with full bias correction. fp32 artifacts must match PyTorch to
1e-4, fp16 to 5e-2 (weights rounded to fp16, error scales with the logits), int8 is judged by accuracy
drop and top-1 agreement (see ``exporters/onnx.py``, ``exporters/openvino.py``, ``exporters/validate.py``).
Text int8 differs: ONNX quantizes only MatMul/Gemm/Gather (the embedding table is stored as int8);
OpenVINO uses NNCF's TRANSFORMER model type, symmetric activations with min/max ranges and 7-bit
weights everywhere, then ``compress_weights``; both are measured and explained in those modules.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

# Format modules register themselves on import (they import their runtimes lazily), in this order (the registry's).
# isort: off
from . import onnx as _onnx_format  # noqa: F401
from . import openvino as _openvino_format  # noqa: F401
from . import litert as _litert_format  # noqa: F401
from . import executorch as _executorch_format  # noqa: F401

# isort: on
from ._common import Artifact, BackendMissingError, ExportError, Predictor, artifact_bytes, frozen_eval
from ._text import TEXT_INPUT_NAMES, is_text_input
from .accuracy_aware import AccuracyAwareResult, export_accuracy_aware  # noqa: E402
from .registry import FORMATS, PRECISIONS, Exporter, default_formats, formats_with, formats_with_accuracy_aware, get_exporter, main_file, register
from .size import measure_bytes  # noqa: E402
from .validate import Validation, default_tolerance, predict_logits, reference_logits, validate

__all__ = [
    "AccuracyAwareResult",
    "FORMATS",
    "PRECISIONS",
    "TEXT_INPUT_NAMES",
    "Artifact",
    "BackendMissingError",
    "ExportError",
    "Exporter",
    "Predictor",
    "Validation",
    "artifact_bytes",
    "default_formats",
    "default_tolerance",
    "predict_logits",
    "export",
    "export_accuracy_aware",
    "formats_with",
    "formats_with_accuracy_aware",
    "get_exporter",
    "is_text_input",
    "load",
    "main_file",
    "measure_bytes",
    "register",
    "reference_logits",
    "validate",
]


def _check_precision(fmt: str, precision: str) -> None:
    valid = PRECISIONS[fmt]
    if precision not in valid:
        raise ExportError(f"unknown precision {precision!r} for format {fmt!r}; valid precisions: {', '.join(valid)}")


def _check_calibration(calibration: np.ndarray, example_input: torch.Tensor) -> np.ndarray:
    if is_text_input(example_input):
        return _check_text_calibration(calibration)
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


def _check_text_calibration(calibration: np.ndarray) -> np.ndarray:
    """A non-empty packed (N,2,L) integer array with ids >= 0 and a 0/1 mask, as C-contiguous int64."""
    calib = np.asarray(calibration)
    if not is_text_input(calib) or len(calib) == 0 or calib.shape[2] == 0:
        raise ExportError(
            "the model is a text model (example_input is a packed (B,2,L) integer tensor), so calibration must "
            "be a non-empty packed (N,2,L) integer array of real samples (row 0 input_ids, row 1 attention_mask), "
            f"got a {calib.dtype} array of shape {calib.shape}"
        )
    calib = np.ascontiguousarray(calib, dtype=np.int64)
    if calib[:, 0].min() < 0:
        raise ExportError("calibration input_ids (row 0) contain negative token ids")
    if not np.isin(calib[:, 1], (0, 1)).all():
        raise ExportError("calibration attention_mask (row 1) must contain only 0 (padding) and 1 (real token)")
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
    fp32_onnx: str | os.PathLike[str] | None = None,
) -> Artifact:
    """Export an image or text classifier into ``out_dir``.

    Image: ``example_input`` float (B,C,H,W), ``model(x) -> (B,num_classes)`` logits. Text:
    ``example_input`` a packed (B,2,L) integer tensor (row 0 input_ids, row 1 attention_mask; see the
    module docstring); the graph gets int64 inputs ``input_ids`` and ``attention_mask``.
    ``fmt`` is a key of :data:`FORMATS` and ``precision`` one of ``PRECISIONS[fmt]``; anything else raises
    :class:`ExportError` listing the valid names. ``int8`` needs ``calibration``: real samples, an (N,C,H,W)
    float32 array (image) or a packed (N,2,L) integer array (text, any L). Files are named after ``name``
    (``name.onnx``; ``name.xml`` + ``name.bin``), so use a distinct ``name`` or ``out_dir`` per precision.
    The batch dimension (text: batch and sequence) stays dynamic. The model is exported in eval mode
    under ``torch.no_grad``; its train/eval mode is restored afterwards.

    ``fp32_onnx``: the fp32 ONNX file this same model (same weights) was already exported to with
    ``export(model, "onnx", "fp32", ...)``. The onnx int8 and every openvino export start from an fp32
    ONNX export; given this file they start from it instead of exporting the model again (it is read,
    never changed). The caller vouches that it is this model's; a missing file raises :class:`ExportError`.
    """
    exporter = get_exporter(fmt)
    _check_precision(fmt, precision)
    text = isinstance(example_input, torch.Tensor) and is_text_input(example_input)
    if not isinstance(example_input, torch.Tensor) or not (text or example_input.ndim == 4):
        raise ExportError(
            "example_input must be a float32 (B,C,H,W) torch.Tensor (image model) or a packed (B,2,L) int64 "
            "torch.Tensor of input_ids and attention_mask (text model)"
        )
    calib: np.ndarray | None = None
    if precision == "int8":
        if calibration is None:
            what = (
                "<(N,2,L) int64 packed input_ids/attention_mask of real samples, e.g. a few hundred training texts>"
                if text
                else "<(N,C,H,W) float32 real samples, e.g. a few hundred training images>"
            )
            raise ExportError(f"{fmt} int8 needs calibration data: pass calibration={what}")
        calib = _check_calibration(calibration, example_input)
    reuse = None
    if fp32_onnx is not None:
        reuse = Path(fp32_onnx)
        if not reuse.is_file():
            raise ExportError(f"fp32_onnx {reuse} is not a file: pass this model's fp32 ONNX export, or None")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with frozen_eval(model):
        return exporter.export(
            model,
            precision,
            out,
            example_input=example_input.detach().to(torch.int64 if text else torch.float32),
            calibration=calib,
            name=name,
            opset=opset,
            **({"fp32_onnx": reuse} if reuse is not None and exporter.starts_from_onnx else {}),
        )


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
    The returned object has ``predict(x) -> float32 logits`` and ``runtime``; ``x`` is a float32 (B,C,H,W)
    batch, or for a text model (graph inputs ``input_ids`` + ``attention_mask``) a packed (B,2,L) int array.
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
