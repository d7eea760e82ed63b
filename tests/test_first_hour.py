"""A user's first hour (issue 38): the report's headline (the four answers first, the teacher as the user brought it),
the time a training phase says it will take, and help that reads at 80 columns."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import RECIPES, ROOT

from prokt_deploy import apply_overrides, distill, load_recipe
from prokt_deploy.benchmarking.report import headline, headline_lines
from prokt_deploy.data import load_recipe_data
from prokt_deploy.models import create_model
from prokt_deploy.rundir.checkpoint import save_weights
from prokt_deploy.train.engine import accuracy


def test_prokt_records_the_teacher_as_brought_beside_the_teacher_it_leaves(tmp_path, one_thread):
    r = load_recipe(RECIPES / "digits.yaml")
    data = load_recipe_data(r)
    torch.manual_seed(1)
    given = create_model("cnn-w8-d1", num_classes=data.num_classes, **data.model_kwargs)
    save_weights(given, tmp_path / "teacher.safetensors")
    over = {
        "teacher.arch": "cnn-w8-d1",
        "teacher.init": "checkpoint-reset-head",
        "teacher.checkpoint": str(tmp_path / "teacher.safetensors"),
        "student.arch": "cnn-w4-d1",
        "train.epochs": 1,
    }
    m = distill(apply_overrides(r, over), out=tmp_path / "run", runs_root=tmp_path, latest=False).manifest
    # scored with its own head, as given (ProKT resets the head and fine-tunes it): the checkpoint's own accuracy
    assert m.metrics["teacher_given_test_accuracy"] == round(accuracy(given, data.test, torch.device("cpu")), 6)
    assert m.metrics["teacher_test_accuracy"] != m.metrics["teacher_given_test_accuracy"]
    # bench shows it as a row of its own beside the teacher ProKT left, and the headline states both losses
    from prokt_deploy import bench, export_run

    export_run(tmp_path / "run", ["onnx"], "int8", max_accuracy_drop=100.0)
    rep = bench(tmp_path / "run", runs=20, warmup=3, repeats=2, batch=8).to_dict()
    given_row = next(r for r in rep["rows"] if r["id"] == "teacher-given/pytorch/fp32")
    assert given_row["test_accuracy"] == m.metrics["teacher_given_test_accuracy"] and given_row["latency_ms"]["p50"] > 0
    assert given_row["files"] == [str(tmp_path / "teacher.safetensors")]
    assert [a["against"] for a in rep["headline"]["accuracy"]] == ["the teacher as you brought it", "the teacher as prokt left it"]
    # KD does not change its teacher: nothing to tell apart
    kd = distill(apply_overrides(r, {**over, "method": "kd", "teacher.init": "checkpoint"}), out=tmp_path / "kd", runs_root=tmp_path, latest=False)
    assert kd.manifest.metrics["teacher_given_test_accuracy"] is None


def _rep(**training):
    row = {"id": "student/litert/int8", "files": ["artifacts/litert-int8/model.tflite"], "bytes": 38775, "runtime": "ai-edge-litert 2.3.0"}
    return {
        "run": "runs/r",
        "method": "prokt",
        "recommendation": {"id": row["id"]},
        "rows": [{**row, "test_accuracy": 0.9200}, {"id": "teacher/pytorch/fp32", "test_accuracy": 0.9400}],
        "input": {"shape": [None, 1, 28, 28], "dtype": "float32", "layout": "NCHW", "scale": 255.0, "mean": [0.286], "std": [0.353]},
        "training": {"best_epoch": 15, "epochs": 15, **training},
        "versus_teacher": {"speedup": 6.7, "batch_speedup": 9.1, "teacher_artifact": "teacher/onnx/int8", "size_ratio": 23.6},
        "compare": None,
    }


def test_the_headline_says_both_losses_the_speed_and_how_to_measure_the_gain(tmp_path):
    lines = headline_lines(headline(_rep(teacher_given_test_accuracy=0.9314)), "prokt")
    assert lines[0] == "Ship: runs/r/artifacts/litert-int8/model.tflite (38,775 bytes, ai-edge-litert 2.3.0; student/litert/int8)"
    assert lines[1].startswith("Input: float32 NCHW Nx1x28x28, x = (raw / 255 - mean) / std with mean [0.286], std [0.353]")
    assert lines[2] == (
        "Accuracy: 92.00% on the test split, 1.14 points below the teacher as you brought it (93.14%); "
        "2.00 points below the teacher as prokt left it (94.00%)"
    )
    assert lines[3].startswith("Speed: 6.70x the teacher's fastest file (teacher/onnx/int8) at batch 1")
    assert lines[4].startswith("Distillation: not measured in this run; add --compare scratch")
    assert lines[5].startswith("Warning: the best validation epoch was the last (15 of 15)")
    # a LiteRT int8 file takes int8 input: its scale and zero point from model.quant.json
    quant = tmp_path / "runs" / "r" / "artifacts" / "litert-int8"
    quant.mkdir(parents=True)
    (quant / "model.quant.json").write_text('{"inputs": [{"scale": 0.0123, "zero_point": -5}]}')
    rep = {**_rep(), "run": str(tmp_path / "runs" / "r")}
    rep["rows"][0]["files"] = ["artifacts/litert-int8/model.tflite", "artifacts/litert-int8/model.quant.json"]
    assert "then int8: q = round(x / 0.0123) + -5 (model.quant.json)" in headline_lines(headline(rep), "prokt")[1]
    # a converged run (best epoch before the last) and no teacher as given: one accuracy line, no warning
    lines = headline_lines(headline(_rep(best_epoch=9)), "prokt")
    assert lines[2] == "Accuracy: 92.00% on the test split, 2.00 points below the teacher (94.00%)" and not any("Warning" in x for x in lines)
    # nothing passed: the headline says there is no file, not a made-up one
    assert headline_lines(headline({**_rep(), "recommendation": None}), "prokt")[0].startswith("No file to ship")


class _Estimates:
    """engine.Progress that keeps the estimates a run says."""

    def __init__(self):
        self.records = []

    def start(self, phase, total_steps, completed=0):
        pass

    def step(self, metrics):
        pass

    def epoch(self, record):
        pass

    def stop(self):
        pass

    def estimate(self, record):
        self.records.append(record)


def test_each_training_phase_says_its_steps_and_time_after_its_first_steps(tmp_path, one_thread):
    from prokt_deploy.train.engine import ESTIMATE_AFTER_STEPS, estimate_line

    r = apply_overrides(load_recipe(RECIPES / "digits.yaml"), {"method": "kd", "train.epochs": 2, "student.arch": "cnn-w4-d1", "teacher.epochs": 1})
    said = _Estimates()
    m = distill(r, out=tmp_path / "run", runs_root=tmp_path, latest=False, progress=said).manifest
    assert [e["phase"] for e in said.records] == ["teacher (CE)", "kd"]  # once per phase
    kd = said.records[1]
    sched = m.metrics["schedule"]["student"]
    assert (kd["steps"], kd["epochs"], kd["steps_per_epoch"]) == (sched["steps"], sched["epochs"], sched["steps_per_epoch"])
    assert kd["remaining_s"] == pytest.approx(kd["seconds_per_step"] * (sched["steps"] - ESTIMATE_AFTER_STEPS), rel=0.01, abs=0.05)
    assert estimate_line({**kd, "remaining_s": 1500}).endswith("about 25 min left")


COMMANDS = ["run", "distill", "plan", "export", "bench", "bundle", "train-teacher", "recipe new", "recipe check"]


def test_help_reads_at_80_columns(tmp_path):
    """Every command's --help at 80 columns names every flag in full (no '...' cut), shows human placeholders (no
    Python types), groups the options in panels, and the main commands end with examples."""
    options = json.loads((ROOT / "tests" / "data" / "cli_options.json").read_text())
    env = {**os.environ, "COLUMNS": "80", "TERM": "dumb", "NO_COLOR": "1"}
    for command in COMMANDS:
        p = subprocess.run([sys.executable, "-m", "prokt_deploy", *command.split(), "--help"], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert p.returncode == 0, p.stderr
        text = p.stdout
        assert max(len(line) for line in text.splitlines()) <= 80 and "\u2026" not in text, command
        for flag in [o for o in options[command] if o.startswith("--")]:
            assert flag in text, (command, flag)
        assert not any(t in text for t in ("<bool>", "<str>", "<int>", "<float>", "<list[")), command
        if command in ("run", "distill", "plan", "export", "bench"):
            assert "Examples:" in text and f"prokt-deploy {command}" in text.split("Examples:")[1], command
    p = subprocess.run([sys.executable, "-m", "prokt_deploy", "run", "--help"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert all(f"─ {panel} " in p.stdout for panel in ("Budget and student", "Data", "Training", "Benchmark and gates"))
    assert "Bare `prokt-deploy run` trains the default recipe" in " ".join(p.stdout.split())
