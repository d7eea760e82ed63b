"""OpenVINO format: ``<name>.xml`` + ``<name>.bin`` (OpenVINO IR) with a dynamic batch dimension.

fp32/fp16: the model is exported to a temporary fp32 ONNX file (:func:`exporters.onnx.export_onnx_fp32`),
converted with ``ov.convert_model`` and saved with ``ov.save_model(compress_to_fp16=precision == "fp16")``.
fp16 stores fp16 weights only; the CPU plugin still computes in f32 (``INFERENCE_PRECISION_HINT=f32``
is set on load so CPUs with bf16/AMX do not silently downcast).

int8: ``nncf.quantize`` on the converted fp32 model with every calibration sample as its own batch of
1 (NNCF's recommendation for exact per-sample statistics), ``subset_size=len(calibration)``,
``fast_bias_correction=False`` (image models; text models use the fast one, see below), then
``ov.save_model(compress_to_fp16=False)``.

``fast_bias_correction=False`` (the full BiasCorrection algorithm): on the digits CNN trained with a
high learning rate, NNCF's default fast bias correction dropped top-1 agreement with PyTorch to 60%
(accuracy 94% -> 55.5%); full bias correction gave 99.75% agreement, and on a better-conditioned model
it was also at least as good (99.5% vs 98.75%). It took about the same time on this small model
(~1.5 s for 300 samples); it costs more on large models.

Text models (packed (B,2,L) int64 example input, see ``exporters/_text.py``): the IR has two int64
inputs ``input_ids`` and ``attention_mask`` whose batch and sequence dims are both checked to be
dynamic after conversion; ``ShapeOf`` of constants is folded before anything else (see
:func:`_fold_constants`: without it a BiLSTM's int8 IR kept its fp32 embedding table). int8 runs
``nncf.quantize(model_type=TRANSFORMER, preset=PERFORMANCE)`` with the ``MINMAX`` activation range
estimator and ``overflow_fix=ENABLE``, calibration samples fed one per batch as
``{input_ids, attention_mask}``, then ``nncf.compress_weights(INT8_ASYM)``. Measured on the tests'
transformer and BiLSTM (2000 x 32 vocabulary, synthetic sentiment task, 3 seeds, 400 test sentences;
top-1 agreement with PyTorch):

* NNCF's defaults (MIXED preset, mean-of-min/max ranges, 8-bit weights except the first layer):
  transformer 97.25-97.75%, BiLSTM 94.0-98.0%, max logit error up to 4.
* ``overflow_fix=ENABLE`` (7-bit weights in every layer) is the big one on this AVX2 CPU without
  VNNI, for the same int16 saturation as onnxruntime's ``reduce_range`` (``exporters/onnx.py``): the
  error came from the attention's input projection (ignoring that one MatMul gave 98.5-100%). With
  PERFORMANCE + MINMAX + overflow fix: transformer 99.25/100/99.5%, BiLSTM 99.75/99.5/100%, max logit
  error 0.19-0.48; without the overflow fix 97.0-98.25% and 98.25-99.0%, error up to 1.6.
* MINMAX ranges helped the transformer (+0.5-0.75 points), the symmetric PERFORMANCE preset the
  BiLSTM (+1.5-4.25 points; MIXED with MINMAX was 93.25-97.5%). SmoothQuant on/off and bias
  correction made no difference; calibration samples trimmed to their real length neither.
* ``nncf.quantize`` already stores the embedding (``Gather``) table as int8 with per-row scales in
  NNCF 3.4; ``compress_weights`` afterwards is kept as the safety net for weights the quantizer leaves
  in fp32 (it found none here and costs ~1.2 KB of XML). Sizes, int8 / fp32: transformer 183,541 /
  356,991 B (0.51x: its XML, ~105 KB for ~250 ops, does not shrink), BiLSTM 108,940 / 306,803 B.
  NNCF weight-only int8 (``compress_weights`` without ``quantize``) was as small (162-172 KB /
  123-128 KB) and agreed 99.5-100%, but it keeps fp32 activations, so it is not offered as ``int8``.
* Text int8 uses NNCF's *fast* bias correction (:data:`TEXT_FAST_BIAS_CORRECTION`): the full algorithm
  runs the model once per layer and sample, and was most of the bench's time on the quick text run.
  Measured 2026-12-04 (Intel Xeon, AVX-512 VNNI + AMX, 1 thread; the MiniLM teacher of
  ``recipes/tweets-minilm.yaml`` and a 5 MB ``tfm`` student after 1 epoch, 256 calibration samples, the
  4,628-text test split): MiniLM full 41.7 s, test accuracy 70.01%, top-1 agreement with PyTorch 100%;
  fast 23.5 s, 70.01%, 100%. Student full 12.4 s, 69.55%, 99.63%; fast 9.5 s, 69.66%, 99.48%. Image
  models keep the full algorithm (the digits CNN above).
"""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path

