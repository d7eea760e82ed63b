"""``bench``: teacher vs student vs every passed artifact of a run, measured side by side.

Rows (ids are ``model/format/precision``):

- ``teacher/pytorch/fp32`` and ``teacher/onnx/fp32``: the teacher as trained, and exported to ONNX on
  the fly into ``<run>/artifacts/teacher-onnx-fp32/`` -- the fair baseline, since it runs in the same
  kind of runtime as the artifacts (``speedup_vs_teacher`` is relative to it);
- ``teacher/<format>/int8``: the teacher's own int8 artifacts (the first thing a user tries instead of
  distilling), for every format the student has an artifact in, exported on the fly into
  ``<run>/artifacts/teacher-<format>-int8/`` with the student's quantizers, calibration samples and
  accuracy gate (:func:`ensure_int8_export`; its gate record is ``gate.json`` there), each marked whether
  it fits the run's byte budget. One that misses its gate is listed under ``not_benchmarked``;
- ``student/pytorch/fp32``;
- ``student/<format>/fp32``, exported on the fly into ``<run>/artifacts/student-<format>-fp32/``
  for every format that has an int8 artifact but no fp32 one, so "is int8 faster?" can be answered;
- every artifact of the manifest that passed its export gates.

The recommendation (:func:`recommend`) is the fastest *student* file that runs in a runtime, fits the
byte budget and is within the accuracy gate: the passed artifacts and the student fp32 files the bench
exported (on a CPU without int8 dot products the fp32 file is often the fastest; it is deployable, its
parity with PyTorch is exact and its accuracy is measured here). The report then says whether that
student beats the teacher's fastest artifact (its own int8 included) on speed and on size
(:func:`versus_teacher`).

Accuracy is a property of an artifact, not of a timing round: it is measured once per artifact and,
where the manifest already records it on the same test split (the export gates, the PyTorch models'
test accuracy after training, the teacher int8 gate), reused instead of measured again.

Each row is measured in its own worker process (see :mod:`prokt_deploy.harness.measure` for how), the int8
rows are compared with their fp32 counterparts (:mod:`prokt_deploy.benchmarking.int8_diagnosis`), the fastest
artifact that passes the accuracy gate is recommended, the gates are checked against it, and the
report is written to ``report.json``, ``report.md`` and ``report.html`` in the run directory
(:mod:`prokt_deploy.benchmarking.report`).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import exporters
from prokt_deploy import formats
from prokt_deploy.benchmarking import int8_diagnosis, report
from prokt_deploy.deploy.references import ensure_fp32_export, teacher_int8_gates
from prokt_deploy.errors import BenchError, BenchGateFailed, RunError, UsageError
from prokt_deploy.harness import measure
from prokt_deploy.rundir.reader import FinishedRun, open_run
from prokt_deploy.rundir.records import BenchReport
from prokt_deploy.rundir.workspace import resolve_run, run_lock

BASELINE = "teacher/onnx/fp32"
BASELINE_PYTORCH = "teacher/pytorch/fp32"

Progress = Callable[[str], None]


#: the loader bench's PyTorch rows name (the worker imports it; bench.measure itself imports nothing of the project)
TORCH_LOADER = "prokt_deploy.rundir.reader:load_model"


def _rows_to_measure(fr: FinishedRun, data, targets: dict, progress: Progress, predictions: dict) -> tuple[list[dict], list[dict]]:
    """The rows of the report, each with the worker spec (``engine``) that measures it, and the teacher
    int8 artifacts that missed their gate (``not_benchmarked`` entries). ``predictions`` receives the
    per-sample classes of the rows whose accuracy is measured here (by row id)."""
    run, manifest = fr.path, fr.manifest
    rows: list[dict] = []
    failed: list[dict] = []
    x = data.test.x.numpy()
    n_test = len(data.test)
    budget = manifest.budget_bytes
    metrics = manifest.metrics

    def known(accuracy: float | None) -> dict:
        """An accuracy already measured on this test split: the worker does not measure it again."""
        return {} if accuracy is None else {"accuracy": {"accuracy": float(accuracy), "samples": n_test}}

    def add(model: str, fmt: str, precision: str, kind: str, files: list[Path], engine: dict, **extra: object) -> None:
        row_id = f"{model}/{fmt}/{precision}"
        rows.append(
            {
                "id": row_id,
                "model": model,
                "format": fmt,
                "precision": precision,
                "kind": kind,
                "files": [str(f.relative_to(run)) if f.is_relative_to(run) else str(f) for f in files],
                "bytes": sum(f.stat().st_size for f in files),
                "engine": {"id": row_id, **engine},
                **extra,
            }
        )

    artifacts = manifest.passed_artifacts()
    missing = [f for a in artifacts for f in a.files if not (run / f).is_file()]
    if missing:
        raise RunError(f"artifact file {missing[0]!r} listed in {run / 'manifest.json'} is missing; export again")

    def fits(files: list[Path]) -> dict:
        size = sum(f.stat().st_size for f in files)
        return {"within_budget": None if budget is None else size <= budget, "budget_bytes": budget}

    if manifest.teacher.weights:
        add(
            "teacher",
            "pytorch",
            "fp32",
            "reference",
            [run / manifest.teacher.weights],
            {"runtime": "torch", "loader": TORCH_LOADER, "run": str(run), "model": "teacher", **known(metrics.get("teacher_test_accuracy"))},
        )
        given = fr.given_teacher_file()
        if given is not None:  # the teacher as the user brought it, before the method fine-tuned it: a row to compare with
            add(
                "teacher-given",
                "pytorch",
                "fp32",
                "reference",
                [given],
                {
                    "runtime": "torch",
                    "loader": TORCH_LOADER,
                    "run": str(run),
                    "model": "teacher-given",
                    **known(metrics["teacher_given_test_accuracy"]),
                },
            )
        progress("exporting the teacher to ONNX fp32 (the baseline)")
        files = ensure_fp32_export(fr, "teacher", "onnx", x)
        # its accuracy once, here on every core, before anything is timed (a MiniLM pass at 1 thread in the
        # timing worker took twice as long); its predictions also give the per-class table
        progress(f"the teacher's ONNX fp32 file on the {n_test} test samples (its accuracy, once)")
        try:
            baseline_pred = exporters.predict_logits(exporters.load(files, "onnx"), x, trim_padding=True).argmax(1)
        except (exporters.ExportError, RuntimeError) as exc:
            raise BenchError(f"the teacher's ONNX fp32 file {files[0]} could not be run: {exc}") from None
        predictions[BASELINE] = baseline_pred
        accuracy = {"accuracy": {"accuracy": float((baseline_pred == data.test.y.numpy()).mean()), "samples": n_test, "measured": True}}
        add("teacher", "onnx", "fp32", "reference", files, {**formats.artifact_engine("onnx", files, targets), **accuracy}, **fits(files))
        for fmt, gate in teacher_int8_gates(fr, {a.format for a in artifacts}, data, progress).items():
            if not gate.passed:
                failed.append({"id": f"teacher/{fmt}/int8", "format": fmt, "precision": "int8", "failures": gate.failures})
                continue
            files = [run / f for f in gate.files]
            add(
                "teacher",
                fmt,
                "int8",
                "reference",
                files,
                {**formats.artifact_engine(fmt, files, targets), **known(gate.test_accuracy)},
                within_budget=gate.within_budget,
                budget_bytes=budget,
            )
    add(
        "student",
        "pytorch",
        "fp32",
        "reference",
        [run / manifest.student.weights],
        {"runtime": "torch", "loader": TORCH_LOADER, "run": str(run), "model": "student", **known(metrics.get("student_test_accuracy"))},
    )
    have_fp32 = {a.format for a in artifacts if a.precision == "fp32"}
    for fmt in sorted({a.format for a in artifacts if a.precision == "int8"} - have_fp32):
        progress(f"exporting the student to {fmt} fp32 (the int8 counterpart)")
        files = ensure_fp32_export(fr, "student", fmt, x)
        add("student", fmt, "fp32", "reference", files, formats.artifact_engine(fmt, files, targets), **fits(files))
    for a in artifacts:
        files = [run / f for f in a.files]
        reuse = known(a.test_accuracy) if a.test_samples == n_test else {}
        add(
            "student",
            a.format,
            a.precision,
            "artifact",
            files,
            {**formats.artifact_engine(a.format, files, targets), **reuse},
            passed=True,
            within_budget=a.within_budget,
            budget_bytes=a.budget_bytes,
        )
    return rows, failed


def relative_to_baseline(rows: list[dict], baseline_id: str) -> None:
    """Add speed-ups and the accuracy drop relative to ``baseline_id`` among ``rows`` (if present)."""
    base = next((r for r in rows if r["id"] == baseline_id), None)
    pytorch = next((r for r in rows if r["id"] == BASELINE_PYTORCH), None)
    for r in rows:
        r["speedup_vs_teacher"] = round(base["latency_ms"]["p50"] / r["latency_ms"]["p50"], 3) if base else None
        r["batch_speedup_vs_teacher"] = (
            round(base["batch_latency_ms"]["p50"] / r["batch_latency_ms"]["p50"], 3) if base and base["batch"] == r["batch"] else None
        )
        r["accuracy_drop_vs_teacher"] = round(100 * (base["test_accuracy"] - r["test_accuracy"]), 3) if base else None
        r["speedup_vs_teacher_pytorch"] = round(pytorch["latency_ms"]["p50"] / r["latency_ms"]["p50"], 3) if pytorch else None


def deployable(row: dict) -> bool:
    """A student file a device can run: a passed artifact, or a student fp32 file the bench exported."""
    return row["model"] == "student" and (
        row["kind"] == "artifact" or (row["kind"] == "reference" and row["format"] in exporters.formats_with("int8"))
    )


def recommend(rows: list[dict], max_accuracy_drop: float | None, int8: list[dict] | None = None) -> dict | None:
    """The fastest (batch-1 p50) deployable student file (:func:`deployable`) that fits the byte budget
    and is within ``max_accuracy_drop``; the reason names a faster file left out for its size, and, when
    an fp32 file wins, how fast the int8 file of its format was (``int8``: the int8 findings)."""
    candidates = [r for r in rows if deployable(r)]
    accurate = [
        r
        for r in candidates
        if max_accuracy_drop is None or (r["accuracy_drop_vs_teacher"] is not None and r["accuracy_drop_vs_teacher"] <= max_accuracy_drop)
    ]
    ok = [r for r in accurate if r.get("within_budget") is not False]
    if not ok:
        return None
    best = min(ok, key=lambda r: r["latency_ms"]["p50"])
    gate = f"within {max_accuracy_drop:g} points of the teacher" if max_accuracy_drop is not None else "that passed the export gates"
    reason = f"fastest at batch 1 (p50 {best['latency_ms']['p50']:.4f} ms) of the {len(ok)} student file(s) within the size budget and {gate}"
    if best.get("speedup_vs_teacher") is not None:
        reason += f"; {best['speedup_vs_teacher']:.2f}x the teacher ONNX speed"
    finding = next((f for f in int8 or [] if f["counterpart"] == best["id"]), None)
    if best["precision"] == "fp32" and finding is not None and not finding["faster"]:
        reason += f"; fp32, not int8: the int8 file runs at {finding['speedup']:.2f}x its speed here (see 'int8 vs fp32' for why)"
    over = [r for r in accurate if r.get("within_budget") is False and r["latency_ms"]["p50"] < best["latency_ms"]["p50"]]
    if over:
        fastest = min(over, key=lambda r: r["latency_ms"]["p50"])
        reason += f"; {fastest['id']} is faster (p50 {fastest['latency_ms']['p50']:.4f} ms) but over the budget of {fastest['budget_bytes']:,} B"
    return {"id": best["id"], "reason": reason}


def teacher_files(rows: list[dict]) -> list[dict]:
    """The teacher's rows that are files in a runtime (its PyTorch model is not a file)."""
    return [r for r in rows if r["model"] == "teacher" and r["kind"] == "reference" and r["format"] != "pytorch"]


