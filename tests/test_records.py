"""The typed records between stages and the manifest's versions: a run written by the previous version is read,
one written by a newer version is refused with what to do, the records read back what they wrote; and the
library's run() refuses bad arguments before anything is trained."""

from __future__ import annotations

import copy
import json

import pytest

from prokt_deploy.errors import RunError, UsageError
from prokt_deploy.rundir.reader import SCHEMA_VERSION, Manifest, open_run, write_manifest
from prokt_deploy.rundir.records import BenchReport, FailedExport, GateRecord, SkippedExport

#: a manifest as version 1 wrote it (before issue 34): artifact records without main_file, every model key present
V1 = {
    "schema_version": 1,
    "kind": "distill",
    "run": "digits-v1",
    "created": "2026-12-05T10:00:00+0000",
    "recipe": "digits",
    "method": "prokt",
    "seed": 0,
    "device": "cpu",
    "budget": "20KB",
    "budget_bytes": 20000,
    "precision": "int8",
    "formats": ["onnx"],
    "plan": {"binding": "size", "note": "n", "teacher_bytes": 1, "families": ["cnn"], "target": None},
    "student": {
        "arch": "cnn-w8-d1",
        "params": 6330,
        "macs": 1,
        "estimated_bytes": 15000,
        "bytes_by_format": {"onnx": 15000},
        "weights": "student.safetensors",
    },
    "teacher": {"arch": "resnet-w16-d1", "factory": None, "params": 77800, "init": "scratch", "checkpoint": None, "weights": "teacher.safetensors"},
    "data": {"source": "digits", "train": 1000, "val": 180, "test": 359},
    "input": {"shape": [None, 1, 8, 8]},
    "classes": [str(i) for i in range(10)],
    "metrics": {"student_test_accuracy": 0.98, "teacher_test_accuracy": 0.99},
    "versions": {"torch": "2.13.0"},
    "timings": {"total_s": 9.0, "train_s": 8.0},
    "artifacts": [
        {
            "format": "onnx",
            "precision": "int8",
            "files": ["artifacts/onnx-int8/model.onnx"],
            "bytes": 14686,
            "runtime": "onnxruntime 1.32.0",
            "max_abs_diff": 0.1,
            "top1_agreement": 0.99,
            "test_accuracy": 0.983287,
            "reference_accuracy": 0.980501,
            "accuracy_drop": -0.2786,
            "tolerance": None,
            "max_accuracy_drop": 1.0,
            "calibration_samples": 300,
            "test_samples": 359,
            "budget_bytes": 20000,
            "within_budget": True,
            "budget_gated": True,
            "passed": True,
            "failures": [],
        }
    ],
}


def test_a_version_1_manifest_is_read_and_its_records_typed(tmp_path):
    m = Manifest.from_dict(copy.deepcopy(V1), tmp_path)
    assert m.schema_version == 1 and m.student.arch == "cnn-w8-d1"
    (a,) = m.passed_artifacts()
    assert isinstance(a, GateRecord) and a.format == "onnx" and a.main_file is None and a.test_accuracy == 0.983287
    assert m.deployed_accuracy("onnx") == 0.983287 and m.int8_settings() == (300, 1.0)
    # written back by the one writer: the same JSON (the v1 record gains nothing it did not have), at the version it was read
    assert m.to_dict()["artifacts"] == V1["artifacts"] and m.to_dict()["student"] == V1["student"]


