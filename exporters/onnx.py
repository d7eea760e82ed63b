"""ONNX format: one self-contained ``<name>.onnx`` file, run with onnxruntime.

fp32: ``torch.onnx.export(dynamo=True, external_data=False)`` with a symbolic batch dimension; if the
batch comes out fixed (or the dynamo export fails) it falls back to the TorchScript exporter at opset 17
with ``dynamic_axes``. Every file is checked with ``onnx.checker.check_model(full_check=True)``.

The dynamo exporter attaches debug metadata to every node (FX node text, module names, Python stack
traces with absolute paths); it is stripped before saving, which makes the file smaller, reproducible
across machines/checkouts and free of local paths.

int8: onnxruntime ``quant_pre_process`` then ``quantize_static`` in QDQ format, per-channel QInt8
weights with ``reduce_range=True`` (7-bit weights) and, for image models, QUInt8 activations (U8S8),
MinMax calibration; a spatial ``ReduceMean`` (global average pooling) is rewritten to
``GlobalAveragePool`` first (:func:`_pool_as_global_average`).

The goal is an int8 file that *runs* in int8: every Conv/Gemm of onnxruntime's optimized graph
(``SessionOptions.optimized_model_filepath``, ``ORT_ENABLE_ALL``) a QLinearConv/QGemm, the residual Adds
QLinearAdd, the pooling QLinearGlobalAveragePool, and only one QuantizeLinear (the input) and one
DequantizeLinear (the logits) left. One exception, measured: a first conv that reads 1-3 channels (a grey
or RGB image) stays fp32, and the one QuantizeLinear follows its ReLU (and pooling), because onnxruntime's
int8 kernels run it 6x slower than fp32 (:func:`_float_stem`; ``FLOAT_STEM_MAX_CHANNELS = 0`` turns it off). Measured on resnet-w8-d1 (onnxruntime 1.32, 1x28x28 input):

* S8S8 activations: 6 of 9 Conv stayed float Conv and 2 of 3 residual Adds float Add between
  DequantizeLinear/QuantizeLinear (18 DequantizeLinear, 10 QuantizeLinear, 6 Transpose executed): onnxruntime
  fuses an s8 QDQ Conv only when its input QuantizeLinear has one consumer, and in a residual net the
  block input feeds both the conv and the shortcut. ``DedicatedQDQPair`` changes nothing;
  ``ActivationSymmetric`` fuses one more conv. U8S8: all 9 Conv QLinearConv, all 3 Adds QLinearAdd.
* ``x.mean(dim=(2, 3))`` exports as ``ReduceMean``, which onnxruntime has no quantized kernel for: it ran
  in float between a DequantizeLinear and a QuantizeLinear. ``GlobalAveragePool`` + ``Flatten`` computes the
  same (max difference 1.5e-8 in fp32) and fuses to QLinearGlobalAveragePool.
* Latency (1 thread, 1x28x28, AMD EPYC Zen 2, AVX2 only, no VNNI; median of 5 interleaved rounds,
  two runs on a shared 2-core machine): resnet-w8-d1 int8 went from 0.54-0.56x its fp32 speed to
  0.72-0.73x at batch 1 and from 0.50-0.56x to 0.62-0.75x at batch 32; cnn-w8-d1 (already all
  QLinearConv with S8S8; only the pooling changed) stayed at ~0.5x / ~0.4x, cnn-w32-d2 at 0.98x / 0.99x.
  Without int8 dot products (VNNI) an int8 convolution costs about as much as fp32 FMAs plus the
  requantization, so int8 is still slower here; the bench then recommends the fp32 file
  (``prokt_deploy/benchmarking/bench.py``). Accuracy: identical to S8S8 on the tests' digits CNN.

* ``reduce_range=True`` is required on CPUs without VNNI (AVX2 only, like this one): onnxruntime's
  u8*s8 kernels use ``vpmaddubsw``, which saturates the int16 sum of two products when per-channel
  weights span the full 8-bit range. Measured on the tiny digits CNN: full-range per-channel weights gave
  91.75% top-1 agreement with PyTorch and a 6.5-point accuracy drop in onnxruntime (the same QDQ file
  gave 99% in OpenVINO); with 7-bit weights 98.75% agreement and no accuracy drop.
* S8S8 vs U8S8 activations: identical accuracy here, but only U8S8 fuses every conv of a residual
  net (above). Text models keep S8S8 (measured there, below; their MatMuls are not affected).
* QOperator and dynamic quantization are several times slower than fp32 on this CPU: not offered.

Text models (packed (B,2,L) int64 example input, see ``exporters/_text.py``) export through
:class:`~exporters._text.PackedTextAdapter`: two int64 inputs ``input_ids`` and ``attention_mask``,
batch and sequence both symbolic (dynamo ``dynamic_shapes`` with one ``Dim`` each, shared by the two
inputs; the example is tiled to batch >= 2 and sequence >= 3 because torch.export specializes size-1
dims). The file is run in onnxruntime at (batch, sequence) (1, 5) and (3, 37) before it is accepted,
lengths capped at the example's (a model with learned positions takes no more than its max length)
(the dynamo exporter can silently fix a transformer's batch to 1) and falls back to TorchScript like
the image path. Before each dynamo export the dispatch cache of the recurrent aten ops is emptied
(see :func:`_clear_rnn_dispatch_cache`): otherwise only the first ``nn.LSTM`` export in a process keeps
the sequence dynamic.

Text int8: the same QDQ S8S8 setup, per-channel 7-bit weights, but only ``MatMul``, ``Gemm`` and
``Gather`` are quantized (:data:`TEXT_OP_TYPES`). ``Gather`` is the embedding lookup: its table is
stored as int8 (quantized like an activation, per tensor), so the file shrinks with the embedding
that dominates small text models (measured on the tests' transformer and BiLSTM with a 2000 x 32
vocabulary: 306,840 -> 102,017 B and 289,608 -> 95,759 B, 0.33x). Measured on those two models trained
on a synthetic sentiment task (3 seeds, 400 test sentences of up to 37 tokens, top-1 agreement with
PyTorch):

* every QDQ op type (onnxruntime's default) also quantizes Softmax, LayerNormalization, Where, ...:
  the transformer's agreement fell to 64% (max logit error 9.4); MatMul/Gemm/Gather only: 99-100%.
* per-channel + ``reduce_range`` (as for images): transformer 100/99.75/98.75%, BiLSTM
  98.75/99.5/99.75%, max logit error 0.36-0.61. Full-range per-channel weights: transformer
  99.75/98.0/95.0% (max error up to 2.8; the non-VNNI saturation above); per-tensor 8-bit weights:
  100/99.25/99.5% and 99.75/99.25/98.0%. Per-channel + ``reduce_range`` is kept for text too.
* onnxruntime's ``quant_pre_process`` gives up on a model that slices a learned position table to the
  input length unless ``auto_merge=True`` (see :func:`_pre_process`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from ._common import Artifact, ExportError, Predictor, as_batch, move_into, quiet, require
from ._text import (
    TEXT_INPUT_NAMES,
    PackedTextAdapter,
    example_export_batch,
    example_text_batch,
    is_text_input,
    is_text_names,
    text_check_shapes,
    text_feed,
)
from .registry import Exporter, register

__all__ = [
    "ACTIVATION_TYPE",
    "TEXT_ACTIVATION_TYPE",
    "CALIBRATION_BATCH",
    "REDUCE_RANGE",
    "TEXT_OP_TYPES",
    "TEXT_PER_CHANNEL",
    "TEXT_REDUCE_RANGE",
    "OnnxExporter",
    "OrtPredictor",
    "batch_is_symbolic",
    "export_onnx_fp32",
]

#: Activation type of an image model's int8 QDQ file ("QInt8" = S8S8 or "QUInt8" = U8S8): U8S8 is what
#: onnxruntime fuses into QLinearConv everywhere, residual blocks included (see the module docstring).
ACTIVATION_TYPE = "QUInt8"

#: Text models keep S8S8 activations (their accuracy was measured with it, see the module docstring).
TEXT_ACTIVATION_TYPE = "QInt8"

#: 7-bit weights: avoids int16 saturation in u8s8 kernels on non-VNNI x86 CPUs (see module docstring).
REDUCE_RANGE = True

#: Text models: per-channel weights, 7-bit range and the op types quantized (see the module docstring).
TEXT_PER_CHANNEL = True
TEXT_REDUCE_RANGE = True
TEXT_OP_TYPES: tuple[str, ...] = ("MatMul", "Gemm", "Gather")

#: A first convolution reading at most this many input channels (a grey or RGB image) stays fp32 in the int8
#: ONNX file, the quantization point moved past its ReLU and pooling (measured in :func:`_float_stem`).
#: 0 quantizes every conv (the file then runs every Conv as QLinearConv).
FLOAT_STEM_MAX_CHANNELS = 3

#: Samples per calibration batch fed to onnxruntime's calibrator (small: keeps memory flat).
CALIBRATION_BATCH = 16


def _onnx():  # module
    return require("onnx")


def _ort():  # module
    return require("onnxruntime")


def ort_runtime() -> str:
    """``"onnxruntime <version>"``."""
    return f"onnxruntime {_ort().__version__}"


def batch_is_symbolic(path: str | os.PathLike[str]) -> bool:
    """True when dim 0 of every graph input and of the first output is symbolic (not a fixed number).

    A text model (inputs ``input_ids`` + ``attention_mask``) must also have a symbolic dim 1 (sequence)
    on both inputs.
    """
    onnx = _onnx()
    model = onnx.load(str(path), load_external_data=False)
    inputs = list(model.graph.input)
    text = is_text_names([i.name for i in inputs])
    for value in (*inputs, model.graph.output[0]):
        dims = value.type.tensor_type.shape.dim
        symbolic = [not d.HasField("dim_value") for d in dims]
        if not symbolic or not symbolic[0]:
            return False
        if text and value in inputs and (len(symbolic) != 2 or not symbolic[1]):
            return False
    return True


def _batch_problem(path: Path, example: torch.Tensor | np.ndarray) -> str | None:
    """Run the file in onnxruntime at new shapes; describe what breaks, or ``None`` if all work.

    Images run at batch 1 and 3. Text runs at the (batch, sequence) shapes of :func:`text_check_shapes`
    ((1, 5) and (3, 37), never longer than ``example``), built from ``example``'s real tokens. The declared shapes alone are not enough: the
    TorchScript exporter labels dim 0 with its ``dynamic_axes`` name even when ``forward`` hard-codes the
    batch size, and the dynamo exporter can silently fix the batch of a transformer encoder to 1.
    """
    ort = _ort()
    so = ort.SessionOptions()
    so.log_severity_level = 4  # the failure is reported through the return value, not the ORT log
    so.intra_op_num_threads = 1
    sample = np.asarray(example.detach().cpu().numpy() if isinstance(example, torch.Tensor) else example)
    try:
        session = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        if is_text_names(names):
            feeds = [(f"batch {b}, sequence {n}", b, text_feed(example_text_batch(sample, b, n))) for b, n in text_check_shapes(sample.shape[2])]
        else:
            image = sample[:1].astype(np.float32)
            feeds = [(f"batch {b}", b, {names[0]: np.repeat(image, b, axis=0)}) for b in (1, 3)]
        for what, b, feed in feeds:
            (out,) = session.run(None, feed)[:1]
            if out.shape[0] != b:
                return f"{what} gave output shape {tuple(out.shape)}"
    except Exception as exc:  # any runtime failure means the dims are not really dynamic
        return f"onnxruntime failed at a new input shape: {type(exc).__name__}: {str(exc)[:300]}"
    return None


def _example_batch(example_input: torch.Tensor) -> torch.Tensor:
    """A batch of at least 2: torch.export specializes a batch of 1 to a constant."""
    ex = example_input.detach().to(torch.float32)
    if ex.ndim != 4:
        raise ExportError(f"example_input must be a (B,C,H,W) tensor, got shape {tuple(ex.shape)}")
    if ex.shape[0] < 2:
        ex = ex[:1].repeat(2, 1, 1, 1)
    return ex


def _strip_debug_metadata(path: Path) -> None:
    """Remove per-node debug metadata/doc strings (stack traces, FX text) and re-save as one file."""
    onnx = _onnx()
    model = onnx.load(str(path))

    def strip(graph) -> None:  # onnx.GraphProto
        for node in graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
            for attr in node.attribute:
                if attr.HasField("g"):
                    strip(attr.g)
                for sub in attr.graphs:
                    strip(sub)

    strip(model.graph)
    for fn in model.functions:
        for node in fn.node:
            del node.metadata_props[:]
            node.doc_string = ""
    onnx.save_model(model, str(path), save_as_external_data=False)


def _remove(path: Path) -> None:
    for p in (path, path.with_name(path.name + ".data")):
        if p.exists():
            p.unlink()


#: Recurrent aten ops whose cached dispatch makes torch.export specialize the sequence length.
_RNN_OPS = ("lstm", "gru", "rnn_tanh", "rnn_relu")


def _clear_rnn_dispatch_cache() -> None:
    """Empty the per-overload dispatch cache of the recurrent aten ops before a dynamo export.

    torch 2.13: the first dynamo export of an ``nn.LSTM`` in a process keeps the sequence dim symbolic,
    but once ``aten.lstm`` has cached its dispatch (``OpOverload._dispatch_cache``) every later export
    runs its decomposition at trace time and guards the sequence length to the example's: the file ran
    at the example length only, and the runtime check sent it to the TorchScript fallback (a wasted
    dynamo export, and a different file, so a different size, depending on what the process exported
    before). With the cache emptied every export takes the first path. Private API: if it moves,
    nothing is cleared and the runtime check + fallback still catch the fixed dim.
    """
    for name in _RNN_OPS:
        packet = getattr(torch.ops.aten, name, None)
        for overload in packet.overloads() if packet is not None else ():
            cache = getattr(getattr(packet, overload, None), "_dispatch_cache", None)
            if isinstance(cache, dict):
                cache.clear()


class _ExportSpec(NamedTuple):
    """What ``torch.onnx.export`` gets for one model (shared by the dynamo and TorchScript exporters)."""

    module: torch.nn.Module
    args: tuple[torch.Tensor, ...]
    input_names: list[str]
    dynamic_shapes: tuple[dict[int, Any], ...]  # dynamo
    dynamic_axes: dict[str, dict[int, str]]  # TorchScript


def _export_spec(model: torch.nn.Module, example_input: torch.Tensor) -> _ExportSpec:
    """Image: ``model`` itself with one float32 (B,C,H,W) input ``input``, batch dynamic. Text: a
    :class:`PackedTextAdapter` taking int64 ``input_ids`` and ``attention_mask``, batch and sequence
    dynamic on both (torch.export needs one ``Dim`` object per name, shared by the two inputs)."""
    if is_text_input(example_input):
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
        axes = {0: "batch", 1: "sequence"}
        return _ExportSpec(
            PackedTextAdapter(model),
            example_export_batch(example_input),
            list(TEXT_INPUT_NAMES),
            ({0: batch, 1: seq}, {0: batch, 1: seq}),
            {**{n: dict(axes) for n in TEXT_INPUT_NAMES}, "logits": {0: "batch"}},
        )
    return _ExportSpec(
        model,
        (_example_batch(example_input),),
        ["input"],
        ({0: torch.export.Dim("batch")},),
        {"input": {0: "batch"}, "logits": {0: "batch"}},
    )


def export_onnx_fp32(model: torch.nn.Module, example_input: torch.Tensor, path: Path, opset: int = 18) -> Path:
    """Export ``model`` (eval mode) to one self-contained fp32 ONNX file at ``path`` with a symbolic batch.

    Image models: input ``input`` (float32 (B,C,H,W)). Text models (``example_input`` a packed (B,2,L)
    integer tensor, see ``exporters/_text.py``): inputs ``input_ids`` and ``attention_mask`` (int64
    (batch, sequence), both dims symbolic). Output ``logits``. Tries the dynamo exporter (opset >= 18)
    first and falls back to ``dynamo=False, opset_version=17, dynamic_axes`` if that fails, fixes a
    dynamic dim, or does not run at other shapes in onnxruntime (see :func:`_batch_problem`).
    Raises :class:`ExportError` when neither gives working dynamic dims or the checker rejects the file.
    """
    require("onnxscript")  # needed by the dynamo exporter
    onnx = _onnx()
    text = is_text_input(example_input)
    module, args, input_names, dynamic_shapes, dynamic_axes = _export_spec(model, example_input)
    names = {"input_names": input_names, "output_names": ["logits"]}
    try:
        device = next(model.parameters()).device
        args = tuple(a.to(device) for a in args)
    except StopIteration:
        pass
    dims = "batch/sequence dimensions" if text else "batch dimension"
    problem = ""
    ok = False
    if opset >= 18:
        try:
            _clear_rnn_dispatch_cache()
            with torch.no_grad(), quiet():
                torch.onnx.export(
                    module,
                    args,
                    str(path),
                    dynamo=True,
                    external_data=False,
                    dynamic_shapes=dynamic_shapes,
                    opset_version=opset,
                    verbose=False,
                    **names,
                )
            ok = batch_is_symbolic(path)
            problem = "" if ok else f"the dynamo exporter fixed the {dims}"
            if ok and (runtime_problem := _batch_problem(path, example_input)):
                ok, problem = False, f"the dynamo export does not run at other input shapes ({runtime_problem})"
        except Exception as exc:  # any dynamo failure -> try the TorchScript exporter
            problem = f"dynamo export failed: {type(exc).__name__}: {str(exc)[:500]}"
    else:
        problem = f"opset {opset} < 18 is not supported by the dynamo exporter"
    if not ok:
        _remove(path)
        legacy_opset = min(opset, 17)
        try:
            with torch.no_grad(), quiet():
                torch.onnx.export(
                    module,
                    args,
                    str(path),
                    dynamo=False,
                    opset_version=legacy_opset,
                    dynamic_axes=dynamic_axes,
                    **names,
                )
        except Exception as exc:
            expected = "one int64 (B,2,L) packed tensor (input_ids, attention_mask)" if text else "one float32 (B,C,H,W) tensor"
            raise ExportError(
                f"ONNX export failed ({problem}; TorchScript fallback at opset {legacy_opset} failed too: "
                f"{type(exc).__name__}: {exc}). Make sure forward() takes {expected} and "
                "returns (B,num_classes) logits without data-dependent control flow."
            ) from exc
        legacy_problem = None if batch_is_symbolic(path) else f"it fixed the {dims}"
        legacy_problem = legacy_problem or _batch_problem(path, example_input)
        if legacy_problem:
            _remove(path)
            hint = (
                "Remove batch/length dependent code from forward() (e.g. x.view(2, -1) or a fixed sequence "
                f"length); it must run at (batch, sequence) "
                f"{' and '.join(map(str, text_check_shapes(int(example_input.shape[2]))))}."
                if text
                else "Remove batch-size dependent code (e.g. x.view(2, -1)) from forward(); use x.flatten(1)."
            )
            raise ExportError(f"ONNX export has no working dynamic {dims} ({problem}; TorchScript fallback: {legacy_problem}). {hint}")
        warnings.warn(f"ONNX export used the TorchScript fallback at opset {legacy_opset}: {problem}", stacklevel=3)
    sidecar = path.with_name(path.name + ".data")
    if sidecar.exists():
        raise ExportError(f"ONNX export wrote an external-data sidecar {sidecar.name}; the model is too large (>2 GB)")
    _strip_debug_metadata(path)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ExportError(f"onnx.checker rejected the exported model: {exc}") from exc
    return path


def _calibration_reader(data: np.ndarray, input_names: list[str], batch: int = CALIBRATION_BATCH):
    """An onnxruntime ``CalibrationDataReader`` over the calibration array in batches of ``batch``.

    Image: (N,C,H,W) float32, fed as ``{input: batch}``. Text (the graph's inputs are ``input_ids`` and
    ``attention_mask``): packed (N,2,L) int64, fed as ``{input_ids: ..., attention_mask: ...}``.
    """
    q = require("onnxruntime.quantization", "onnxruntime")
    text = is_text_names(input_names)

    def feed(chunk: np.ndarray) -> dict[str, np.ndarray]:
        return text_feed(chunk) if text else {input_names[0]: chunk}

    class _Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = [data[i : i + batch] for i in range(0, len(data), batch)]
            self._i = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self._i >= len(self._batches):
                return None
            self._i += 1
            return feed(self._batches[self._i - 1])

        def rewind(self) -> None:
            self._i = 0

    return _Reader()


def _pre_process(quant_pre_process, src: Path, dst: Path, text: bool) -> None:  # function
    """``quant_pre_process``; text models with ``auto_merge=True``.

    A text model that slices a learned position table to the input length (``pos[:L]``) has a dim
    ``Min(max_len, sequence)`` that onnxruntime's symbolic shape inference cannot prove equal to
    ``sequence``: without ``auto_merge`` it stops with "Incomplete symbolic shape inference" *and* saves
    ``sym_shape_infer_temp.onnx`` plus a ``<uuid>.data`` weights file into the current directory.
    ``auto_merge`` merges the two dims; where inference succeeds anyway it changes nothing. The image
    path keeps the defaults.
    """
    if text:
        quant_pre_process(str(src), str(dst), auto_merge=True)
    else:
        quant_pre_process(str(src), str(dst))


def _spatial_reduce_mean(node, inits: dict, ranks: dict) -> bool | None:  # onnx.NodeProto
    """``keepdims`` of a ``ReduceMean`` over axes (2, 3) of a 4-D tensor, or ``None`` for any other node."""
    helper = require("onnx.helper", "onnx")
    numpy_helper = require("onnx.numpy_helper", "onnx")
    if node.op_type != "ReduceMean" or node.domain not in ("", "ai.onnx") or ranks.get(node.input[0]) != 4:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    axes = attrs.get("axes")  # opset < 18: an attribute; opset >= 18: the second input
    if axes is None and len(node.input) > 1 and node.input[1] in inits:
        axes = numpy_helper.to_array(inits[node.input[1]]).tolist()
    if axes is None or sorted(int(a) % 4 for a in axes) != [2, 3] or attrs.get("noop_with_empty_axes", 0):
        return None
    return bool(attrs.get("keepdims", 1))


def _pool_as_global_average(path: Path) -> int:
    """Rewrite, in place, every ``ReduceMean`` over the spatial axes of a 4-D tensor as ``GlobalAveragePool``
    (followed by ``Flatten`` when the mean dropped the dims); return how many were rewritten.

    ``x.mean(dim=(2, 3))`` (and ``AdaptiveAvgPool2d(1)`` in some exports) becomes a ``ReduceMean``, for which
    onnxruntime has no quantized kernel: in the QDQ file it ran in float between DequantizeLinear and
    QuantizeLinear. ``GlobalAveragePool`` is the same computation and fuses to QLinearGlobalAveragePool;
    ``Flatten(axis=1)`` of its (B,C,1,1) output is the (B,C) of ``keepdims=0`` and needs no QDQ of its own
    (onnxruntime drops the QDQ pair around shape-only ops). Needs the shapes ``quant_pre_process`` infers.
    """
    onnx = _onnx()
    helper = require("onnx.helper", "onnx")
    model = onnx.load(str(path))
    graph = model.graph
    ranks = {
        v.name: len(v.type.tensor_type.shape.dim) for v in (*graph.value_info, *graph.input, *graph.output) if v.type.tensor_type.HasField("shape")
    }
    inits = {t.name: t for t in graph.initializer}
    nodes, rewritten = [], 0
    for node in graph.node:
        keepdims = _spatial_reduce_mean(node, inits, ranks)
        if keepdims is None:
            nodes.append(node)
            continue
        rewritten += 1
        pooled = node.output[0] if keepdims else f"{node.output[0]}_pooled"
        nodes.append(helper.make_node("GlobalAveragePool", [node.input[0]], [pooled], name=node.name))
        if not keepdims:
            nodes.append(helper.make_node("Flatten", [pooled], [node.output[0]], name=f"{node.name}_flatten", axis=1))
    if not rewritten:
        return 0
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name in used]  # the ReduceMean axes are no longer used
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.save_model(model, str(path), save_as_external_data=False)
    return rewritten


def _consumers(graph) -> dict[str, list]:  # onnx.GraphProto
    out: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def _float_stem(path: Path) -> list[str]:
    """Keep the first convolution of an image model in fp32 when it reads at most
    :data:`FLOAT_STEM_MAX_CHANNELS` channels; return the node names to exclude from quantization (empty:
    the graph has no such stem). ``path`` (the pre-processed fp32 graph) may be rewritten in place.

    Why: onnxruntime runs a conv with 1-3 input channels badly in int8. Its QLinearConv is an im2col GEMM
    with K = 9 x C_in (9 for a grey image), far below what the int8 kernels are blocked for, while the fp32
    conv runs on the NCHWc path that reads the NCHW input directly. Measured on pool-w16-d3 (1x28x28,
    batch 32, 1 thread, Intel Xeon with AVX512-VNNI and AMX-INT8, onnxruntime 1.32): the int8 stem took
    635 us against 106 us for the fp32 one, 60% of the whole int8 call; the int8 file ran 0.84x its fp32
    one. With the stem in fp32 it runs 1.64x (batch 32) and 1.30x (batch 1); cnn-w8-d1 0.56x -> 1.11x,
    resnet-w8-d1 0.91x -> 1.10x, wide-w64-d2 1.95x -> 1.85x (within the noise of one run); 3x32x32 inputs
    alike (docs/results.md, "ONNX int8 with a float stem"). The file grows by 3 bytes per stem weight.

    Where the quantization point goes: after the stem's ReLU (onnxruntime folds that ReLU into the
    QuantizeLinear), or, when a MaxPool follows the ReLU, after the pool, on a tensor 4x smaller. Then the
    two are swapped (``relu(maxpool(x)) == maxpool(relu(x))`` exactly): with the MaxPool right before the
    QuantizeLinear, onnxruntime's QDQ propagation moves the QuantizeLinear above it and runs a uint8 MaxPool
    in NCHW, which took 1.14 ms of a 1.87 ms call (the int8 file at 0.48x of fp32).
    """
    onnx = _onnx()
    helper = require("onnx.helper", "onnx")
    model = onnx.load(str(path))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in inits]
    consumers = _consumers(graph)
    if len(inputs) != 1 or len(consumers.get(inputs[0], [])) != 1:
        return []
    stem = consumers[inputs[0]][0]
    weight = inits.get(stem.input[1]) if stem.op_type == "Conv" and len(stem.input) > 1 else None
    if weight is None or len(weight.dims) != 4:
        return []
    group = next((helper.get_attribute_value(a) for a in stem.attribute if a.name == "group"), 1)
    if weight.dims[1] * group > FLOAT_STEM_MAX_CHANNELS:
        return []
    exclude = [stem.name]
    after = consumers.get(stem.output[0], [])
    if len(after) == 1 and after[0].op_type == "Relu":
        relu = after[0]
        exclude.append(relu.name)
        pooled = consumers.get(relu.output[0], [])
        if len(pooled) == 1 and pooled[0].op_type == "MaxPool" and len(pooled[0].output) == 1:
            pool = pooled[0]
            # relu(maxpool(x)) == maxpool(relu(x)); with the relu last, onnxruntime folds it into the
            # QuantizeLinear that follows and cannot move that QuantizeLinear above the fp32 MaxPool
            mid = f"{stem.output[0]}_pooled"
            pool.input[0], pool.output[0], relu.input[0], relu.output[0] = stem.output[0], mid, mid, pool.output[0]
            nodes = [n for n in graph.node if n is not relu]
            nodes.insert(nodes.index(pool) + 1, relu)
            del graph.node[:]
            graph.node.extend(nodes)
            exclude.append(pool.name)
            onnx.save_model(model, str(path), save_as_external_data=False)
    return exclude


def _quantize_int8(fp32_path: Path, out_path: Path, calibration: np.ndarray, tmp: Path, nodes_to_exclude: list[str] | None = None) -> None:
    """Static QDQ int8 of ``fp32_path``; ``nodes_to_exclude`` (names in ``tmp/preprocessed.onnx``) stay
    fp32 (the accuracy-aware search of ``exporters/accuracy_aware.py``)."""
    q = require("onnxruntime.quantization", "onnxruntime")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    onnx = _onnx()
    pre = tmp / "preprocessed.onnx"
    input_names = [i.name for i in onnx.load(str(fp32_path), load_external_data=False).graph.input]
    text = is_text_names(input_names)
    reader = _calibration_reader(calibration, input_names)
    options: dict[str, object] = {"per_channel": True, "reduce_range": REDUCE_RANGE}
    activation = ACTIVATION_TYPE
    if text:
        activation = TEXT_ACTIVATION_TYPE
        options = {
            "per_channel": TEXT_PER_CHANNEL,
            "reduce_range": TEXT_REDUCE_RANGE,
            "op_types_to_quantize": list(TEXT_OP_TYPES),
        }
    try:
        with quiet():
            _pre_process(quant_pre_process, fp32_path, pre, text)
            stem: list[str] = []
            if not text:
                _pool_as_global_average(pre)
                stem = _float_stem(pre) if FLOAT_STEM_MAX_CHANNELS else []
            q.quantize_static(
                str(pre),
                str(out_path),
                reader,
                quant_format=q.QuantFormat.QDQ,
                weight_type=q.QuantType.QInt8,
                activation_type=getattr(q.QuantType, activation),
                calibrate_method=q.CalibrationMethod.MinMax,
                use_external_data_format=False,
                nodes_to_exclude=[*stem, *(nodes_to_exclude or [])],
                **options,
            )
    except Exception as exc:
        expected = "(N,2,L) int64 packed input_ids/attention_mask" if text else "(N,C,H,W) float32"
        raise ExportError(
            f"onnxruntime static int8 quantization failed: {type(exc).__name__}: {exc}. "
            f"Check the calibration array ({expected} real samples) or export fp32 instead."
        ) from exc
    dims = "batch/sequence dimensions" if text else "batch dimension"
    if not batch_is_symbolic(out_path) or (problem := _batch_problem(out_path, calibration[:1])):
        raise ExportError(f"int8 ONNX model lost its dynamic {dims} during quantization" + (f" ({problem})" if batch_is_symbolic(out_path) else ""))
    _store_ints_as_raw(out_path)
    try:
        onnx.checker.check_model(str(out_path), full_check=True)
    except Exception as exc:
        raise ExportError(f"onnx.checker rejected the int8 model: {exc}") from exc


def _store_ints_as_raw(path: Path) -> None:
    """Re-save ``path`` with integer initializers in ``raw_data`` (fixed width) instead of ``int32_data``.

    onnxruntime's quantizer writes int8 zero points into ``int32_data``, a protobuf varint field where a
    negative value takes 10 bytes and a small positive one 1. An activation's zero point follows the
    calibration data's range, so the file size did too: the input's zero point was 15 with random samples
    and -50 with real digits samples, 9 bytes apart. As ``raw_data`` every value takes its dtype's size.
    """
    onnx = _onnx()
    numpy_helper = require("onnx.numpy_helper", "onnx")
    model = onnx.load(str(path))
    varint = [t for t in model.graph.initializer if len(t.int32_data) and not t.raw_data]
    for tensor in varint:
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))
    if varint:
        onnx.save_model(model, str(path), save_as_external_data=False)


class OrtPredictor:
    """onnxruntime session wrapper: ``predict(x) -> logits`` (float32)."""

    def __init__(self, path: Path, *, device: str = "CPU", threads: int | None = None) -> None:
        ort = _ort()
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads) if threads else 0
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        dev = device.lower()
        if dev in ("cuda", "gpu") or dev.startswith("cuda:"):
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
            else:
                warnings.warn("CUDAExecutionProvider is not available (pip install onnxruntime-gpu); using CPU", stacklevel=3)
        elif dev != "cpu":
            raise ExportError(f"unknown onnxruntime device {device!r}; use 'CPU' or 'cuda'")
        try:
            self._session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        except Exception as exc:
            raise ExportError(f"onnxruntime could not load {path}: {exc}") from exc
        self._inputs = [i.name for i in self._session.get_inputs()]
        self._input = self._inputs[0]
        #: True for a text model (inputs ``input_ids`` + ``attention_mask``): predict takes packed (B,2,L) ints.
        self.is_text = is_text_names(self._inputs)
        self._output = self._session.get_outputs()[0].name
        self.runtime = f"onnxruntime {ort.__version__}"
        self.providers: list[str] = self._session.get_providers()
        self.path = path

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Run the session on a float32 (B,C,H,W) image batch, or for a text model on a packed (B,2,L)
        integer batch (row 0 input_ids, row 1 attention_mask); returns float32 (B,num_classes)."""
        feed = text_feed(x) if self.is_text else {self._input: as_batch(x)}
        (out,) = self._session.run([self._output], feed)
        return np.asarray(out, dtype=np.float32)


