"""bench, bundle and run: the real CLI on one digits run, plus the pure logic in process.

The run is made once by `prokt-deploy run` in a subprocess (distill 2 epochs -> export ONNX + OpenVINO int8 ->
bench); the other CLI tests bench, bundle and merge that run through the same entry point in process
(conftest.cli_in_process; bench times in worker processes either way), and the bundle's own script runs in a
subprocess that cannot import torch. Measurement settings are tiny (a few dozen
timed calls): these tests check structure and exit codes, never absolute times.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import RECIPES, cli_in_process

from prokt_deploy.benchmarking import int8_diagnosis
from prokt_deploy.benchmarking.bench import BASELINE, evaluate_gates, recommend, relative_to_baseline, versus_teacher
from prokt_deploy.budget import format_size
from prokt_deploy.harness import measure

DIGITS = str(RECIPES / "digits.yaml")
FAST = ["--runs", "20", "--warmup", "3", "--repeats", "2", "--batch", "8"]
ENV_1_THREAD = {"OMP_NUM_THREADS": "1"}  # training in the subprocess: 2 threads under contention is ~10x slower


def cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "prokt_deploy", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **ENV_1_THREAD, **(env or {})},
        timeout=600,
    )


def in_process(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The same command through the CLI's entry point in this process, with the subprocesses' environment."""
    return cli_in_process(*args, cwd=cwd, env=ENV_1_THREAD)


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, *match: str) -> str:
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("Error: ") and all(m in lines[0] for m in match), lines[0]
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """`prokt-deploy run` end to end on digits. digits plans its student against ONNX only, so the
    student is pinned to one whose OpenVINO int8 IR (~32 kB) fits 64 kB too: both engines get rows."""
    work = tmp_path_factory.mktemp("bench")
    out = work / "run"
    proc = cli(
        "run",
        "--recipe",
        DIGITS,
        "--budget",
        "64KB",
        "--student",
        "cnn-w8-d1",
        "--epochs",
        "2",
        "--out",
        str(out),
        *FAST,
        "--max-drop-vs-teacher",
        "100",
        "--min-speedup-vs-teacher",
        "0.0001",
        "--ram-budget",
        "8KB",
        cwd=work,
    )
    return out, proc


def test_run_end_to_end_on_digits(run_dir):
    out, proc = run_dir
    assert proc.returncode == 0, proc.stderr
    for name in ("report.json", "report.md", "report.html", "student.safetensors", "manifest.json"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "manifest.json").read_text())
    passed = {(a["format"], a["precision"]) for a in manifest["artifacts"] if a["passed"]}
    assert passed == {("onnx", "int8"), ("openvino", "int8")}
    report = json.loads((out / "report.json").read_text())
    assert all(g["passed"] for g in report["gates"]) and len(report["gates"]) == 2
    # a passed artifact or the student's fp32 file of its format (the fastest wins; without VNNI that can be fp32)
    assert report["recommendation"]["id"] in {f"student/{f}/{p}" for f in ("onnx", "openvino") for p in ("int8", "fp32")}
    # results on stdout (the table), the one progress display on stderr
    assert "student/onnx/int8" in proc.stdout and "teacher/onnx/fp32" in proc.stdout
    assert "run" in proc.stderr and "prokt" in proc.stderr


