"""``bench``: teacher vs student vs every passed artifact of a run, measured side by side.

Rows (ids are ``model/format/precision``):

- ``teacher/pytorch/fp32`` and ``teacher/onnx/fp32``: the teacher as trained, and exported to ONNX on
  the fly into ``<run>/artifacts/teacher-onnx-fp32/`` -- the fair baseline, since it runs in the same
  kind of runtime as the artifacts (``speedup_vs_teacher`` is relative to it);
- ``student/pytorch/fp32``;
- ``student/<format>/fp32`` references, exported on the fly into ``<run>/artifacts/student-<format>-fp32/``
  for every format that has an int8 artifact but no fp32 one, so "is int8 faster?" can be answered;
- every artifact of the manifest that passed its export gates.

Each row is measured in its own worker process (see :mod:`prokt_deploy.measure` for how), the int8
rows are compared with their fp32 counterparts (:mod:`prokt_deploy.int8_diagnosis`), the fastest
artifact that passes the accuracy gate is recommended, the gates are checked against it, and the
report is written to ``report.json``, ``report.md`` and ``report.html`` in the run directory
(:mod:`prokt_deploy.report`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from prokt_deploy import int8_diagnosis, measure, report
from prokt_deploy.errors import BenchError, BenchGateFailed, ExportFailed, RunError, UsageError
from prokt_deploy.fingerprint import fingerprint
from prokt_deploy.runs import filesystem_cause, read_manifest, resolve_run, run_lock

BASELINE = "teacher/onnx/fp32"
BASELINE_PYTORCH = "teacher/pytorch/fp32"

Progress = Callable[[str], None]


def load_run_model(run: Path, which: str):  # noqa: ANN201 - torch.nn.Module (torch is imported lazily)
    """The run's ``"teacher"`` or ``"student"`` as a PyTorch module in eval mode, with its weights."""
    from prokt_deploy.checkpoint import build_from_factory, load_weights
    from prokt_deploy.models import create_model

    manifest = read_manifest(run)
    spec = manifest[which]
    if not spec.get("weights"):
        raise RunError(f"{run} has no {which} weights (method {manifest.get('method')!r} does not keep a {which})")
    from prokt_deploy.data import model_kwargs

    kwargs = {"num_classes": len(manifest["classes"]), **model_kwargs(manifest["input"])}
    model = build_from_factory(spec["factory"], **kwargs) if spec.get("factory") else create_model(spec["arch"], **kwargs)
    load_weights(model, run / spec["weights"])
    return model.eval()


def ensure_fp32_export(run: Path, which: str, fmt: str, example: np.ndarray) -> list[Path]:
    """``<run>/artifacts/<which>-<fmt>-fp32/``, exported once and reused by later benches."""
    out = run / "artifacts" / f"{which}-{fmt}-fp32"
    expected = [out / "model.onnx"] if fmt == "onnx" else [out / "model.xml", out / "model.bin"]
    if all(f.is_file() for f in expected):
        return expected
    import torch

    import exporters

    model = load_run_model(run, which)
    out.parent.mkdir(exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))  # never a half-written export in place
    try:
        try:
            artifact = exporters.export(model, fmt, "fp32", staging, example_input=torch.from_numpy(example[:2]))
        except (exporters.ExportError, RuntimeError, OSError) as exc:
            cause = filesystem_cause(exc, staging)
            if cause is not None:
                raise cause from None
            raise ExportFailed(f"could not export the {which} to {fmt} fp32 for the benchmark: {exc}") from None
        os.chmod(staging, 0o755)
        if out.exists():  # an incomplete earlier export (or one written since by another bench)
            if all(f.is_file() for f in expected):
                return expected
            shutil.rmtree(out)
        os.rename(staging, out)
        return [out / f.name for f in artifact.files]
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _main_file(files: list[Path]) -> Path:
    return next(f for f in files if f.suffix in (".onnx", ".xml"))