# --- int8 diagnosis: the graph onnxruntime executes (prokt_deploy.benchmarking.int8_diagnosis) ---------

ORT_INT8_COMPUTE = {
    "QLinearConv",
    "QGemm",
    "QLinearMatMul",
    "MatMulInteger",
    "ConvInteger",
    "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul",
    "QAttention",
    "QLinearConvTranspose",
}
ORT_FLOAT_COMPUTE = {"Conv", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul", "ConvTranspose", "Attention"}
ORT_CONVERSIONS = {"QuantizeLinear", "DequantizeLinear", "Transpose", "ReorderInput", "ReorderOutput", "DynamicQuantizeLinear"}


def onnxruntime_executed_graph(path: Path, *, providers: list[str], threads: int) -> dict:
    """Compute ops of the graph onnxruntime executes (after its optimizer), split int8 / float."""
    from collections import Counter

    onnx, ort = _onnx(), _ort()
    with tempfile.TemporaryDirectory(prefix="prokt-ort-graph-") as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        so.optimized_model_filepath = str(optimized)
        ort.InferenceSession(str(path), sess_options=so, providers=providers)
        graph = onnx.load(str(optimized), load_external_data=False).graph
    int8, fp, stem, conversions, between = 0, [], [], Counter(), []
    producers = {out: node for node in graph.node for out in node.output}
    inputs = {i.name for i in graph.input}
    for node in graph.node:
        if node.op_type in ORT_INT8_COMPUTE:
            int8 += 1
        elif node.op_type in ORT_FLOAT_COMPUTE and node.input and node.input[0] in inputs:
            # the first conv of an image model, kept fp32 by the exporter (exporters/onnx.py, _float_stem)
            stem.append(f"{node.name} ({node.op_type}, float)")
        elif node.op_type in ORT_FLOAT_COMPUTE:
            fp.append(f"{node.name} ({node.op_type}, float)")
        elif node.op_type in ORT_CONVERSIONS:
            conversions[node.op_type] += 1
        elif any(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in node.input):
            between.append(f"{node.name} ({node.op_type})")  # a float op between DequantizeLinear and QuantizeLinear
    return {
        "runtime": "onnxruntime",
        "int8_layers": int8,
        "float_layers": fp,
        "float_stem": stem,
        "float_ops_between_qdq": between,
        "conversions": dict(conversions),
        "threads_used": threads,
    }


@register
class OnnxExporter(Exporter):
    """``onnx``: a single ``<name>.onnx`` file (fp32 or QDQ int8) for onnxruntime (or OpenVINO)."""

    name = "onnx"
    precisions = ("fp32", "int8")
    main_suffix = ".onnx"
    runner = "onnxruntime"
    starts_from_onnx = True

    def export(
        self,
        model: torch.nn.Module,
        precision: str,
        out_dir: Path,
        *,
        example_input: torch.Tensor,
        calibration: np.ndarray | None,
        name: str,
        opset: int,
        fp32_onnx: Path | None = None,
    ) -> Artifact:
        with tempfile.TemporaryDirectory(prefix="exporters-onnx-") as tmp_str:
            tmp = Path(tmp_str)
            final = tmp / f"{name}.onnx"
            if precision == "fp32":
                if fp32_onnx is not None:
                    shutil.copyfile(fp32_onnx, final)
                else:
                    export_onnx_fp32(model, example_input, final, opset)
            else:
                assert calibration is not None
                fp32 = fp32_onnx if fp32_onnx is not None else export_onnx_fp32(model, example_input, tmp / "fp32.onnx", opset)
                _quantize_int8(fp32, final, calibration, tmp)
            files = move_into([final], out_dir)
        return Artifact(format=self.name, precision=precision, files=files, runtime=self.runtime())

    def load(self, files: list[Path], *, device: str, threads: int | None) -> Predictor:
        onnx_files = [f for f in files if f.suffix == ".onnx"]
        if len(onnx_files) != 1:
            raise ExportError(f"an onnx artifact needs exactly one .onnx file, got {[str(f) for f in files]}")
        return OrtPredictor(onnx_files[0], device=device, threads=threads)

    def runtime(self) -> str:
        return ort_runtime()

    def executed_graph(self, path: Path, *, target: object, threads: int) -> dict | None:
        return onnxruntime_executed_graph(path, providers=list(target), threads=threads)

    def accuracy_aware(self, model, out_dir, *, example_input, calibration, validation_x, validation_y, max_accuracy_drop, name, opset):
        from .accuracy_aware import _onnx_search  # it imports this module

        return _onnx_search(model, example_input, calibration, validation_x, validation_y, max_accuracy_drop, out_dir, name, opset)