def test_a_newer_manifest_is_refused_with_what_to_do(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({**V1, "schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(RunError, match=rf"schema {SCHEMA_VERSION + 1}, written by a newer prokt-deploy.*upgrade prokt-deploy"):
        open_run(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({**V1, "schema_version": "two"}))
    with pytest.raises(RunError, match="is corrupted .*schema_version 'two'"):
        open_run(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({**V1, "artifacts": ["onnx"]}))
    with pytest.raises(RunError, match="is corrupted .*'artifacts' is not a list of records"):
        open_run(tmp_path)


def test_the_writer_writes_what_the_reader_reads(tmp_path):
    m = Manifest.from_dict(copy.deepcopy(V1), tmp_path)
    m.schema_version = SCHEMA_VERSION
    m.artifacts[0].main_file = "artifacts/onnx-int8/model.onnx"
    doc = write_manifest(tmp_path, m)
    again = open_run(tmp_path).manifest
    assert json.loads((tmp_path / "manifest.json").read_text()) == doc
    assert again.artifacts == m.artifacts and again.artifacts[0].main_file == "artifacts/onnx-int8/model.onnx"
    assert again.teacher == m.teacher and again.to_dict() == doc


def test_records_round_trip_and_answer_by_key_for_older_callers():
    record = GateRecord.from_dict(V1["artifacts"][0])
    assert record.to_dict() == V1["artifacts"][0] and record == V1["artifacts"][0]
    assert record["passed"] and record.get("accuracy_aware") is None and "accuracy_aware" not in record
    assert SkippedExport("onnx", "fp16", "no fp16").to_dict() == {"format": "onnx", "precision": "fp16", "skipped": "no fp16"}
    assert FailedExport("onnx", "int8", "boom").passed is None and SkippedExport("a", "b", "c").get("passed") is None
    with pytest.raises(KeyError):
        GateRecord.from_dict({"format": "onnx"})  # no precision


def test_a_bench_report_reads_back_typed():
    rep = {
        "schema_version": 1,
        "kind": "bench",
        "created": "t",
        "run": "/r",
        "recipe": "digits",
        "method": "prokt",
        "student": {},
        "teacher": {},
        "fingerprint": {},
        "settings": {"batch": 8},
        "rows": [
            {
                "id": "student/onnx/int8",
                "model": "student",
                "format": "onnx",
                "precision": "int8",
                "kind": "artifact",
                "files": ["artifacts/onnx-int8/model.onnx"],
                "bytes": 14686,
                "runtime": "onnxruntime 1.32.0",
                "device": "CPUExecutionProvider",
                "test_accuracy": 0.98,
                "latency_ms": {"p50": 0.5},
                "batch_latency_ms": {"p50": 2.0},
                "batch": 8,
                "speedup_vs_teacher": 2.0,
                "batch_speedup_vs_teacher": 3.0,
                "accuracy_drop_vs_teacher": 0.5,
                "speedup_vs_teacher_pytorch": 10.0,
                "within_budget": True,
                "budget_bytes": 20000,
                "passed": True,
                "throughput": 100.0,
            }
        ],
        "not_benchmarked": [],
        "int8": [],
        "recommendation": {"id": "student/onnx/int8", "reason": "fastest"},
        "gates": [{"name": "min_speedup", "limit": 2.0, "value": 1.0, "artifact": "student/onnx/int8", "passed": False, "message": "m"}],
        "devices": {},
        "compare": None,
        "learning_curves": None,
        "budget_bytes": 20000,
        "per_class": None,
        "versus_teacher": None,
    }
    typed = BenchReport.from_dict(copy.deepcopy(rep))
    assert typed.recommended.p50_ms == 0.5 and typed.recommended.extra["throughput"] == 100.0
    assert [g.name for g in typed.missed_gates] == ["min_speedup"]
    assert typed.to_dict() == rep


def test_the_library_run_refuses_bad_arguments_before_training(tmp_path, monkeypatch):
    import prokt_deploy
    from prokt_deploy import pipeline

    assert prokt_deploy.run is pipeline.run  # the function, not a module of the same name
    monkeypatch.chdir(tmp_path)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    for kwargs, match in (
        ({"out": busy}, "already exists and is not empty"),
        ({"compare": "scratch,nonsense"}, "nonsense"),
        ({"min_speedup": 0.0}, "--min-speedup-vs-teacher must be positive"),
        ({"bench_device": "TPU9"}, "TPU9"),
    ):
        with pytest.raises((UsageError, RunError), match=match):
            pipeline.run("digits", **kwargs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]  # nothing written (no runs/): every refusal came first
