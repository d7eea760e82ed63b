"""The report's headline (issue 38): the four answers first, and the teacher as the user brought it."""

from __future__ import annotations

import torch
from conftest import RECIPES

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