def test_the_report_and_the_terminal_answer_the_four_questions_first(run_dir):
    """What to ship (the file's path) and the input it expects, the accuracy lost against the teacher, the speed
    against the teacher's fastest file, and whether distillation helped: the first lines of the terminal summary and
    of report.md, before any table."""
    out, proc = run_dir
    report = json.loads((out / "report.json").read_text())
    rec = next(r for r in report["rows"] if r["id"] == report["recommendation"]["id"])
    first = [line for line in proc.stdout.splitlines() if line.strip()][:6]
    assert first[0].startswith("Ship: ") and str(out / rec["files"][0]) in first[0] and f"{rec['bytes']:,} bytes" in first[0]
    assert first[1].startswith("Input: float32 NCHW Nx1x8x8, x = (raw / 16 - mean) / std")
    teacher = next(r for r in report["rows"] if r["id"] == "teacher/pytorch/fp32")["test_accuracy"]
    points = abs(100 * (teacher - rec["test_accuracy"]))
    assert first[2].startswith(f"Accuracy: {100 * rec['test_accuracy']:.2f}% on the test split, {points:.2f} points")
    assert first[3].startswith("Speed: ") and f"({report['versus_teacher']['teacher_artifact']})" in first[3]
    assert first[4].startswith("Distillation: not measured in this run; add --compare scratch")
    md = (out / "report.md").read_text()
    head = md.split("# Benchmark")[0]
    assert head.startswith("# run: what to ship") and "**Ship**: " in head and "**Distillation**: not measured" in head
    best, epochs = report["training"]["best_epoch"], report["training"]["epochs"]
    assert ("**Warning**: the best validation epoch was the last" in head) == (best == epochs)


def test_report_schema_rows_and_percentiles(run_dir):
    out, _ = run_dir
    report = json.loads((out / "report.json").read_text())
    n_test = json.loads((out / "manifest.json").read_text())["data"]["test"]
    assert report["schema_version"] == 1 and report["kind"] == "bench"
    ids = [r["id"] for r in report["rows"]]
    # every engine: teacher in PyTorch and as the ONNX baseline, the student in PyTorch, the fp32
    # counterparts the bench exports for the int8 comparison, and every passed artifact
    assert ids == [
        "teacher/pytorch/fp32",
        "teacher/onnx/fp32",
        "teacher/onnx/int8",
        "teacher/openvino/int8",
        "student/pytorch/fp32",
        "student/onnx/fp32",
        "student/openvino/fp32",
        "student/onnx/int8",
        "student/openvino/int8",
    ]
    runtimes = {r["id"]: r["runtime"].split()[0] for r in report["rows"]}
    assert runtimes["teacher/pytorch/fp32"] == "torch" and runtimes["student/openvino/int8"] == "openvino"
    for row in report["rows"]:
        for key in (
            "model",
            "format",
            "precision",
            "runtime",
            "bytes",
            "test_accuracy",
            "latency_ms",
            "batch_latency_ms",
            "throughput",
            "load_s",
            "peak_mem_mb",
            "speedup_vs_teacher",
            "rounds_p50_ms",
            "engine_config",
        ):
            assert key in row, (row["id"], key)
        for stats in (row["latency_ms"], row["batch_latency_ms"]):
            assert set(stats) == {"p50", "p90", "p99", "mean", "std"}
            assert 0 < stats["p50"] <= stats["p90"] <= stats["p99"], (row["id"], stats)
        assert 0.0 <= row["test_accuracy"] <= 1.0 and row["accuracy_samples"] == n_test
        assert row["bytes"] > 0 and row["throughput"] > 0 and len(row["rounds_p50_ms"]) == 2
        assert row["batch"] == 8
    base = next(r for r in report["rows"] if r["id"] == report["settings"]["baseline"])
    assert base["speedup_vs_teacher"] == 1.0
    assert {r["engine_config"].get("INFERENCE_NUM_THREADS") for r in report["rows"] if r["format"] == "openvino"} == {"1"}
    assert {r["engine_config"].get("intra_op_num_threads") for r in report["rows"] if r["format"] == "onnx"} == {1}
    fp = report["fingerprint"]
    assert fp["cpu"]["logical_cores"] >= 1 and isinstance(fp["cpu"]["flags"], list) and fp["versions"]["onnxruntime"]
    assert {f["artifact"] for f in report["int8"]} == {"student/onnx/int8", "student/openvino/int8"}
    # accuracy is measured once per artifact: what export and training recorded on the test split is reused
    manifest = json.loads((out / "manifest.json").read_text())
    by_id = {r["id"]: r for r in report["rows"]}
    for a in manifest["artifacts"]:
        row = by_id[f"student/{a['format']}/{a['precision']}"]
        assert row["accuracy_measured"] is False and row["test_accuracy"] == pytest.approx(a["test_accuracy"])
    assert by_id["teacher/pytorch/fp32"]["accuracy_measured"] is False
    assert by_id["student/onnx/fp32"]["accuracy_measured"] is True
    assert by_id["teacher/onnx/fp32"]["accuracy_measured"] is True  # measured by bench itself, before the timing
    assert all(1 <= r["timed_runs"] <= 20 for r in report["rows"])
    for f in report["int8"]:
        assert f["counterpart"] == f["artifact"].replace("int8", "fp32")
        assert f["faster"] or f["causes"], f  # not faster -> the report says why
        assert f["executed_graph"]["int8_layers"] > 0


