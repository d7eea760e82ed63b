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

- LiteRT and ExecuTorch (PT2E, ``exporters/litert.py`` / ``exporters/executorch.py``): the candidates are the model's
  weighted modules (Conv1d/Conv2d/Linear, by module name) and a candidate is kept in float by giving its module no
  quantization config in the quantizer (:func:`pt2e_keep_float`); the ranking and pruning are the ONNX search's
  (:func:`ranked_exclusion`), each step a full PT2E quantization, conversion and validation pass (2-5 s per tiny
  student here). Deviation: both quantizers' public ``set_module_name(name, None)`` asserts "None is not supported
  yet", so the None config is written into their ``module_name_config`` directly (their annotation skips a None config
  and the global config skips the named module; measured: the kept layer's weights stay fp32 in the file and keeping
  every layer reproduces the fp32 accuracy), under the module-name key their own filter matches (litert-torch 0.10's
  filter strips a fixed ``L__self___`` prefix that torch 2.13 writes one character shorter; the key is found by asking
  the filter). The converter/delegate then runs the kept layer in float with int8<->float conversions around it.

For every kept layer the result lists its fp32 weight bytes (what it stores instead of about a
quarter of that in int8); ``extra_bytes`` is the exact size difference of the two artifacts' files.
The caller still checks the size budget: keeping layers in fp32 costs bytes.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ._common import Artifact, ExportError, artifact_bytes, frozen_eval, move_into, quiet, require
from ._text import PackedTextAdapter, is_text_input, text_feed
from .onnx import OrtPredictor, _quantize_int8, export_onnx_fp32, ort_runtime
from .openvino import OpenVINOPredictor, _dynamic_problem, _fold_constants, _nncf_options, _nncf_quantize, _stable_names, ov_runtime

__all__ = ["AccuracyAwareResult", "export_accuracy_aware", "pt2e_keep_float", "pt2e_search", "ranked_exclusion", "weighted_modules"]

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


def ranked_exclusion(
    build: Callable[[tuple[str, ...]], float], candidates: list[str], reference: float, target: float, cost: dict[str, int]
) -> tuple[tuple[str, ...], bool]:
    """The fewest ``candidates`` to keep in fp32 so that the accuracy ``build(kept)`` (a cached build-and-validate of
    the int8 model with those kept in fp32) is within ``target`` points of ``reference``; ``(kept, met)``.

    All candidates at once first: when even that misses, nothing can (``((), False)``). Then each candidate's
    sensitivity is the accuracy with only it quantized (the others in fp32); the most harmful are kept first (ties:
    fewer fp32 ``cost`` bytes, then the given order), one more each time until the target is met, then any kept one
    the target does not need is quantized again (least sensitive first)."""
    if not candidates or _drop(reference, build(tuple(candidates))) > target:
        return (), False
    order = {c: i for i, c in enumerate(candidates)}
    alone = {c: build(tuple(o for o in candidates if o != c)) for c in candidates}
    ranked = sorted(candidates, key=lambda c: (alone[c], cost.get(c, 0), order[c]))
    chosen: tuple[str, ...] = tuple(ranked)
    for k in range(1, len(ranked) + 1):
        if _drop(reference, build(tuple(ranked[:k]))) <= target:
            chosen = tuple(ranked[:k])
            break
    for c in reversed(chosen):
        fewer = tuple(o for o in chosen if o != c)
        if fewer and _drop(reference, build(fewer)) <= target:
            chosen = fewer
    return chosen, True


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
        chosen: tuple[str, ...] = ()
        met = _drop(reference, plain_acc) <= target
        if not met:
            candidates = _quantized_nodes(plain_path)
            cost = {c: info.get(c, ("", 0))[1] for c in candidates}
            chosen, met = ranked_exclusion(lambda kept: build(kept)[1], candidates, reference, target, cost)
        path, acc = build(chosen)
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


# ------------------------------------------------------------------------------- PT2E (LiteRT, ExecuTorch)

#: the module types a PT2E quantizer quantizes by their weights (the candidates kept in fp32)
_PT2E_WEIGHTED = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear)