def fastest_teacher_file(rows: list[dict]) -> dict | None:
    """The teacher's fastest file in a runtime (batch-1 p50); None without one."""
    files = teacher_files(rows)
    return min(files, key=lambda r: r["latency_ms"]["p50"]) if files else None


def versus_teacher(rows: list[dict], recommendation: dict | None) -> dict | None:
    """Does the recommended student beat the teacher's fastest artifact (ONNX fp32 or its own int8)?

    Returns ``teacher_artifact`` (the fastest teacher row in a runtime), ``student_artifact``, ``speedup``
    and ``batch_speedup`` (teacher p50 / student p50), ``size_ratio`` (teacher bytes / student bytes),
    ``beats_on_speed`` (speed-up >= 1), ``beats_on_size``, ``teacher_int8`` (id, bytes, within_budget of
    each teacher int8 row) and a one-sentence ``verdict``; ``None`` without a teacher or a recommendation.
    """
    student = next((r for r in rows if recommendation and r["id"] == recommendation["id"]), None)
    fastest = fastest_teacher_file(rows)
    if fastest is None or student is None:
        return None
    speedup = fastest["latency_ms"]["p50"] / student["latency_ms"]["p50"]
    batch_speedup = fastest["batch_latency_ms"]["p50"] / student["batch_latency_ms"]["p50"]
    size_ratio = fastest["bytes"] / student["bytes"]
    int8_rows = [
        {"id": r["id"], "bytes": r["bytes"], "within_budget": r.get("within_budget")} for r in teacher_files(rows) if r["precision"] == "int8"
    ]
    speed = f"{'faster' if speedup >= 1 else 'slower'} ({speedup:.2f}x its speed at batch 1, {batch_speedup:.2f}x at batch {student['batch']})"
    size = f"{size_ratio:.1f}x smaller" if size_ratio >= 1 else f"{1 / size_ratio:.1f}x larger"
    verdict = f"{student['id']} is {speed} than the teacher's fastest artifact {fastest['id']}, and {size}"
    fitting = [r["id"] for r in int8_rows if r["within_budget"]]
    if int8_rows:
        verdict += "; the teacher's own int8 " + (f"fits the budget ({', '.join(fitting)})" if fitting else "does not fit the budget")
    return {
        "teacher_artifact": fastest["id"],
        "student_artifact": student["id"],
        "speedup": round(speedup, 3),
        "batch_speedup": round(batch_speedup, 3),
        "size_ratio": round(size_ratio, 3),
        "beats_on_speed": speedup >= 1.0,
        "beats_on_size": size_ratio > 1.0,
        "teacher_int8": int8_rows,
        "verdict": verdict,
    }