import numpy as np
import torch

from ._common import Artifact, ExportError, Predictor, as_batch, move_into, quiet, require
from ._text import is_text_input, is_text_names, text_feed
from .onnx import export_onnx_fp32
from .registry import Exporter, register

#: NNCF fast bias correction for image models (False = full BiasCorrection, see the module docstring).
FAST_BIAS_CORRECTION = False
#: The same for text models (True: fast bias correction, measured as accurate and ~2x faster there).
TEXT_FAST_BIAS_CORRECTION = True

#: Text int8 (see the module docstring): NNCF preset (symmetric activations), activation range estimator
#: (global min/max), overflow fix (7-bit weights in every layer, for CPUs without VNNI) and the
#: ``nncf.CompressWeightsMode`` applied after ``nncf.quantize``.
TEXT_PRESET = "PERFORMANCE"
TEXT_ACTIVATION_RANGE = "MINMAX"
TEXT_OVERFLOW_FIX = "ENABLE"
TEXT_WEIGHT_MODE = "INT8_ASYM"

__all__ = [
    "FAST_BIAS_CORRECTION",
    "TEXT_FAST_BIAS_CORRECTION",
    "TEXT_ACTIVATION_RANGE",
    "TEXT_OVERFLOW_FIX",
    "TEXT_PRESET",
    "TEXT_WEIGHT_MODE",
    "OpenVINOExporter",
    "OpenVINOPredictor",
    "ov_runtime",
]


def _ov():  # module
    return require("openvino")


def ov_runtime() -> str:
    """``"openvino <version>"`` (build suffix stripped)."""
    return f"openvino {_ov().__version__.split('-')[0]}"


def _nncf_options(calibration: np.ndarray, text: bool) -> tuple[list, dict[str, object]]:
    """The calibration samples (one per batch) and ``nncf.quantize`` options of this module's int8
    (also used by the accuracy-aware search in ``exporters/accuracy_aware.py``)."""
    nncf = require("nncf")
    nncf.set_log_level(logging.ERROR)
    options: dict[str, object] = {"fast_bias_correction": TEXT_FAST_BIAS_CORRECTION if text else FAST_BIAS_CORRECTION}
    if text:
        samples: list = [text_feed(calibration[i : i + 1]) for i in range(len(calibration))]
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet

        options |= {
            "model_type": nncf.ModelType.TRANSFORMER,
            "preset": getattr(nncf.QuantizationPreset, TEXT_PRESET),
            "advanced_parameters": AdvancedQuantizationParameters(
                activations_range_estimator_params=getattr(RangeEstimatorParametersSet, TEXT_ACTIVATION_RANGE),
                overflow_fix=getattr(OverflowFix, TEXT_OVERFLOW_FIX),
            ),
        }
    else:
        samples = [calibration[i : i + 1] for i in range(len(calibration))]
    return samples, options


def _nncf_quantize(ov_model, calibration: np.ndarray, text: bool = False):  # openvino.Model
    nncf = require("nncf")
    samples, options = _nncf_options(calibration, text)
    try:
        with quiet():
            quantized = nncf.quantize(
                ov_model,
                nncf.Dataset(samples),
                subset_size=len(samples),
                **options,
            )
            if text:
                mode = getattr(nncf.CompressWeightsMode, TEXT_WEIGHT_MODE)
                quantized = nncf.compress_weights(quantized, mode=mode)
            return quantized
    except Exception as exc:
        expected = "(N,2,L) int64 packed input_ids/attention_mask" if text else "(N,C,H,W) float32"
        raise ExportError(
            f"NNCF int8 quantization failed: {type(exc).__name__}: {exc}. "
            f"Check the calibration array ({expected} real samples) or export fp32/fp16 instead."
        ) from exc


