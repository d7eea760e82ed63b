"""Why isn't int8 faster? Compare each int8 artifact with its fp32 counterpart and name the causes.

Only causes that can be detected are listed, each with the evidence found:

- the CPU has no int8 dot-product instructions (fingerprint: no AVX512-VNNI / AVX-VNNI / AMX on x86,
  no ASIMD dot product on ARM);
- layers that still run in fp32 in the runtime's *executed* graph, and the conversions the int8 graph
  adds (quantize/dequantize, layout reorders). OpenVINO: ``compiled_model.get_runtime_model()``, each
  op's ``layerType`` and ``runtimePrecision``. onnxruntime: the graph after its optimizer (written with
  ``optimized_model_filepath``), where QDQ groups that were fused appear as QLinearConv/QGemm/... and
  whatever was not fused still runs as float ops between DequantizeLinear and QuantizeLinear;
- thread settings (more threads than usable cores; several threads on a tiny model; the runtime
  using another thread count than asked);
- a tiny model whose batch-1 latency is mostly fixed per-call cost, which int8 does not shrink
  (measured: per-sample time at the large batch vs the batch-1 time).
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

#: int8 counts as faster when the fp32 counterpart's p50 is at least this many times its p50
#: (interleaved rounds keep ratios within a few percent; smaller gains are not worth reporting).
FASTER = 1.10

#: Above this share of fixed per-call cost in a batch-1 call, batch 1 is "dominated by overhead".
OVERHEAD_SHARE = 0.5

#: A model below this many MACs per sample is "tiny" for thread-count advice.
TINY_MACS = 5_000_000

OV_COMPUTE = {"Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul", "GroupDeconvolution"}
OV_CONVERSIONS = {"FakeQuantize", "Reorder", "Convert", "Quantize", "Dequantize"}
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


def openvino_executed_graph(path: Path, *, device: str, threads: int) -> dict:
    """Compute layers of OpenVINO's runtime graph by precision, compiled with the bench's settings."""
    import openvino as ov

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


def onnxruntime_executed_graph(path: Path, *, providers: list[str], threads: int) -> dict:
    """Compute ops of the graph onnxruntime executes (after its optimizer), split int8 / float."""
    import onnx
    import onnxruntime as ort

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


def executed_graph(fmt: str, path: Path, *, targets: dict, threads: int) -> dict | None:
    """The executed-graph summary of an artifact, or ``None`` when the runtime cannot be inspected."""
    try:
        if fmt == "openvino":
            return openvino_executed_graph(path, device=targets["openvino"], threads=threads)
        if fmt == "onnx":
            return onnxruntime_executed_graph(path, providers=targets["onnxruntime"], threads=threads)
    except Exception as exc:  # noqa: BLE001 - a diagnosis must never fail the benchmark
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}
    return None


def _cpu_cause(fingerprint: dict) -> str | None:
    cpu = fingerprint["cpu"]
    if cpu.get("int8_dot_product"):
        return None
    flags = ", ".join(cpu.get("flags", [])) or "none recorded"
    if cpu.get("arch", "").lower() in ("aarch64", "arm64") or "asimd" in cpu.get("flags", []):
        return f"this CPU has no int8 dot-product instructions (no ASIMD dot product / I8MM; flags: {flags}): int8 runs on widening multiplies, little faster than fp32"
    return (
        f"this CPU has no int8 dot-product instructions (no AVX512-VNNI, AVX-VNNI or AMX; flags: {flags}): "
        "int8 convolutions run as vpmaddubsw + vpmaddwd sequences with int16 intermediates, barely more work per cycle than fp32 FMA"
    )


def _graph_causes(graph: dict | None, fp32_graph: dict | None) -> list[str]:
    if not graph or "error" in graph:
        return [f"the executed graph could not be inspected ({graph['error']})"] if graph else []
    causes = []
    if graph["float_layers"]:
        names = ", ".join(graph["float_layers"][:5]) + (" ..." if len(graph["float_layers"]) > 5 else "")
        causes.append(
            f"{len(graph['float_layers'])} of {len(graph['float_layers']) + graph['int8_layers']} compute layers still run in fp32 in {graph['runtime']}'s executed graph: {names}"
        )
    if graph.get("float_ops_between_qdq"):
        causes.append(
            f"{len(graph['float_ops_between_qdq'])} op(s) run in float between DequantizeLinear and QuantizeLinear: {', '.join(graph['float_ops_between_qdq'][:5])}"
        )
    fp32_conversions = (fp32_graph or {}).get("conversions", {})
    extra = sum(graph["conversions"].values()) - sum(fp32_conversions.values())
    if extra > 0:

        def listing(c: dict) -> str:
            return ", ".join(f"{n} {k}" for k, n in sorted(c.items())) or "none"

        causes.append(
            f"the int8 graph runs {extra} more conversion node(s) than the fp32 one (int8: {listing(graph['conversions'])}; fp32: {listing(fp32_conversions)})"
        )
    return causes


def _thread_causes(settings: dict, fingerprint: dict, graph: dict | None, macs: int | None) -> list[str]:
    threads, usable = settings["threads"], fingerprint["cpu"].get("usable_cores") or 0
    causes = []
    if usable and threads > usable:
        causes.append(f"--threads {threads} exceeds the {usable} usable cores: threads contend for cores")
    if graph and graph.get("threads_used") not in (None, threads):
        causes.append(f"the runtime used {graph['threads_used']} threads although {threads} were asked")
    if threads > 1 and macs is not None and macs < TINY_MACS:
        causes.append(
            f"{threads} threads on a {macs / 1e6:.2f} M-MAC model: per-layer thread synchronisation costs more than the split work saves; try --threads 1"
        )
    return causes


def _overhead_cause(row: dict, counterpart: dict, macs: int | None) -> str | None:
    batch = row["batch"]
    if batch <= 1:
        return None
    one, per_sample = row["latency_ms"]["p50"], row["batch_latency_ms"]["p50"] / batch
    fixed = 1.0 - per_sample / one if one > 0 else 0.0
    if fixed < OVERHEAD_SHARE:
        return None
    batch_speedup = counterpart["batch_latency_ms"]["p50"] / row["batch_latency_ms"]["p50"]
    size = f"{macs / 1e6:.2f} M MACs per sample; " if macs is not None else ""
    return (
        f"tiny model dominated by per-call overhead ({size}a sample costs {per_sample * 1e3:.1f} us at batch {batch} but a batch-1 call "
        f"{one * 1e3:.1f} us, so ~{100 * fixed:.0f}% of it is fixed cost: dispatch, input quantization, layout changes), which int8 "
        f"does not shrink; at batch {batch} int8 is {batch_speedup:.2f}x the fp32 speed"
    )


def explain(
    row: dict, counterpart: dict, *, graph: dict | None, fp32_graph: dict | None, fingerprint: dict, settings: dict, macs: int | None
) -> dict:
    """The int8-vs-fp32 finding for one int8 row; ``causes`` is filled only when int8 is not faster.
    ``graph`` / ``fp32_graph`` are :func:`executed_graph` summaries of the two rows' artifacts."""
    speedup = counterpart["latency_ms"]["p50"] / row["latency_ms"]["p50"]
    batch_speedup = counterpart["batch_latency_ms"]["p50"] / row["batch_latency_ms"]["p50"]
    faster = speedup >= FASTER
    finding = {
        "artifact": row["id"],
        "counterpart": counterpart["id"],
        "speedup": round(speedup, 3),
        "batch_speedup": round(batch_speedup, 3),
        "faster": faster,
        "executed_graph": graph,
        "fp32_executed_graph": fp32_graph,
        "causes": [],
    }
    if faster:
        finding["verdict"] = f"int8 is {speedup:.2f}x faster than fp32 at batch 1 ({batch_speedup:.2f}x at batch {row['batch']})"
        return finding
    finding["verdict"] = (
        f"int8 is not faster than fp32: {speedup:.2f}x at batch 1, {batch_speedup:.2f}x at batch {row['batch']} (faster means >= {FASTER:.2f}x)"
    )
    causes = [
        _cpu_cause(fingerprint),
        *_graph_causes(graph, fp32_graph),
        *_thread_causes(settings, fingerprint, graph, macs),
        _overhead_cause(row, counterpart, macs),
    ]
    finding["causes"] = [c for c in causes if c]
    return finding