def evaluate_gates(
    rows: list[dict],
    recommendation: dict | None,
    *,
    max_latency_ms: float | None = None,
    max_accuracy_drop: float | None = None,
    min_speedup: float | None = None,
) -> list[dict]:
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
        gate(
            "max_latency_ms",
            max_latency_ms,
            value,
            ok,
            f"latency {what} {'<=' if ok else 'exceeds'} {max_latency_ms:g} ms" + (f" ({best['id']})" if best else ""),
        )
    if min_speedup is not None:
        fastest = fastest_teacher_file(rows)  # the reference of the report's verdict and headline
        value = round(fastest["latency_ms"]["p50"] / best["latency_ms"]["p50"], 3) if best and fastest else None
        ok = value is not None and value >= min_speedup
        what = f"{value:.2f}x" if value is not None else ("no teacher file" if best else "no deployable artifact")
        versus = f" the teacher's fastest file {fastest['id']}" if fastest else " the teacher"
        gate(
            "min_speedup",
            min_speedup,
            value,
            ok,
            f"speed-up vs{versus} {what} {'>=' if ok else 'below'} {min_speedup:g}x" + (f" ({best['id']})" if best else ""),
        )
    return gates


def check_gates(rep: BenchReport) -> None:
    """Raise :class:`BenchGateFailed` (exit 11) naming every missed gate of a written report."""
    missed = [g.message for g in rep.missed_gates]
    if missed:
        raise BenchGateFailed(f"benchmark gate missed: {'; '.join(missed)} (report: {Path(rep.run) / report.REPORT_MD})")