def _rows_to_measure(run: Path, manifest: dict, x: np.ndarray, targets: dict, progress: Progress) -> list[dict]:
    """The rows of the report, each with the worker spec (``engine``) that measures it."""
    rows: list[dict] = []

    def add(model: str, fmt: str, precision: str, kind: str, files: list[Path], engine: dict, **extra: object) -> None:
        row_id = f"{model}/{fmt}/{precision}"
        rows.append({"id": row_id, "model": model, "format": fmt, "precision": precision, "kind": kind,
                     "files": [str(f.relative_to(run)) for f in files], "bytes": sum(f.stat().st_size for f in files),
                     "engine": {"id": row_id, **engine}, **extra})

    artifacts = [a for a in manifest.get("artifacts", []) if a.get("passed")]
    missing = [f for a in artifacts for f in a["files"] if not (run / f).is_file()]
    if missing:
        raise RunError(f"artifact file {missing[0]!r} listed in {run / 'manifest.json'} is missing; export again")
    if manifest["teacher"].get("weights"):
        add("teacher", "pytorch", "fp32", "reference", [run / manifest["teacher"]["weights"]], {"runtime": "torch", "run": str(run), "model": "teacher"})
        progress("exporting the teacher to ONNX fp32 (the baseline)")
        files = ensure_fp32_export(run, "teacher", "onnx", x)
        add("teacher", "onnx", "fp32", "reference", files, measure.artifact_engine("onnx", _main_file(files), targets))
    add("student", "pytorch", "fp32", "reference", [run / manifest["student"]["weights"]], {"runtime": "torch", "run": str(run), "model": "student"})
    have_fp32 = {a["format"] for a in artifacts if a["precision"] == "fp32"}
    for fmt in sorted({a["format"] for a in artifacts if a["precision"] == "int8"} - have_fp32):
        progress(f"exporting the student to {fmt} fp32 (the int8 counterpart)")
        files = ensure_fp32_export(run, "student", fmt, x)
        add("student", fmt, "fp32", "reference", files, measure.artifact_engine(fmt, _main_file(files), targets))
    for a in artifacts:
        files = [run / f for f in a["files"]]
        add("student", a["format"], a["precision"], "artifact", files, measure.artifact_engine(a["format"], _main_file(files), targets),
            passed=True, within_budget=a.get("within_budget"), budget_bytes=a.get("budget_bytes"))
    return rows


def relative_to_baseline(rows: list[dict], baseline_id: str) -> None:
    """Add speed-ups and the accuracy drop relative to ``baseline_id`` among ``rows`` (if present)."""
    base = next((r for r in rows if r["id"] == baseline_id), None)
    pytorch = next((r for r in rows if r["id"] == BASELINE_PYTORCH), None)
    for r in rows:
        r["speedup_vs_teacher"] = round(base["latency_ms"]["p50"] / r["latency_ms"]["p50"], 3) if base else None
        r["batch_speedup_vs_teacher"] = round(base["batch_latency_ms"]["p50"] / r["batch_latency_ms"]["p50"], 3) if base and base["batch"] == r["batch"] else None
        r["accuracy_drop_vs_teacher"] = round(100 * (base["test_accuracy"] - r["test_accuracy"]), 3) if base else None
        r["speedup_vs_teacher_pytorch"] = round(pytorch["latency_ms"]["p50"] / r["latency_ms"]["p50"], 3) if pytorch else None


def recommend(rows: list[dict], max_accuracy_drop: float | None) -> dict | None:
    """The fastest (batch-1 p50) host artifact that passed export and is within ``max_accuracy_drop``."""
    artifacts = [r for r in rows if r["kind"] == "artifact"]
    ok = [r for r in artifacts if max_accuracy_drop is None or (r["accuracy_drop_vs_teacher"] is not None and r["accuracy_drop_vs_teacher"] <= max_accuracy_drop)]
    if not ok:
        return None
    best = min(ok, key=lambda r: r["latency_ms"]["p50"])
    gate = f"within {max_accuracy_drop:g} points of the teacher" if max_accuracy_drop is not None else "that passed the export gates"
    reason = f"fastest at batch 1 (p50 {best['latency_ms']['p50']:.4f} ms) of the {len(ok)} artifact(s) {gate}"
    if best.get("speedup_vs_teacher") is not None:
        reason += f"; {best['speedup_vs_teacher']:.2f}x the teacher ONNX speed"
    return {"id": best["id"], "reason": reason}


