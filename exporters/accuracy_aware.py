"""Accuracy-aware int8: keep the fewest layers in fp32 that bring the accuracy drop within a target.

Plain int8 quantizes every layer; one layer whose activations span a huge range (a few large
channels next to many small ones, all sharing one per-tensor activation scale) can cost tens of
points, and then the whole export used to fail its accuracy gate. Here the plain int8 model is built
and measured first on a validation set (never the test split the gate uses); only when it misses the
target are layers put back to fp32:

- ONNX (onnxruntime QDQ, the same settings as ``exporters/onnx.py``): every node the plain int8 model
  quantized (a node fed by a ``DequantizeLinear``) is a candidate. Each is measured quantized alone,
  every other candidate in fp32 (``quantize_static(nodes_to_exclude=...)``), and ranked by the
  validation accuracy that gives, the most harmful first; nodes are kept in fp32 in that order, one
  more each time, until the drop meets the target, then any kept node the target does not need is
  quantized again. Ranking by "this node alone in fp32" instead failed on the test case: a huge-range
  tensor between two convolutions is quantized as the output of one *and* the input of the next, so
  neither alone restored anything and the search kept all five nodes; measured alone, the two
  harmful nodes stand out and two are kept.
  Before the search, all candidates at once are tried: when even that misses, nothing can, and the
  plain int8 model is returned with ``met=False``. Cost: about 2 quantizations + evaluations per
  candidate, seconds for the students here.
- OpenVINO: ``nncf.quantize_with_accuracy_control`` (NNCF's own ranking and reverting of quantized
  operations) with an absolute drop in accuracy on the validation set and the same calibration and
  NNCF options as ``exporters/openvino.py``. The layers kept in fp32 are the weighted operations
  (Convolution, MatMul, ...) whose input is quantized in the plain int8 model but not in the result.

For every kept layer the result lists its fp32 weight bytes (what it stores instead of about a
quarter of that in int8); ``extra_bytes`` is the exact size difference of the two artifacts' files.
The caller still checks the size budget: keeping layers in fp32 costs bytes.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ._common import Artifact, ExportError, artifact_bytes, frozen_eval, move_into, quiet, require
from ._text import is_text_input, text_feed
from .onnx import OrtPredictor, _quantize_int8, export_onnx_fp32, ort_runtime
from .openvino import OpenVINOPredictor, _dynamic_problem, _fold_constants, _nncf_options, _nncf_quantize, _stable_names, ov_runtime

__all__ = ["AccuracyAwareResult", "export_accuracy_aware"]

#: OpenVINO operations whose weights make a layer (what "kept in fp32" lists).
_OV_WEIGHTED = frozenset({"Convolution", "GroupConvolution", "MatMul", "ConvolutionBackpropData", "Gather"})

EVAL_BATCH = 64


@dataclass
class AccuracyAwareResult:
    """What the search did. Accuracies are fractions on the validation set; drops in points."""

    artifact: Artifact
    method: str
    target_drop: float
    reference_accuracy: float
    plain_accuracy: float
    accuracy: float
    met: bool
    kept_fp32: list[dict] = field(default_factory=list)  # {"name", "op_type", "fp32_weight_bytes"}
    plain_bytes: int = 0
    evaluations: int = 0

    @property
    def extra_bytes(self) -> int:
        return self.artifact.bytes - self.plain_bytes

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("artifact")
        d["extra_bytes"] = self.extra_bytes
        d["plain_drop"] = round(100.0 * (self.reference_accuracy - self.plain_accuracy), 4)
        d["drop"] = round(100.0 * (self.reference_accuracy - self.accuracy), 4)
        for key in ("reference_accuracy", "plain_accuracy", "accuracy"):
            d[key] = round(d[key], 6)
        return d


def _accuracy(predict, x: np.ndarray, y: np.ndarray) -> float:  # callable
    correct = 0
    for i in range(0, len(x), EVAL_BATCH):
        correct += int((predict(x[i : i + EVAL_BATCH]).argmax(1) == y[i : i + EVAL_BATCH]).sum())
    return correct / max(1, len(x))


def _drop(reference: float, accuracy: float) -> float:
    return 100.0 * (reference - accuracy)


# ----------------------------------------------------------------------------------------------- ONNX


def _quantized_nodes(path: Path) -> list[str]:
    """Names of the nodes the QDQ model runs on dequantized inputs, in graph order."""
    onnx = require("onnx")
    graph = onnx.load(str(path)).graph
    dq_outputs = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    qdq = {"QuantizeLinear", "DequantizeLinear"}
    return [n.name for n in graph.node if n.op_type not in qdq and n.name and any(i in dq_outputs for i in n.input)]


def _onnx_node_info(preprocessed: Path) -> dict[str, tuple[str, int]]:
    """name -> (op_type, bytes of its fp32 initializer inputs) in the model that was quantized."""
    onnx = require("onnx")
    graph = onnx.load(str(preprocessed)).graph
    sizes = {t.name: int(np.prod(t.dims, dtype=np.int64)) * 4 for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    return {n.name: (n.op_type, sum(sizes.get(i, 0) for i in n.input)) for n in graph.node}


def _onnx_search(model, example_input, calibration, val_x, val_y, target, out_dir, name, opset) -> AccuracyAwareResult:
    with tempfile.TemporaryDirectory(prefix="exporters-aa-onnx-") as tmp_str:
        tmp = Path(tmp_str)
        fp32 = export_onnx_fp32(model, example_input, tmp / "fp32.onnx", opset)
        reference = _accuracy(OrtPredictor(fp32, threads=1).predict, val_x, val_y)
        built: dict[tuple[str, ...], tuple[Path, float]] = {}

        def build(exclude: tuple[str, ...]) -> tuple[Path, float]:
            key = tuple(sorted(exclude))
            if key not in built:
                work = tmp / f"q{len(built)}"
                work.mkdir()
                path = work / f"{name}.onnx"
                _quantize_int8(fp32, path, calibration, work, nodes_to_exclude=list(key))
                built[key] = (path, _accuracy(OrtPredictor(path, threads=1).predict, val_x, val_y))
            return built[key]

        plain_path, plain_acc = build(())
        info = _onnx_node_info(tmp / "q0" / "preprocessed.onnx")
        chosen, (path, acc) = (), (plain_path, plain_acc)
        met = _drop(reference, plain_acc) <= target
        if not met:
            candidates = _quantized_nodes(plain_path)
            _, all_acc = build(tuple(candidates))
            if candidates and _drop(reference, all_acc) <= target:
                # sensitivity of a node: the validation accuracy with only that node quantized (the others
                # in fp32); the most harmful first, then fewer fp32 bytes, then graph order
                order = {c: i for i, c in enumerate(candidates)}
                alone = {c: build(tuple(o for o in candidates if o != c))[1] for c in candidates}
                ranked = sorted(candidates, key=lambda c: (alone[c], info.get(c, ("", 0))[1], order[c]))
                for k in range(1, len(ranked) + 1):
                    chosen = tuple(ranked[:k])
                    path, acc = build(chosen)
                    if _drop(reference, acc) <= target:
                        met = True
                        break
                # then drop any kept node the target does not need (least sensitive first): the fewest in fp32
                for c in reversed(chosen if met else ()):
                    fewer = tuple(o for o in chosen if o != c)
                    if fewer and _drop(reference, build(fewer)[1]) <= target:
                        chosen = fewer
                path, acc = build(chosen)
            if not met:
                chosen, (path, acc) = (), (plain_path, plain_acc)
        plain_bytes = artifact_bytes([plain_path])
        final = path.with_name(f"{name}.onnx")
        files = move_into([final], out_dir)
        kept = [{"name": n, "op_type": info.get(n, ("?", 0))[0], "fp32_weight_bytes": info.get(n, ("?", 0))[1]} for n in chosen]
        return AccuracyAwareResult(
            artifact=Artifact(format="onnx", precision="int8", files=files, runtime=ort_runtime()),
            method="onnxruntime quantize_static, nodes_to_exclude ranked by validation accuracy",
            target_drop=target,
            reference_accuracy=reference,
            plain_accuracy=plain_acc,
            accuracy=acc,
            met=met,
            kept_fp32=kept,
            plain_bytes=plain_bytes,
            evaluations=len(built) + 1,
        )


# ------------------------------------------------------------------------------------------- OpenVINO


def _ov_quantized_layers(ov_model) -> dict[str, tuple[str, int]]:  # openvino.Model
    """Weighted operations whose data input comes from a FakeQuantize: name -> (type, fp32 weight bytes)."""
    layers = {}
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() not in _OV_WEIGHTED or op.get_input_size() < 2:
            continue
        sources = [op.input_value(i).get_node().get_type_name() for i in range(op.get_input_size())]
        if "FakeQuantize" in sources:
            shape = op.get_input_partial_shape(1)
            weights = int(np.prod([d.get_length() for d in shape])) * 4 if shape.is_static else 0
            layers[op.get_friendly_name()] = (op.get_type_name(), weights)
    return layers


def _ov_search(model, example_input, calibration, val_x, val_y, target, out_dir, name, opset) -> AccuracyAwareResult:
    ov = require("openvino")
    nncf = require("nncf")
    text = is_text_input(example_input)
    with tempfile.TemporaryDirectory(prefix="exporters-aa-ov-") as tmp_str:
        tmp = Path(tmp_str)
        onnx_path = export_onnx_fp32(model, example_input, tmp / "fp32.onnx", opset)

        def convert():  # a fresh fp32 openvino.Model each time (NNCF may transform its input)
            with quiet():
                m = ov.convert_model(str(onnx_path))
            if problem := _dynamic_problem(m, text):
                raise ExportError(f"OpenVINO model lost a dynamic dimension ({problem}); the ONNX export is dynamic")
            if text:
                _fold_constants(m)
            return m

        def save(m, stem: str) -> Path:
            _stable_names(m)
            xml = tmp / stem / f"{name}.xml"
            xml.parent.mkdir()
            with quiet():
                ov.save_model(m, str(xml), compress_to_fp16=False)
            return xml

        def accuracy(xml: Path) -> float:
            return _accuracy(OpenVINOPredictor(xml, threads=1).predict, val_x, val_y)

        reference = accuracy(save(convert(), "fp32"))
        plain_model = _nncf_quantize(convert(), calibration, text)
        plain_layers = _ov_quantized_layers(plain_model)
        plain_xml = save(plain_model, "plain")
        plain_acc = accuracy(plain_xml)
        evaluations = 3
        xml, acc, kept = plain_xml, plain_acc, []
        met = _drop(reference, plain_acc) <= target
        if not met:
            samples, options = _nncf_options(calibration, text)
            val = [(val_x[i : i + EVAL_BATCH], val_y[i : i + EVAL_BATCH]) for i in range(0, len(val_x), EVAL_BATCH)]
            counted = [0]

            def validate(compiled, batches) -> float:  # openvino.CompiledModel, iterable
                counted[0] += 1
                correct = total = 0
                for xb, yb in batches:
                    logits = compiled(text_feed(xb) if text else xb)[0]
                    correct += int((np.asarray(logits).argmax(1) == yb).sum())
                    total += len(yb)
                return correct / max(1, total)

            try:
                with quiet():
                    restored = nncf.quantize_with_accuracy_control(
                        convert(),
                        nncf.Dataset(samples),
                        nncf.Dataset(val),
                        validate,
                        max_drop=target / 100.0,
                        drop_type=nncf.DropType.ABSOLUTE,
                        subset_size=len(samples),
                        **{k: v for k, v in options.items() if k != "advanced_parameters"},
                        **({"advanced_quantization_parameters": options["advanced_parameters"]} if "advanced_parameters" in options else {}),
                    )
            except Exception as exc:  # NNCF raises many types
                raise ExportError(f"NNCF accuracy-aware quantization failed: {type(exc).__name__}: {str(exc)[:300]}") from exc
            evaluations += counted[0]
            after = _ov_quantized_layers(restored)
            candidate_xml = save(restored, "aa")
            candidate_acc = accuracy(candidate_xml)
            if _drop(reference, candidate_acc) <= target:
                met, xml, acc = True, candidate_xml, candidate_acc
                kept = [{"name": n, "op_type": t, "fp32_weight_bytes": b} for n, (t, b) in plain_layers.items() if n not in after]
        plain_bytes = artifact_bytes([plain_xml, plain_xml.with_suffix(".bin")])
        files = move_into([xml, xml.with_suffix(".bin")], out_dir)
        return AccuracyAwareResult(
            artifact=Artifact(format="openvino", precision="int8", files=files, runtime=ov_runtime()),
            method="nncf.quantize_with_accuracy_control (absolute drop)",
            target_drop=target,
            reference_accuracy=reference,
            plain_accuracy=plain_acc,
            accuracy=acc,
            met=met,
            kept_fp32=kept,
            plain_bytes=plain_bytes,
            evaluations=evaluations,
        )


def export_accuracy_aware(
    model: torch.nn.Module,
    fmt: str,
    out_dir: str | Path,
    *,
    example_input: torch.Tensor,
    calibration: np.ndarray,
    validation_x: np.ndarray,
    validation_y: np.ndarray,
    max_accuracy_drop: float,
    name: str = "model",
    opset: int = 18,
) -> AccuracyAwareResult:
    """int8 ``fmt`` artifact of ``model`` in ``out_dir`` whose accuracy on (``validation_x``,
    ``validation_y``) is at most ``max_accuracy_drop`` points below the fp32 artifact's, keeping the
    fewest layers in fp32 that achieve it (see the module docstring). ``met`` is False when even every
    layer in fp32 misses it; then the artifact is the plain int8 one."""
    from .registry import formats_with_accuracy_aware, get_exporter  # the format modules import this one lazily

    exporter = get_exporter(fmt)
    if not exporter.has_accuracy_aware:
        raise ExportError(f"accuracy-aware int8 supports {', '.join(formats_with_accuracy_aware())}, not {fmt!r}")
    if len(validation_x) == 0 or len(validation_x) != len(validation_y):
        raise ExportError("accuracy-aware int8 needs a labelled validation set (validation_x, validation_y of equal, non-zero length)")
    text = is_text_input(example_input)
    calib = np.ascontiguousarray(calibration, dtype=np.int64 if text else np.float32)
    vx = np.ascontiguousarray(validation_x, dtype=np.int64 if text else np.float32)
    vy = np.asarray(validation_y).astype(np.int64)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with frozen_eval(model):
        ex = example_input.detach().to(torch.int64 if text else torch.float32)
        result = exporter.accuracy_aware(
            model,
            out,
            example_input=ex,
            calibration=calib,
            validation_x=vx,
            validation_y=vy,
            max_accuracy_drop=float(max_accuracy_drop),
            name=name,
            opset=opset,
        )
    result.artifact.format = fmt  # a format that reuses another's search (e.g. a subclass) names its own artifact
    return result