def _fold_constants(ov_model) -> None:  # openvino.Model
    """Replace every ``ShapeOf`` of a constant by its value, then run ``ConstantFolding`` (text models only).

    For a BiLSTM, ``ov.convert_model`` takes the shape of the embedding output (its converted LSTM needs
    the batch size) as ``ShapeOf`` of the fp32 embedding *table*. After NNCF replaced the table's
    ``Gather`` input by an int8 copy, that ``ShapeOf`` alone kept the fp32 table in the IR: the int8 test
    BiLSTM (vocabulary 2000 x 32, TorchScript-exported) was 365,962 B, *larger* than fp32 (308,369 B);
    108,521 B with the shape replaced. ``ConstantFolding`` alone folded it in the dynamo export's graph
    but not in the TorchScript fallback's, hence the explicit replacement. The image path is left as
    it was.
    """
    passes = require("openvino.passes", "openvino")
    ops = require("openvino.opset13", "openvino")
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() != "ShapeOf":
            continue
        source = op.input_value(0)
        if source.get_node().get_type_name() == "Constant" and source.get_partial_shape().is_static:
            dtype = op.get_output_element_type(0).to_dtype()
            value = ops.constant(np.array(list(source.get_shape()), dtype=dtype))
            op.output(0).replace(value.output(0))
    manager = passes.Manager()
    manager.register_pass(passes.ConstantFolding())
    manager.run_passes(ov_model)


def _dynamic_problem(ov_model, text: bool) -> str | None:  # openvino.Model
    """Describe an input dim that OpenVINO's converted model fixed (batch; text: also sequence), or ``None``."""
    for port in ov_model.inputs:
        shape = port.get_partial_shape()
        wanted = (0, 1) if text else (0,)
        if shape.rank.is_dynamic:
            continue
        fixed = [d for d in wanted if d >= shape.rank.get_length() or not shape[d].is_dynamic]
        if fixed:
            what = " and ".join(("batch", "sequence")[d] for d in fixed)
            return f"input {port.any_name!r} has shape {shape}: its {what} dimension is fixed"
    return None


#: An auto-generated op name: a word and the value of a process-wide counter (``Constant_20977``).
_AUTO_NAME = re.compile(r"([A-Za-z][A-Za-z0-9]*)_\d+")


def _stable_names(ov_model) -> None:  # openvino.Model
    """Rename auto-named ops (``Constant_20977``, ``Reshape_54053``) after their position (``Constant_5``).

    The number in an auto name comes from a process-wide counter that grows with every model built, so
    the same architecture's XML gained one byte per auto-named op for every extra digit: its size
    depended on what the process had exported before (63,461 B vs 63,493 B for one int8 ResNet after 5
    exports). Positional names make the IR and its size reproducible, which an exact budget needs.
    """
    for index, op in enumerate(ov_model.get_ordered_ops()):
        match = _AUTO_NAME.fullmatch(op.get_friendly_name())
        if match:
            op.set_friendly_name(f"{match.group(1)}_{index}")


