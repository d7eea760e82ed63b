"""A deploy format added from one file (tests/extra_format.py: ``onnx-copy``, its own main file name and its own runtime
runner) is planned, exported and gated, benchmarked, diagnosed and bundled, with no other file of the project changed.

Everything runs in this process (the registration is the import of that file, which a subprocess would not see),
except what the harness itself runs in worker processes (bench, the planner's timing, a bundle's bench_bundle.py):
those find the format's runner from the reference recorded in each engine spec and in bundle.json. Tiny settings:
the digits recipe, one epoch on 300 samples, a few dozen timed calls.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import RECIPES
from test_bench_run import SHIM

import exporters
from prokt_deploy import formats
from prokt_deploy.harness import measure, runners

FAST = {"runs": 20, "warmup": 3, "repeats": 1, "batch": 8}


@pytest.fixture(scope="module")
def fmt():
    """Register onnx-copy for this module only: the registry is process-wide, and other tests count the formats."""
    module = importlib.import_module("extra_format")
    yield module.NAME
    module.unregister()
    sys.modules.pop("extra_format", None)


@pytest.fixture(scope="module")
def run(fmt, tmp_path_factory) -> Path:
    """A digits run planned against onnx-copy alone, sized and timed in it (``budget.target``: the planner times the
    chosen student and the teacher's artifacts in the format's own runner, in worker processes)."""
    import torch

    from prokt_deploy import apply_overrides, distill, load_recipe

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        recipe = apply_overrides(
            load_recipe(RECIPES / "digits.yaml"),
            {"train.epochs": 1, "data.max_train_samples": 300, "budget.formats": [fmt], "budget.size": "40KB", "budget.target": fmt},
        )
        return distill(recipe, out=tmp_path_factory.mktemp("extra-format") / "run", latest=False).path
    finally:
        torch.set_num_threads(threads)


def test_the_format_is_registered_with_everything_it_declares(fmt):
    exporter = exporters.get_exporter(fmt)
    assert fmt in exporters.FORMATS and exporters.PRECISIONS[fmt] == ("fp32", "int8") and fmt in exporters.formats_with("int8")
    assert exporter.runner_ref().endswith("extra_format.py:OrtCopyRunner")
    assert exporter.diagnoses_int8 and not exporter.has_accuracy_aware
    assert formats.runtime_name(fmt) == "ort-copy" and formats.runtime_name("onnx") == "onnxruntime"
    targets = formats.runtime_targets("CPU")
    assert targets["ort-copy"] == ["CPUExecutionProvider"] and targets["openvino"] == "CPU" and targets["fallbacks"] == []
    # a device its runtime cannot use: its rows run on CPU, and the note says so
    gpu = measure.runtime_targets("AUTO", [runners.resolve(exporter.runner_ref())])
    assert gpu["ort-copy"] == ["CPUExecutionProvider"] and any("onnx-copy rows run on CPU" in n for n in gpu["fallbacks"])
    with pytest.raises(exporters.ExportError, match="accuracy-aware int8 supports onnx, openvino, litert, executorch, not 'onnx-copy'"):
        exporters.export_accuracy_aware(
            None, fmt, ".", example_input=None, calibration=np.zeros(1), validation_x=[1], validation_y=[1], max_accuracy_drop=1
        )


def test_planned_exported_gated_benchmarked_and_bundled(fmt, run, tmp_path):
    from prokt_deploy import bench, export_run, write_bundle

    manifest = json.loads((run / "manifest.json").read_text())
    # planned: the student was sized in the format (and timed in it: the plan's target)
    assert manifest["formats"] == [fmt] and set(manifest["student"]["bytes_by_format"]) == {fmt}
    assert manifest["plan"]["target"] == fmt and manifest["plan"]["latency_ms"] > 0
    assert set(manifest["plan"]["teacher_latency_ms"]) == {"fp32", "int8"}

    # exported and gated: the int8 artifact fits and is exactly the planned size; fp32 matches PyTorch
    (int8,) = export_run(run, [fmt], "int8", max_accuracy_drop=100.0)
    assert int8["passed"] and int8["files"] == [f"artifacts/{fmt}-int8/model.ort.onnx"], int8
    assert int8["bytes"] == manifest["student"]["bytes_by_format"][fmt] and int8["within_budget"] and int8["runtime"].startswith("ort-copy ")
    assert "accuracy_aware" not in int8
    (fp32,) = export_run(run, [fmt], "fp32")
    assert fp32["passed"] and fp32["max_abs_diff"] <= 1e-4 and fp32["top1_agreement"] == 1.0
    assert [f"{a['format']}/{a['precision']}" for a in json.loads((run / "manifest.json").read_text())["artifacts"]] == [f"{fmt}/int8", f"{fmt}/fp32"]

    # benchmarked: every artifact of the format in its own runner, in worker processes; the int8 diagnosed
    rep = bench(run, **FAST, max_accuracy_drop=100.0)
    rows = {r["id"]: r for r in rep["rows"]}
    assert {f"student/{fmt}/int8", f"student/{fmt}/fp32", f"teacher/{fmt}/int8", "teacher/onnx/fp32"} <= set(rows)
    for row_id in (f"student/{fmt}/int8", f"student/{fmt}/fp32", f"teacher/{fmt}/int8"):
        row = rows[row_id]
        assert row["runtime"].startswith("ort-copy ") and row["engine_config"]["providers"] == ["CPUExecutionProvider"]
        assert 0 < row["latency_ms"]["p50"] <= row["latency_ms"]["p99"] and 0 <= row["test_accuracy"] <= 1
    assert rows[f"student/{fmt}/int8"]["test_accuracy"] == int8["test_accuracy"]  # the gate's, reused
    assert rep["recommendation"]["id"] in {f"student/{fmt}/int8", f"student/{fmt}/fp32"}
    (finding,) = rep["int8"]
    assert finding["artifact"] == f"student/{fmt}/int8" and finding["executed_graph"]["runtime"] == "onnxruntime"
    assert finding["executed_graph"]["int8_layers"] > 0

    # bundled: the format's artifacts, and its runner's source beside the harness; timed on a "board" without torch,
    # prokt-deploy or the exporters (only numpy and onnxruntime)
    bundle = write_bundle(run, tmp_path / "bundle", samples=64, settings={"runs": 20, "warmup": 3, "repeats": 1})
    spec = json.loads((bundle / "bundle.json").read_text())
    ours = [a for a in spec["artifacts"] if a["format"] == fmt]
    assert {a["id"] for a in ours} == {f"student/{fmt}/int8", f"student/{fmt}/fp32", f"teacher/{fmt}/int8"}
    assert all(a["runner"] == f"format_runners/{fmt}.py:OrtCopyRunner" and a["main_file"].endswith(".ort.onnx") for a in ours)
    shipped = (bundle / "format_runners" / f"{fmt}.py").read_text()
    assert "class OrtCopyRunner" in shipped and "import exporters" not in shipped and "OnnxCopyExporter" not in shipped
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(textwrap.dedent(SHIM))
    board = {**os.environ, "PYTHONPATH": str(shim)}
    proc = subprocess.run(
        [sys.executable, "bench_bundle.py", "--out", str(tmp_path / "device.json")],
        cwd=bundle,
        env=board,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "device.json").read_text())
    device = {r["id"]: r for r in results["rows"]}
    assert set(device) == {a["id"] for a in spec["artifacts"]} and results["skipped"] == []
    for a in ours:
        assert device[a["id"]]["runtime"].startswith("ort-copy ") and device[a["id"]]["latency_ms"]["p50"] > 0
        assert device[a["id"]]["accuracy_samples"] == 64