def evaluate_gates(rows: list[dict], recommendation: dict | None, *, max_latency_ms: float | None = None,
                   max_accuracy_drop: float | None = None, min_speedup: float | None = None) -> list[dict]:
    """Check the gates against the recommended artifact; one entry per gate that was set."""
    best = next((r for r in rows if recommendation and r["id"] == recommendation["id"]), None)
    has_artifacts = any(r["kind"] == "artifact" for r in rows)
    gates = []

    def gate(name: str, limit: float, value: float | None, ok: bool, message: str) -> None:
        gates.append({"name": name, "limit": limit, "value": value, "artifact": best["id"] if best else None, "passed": ok, "message": message})

    if max_accuracy_drop is not None:
        if best is None:
            why = "no artifact is within it" if has_artifacts else "the run has no passed artifacts (run 'prokt-deploy export')"
            gate("max_accuracy_drop", max_accuracy_drop, None, False, f"accuracy drop vs teacher <= {max_accuracy_drop:g} points: {why}")
        else:
            d = best["accuracy_drop_vs_teacher"]
            gate("max_accuracy_drop", max_accuracy_drop, d, True, f"accuracy drop vs teacher {d:.2f} <= {max_accuracy_drop:g} points ({best['id']})")
    if max_latency_ms is not None:
        value = best["latency_ms"]["p50"] if best else None
        ok = value is not None and value <= max_latency_ms
        what = f"p50 {value:.4f} ms" if value is not None else "no deployable artifact"
        gate("max_latency_ms", max_latency_ms, value, ok, f"latency {what} {'<=' if ok else 'exceeds'} {max_latency_ms:g} ms" + (f" ({best['id']})" if best else ""))
    if min_speedup is not None:
        value = best["speedup_vs_teacher"] if best else None
        ok = value is not None and value >= min_speedup
        what = f"{value:.2f}x" if value is not None else ("no teacher baseline" if best else "no deployable artifact")
        gate("min_speedup", min_speedup, value, ok, f"speed-up vs teacher {what} {'>=' if ok else 'below'} {min_speedup:g}x" + (f" ({best['id']})" if best else ""))
    return gates


def check_gates(rep: dict) -> None:
    """Raise :class:`BenchGateFailed` (exit 11) naming every missed gate of a written report."""
    missed = [g["message"] for g in rep["gates"] if not g["passed"]]
    if missed:
        raise BenchGateFailed(f"benchmark gate missed: {'; '.join(missed)} (report: {Path(rep['run']) / report.REPORT_MD})")


def resolve_targets(device: str) -> dict:
    """What ``device`` means for each runtime (:func:`prokt_deploy.measure.resolve_device`); an
    unavailable device is a usage error (exit 2) that lists the available ones."""
    try:
        return measure.resolve_device(device)
    except measure.DeviceUnavailable as exc:
        raise UsageError(str(exc)) from None


def _validate_settings(settings: dict) -> None:
    for key in ("threads", "batch", "runs", "repeats"):
        if settings[key] < 1:
            raise UsageError(f"--{key} must be at least 1, got {settings[key]}")
    if settings["warmup"] < 0:
        raise UsageError(f"--warmup must be 0 or more, got {settings['warmup']}")