def runtime_targets(device: str) -> dict:
    """What ``device`` means for each runtime of the registered formats (:func:`prokt_deploy.formats.runtime_targets`);
    an unavailable device is a usage error (exit 2) that lists the available ones."""
    try:
        return formats.runtime_targets(device)
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
) -> BenchReport:
    """Benchmark a run (default: the latest) and write its reports; return the report (``report.json``, typed).

    Gates are evaluated and recorded in the report but not raised here: call :func:`check_gates`.
    ``max_accuracy_drop`` is in percentage points of test accuracy below the teacher; ``min_speedup``
    is the recommended artifact's batch-1 speed-up over the teacher's ONNX fp32 baseline.
    """
    progress = progress or (lambda text: None)
    settings = {"threads": threads, "batch": batch, "runs": runs, "warmup": warmup, "repeats": repeats}
    _validate_settings(settings)
    fr = open_run(run)
    run, manifest = fr.path, fr.manifest
    targets = runtime_targets(device)
    progress("loading the test split")
    data = fr.data()
    x, y = data.test.x.numpy(), data.test.y.numpy()
    predictions: dict[str, np.ndarray] = {}  # per-sample classes of the accuracy passes: per-class accuracy without another pass
    rows, teacher_failed = _rows_to_measure(fr, data, targets, progress, predictions)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="prokt-bench-") as tmp:
        test_npz = Path(tmp) / "test.npz"
        extra, seq_len = {}, None
        if data.is_text:  # time at the median test length (a realistic sentence), not at max_length
            seq_len = int(np.median(x[:, 1].sum(1)))
            extra["x_time"] = x[:, :, :seq_len]
        np.savez(test_npz, x=x, y=y, **extra)
        try:
            results = measure.measure([r["engine"] for r in rows], test_npz, progress=progress, keep_predictions=True, **settings)
        except measure.MeasureError as exc:
            raise BenchError(str(exc)) from None
    for row, res in zip(rows, results):
        del row["engine"]
        if "predictions" in res:
            predictions[row["id"]] = np.asarray(res.pop("predictions"))
        row.update(res)
    relative_to_baseline(rows, BASELINE)

    fp = formats.fingerprint()
    if seq_len is not None:
        settings["seq_len"] = seq_len  # text: tokens per timed sample
    settings.update(
        {
            "device": device,
            "fallbacks": targets["fallbacks"],
            "baseline": BASELINE,
            "accuracy_split": "test",
            "measure_s": round(time.perf_counter() - started, 2),
            "faster_threshold": int8_diagnosis.FASTER,
        }
    )
    progress("explaining int8 vs fp32")
    findings = _int8_findings(run, rows, manifest.student.macs, fp, settings, targets)
    recommendation = recommend(rows, max_accuracy_drop, findings)
    gates = evaluate_gates(rows, recommendation, max_latency_ms=max_latency_ms, max_accuracy_drop=max_accuracy_drop, min_speedup=min_speedup)
    not_benchmarked = [
        {"id": f"student/{a.format}/{a.precision}", "format": a.format, "precision": a.precision, "failures": a.failures}
        for a in manifest.artifacts
        if not a.passed
    ] + teacher_failed
    rep = report.new_report(
        run,
        manifest,
        fingerprint=fp,
        settings=settings,
        rows=rows,
        int8=findings,
        recommendation=recommendation,
        gates=gates,
        not_benchmarked=not_benchmarked,
    )
    rep["versus_teacher"] = versus_teacher(rows, recommendation)
    rep["headline"] = report.headline(rep)  # the answers first: the report's opening lines and the terminal's
    progress("per-class accuracy of the recommended artifact and the teacher")
    rep["per_class"] = per_class_accuracy(fr, rows, recommendation, data, threads, predictions)
    with run_lock(run):  # not in the middle of a --merge's read-modify-write
        report.write_reports(run, rep)
    return BenchReport.from_dict(rep)