class OpenVINOPredictor:
    """Compiled OpenVINO model with one reused infer request: ``predict(x) -> logits`` (float32)."""

    def __init__(self, xml: Path, *, device: str = "CPU", threads: int | None = None) -> None:
        ov = _ov()
        core = ov.Core()
        dev = device.upper()
        config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if dev == "CPU":
            config["INFERENCE_PRECISION_HINT"] = "f32"
        try:
            self._compiled = core.compile_model(str(xml), dev, config)
        except Exception as exc:
            raise ExportError(
                f"OpenVINO could not compile {xml} on {device!r} (available devices: {', '.join(core.available_devices)}): {exc}"
            ) from exc
        self._request = self._compiled.create_infer_request()
        self._output = self._compiled.output(0)
        names = [port.any_name for port in self._compiled.inputs]
        #: True for a text model (inputs ``input_ids`` + ``attention_mask``): predict takes packed (B,2,L) ints.
        self.is_text = is_text_names(names)
        self.runtime = ov_runtime()
        self.device = dev
        self.path = xml

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Run a float32 (B,C,H,W) image batch, or for a text model a packed (B,2,L) integer batch (row 0
        input_ids, row 1 attention_mask); returns a float32 (B,num_classes) copy of the output."""
        result = self._request.infer(text_feed(x) if self.is_text else {0: as_batch(x)})
        # The request reuses its output buffer: copy before the next call overwrites it.
        return np.array(result[self._output], dtype=np.float32, copy=True)


# --- int8 diagnosis: OpenVINO's runtime graph (prokt_deploy.benchmarking.int8_diagnosis) -----------------

OV_COMPUTE = {"Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul", "GroupDeconvolution"}
OV_CONVERSIONS = {"FakeQuantize", "Reorder", "Convert", "Quantize", "Dequantize"}


def openvino_executed_graph(path: Path, *, device: str, threads: int) -> dict:
    """Compute layers of OpenVINO's runtime graph by precision, compiled with the bench's settings."""
    from collections import Counter

    ov = _ov()
    config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY"}
    if device == "CPU":
        config.update({"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "INFERENCE_PRECISION_HINT": "f32"})
    compiled = ov.Core().compile_model(str(path), device, config)
    int8, fp, conversions = [], [], Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        layer = str(rt["layerType"].astype(str)) if "layerType" in rt else op.get_type_name()
        precision = str(rt["runtimePrecision"].astype(str)).lower() if "runtimePrecision" in rt else "?"
        if layer in OV_COMPUTE:
            (int8 if precision in ("i8", "u8") else fp).append(f"{op.get_friendly_name()} ({layer}, {precision})")
        elif layer in OV_CONVERSIONS:
            conversions[layer] += 1
    threads_used = None
    if device == "CPU":
        threads_used = int(compiled.get_property("INFERENCE_NUM_THREADS"))
    return {"runtime": "openvino", "int8_layers": len(int8), "float_layers": fp, "conversions": dict(conversions), "threads_used": threads_used}


@register
class OpenVINOExporter(Exporter):
    """``openvino``: ``<name>.xml`` + ``<name>.bin`` in fp32, fp16 (weights) or NNCF int8."""

    name = "openvino"
    precisions = ("fp32", "fp16", "int8")
    main_suffix = ".xml"
    runner = "openvino"
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
        ov = _ov()
        with tempfile.TemporaryDirectory(prefix="exporters-ov-") as tmp_str:
            tmp = Path(tmp_str)
            onnx_path = fp32_onnx if fp32_onnx is not None else export_onnx_fp32(model, example_input, tmp / "fp32.onnx", opset)
            try:
                with quiet():
                    ov_model = ov.convert_model(str(onnx_path))
            except Exception as exc:
                raise ExportError(f"ov.convert_model failed on the exported ONNX file: {exc}") from exc
            text = is_text_input(example_input)
            if problem := _dynamic_problem(ov_model, text):
                raise ExportError(f"OpenVINO model lost a dynamic dimension ({problem}); the ONNX export is dynamic")
            if text:
                _fold_constants(ov_model)
            if precision == "int8":
                assert calibration is not None
                ov_model = _nncf_quantize(ov_model, calibration, text)
            _stable_names(ov_model)
            xml = tmp / f"{name}.xml"
            try:
                with quiet():
                    ov.save_model(ov_model, str(xml), compress_to_fp16=(precision == "fp16"))
            except Exception as exc:
                raise ExportError(f"ov.save_model failed: {exc}") from exc
            files = move_into([xml, xml.with_suffix(".bin")], out_dir)
        return Artifact(format=self.name, precision=precision, files=files, runtime=self.runtime())

    def load(self, files: list[Path], *, device: str, threads: int | None) -> Predictor:
        xmls = [f for f in files if f.suffix == ".xml"]
        if len(xmls) != 1:
            raise ExportError(f"an openvino artifact needs exactly one .xml file, got {[str(f) for f in files]}")
        if not xmls[0].with_suffix(".bin").exists():
            raise ExportError(f"{xmls[0].with_suffix('.bin')} is missing: copy the .bin next to the .xml")
        return OpenVINOPredictor(xmls[0], device=device, threads=threads)

    def runtime(self) -> str:
        return ov_runtime()

    def executed_graph(self, path: Path, *, target: object, threads: int) -> dict | None:
        return openvino_executed_graph(path, device=str(target), threads=threads)

    def accuracy_aware(self, model, out_dir, *, example_input, calibration, validation_x, validation_y, max_accuracy_drop, name, opset):
        from .accuracy_aware import _ov_search  # it imports this module

        return _ov_search(model, example_input, calibration, validation_x, validation_y, max_accuracy_drop, out_dir, name, opset)
