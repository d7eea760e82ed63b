"""Latency: the candidates' and the teacher's artifacts timed in the target runtime, or read from a device.

The harness is ``bench``'s (:func:`prokt_deploy.harness.measure.measure`: one worker process per engine, 1
thread, warm-up, interleaved rounds, median of per-round p50s at batch 1); p50s are cached per machine
fingerprint, candidate, input shape, target, precision and library versions (``artifact-latency.json`` next to
the size cache). On-device planning reads the same numbers from a plan bundle's device result file instead
(:func:`read_device_latencies`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from prokt_deploy.budget import parse_target
from prokt_deploy.errors import ExportFailed, UsageError
from prokt_deploy.planner.sizing import SizeCache, cache_root, versions_key

#: Part of the latency-cache key (bump when the timing changes).
#: 2: half round time at batch > 1, 2 warm-up calls after the first round; 3: ONNX int8 with an fp32 stem.
LATENCY_VERSION = 3
#: Timing settings of a planner latency: bench's harness, batch 1 only, fewer calls than bench.
LATENCY_SETTINGS = {"threads": 1, "batch": 1, "runs": 100, "warmup": 20, "repeats": 3}
#: Label prefix of the teacher's entries among the planner's timed models (``teacher:<arch>:<precision>``).
TEACHER_LABEL = "teacher:"


def model_name(label: str) -> str:
    """A timed model's name in a bundle or device result file: ``teacher`` or the candidate's architecture."""
    return "teacher" if label.startswith(TEACHER_LABEL) else label


class LatencyCache(SizeCache):
    """A JSON file of measured p50 latencies (ms), keyed with the machine's fingerprint id; safe to delete."""

    def __init__(self, path: Path | None = None) -> None:
        super().__init__(path or cache_root() / "artifact-latency.json")


def generic_calibration(example: torch.Tensor, n: int = 100):
    """int8 calibration samples for an untrained candidate: normal samples of an image ``example``'s shape,
    or for text ``example`` itself repeated (token ids must stay in the vocabulary)."""
    import numpy as np

    shape = tuple(example.shape[1:])
    if not example.is_floating_point():
        return np.resize(example.numpy(), (n, *shape))
    return np.random.default_rng(0).standard_normal((n, *shape)).astype(np.float32)


def generic_artifact(
    model: nn.Module, label: str, fmt: str, precision: str, example: torch.Tensor, calibration, out_dir: Path, done: Path | None = None
) -> list[Path]:
    """The files of ``model``'s ``fmt``/``precision`` artifact with generic weights (the real graph): those in
    ``done`` when it already holds them (the size measurement's export), else exported into ``out_dir``.

    The teacher (label ``teacher:...``) is exported with its own weights: they are real (a checkpoint) or
    fresh, and a deep trained network with generic offsets added to every weight overflows its activations
    (onnxruntime's int8 calibration then fails on a vgg-w32 teacher)."""
    import exporters
    from exporters.size import generic_copy

    files = sorted(done.iterdir()) if done is not None and done.is_dir() else []
    if files:
        try:
            exporters.main_file(fmt, files)
            return files
        except exporters.ExportError:
            pass  # not this format's artifact: export it
    try:
        as_exported = model if label.startswith(TEACHER_LABEL) else generic_copy(model, 0)  # export() evaluates in eval mode, mode restored
        return exporters.export(
            as_exported, fmt, precision, out_dir, example_input=example, calibration=calibration if precision == "int8" else None
        ).files
    except exporters.ExportError as exc:
        raise ExportFailed(f"cannot export {label} to {fmt} {precision}: {exc}") from None