def per_class_accuracy(
    fr: FinishedRun,
    rows: list[dict],
    recommendation: dict | None,
    data,
    threads: int,
    predictions: dict[str, np.ndarray] | None = None,
) -> dict | None:
    """Test accuracy per class of the recommended artifact (in its runtime, or the PyTorch student) and of the
    teacher (its ONNX fp32 file, the bench baseline, else the PyTorch teacher): where the lost points go.
    ``predictions``: per-sample classes the bench's accuracy pass already has, by row id (not run again)."""
    import exporters

    if recommendation is None:
        return None
    run = fr.path
    by_id = {r["id"]: r for r in rows}
    x, y = data.test.x.numpy(), data.test.y.numpy()

    def file_predictions(row: dict) -> np.ndarray:
        if row["id"] in (predictions or {}):
            return predictions[row["id"]]
        predictor = exporters.load([run / f for f in row["files"]], row["format"], threads=threads)
        return np.concatenate([predictor.predict(x[i : i + 256]).argmax(1) for i in range(0, len(x), 256)])

    def torch_predictions(which: str) -> np.ndarray:
        import torch

        model = fr.model(which)
        with torch.no_grad():
            return np.concatenate([model(torch.from_numpy(x[i : i + 256])).argmax(1).numpy() for i in range(0, len(x), 256)])

    rec = by_id.get(recommendation["id"])
    if rec is None:
        return None
    student = file_predictions(rec) if rec.get("files") else torch_predictions("student")
    base = by_id.get(BASELINE)
    if base is not None and base.get("files"):
        teacher, source = file_predictions(base), BASELINE
    elif fr.manifest.teacher.weights:
        teacher, source = torch_predictions("teacher"), "teacher/pytorch"
    else:
        teacher, source = None, "none"
    classes = list(data.classes)
    support = [int((y == k).sum()) for k in range(len(classes))]

    def per_class(pred: np.ndarray) -> list[float | None]:
        return [round(float((pred[y == k] == k).mean()), 6) if n else None for k, n in enumerate(support)]

    return {
        "artifact": recommendation["id"],
        "teacher_source": source,
        "classes": classes,
        "support": support,
        "artifact_accuracy": per_class(student),
        "teacher": per_class(teacher) if teacher is not None else [None] * len(classes),
    }