def weighted_modules(module: torch.nn.Module) -> dict[str, tuple[str, int]]:
    """name -> (module type, fp32 weight + bias bytes) of ``module``'s Conv/Linear submodules, in definition order."""
    return {
        name: (type(m).__name__, 4 * sum(p.numel() for p in m.parameters(recurse=False)))
        for name, m in module.named_modules()
        if isinstance(m, _PT2E_WEIGHTED)
    }


def pt2e_keep_float(quantizer, graph: torch.fx.GraphModule, names: tuple[str, ...], module_filter: Callable) -> None:
    """Give the modules ``names`` of the exported ``graph`` no quantization config in the PT2E ``quantizer`` (before
    ``prepare_pt2e``): they stay fp32. ``module_filter(key)`` is the quantizer's own node filter for a module name;
    the key it matches for each name is looked up on a node of that module (see the module docstring)."""
    for name in names:
        node = next((n for n in graph.graph.nodes if any(v[0] == name for v in n.meta.get("nn_module_stack", {}).values())), None)
        if node is None:
            raise ExportError(f"accuracy-aware int8: no operation of module {name!r} in the exported graph")
        keys = [name, ("L__self__" + name)[len("L__self___") :].replace("_", ".")]
        key = next((k for k in keys if module_filter(k)(node)), None)
        if key is None:
            raise ExportError(f"accuracy-aware int8: the quantizer's module filter does not match module {name!r}")
        # the public set_module_name(name, None) asserts; a None config is what it would store
        quantizer.module_name_config[key] = None


def pt2e_search(
    exporter,  # registry.Exporter (imported lazily: the registry imports this module's names)
    model: torch.nn.Module,
    *,
    example_input: torch.Tensor,
    build: Callable[[str, tuple[str, ...], Path], list[Path]],
    validation_x: np.ndarray,
    validation_y: np.ndarray,
    target: float,
    out_dir: Path,
    method: str,
) -> AccuracyAwareResult:
    """Accuracy-aware int8 for a PT2E format: ``build(precision, kept, dir)`` writes the ``exporter``'s artifact of
    ``model`` at ``precision`` (int8: the modules ``kept`` in fp32) into the existing ``dir`` and returns its files.
    The candidates are :func:`weighted_modules` of the module the format quantizes (a text model's packed-input
    adapter); accuracies come from the exporter's own predictor. The search is :func:`ranked_exclusion`."""
    quantized = PackedTextAdapter(model) if is_text_input(example_input) else model
    candidates = weighted_modules(quantized)

    def accuracy(files: list[Path]) -> float:
        return _accuracy(exporter.load(files, device="CPU", threads=1).predict, validation_x, validation_y)

    with tempfile.TemporaryDirectory(prefix=f"exporters-aa-{exporter.name}-") as tmp_str:
        work = Path(tmp_str)
        built: dict[tuple[str, ...], tuple[list[Path], float]] = {}

        def build_one(kept: tuple[str, ...]) -> tuple[list[Path], float]:
            key = tuple(sorted(kept))
            if key not in built:
                where = work / f"q{len(built)}"
                where.mkdir()
                files = build("int8", key, where)
                built[key] = (files, accuracy(files))
            return built[key]

        (work / "fp32").mkdir()
        reference = accuracy(build("fp32", (), work / "fp32"))
        plain_files, plain_acc = build_one(())
        chosen: tuple[str, ...] = ()
        met = _drop(reference, plain_acc) <= target
        if not met:
            cost = {c: b for c, (_, b) in candidates.items()}
            chosen, met = ranked_exclusion(lambda kept: build_one(kept)[1], list(candidates), reference, target, cost)
        files, acc = build_one(chosen)
        plain_bytes = exporter.size(plain_files)
        moved = move_into(files, out_dir)
    return AccuracyAwareResult(
        artifact=Artifact(format=exporter.name, precision="int8", files=moved, runtime=exporter.runtime()),
        method=method,
        target_drop=target,
        reference_accuracy=reference,
        plain_accuracy=plain_acc,
        accuracy=acc,
        met=met,
        kept_fp32=[{"name": n, "op_type": candidates[n][0], "fp32_weight_bytes": candidates[n][1]} for n in chosen],
        plain_bytes=plain_bytes,
        evaluations=len(built) + 1,
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