def test_teacher_int8_rows_and_the_verdict_against_them(run_dir):
    """The teacher's own int8 (ONNX and OpenVINO, the student's quantizers and gate) is benchmarked, marked
    whether it fits the budget, and the report says whether the student beats the teacher's fastest artifact."""
    out, _ = run_dir
    report = json.loads((out / "report.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    teacher_int8 = [r for r in report["rows"] if r["model"] == "teacher" and r["precision"] == "int8"]
    assert {r["format"] for r in teacher_int8} == {"onnx", "openvino"}
    teacher_fp32 = next(r for r in report["rows"] if r["id"] == "teacher/onnx/fp32")
    for row in teacher_int8:
        assert row["kind"] == "reference" and row["budget_bytes"] == manifest["budget_bytes"]
        assert row["within_budget"] is (row["bytes"] <= manifest["budget_bytes"])
        assert row["bytes"] < teacher_fp32["bytes"]  # really int8
        gate = json.loads((out / "artifacts" / f"teacher-{row['format']}-int8" / "gate.json").read_text())
        assert gate["passed"] and gate["accuracy_drop"] <= gate["max_accuracy_drop"] == 1.0
        assert row["test_accuracy"] == pytest.approx(gate["test_accuracy"]) and row["accuracy_measured"] is False
    assert report["recommendation"]["id"].startswith("student/")  # the teacher is the baseline, never the recommendation
    v = report["versus_teacher"]
    teacher_rows = [r for r in report["rows"] if r["model"] == "teacher" and r["format"] != "pytorch"]
    assert v["teacher_artifact"] == min(teacher_rows, key=lambda r: r["latency_ms"]["p50"])["id"]
    assert v["student_artifact"] == report["recommendation"]["id"]
    assert v["beats_on_speed"] == (v["speedup"] >= 1.0) and v["beats_on_size"] == (v["size_ratio"] > 1.0)
    assert {t["id"] for t in v["teacher_int8"]} == {r["id"] for r in teacher_int8}
    md = (out / "report.md").read_text()
    assert "Versus the teacher's own artifacts" in md and v["teacher_artifact"] in md
    assert "| fits |" in md
    # the RAM budget (--ram-budget 8KB): the student's peak activation memory is recorded and reported against it
    ram = manifest["student"]["ram_bytes"]
    assert 0 < ram <= manifest["plan"]["ram_budget_bytes"] == 8000 and report["student"]["ram_bytes"] == ram
    assert f"peak activation RAM {format_size(ram)} at batch 1 (int8; weights not counted) against the RAM budget 8.0 kB: within" in md


def test_html_report_is_self_contained(run_dir):
    out, _ = run_dir
    page = (out / "report.html").read_text()
    assert page.count("<svg") == 4 and "<table" in page  # scatter, latency, size (with the budget line), learning curves
    assert 'class="budget"' in page and "budget 64.0 kB" in page
    assert page.count('class="curve"') == 2  # the student's validation curve and ProKT's teacher during training
    assert 'class="per-class"' in page
    assert not re.search(r"https?://", page), "the HTML must not reference any URL"
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert "student/onnx/int8" in (out / "report.md").read_text()


def test_per_class_accuracy_adds_up_to_the_measured_accuracy(run_dir):
    out, _ = run_dir
    rep = json.loads((out / "report.json").read_text())
    pc = rep["per_class"]
    assert pc["artifact"] == rep["recommendation"]["id"] and len(pc["classes"]) == 10 and pc["teacher_source"] == BASELINE
    rows = {r["id"]: r for r in rep["rows"]}
    for key, row_id in (("artifact_accuracy", pc["artifact"]), ("teacher", BASELINE)):
        overall = sum(a * n for a, n in zip(pc[key], pc["support"])) / sum(pc["support"])
        assert overall == pytest.approx(rows[row_id]["test_accuracy"], abs=1e-4)  # the same files, the same test split
    assert not any("predictions" in r for r in rep["rows"])  # the accuracy pass's classes are reused, not reported
    assert "## Per-class test accuracy" in (out / "report.md").read_text()


def test_missed_gates_exit_11_after_writing_the_report(run_dir):
    out, _ = run_dir
    proc = in_process(
        "bench",
        str(out),
        *FAST,
        "--max-latency-ms",
        "0.000001",
        "--min-speedup-vs-teacher",
        "1000000",
        "--max-drop-vs-teacher",
        "100",
        cwd=out.parent,
    )
    line = assert_one_line_error(proc, 11, "gate missed", "latency", "speed-up")
    assert "accuracy" not in line  # only the missed gates are named
    report = json.loads((out / "report.json").read_text())
    assert {g["name"]: g["passed"] for g in report["gates"]} == {"max_latency_ms": False, "min_speedup": False, "max_accuracy_drop": True}


def test_unavailable_device_lists_the_available_ones(run_dir):
    out, _ = run_dir
    proc = in_process("bench", str(out), "--runtime-device", "NPU", cwd=out.parent)
    assert_one_line_error(proc, 2, "'NPU' is not available", "CPU")


SHIM = '''
import sys

class _NoTorch:
    """Make this interpreter (and every process it starts with this PYTHONPATH) look like a board."""
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "prokt_deploy", "exporters"):
            raise ImportError(f"{name} is not installed on this device")
        return None

sys.meta_path.insert(0, _NoTorch())
'''


def test_bundle_benchmarks_without_torch_and_merges_back(run_dir, tmp_path):
    out, _ = run_dir
    bundle = tmp_path / "bundle"
    proc = in_process("bundle", str(out), "--out", str(bundle), "--samples", "200", "--runs", "20", "--warmup", "3", "--repeats", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    spec = json.loads((bundle / "bundle.json").read_text())
    assert spec["samples"] == 200 and len(spec["classes"]) == 10 and spec["input"]["shape"] == [None, 1, 8, 8]
    with np.load(bundle / "samples.npz") as f:
        assert f["x"].shape == (200, 1, 8, 8) and f["x"].dtype == np.float32 and f["y"].shape == (200,)
    assert {a["id"] for a in spec["artifacts"]} == {
        "teacher/onnx/fp32",
        "teacher/onnx/int8",
        "teacher/openvino/int8",
        "student/onnx/fp32",
        "student/openvino/fp32",
        "student/onnx/int8",
        "student/openvino/int8",
    }

    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(textwrap.dedent(SHIM))
    board = {**os.environ, "PYTHONPATH": str(shim)}
    for module in ("torch", "prokt_deploy"):
        check = subprocess.run([sys.executable, "-c", f"import {module}"], env=board, capture_output=True, text=True, cwd=tmp_path)
        assert check.returncode != 0 and "ImportError" in check.stderr, module
    check = subprocess.run([sys.executable, "-c", "import numpy, onnxruntime, openvino"], env=board, capture_output=True, text=True, cwd=tmp_path)
    assert check.returncode == 0, check.stderr

    device = subprocess.run(
        [sys.executable, str(bundle / "bench_bundle.py"), "--out", str(tmp_path / "device.json")],
        env=board,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert device.returncode == 0, device.stderr
    results = json.loads((tmp_path / "device.json").read_text())
    assert results["kind"] == "device-bench" and results["fingerprint"]["cpu"]["model"]
    assert {r["id"] for r in results["rows"]} == {a["id"] for a in spec["artifacts"]}
    for row in results["rows"]:
        assert row["accuracy_samples"] == 200 and 0 <= row["test_accuracy"] <= 1
        assert 0 < row["latency_ms"]["p50"] <= row["latency_ms"]["p90"] <= row["latency_ms"]["p99"]

    merged = in_process("bench", str(out), "--merge", str(tmp_path / "device.json"), "--json", cwd=tmp_path)
    assert merged.returncode == 0, merged.stderr
    report = json.loads(merged.stdout)
    device_rows = [r for r in report["rows"] if r["kind"] == "device"]
    fp_id = results["fingerprint"]["id"]
    assert {r["id"] for r in device_rows} == {f"{a['id']}@{fp_id}" for a in spec["artifacts"]}
    assert report["devices"][fp_id]["fingerprint"]["id"] == fp_id
    assert all(r["speedup_vs_teacher"] is not None for r in device_rows)  # against the teacher measured on the device
    assert json.loads((out / "report.json").read_text())["devices"].keys() == {fp_id}

    bad = tmp_path / "bad.json"
    bad.write_text('{"kind": "something else"}')
    assert_one_line_error(in_process("bench", str(out), "--merge", str(bad), cwd=tmp_path), 12, "not a device result file")


# --- the logic, in process ------------------------------------------------------------------------------


def _row(row_id: str, kind: str, p50: float, acc: float, *, batch_p50: float | None = None, batch: int = 8) -> dict:
    model, fmt, precision = row_id.split("/")
    stats = {"p50": p50, "p90": p50, "p99": p50, "mean": p50, "std": 0.0}
    batch_stats = {**stats, "p50": batch_p50 if batch_p50 is not None else p50 * batch}
    return {
        "id": row_id,
        "model": model,
        "format": fmt,
        "precision": precision,
        "kind": kind,
        "latency_ms": stats,
        "batch_latency_ms": batch_stats,
        "batch": batch,
        "test_accuracy": acc,
        "bytes": 1000,
    }


def _with_relative(rows: list[dict]) -> list[dict]:
    relative_to_baseline(rows, BASELINE)
    return rows


def test_summary_statistics_are_ordered_medians_over_rounds():
    rng = np.random.default_rng(0)
    rounds = [measure.summarize(rng.lognormal(10, 1, size=50).astype(np.int64)) for _ in range(4)]
    combined = measure.combine_rounds(rounds)
    assert combined["p50"] <= combined["p90"] <= combined["p99"]
    assert combined["p50"] == pytest.approx(np.median([r["p50"] for r in rounds]), abs=1e-6)  # rounded to 1 ns


def test_recommendation_and_gates():
    rows = _with_relative(
        [
            _row("teacher/onnx/fp32", "reference", 1.0, 0.90),
            _row("teacher/onnx/int8", "reference", 0.05, 0.90),
            _row("student/pytorch/fp32", "reference", 0.01, 0.90),
            _row("student/onnx/fp32", "reference", 0.1, 0.85),
            _row("student/onnx/int8", "artifact", 0.2, 0.80),
            _row("student/openvino/int8", "artifact", 0.4, 0.89),
        ]
    )
    rows[3].update(within_budget=False, budget_bytes=1000)
    rec = recommend(rows, None)
    assert rec["id"] == "student/onnx/int8"  # never a teacher or PyTorch row; the faster fp32 file is over the budget
    assert "student/onnx/fp32 is faster" in rec["reason"] and "over the budget of 1,000 B" in rec["reason"]
    assert recommend(rows, 5.0)["id"] == "student/openvino/int8"  # the fastest within the accuracy gate
    assert recommend(rows, 0.5) is None
    rows[3]["within_budget"] = True  # a student fp32 file within the budget, faster than int8: recommended, and why
    int8 = [{"artifact": "student/onnx/int8", "counterpart": "student/onnx/fp32", "speedup": 0.5, "faster": False}]
    rec = recommend(rows, None, int8)
    assert rec["id"] == "student/onnx/fp32" and "the int8 file runs at 0.50x its speed" in rec["reason"]
    v = versus_teacher(rows, rec)
    assert v["teacher_artifact"] == "teacher/onnx/int8" and not v["beats_on_speed"] and v["speedup"] == pytest.approx(0.5)
    rows[3]["within_budget"] = False

    gates = evaluate_gates(rows, recommend(rows, 5.0), max_latency_ms=0.3, max_accuracy_drop=5.0, min_speedup=3.0)
    assert {g["name"]: g["passed"] for g in gates} == {"max_accuracy_drop": True, "max_latency_ms": False, "min_speedup": False}
    gates = evaluate_gates(rows, recommend(rows, 0.5), max_accuracy_drop=0.5, max_latency_ms=10.0)
    assert not any(g["passed"] for g in gates)  # nothing to gate counts as failing
    assert evaluate_gates(rows, recommend(rows, None)) == []


def test_int8_not_faster_lists_the_detected_causes():
    no_vnni = {"cpu": {"arch": "x86_64", "flags": ["avx2", "fma"], "int8_dot_product": None, "usable_cores": 2}}
    vnni = {"cpu": {"arch": "x86_64", "flags": ["avx2", "avx512_vnni"], "int8_dot_product": "AVX512-VNNI", "usable_cores": 2}}
    fp32 = _row("student/onnx/fp32", "reference", 0.010, 0.9, batch_p50=0.040, batch=32)
    int8 = _row("student/onnx/int8", "artifact", 0.012, 0.9, batch_p50=0.030, batch=32)
    graph = {
        "runtime": "onnxruntime",
        "int8_layers": 3,
        "float_layers": ["head (Gemm, float)"],
        "float_ops_between_qdq": [],
        "conversions": {"QuantizeLinear": 2, "DequantizeLinear": 2},
        "threads_used": 2,
    }
    settings = {"threads": 4}
    finding = int8_diagnosis.explain(int8, fp32, graph=graph, fp32_graph={"conversions": {}}, fingerprint=no_vnni, settings=settings, macs=40_000)
    assert not finding["faster"] and finding["speedup"] == pytest.approx(0.833, abs=1e-3)
    text = " | ".join(finding["causes"])
    for expected in (
        "no int8 dot-product",
        "1 of 4 compute layers still run in fp32",
        "4 more conversion",
        "exceeds the 2 usable cores",
        "used 2 threads although 4",
        "tiny model dominated by per-call overhead",
    ):
        assert expected in text, expected
    with_vnni = int8_diagnosis.explain(int8, fp32, graph=None, fp32_graph=None, fingerprint=vnni, settings={"threads": 1}, macs=None)
    assert not any("dot-product" in c for c in with_vnni["causes"])
    faster = int8_diagnosis.explain(
        _row("student/onnx/int8", "artifact", 0.005, 0.9), fp32, graph=None, fp32_graph=None, fingerprint=no_vnni, settings=settings, macs=None
    )
    assert faster["faster"] and faster["causes"] == []


def test_scatter_labels_do_not_overlap_even_for_close_points():
    from prokt_deploy.benchmarking.report import _CHAR_W, svg_scatter

    rows = [
        {"id": f"{m}/{f}/{p}", "model": m, "kind": "artifact", "test_accuracy": 0.9 + 0.001 * i, "latency_ms": {"p50": 0.05 * (1 + 0.01 * i)}}
        for i, (m, f, p) in enumerate([(m, f, p) for m in ("teacher", "student") for f in ("onnx", "openvino") for p in ("fp32", "int8")])
    ]
    svg = svg_scatter(rows)
    labels = [(float(x), float(y), t) for x, y, t in re.findall(r'<text x="([\d.-]+)" y="([\d.-]+)" font-size="9">([^<]+)</text>', svg)]
    assert sorted(t for _, _, t in labels) == sorted(r["id"] for r in rows)
    boxes = [(x, y - 8, x + _CHAR_W * len(t), y + 2) for x, y, t in labels]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)