def measure_latencies(
    models: dict[str, tuple[nn.Module, str]],
    target: str,
    *,
    example: torch.Tensor,
    cache: LatencyCache | None = None,
    key_extra: str = "",
    exported: dict[str, Path] | None = None,
) -> dict[str, float]:
    """Batch-1 p50 (ms) of each labelled ``(model, precision)``'s artifact in ``target``, measured together
    (interleaved rounds, so the ratios between them hold on a noisy machine).

    Each model is exported as a copy with generic weights (:func:`exporters.size.generic_copy`: the real
    graph, nothing special folded away; int8 calibrated on normal samples of ``example``'s shape, or for
    text on ``example`` itself) and timed with :func:`prokt_deploy.harness.measure.measure`, all candidates in
    one interleaved measurement. Cached per machine fingerprint. ``exported``: label -> a directory that
    already holds that artifact (the planner's size measurement), used instead of exporting again.
    """
    import numpy as np

    from prokt_deploy import formats
    from prokt_deploy.harness import measure

    fmt, device = parse_target(target)
    cache = cache if cache is not None else LatencyCache()
    machine = formats.fingerprint(runtimes=False)["id"]
    shape = tuple(example.shape[1:])
    keys = {
        label: f"v{LATENCY_VERSION}|{machine}|{label}|{shape}{key_extra}|{fmt}:{device}|{precision}|{LATENCY_SETTINGS}|{versions_key()}"
        for label, (_, precision) in models.items()
    }
    result = {label: cache.get(k) for label, k in keys.items()}
    todo = [label for label, v in result.items() if v is None]
    if not todo:
        return result  # type: ignore[return-value]
    try:
        targets = formats.runtime_targets(device)
    except measure.DeviceUnavailable as exc:
        raise UsageError(str(exc)) from None
    x = example.numpy()
    calibration = generic_calibration(example)
    with tempfile.TemporaryDirectory(prefix="prokt-plan-latency-") as tmp:
        engines = []
        for i, label in enumerate(todo):
            model, precision = models[label]
            files = generic_artifact(model, label, fmt, precision, example, calibration, Path(tmp) / str(i), (exported or {}).get(label))
            engines.append({"id": label, **formats.artifact_engine(fmt, files, targets), "accuracy": {"accuracy": 0.0, "samples": 0}})
        data = Path(tmp) / "x.npz"
        np.savez(data, x=np.resize(x, (8, *shape)), y=np.zeros(8, dtype=np.int64))
        try:
            rows = measure.measure(engines, data, **LATENCY_SETTINGS)
        except measure.MeasureError as exc:
            raise ExportFailed(f"cannot time the candidates in {target}: {exc}") from None
    for label, row in zip(todo, rows):
        result[label] = row["latency_ms"]["p50"]
        cache.put(keys[label], result[label])
    return result  # type: ignore[return-value]


def read_device_latencies(path: str | os.PathLike[str]) -> dict:
    """The batch-1 p50s of a plan bundle's device result file (``python bench_bundle.py`` in the directory
    ``plan --bundle`` wrote), as ``{"path", "device", "p50": {(model, format, precision): ms}}``.

    Raises :class:`~prokt_deploy.errors.BenchError` (exit 12) with one line for a file that is missing,
    not JSON, not a device result file, or the result of a run's bundle rather than a plan's.
    """
    from prokt_deploy.errors import BenchError
    from prokt_deploy.harness import measure

    try:
        data = measure.read_results(Path(path))
    except measure.MeasureError as exc:
        raise BenchError(str(exc)) from None
    if not str(data.get("run") or "").startswith(PLAN_BUNDLE_PREFIX):
        raise BenchError(
            f"{path} holds the results of a run's bundle, not of a plan's: write one with 'prokt-deploy plan --bundle DIR', "
            "run 'python bench_bundle.py' in it on the device, and pass its device-results.json"
        )
    p50 = {}
    for row in data["rows"]:
        value = (row.get("latency_ms") or {}).get("p50")
        if not isinstance(value, (int, float)) or not value > 0:
            raise BenchError(f"{path}: row {row['id']!r} has no positive batch-1 p50 latency")
        p50[(row["model"], row["format"], row["precision"])] = float(value)
    fp = data["fingerprint"]
    device = fp.get("cpu", {}).get("model") if isinstance(fp.get("cpu"), dict) else None
    return {"path": str(path), "device": device or fp["id"], "p50": p50}


#: ``bundle.json`` "run" of a plan bundle: the prefix tells its device results from a run bundle's
PLAN_BUNDLE_PREFIX = "plan:"


def lookup_device_latencies(device: dict, models: dict[str, tuple[nn.Module, str]], fmt: str) -> dict[str, float]:
    """label -> p50 ms from ``device`` (:func:`read_device_latencies`) for the planner's ``models``
    (candidates by architecture name, the teacher as ``teacher:...:precision``); BenchError if one is missing."""
    from prokt_deploy.errors import BenchError

    out = {}
    for label, (_, precision) in models.items():
        model = model_name(label)
        value = device["p50"].get((model, fmt, precision))
        if value is None:
            raise BenchError(
                f"{device['path']} has no {fmt} {precision} latency for {model}: it was measured for another recipe, budget or "
                "format; write the bundle again with 'prokt-deploy plan --bundle DIR' and measure it on the device"
            )
        out[label] = value
    return out