def _int8_findings(run: Path, rows: list[dict], macs: int | None, fp: dict, settings: dict, targets: dict) -> list[dict]:
    by_id = {r["id"]: r for r in rows}
    findings = []
    for row in rows:
        if row["kind"] != "artifact" or row["precision"] != "int8":
            continue
        counterpart = by_id.get(f"student/{row['format']}/fp32")
        if counterpart is None:
            continue
        graphs = [
            int8_diagnosis.executed_graph(
                r["format"], exporters.main_file(r["format"], [run / f for f in r["files"]]), targets=targets, threads=settings["threads"]
            )
            for r in (row, counterpart)
        ]
        findings.append(int8_diagnosis.explain(row, counterpart, graph=graphs[0], fp32_graph=graphs[1], fingerprint=fp, settings=settings, macs=macs))
    return findings


def read_device_results(path: Path) -> dict:
    """A ``bench_bundle.py`` result file, checked enough to merge safely (BenchError, exit 12, otherwise)."""
    try:
        return measure.read_results(path)
    except measure.MeasureError as exc:
        raise BenchError(str(exc)) from None


def merge_device_results(run: str | Path | None, files: list[Path]) -> BenchReport:
    """Add the rows of ``bench_bundle.py`` result files to the run's report (replacing earlier rows of
    the same device) and rewrite the reports. The host rows are not measured again."""
    run = resolve_run(run)
    report.read_report(run)  # no report: refused before the result files are read
    results = [read_device_results(f) for f in files]  # every file checked before anything is written
    with run_lock(run):  # read-modify-write: another merge or bench must not be lost
        rep = report.read_report(run)
        for data in results:
            fp_id = data["fingerprint"]["id"]
            rows = [{**row, "id": f"{row['id']}@{fp_id}", "kind": "device", "fingerprint_id": fp_id} for row in data["rows"]]
            relative_to_baseline(rows, f"{BASELINE}@{fp_id}")  # speed-ups against the teacher measured on that device
            rep["rows"] = [r for r in rep["rows"] if r.get("fingerprint_id") != fp_id] + rows
            rep["devices"][fp_id] = {k: data.get(k) for k in ("fingerprint", "settings", "created", "skipped")}
        report.write_reports(run, rep)
    return BenchReport.from_dict(rep)
