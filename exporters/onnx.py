"""ONNX format: one self-contained ``<name>.onnx`` file, run with onnxruntime.

fp32: ``torch.onnx.export(dynamo=True, external_data=False)`` with a symbolic batch dimension; if the
batch comes out fixed (or the dynamo export fails) it falls back to the TorchScript exporter at opset 17
with ``dynamic_axes``. Every file is checked with ``onnx.checker.check_model(full_check=True)``.

The dynamo exporter attaches debug metadata to every node (FX node text, module names, Python stack
traces with absolute paths); it is stripped before saving, which makes the file smaller, reproducible
across machines/checkouts and free of local paths.

int8: onnxruntime ``quant_pre_process`` then ``quantize_static`` in QDQ format, per-channel QInt8
weights with ``reduce_range=True`` (7-bit weights) and QInt8 activations (S8S8), MinMax calibration.

* ``reduce_range=True`` is required on CPUs without VNNI (AVX2 only, like this one): onnxruntime's
  u8*s8 kernels use ``vpmaddubsw``, which saturates the int16 sum of two products when per-channel
  weights span the full 8-bit range. Measured on the tiny digits CNN: full-range per-channel weights gave
  91.75% top-1 agreement with PyTorch and a 6.5-point accuracy drop in onnxruntime (the same QDQ file
  gave 99% in OpenVINO); with 7-bit weights 98.75% agreement and no accuracy drop.
* S8S8 vs U8S8 activations: identical accuracy and latency here (onnxruntime shifts s8 activations to u8
  internally on x86); S8S8 is onnxruntime's recommended default for QDQ, so it is used.
* QOperator and dynamic quantization are several times slower than fp32 on this CPU: not offered.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from ._common import Artifact, ExportError, Predictor, as_batch, move_into, quiet, require
from .registry import Exporter, register

__all__ = [
    "ACTIVATION_TYPE",
    "CALIBRATION_BATCH",
    "REDUCE_RANGE",
    "OnnxExporter",
    "OrtPredictor",
    "batch_is_symbolic",
    "export_onnx_fp32",
]

#: Activation type of the int8 QDQ model ("QInt8" = S8S8 or "QUInt8" = U8S8); see the module docstring.
ACTIVATION_TYPE = "QInt8"

#: 7-bit weights: avoids int16 saturation in u8s8 kernels on non-VNNI x86 CPUs (see module docstring).
REDUCE_RANGE = True

#: Samples per calibration batch fed to onnxruntime's calibrator (small: keeps memory flat).
CALIBRATION_BATCH = 16


def _onnx():  # noqa: ANN202 - module
    return require("onnx")


def _ort():  # noqa: ANN202 - module
    return require("onnxruntime")


def ort_runtime() -> str:
    """``"onnxruntime <version>"``."""
    return f"onnxruntime {_ort().__version__}"


def batch_is_symbolic(path: str | os.PathLike[str]) -> bool:
    """True when dim 0 of the first graph input and first output is symbolic (not a fixed number)."""
    onnx = _onnx()
    model = onnx.load(str(path), load_external_data=False)
    for value in (model.graph.input[0], model.graph.output[0]):
        dims = value.type.tensor_type.shape.dim
        if not dims or dims[0].HasField("dim_value"):
            return False
    return True


def _batch_problem(path: Path, example: torch.Tensor) -> str | None:
    """Run the file in onnxruntime at batch 1 and 3; describe what breaks, or ``None`` if both work.

    The declared shapes alone are not enough: the TorchScript exporter labels dim 0 with its
    ``dynamic_axes`` name even when ``forward`` hard-codes the batch size.
    """
    ort = _ort()
    so = ort.SessionOptions()
    so.log_severity_level = 4  # the failure is reported through the return value, not the ORT log
    so.intra_op_num_threads = 1
    sample = example[:1].detach().cpu().numpy().astype(np.float32)
    try:
        session = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for b in (1, 3):
            (out,) = session.run(None, {name: np.repeat(sample, b, axis=0)})[:1]
            if out.shape[0] != b:
                return f"batch {b} gave output shape {tuple(out.shape)}"
    except Exception as exc:  # noqa: BLE001 - any runtime failure means the batch is not really dynamic
        return f"onnxruntime failed at a new batch size: {type(exc).__name__}: {str(exc)[:300]}"
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

    def strip(graph) -> None:  # noqa: ANN001 - onnx.GraphProto
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


def export_onnx_fp32(model: torch.nn.Module, example_input: torch.Tensor, path: Path, opset: int = 18) -> Path:
    """Export ``model`` (eval mode) to one self-contained fp32 ONNX file at ``path`` with a symbolic batch.

    Input is named ``input``, output ``logits``. Tries the dynamo exporter (opset >= 18) first and
    falls back to ``dynamo=False, opset_version=17, dynamic_axes`` if that fails or fixes the batch.
    Raises :class:`ExportError` when neither gives a symbolic batch or the checker rejects the file.
    """
    require("onnxscript")  # needed by the dynamo exporter
    onnx = _onnx()
    ex = _example_batch(example_input)
    try:
        device = next(model.parameters()).device
        ex = ex.to(device)
    except StopIteration:
        pass
    names = {"input_names": ["input"], "output_names": ["logits"]}
    problem = ""
    ok = False
    if opset >= 18:
        try:
            with torch.no_grad(), quiet():
                torch.onnx.export(
                    model,
                    (ex,),
                    str(path),
                    dynamo=True,
                    external_data=False,
                    dynamic_shapes=({0: torch.export.Dim("batch")},),
                    opset_version=opset,
                    verbose=False,
                    **names,
                )
            ok = batch_is_symbolic(path)
            problem = "" if ok else "the dynamo exporter fixed the batch dimension"
            if ok and (runtime_problem := _batch_problem(path, ex)):
                ok, problem = False, f"the dynamo export does not run with another batch size ({runtime_problem})"
        except Exception as exc:  # noqa: BLE001 - any dynamo failure -> try the TorchScript exporter
            problem = f"dynamo export failed: {type(exc).__name__}: {str(exc)[:500]}"
    else:
        problem = f"opset {opset} < 18 is not supported by the dynamo exporter"
    if not ok:
        _remove(path)
        legacy_opset = min(opset, 17)
        try:
            with torch.no_grad(), quiet():
                torch.onnx.export(
                    model,
                    (ex,),
                    str(path),
                    dynamo=False,
                    opset_version=legacy_opset,
                    dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                    **names,
                )
        except Exception as exc:
            raise ExportError(
                f"ONNX export failed ({problem}; TorchScript fallback at opset {legacy_opset} failed too: "
                f"{type(exc).__name__}: {exc}). Make sure forward() takes one float32 (B,C,H,W) tensor and "
                "returns (B,num_classes) logits without data-dependent control flow."
            ) from exc
        legacy_problem = None if batch_is_symbolic(path) else "it fixed the batch dimension"
        legacy_problem = legacy_problem or _batch_problem(path, ex)
        if legacy_problem:
            _remove(path)
            raise ExportError(
                f"ONNX export has no working dynamic batch dimension ({problem}; TorchScript fallback: "
                f"{legacy_problem}). Remove batch-size dependent code (e.g. x.view(2, -1)) from forward(); "
                "use x.flatten(1)."
            )
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


def _calibration_reader(data: np.ndarray, input_name: str, batch: int = CALIBRATION_BATCH):  # noqa: ANN202
    """An onnxruntime ``CalibrationDataReader`` over an (N,C,H,W) array in batches of ``batch``."""
    q = require("onnxruntime.quantization", "onnxruntime")

    class _Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = [data[i : i + batch] for i in range(0, len(data), batch)]
            self._i = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self._i >= len(self._batches):
                return None
            self._i += 1
            return {input_name: self._batches[self._i - 1]}

        def rewind(self) -> None:
            self._i = 0

    return _Reader()


def _quantize_int8(fp32_path: Path, out_path: Path, calibration: np.ndarray, tmp: Path) -> None:
    q = require("onnxruntime.quantization", "onnxruntime")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    onnx = _onnx()
    pre = tmp / "preprocessed.onnx"
    input_name = onnx.load(str(fp32_path), load_external_data=False).graph.input[0].name
    reader = _calibration_reader(calibration, input_name)
    try:
        with quiet():
            quant_pre_process(str(fp32_path), str(pre))
            q.quantize_static(
                str(pre),
                str(out_path),
                reader,
                quant_format=q.QuantFormat.QDQ,
                per_channel=True,
                reduce_range=REDUCE_RANGE,
                weight_type=q.QuantType.QInt8,
                activation_type=getattr(q.QuantType, ACTIVATION_TYPE),
                calibrate_method=q.CalibrationMethod.MinMax,
                use_external_data_format=False,
            )
    except Exception as exc:
        raise ExportError(
            f"onnxruntime static int8 quantization failed: {type(exc).__name__}: {exc}. "
            "Check the calibration array (N,C,H,W float32 real samples) or export fp32 instead."
        ) from exc
    if not batch_is_symbolic(out_path) or (problem := _batch_problem(out_path, torch.from_numpy(calibration[:1]))):
        raise ExportError(
            "int8 ONNX model lost its dynamic batch dimension during quantization"
            + (f" ({problem})" if batch_is_symbolic(out_path) else "")
        )
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
                warnings.warn(
                    "CUDAExecutionProvider is not available (pip install onnxruntime-gpu); using CPU", stacklevel=3
                )
        elif dev != "cpu":
            raise ExportError(f"unknown onnxruntime device {device!r}; use 'CPU' or 'cuda'")
        try:
            self._session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        except Exception as exc:
            raise ExportError(f"onnxruntime could not load {path}: {exc}") from exc
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name
        self.runtime = f"onnxruntime {ort.__version__}"
        self.providers: list[str] = self._session.get_providers()
        self.path = path

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Run the session on a float32 (B,C,H,W) batch; returns float32 (B,num_classes)."""
        (out,) = self._session.run([self._output], {self._input: as_batch(x)})
        return np.asarray(out, dtype=np.float32)


@register
class OnnxExporter(Exporter):
    """``onnx``: a single ``<name>.onnx`` file (fp32 or QDQ int8) for onnxruntime (or OpenVINO)."""

    name = "onnx"
    precisions = ("fp32", "int8")

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
    ) -> Artifact:
        with tempfile.TemporaryDirectory(prefix="exporters-onnx-") as tmp_str:
            tmp = Path(tmp_str)
            final = tmp / f"{name}.onnx"
            if precision == "fp32":
                export_onnx_fp32(model, example_input, final, opset)
            else:
                assert calibration is not None
                fp32 = export_onnx_fp32(model, example_input, tmp / "fp32.onnx", opset)
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