def bench(
    run: str | Path | None = None,
    *,
    threads: int = measure.DEFAULTS["threads"],
    batch: int = measure.DEFAULTS["batch"],
    runs: int = measure.DEFAULTS["runs"],
    warmup: int = measure.DEFAULTS["warmup"],
    repeats: int = measure.DEFAULTS["repeats"],
    device: str = "CPU",
    max_latency_ms: float | None = None,
    max_accuracy_drop: float | None = None,
    min_speedup: float | None = None,
    progress: Progress | None = None,
) -> dict:
    """Benchmark a run (default: the latest) and write its reports; return the report dict.

    Gates are evaluated and recorded in the report but not raised here: call :func:`check_gates`.
    ``max_accuracy_drop`` is in percentage points of test accuracy below the teacher; ``min_speedup``
    is the recommended artifact's batch-1 speed-up over the teacher's ONNX fp32 baseline.
    """
    from prokt_deploy.api import load_recipe_data
    from prokt_deploy.recipe import load_recipe

    progress = progress or (lambda text: None)
    settings = {"threads": threads, "batch": batch, "runs": runs, "warmup": warmup, "repeats": repeats}
    _validate_settings(settings)
    run = resolve_run(run)
    manifest = read_manifest(run)
    if manifest.get("kind") != "distill":
        raise RunError(f"{run} is not a distill run (kind {manifest.get('kind')!r}); bench a directory written by 'prokt-deploy distill' or 'run'")
    targets = resolve_targets(device)
    progress("loading the test split")
    data = load_recipe_data(load_recipe(run / "recipe.yaml"))
    x, y = data.test.x.numpy(), data.test.y.numpy()
    rows = _rows_to_measure(run, manifest, x, targets, progress)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="prokt-bench-") as tmp:
        test_npz = Path(tmp) / "test.npz"
        extra, seq_len = {}, None
        if data.is_text:  # time at the median test length (a realistic sentence), not at max_length
            seq_len = int(np.median(x[:, 1].sum(1)))
            extra["x_time"] = x[:, :, :seq_len]
        np.savez(test_npz, x=x, y=y, **extra)
        try:
            results = measure.measure([r["engine"] for r in rows], test_npz, progress=progress, **settings)
        except measure.MeasureError as exc:
            raise BenchError(str(exc)) from None
    for row, res in zip(rows, results):
        del row["engine"]
        row.update(res)
    relative_to_baseline(rows, BASELINE)

    fp = fingerprint()
    if seq_len is not None:
        settings["seq_len"] = seq_len  # text: tokens per timed sample
    settings.update({"device": device, "fallbacks": targets["fallbacks"], "baseline": BASELINE, "accuracy_split": "test",
                     "measure_s": round(time.perf_counter() - started, 2), "faster_threshold": int8_diagnosis.FASTER})
    progress("explaining int8 vs fp32")
    findings = _int8_findings(run, rows, manifest, fp, settings, targets)
    recommendation = recommend(rows, max_accuracy_drop)
    gates = evaluate_gates(rows, recommendation, max_latency_ms=max_latency_ms, max_accuracy_drop=max_accuracy_drop, min_speedup=min_speedup)
    not_benchmarked = [{"id": f"student/{a['format']}/{a['precision']}", "format": a["format"], "precision": a["precision"], "failures": a.get("failures", [])}
                       for a in manifest.get("artifacts", []) if not a.get("passed")]
    rep = report.new_report(run, manifest, fingerprint=fp, settings=settings, rows=rows, int8=findings, recommendation=recommendation,
                            gates=gates, not_benchmarked=not_benchmarked)
    with run_lock(run):  # not in the middle of a --merge's read-modify-write
        report.write_reports(run, rep)
    return rep


def _int8_findings(run: Path, rows: list[dict], manifest: dict, fp: dict, settings: dict, targets: dict) -> list[dict]:
    by_id = {r["id"]: r for r in rows}
    findings = []
    for row in rows:
        if row["kind"] != "artifact" or row["precision"] != "int8":
            continue
        counterpart = by_id.get(f"student/{row['format']}/fp32")
        if counterpart is None:
            continue
        graphs = [int8_diagnosis.executed_graph(r["format"], _main_file([run / f for f in r["files"]]), targets=targets, threads=settings["threads"])
                  for r in (row, counterpart)]
        findings.append(int8_diagnosis.explain(row, counterpart, graph=graphs[0], fp32_graph=graphs[1], fingerprint=fp, settings=settings,
                                               macs=manifest["student"].get("macs")))
    return findings


def merge_device_results(run: str | Path | None, files: list[Path]) -> dict:
    """Add the rows of ``bench_bundle.py`` result files to the run's report (replacing earlier rows of
    the same device) and rewrite the reports. The host rows are not measured again."""
    run = resolve_run(run)
    report.read_report(run)  # no report: refused before the result files are read
    results = [report.read_device_results(f) for f in files]  # every file checked before anything is written
    with run_lock(run):  # read-modify-write: another merge or bench must not be lost
        rep = report.read_report(run)
        for data in results:
            fp_id = data["fingerprint"]["id"]
            rows = [{**row, "id": f"{row['id']}@{fp_id}", "kind": "device", "fingerprint_id": fp_id} for row in data["rows"]]
            relative_to_baseline(rows, f"{BASELINE}@{fp_id}")  # speed-ups against the teacher measured on that device
            rep["rows"] = [r for r in rep["rows"] if r.get("fingerprint_id") != fp_id] + rows
            rep["devices"][fp_id] = {k: data.get(k) for k in ("fingerprint", "settings", "created", "skipped")}
        report.write_reports(run, rep)
    return rep
