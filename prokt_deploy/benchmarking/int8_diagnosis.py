"""Why isn't int8 faster? Compare each int8 artifact with its fp32 counterpart and name the causes.

Only causes that can be detected are listed, each with the evidence found:

- the CPU has no int8 dot-product instructions (fingerprint: no AVX512-VNNI / AVX-VNNI / AMX on x86,
  no ASIMD dot product on ARM);
- layers that still run in fp32 in the runtime's *executed* graph, and the conversions the int8 graph
  adds (quantize/dequantize, layout reorders), where the format can inspect it (its hook
  :meth:`exporters.Exporter.executed_graph`, in ``exporters/<fmt>.py``). OpenVINO: ``compiled_model.get_runtime_model()``, each
  op's ``layerType`` and ``runtimePrecision``. onnxruntime: the graph after its optimizer (written with
  ``optimized_model_filepath``), where QDQ groups that were fused appear as QLinearConv/QGemm/... and
  whatever was not fused still runs as float ops between DequantizeLinear and QuantizeLinear;
- thread settings (more threads than usable cores; several threads on a tiny model; the runtime
  using another thread count than asked);
- a tiny model whose batch-1 latency is mostly fixed per-call cost, which int8 does not shrink
  (measured: per-sample time at the large batch vs the batch-1 time).
"""

from __future__ import annotations

from pathlib import Path

#: int8 counts as faster when the fp32 counterpart's p50 is at least this many times its p50
#: (interleaved rounds keep ratios within a few percent; smaller gains are not worth reporting).
FASTER = 1.10

#: Above this share of fixed per-call cost in a batch-1 call, batch 1 is "dominated by overhead".
OVERHEAD_SHARE = 0.5

#: A model below this many MACs per sample is "tiny" for thread-count advice.
TINY_MACS = 5_000_000


def executed_graph(fmt: str, path: Path, *, targets: dict, threads: int) -> dict | None:
    """The executed-graph summary of an artifact (its format's hook, :meth:`exporters.Exporter.executed_graph`, on
    the target ``targets`` gives its runtime), or ``None`` when the format's runtime cannot be inspected."""
    import exporters
    from prokt_deploy import formats

    exporter = exporters.get_exporter(fmt)
    if not exporter.diagnoses_int8:
        return None
    try:
        return exporter.executed_graph(path, target=targets[formats.runtime_name(fmt)], threads=threads)
    except Exception as exc:  # a diagnosis must never fail the benchmark
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}


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
