"""Accuracy-aware int8 rescues an export that plain int8 fails.

The case is built to fail: a trained digits student whose second conv block's output channel 0 is
scaled by 1000 (its BatchNorm scale and shift) and the next conv's weights on that channel divided
by 1000. In fp32 the function is the same (ReLU commutes with a positive scale), but the tensor
between the two convolutions now spans a 1000x range under one per-tensor int8 scale, so plain int8
loses most of its accuracy. Accuracy-aware int8 must pass the same gate, with the budget still a
gate, and list which layers stayed fp32.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import RECIPES

from prokt_deploy import apply_overrides, distill, export_run, load_recipe
from prokt_deploy.errors import GateFailed
from prokt_deploy.rundir.checkpoint import save_weights
from prokt_deploy.rundir.reader import load_model

pytestmark = pytest.mark.slow

BUDGET = 60_000
SCALE = 1000.0


@pytest.fixture(scope="module")
def broken_run(tmp_path_factory) -> Path:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("aa")
    recipe = apply_overrides(
        load_recipe(RECIPES / "digits.yaml"),
        {
            "method": "scratch",
            "student.arch": "cnn-w8-d1",
            "train.epochs": 4,
            "budget.size": f"{BUDGET}B",
            "budget.formats": ["onnx", "openvino"],
        },
    )
    run = distill(recipe, out=root / "run", runs_root=root / "runs").path
    student = load_model(run, "student")
    bn, conv = student.features[4], student.features[6]
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        before = student(x)
        bn.weight[0] *= SCALE
        bn.bias[0] *= SCALE
        conv.weight[:, 0] /= SCALE
        torch.testing.assert_close(student(x), before, rtol=1e-3, atol=1e-3)  # the same function in fp32
    save_weights(student, run / "student.safetensors")
    yield run
    torch.set_num_threads(threads)


def test_onnx_plain_int8_fails_then_accuracy_aware_passes(broken_run: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(broken_run, tmp_path / "run"))
    with pytest.raises(GateFailed, match="accuracy drop"):
        export_run(run, ["onnx"], "int8", accuracy_aware="off", qat="off")
    (record,) = export_run(run, ["onnx"], "int8")  # auto: the plain miss triggers the search
    aware = record["accuracy_aware"]
    print("\n" + json.dumps(aware, indent=1))
    assert record["passed"] and record["accuracy_drop"] <= 1.0 and record["within_budget"]
    assert aware["plain_int8"]["accuracy_drop"] > 10  # built to fail plain int8
    assert aware["met"] and aware["drop"] <= 1.0
    kept = aware["kept_fp32"]
    assert 1 <= len(kept) <= 3 and all(k["op_type"] == "Conv" for k in kept), kept
    assert all(k["fp32_weight_bytes"] > 0 for k in kept)
    assert aware["extra_bytes"] == record["bytes"] - aware["plain_bytes"] > 0
    assert sum((run / f).stat().st_size for f in record["files"]) == record["bytes"]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["artifacts"][-1]["accuracy_aware"]["kept_fp32"] == kept
    # on a budget the fp32 layers do not fit, the budget gate still fails the export
    manifest["budget_bytes"] = aware["plain_bytes"] + 10
    (run / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(GateFailed, match="over the budget"):
        export_run(run, ["onnx"], "int8", accuracy_aware="on")


def test_openvino_accuracy_control_passes(broken_run: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(broken_run, tmp_path / "run"))
    (record,) = export_run(run, ["openvino"], "int8", accuracy_aware="on")
    aware = record["accuracy_aware"]
    print("\n" + json.dumps(aware, indent=1))
    assert aware["plain_drop"] > 10 and aware["met"]
    assert record["passed"] and record["accuracy_drop"] <= 1.0
    assert aware["kept_fp32"] and all(k["op_type"] in ("Convolution", "MatMul") for k in aware["kept_fp32"])


def test_cli_flag(broken_run: Path, tmp_path: Path) -> None:
    """`export --accuracy-aware` through the real CLI: passes and names what stayed fp32."""
    import subprocess
    import sys

    from conftest import ROOT

    run = Path(shutil.copytree(broken_run, tmp_path / "run"))
    p = subprocess.run(
        [sys.executable, "-m", "prokt_deploy", "export", str(run), "-f", "onnx", "--accuracy-aware"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "COLUMNS": "400"},
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert "accuracy-aware" in p.stdout and "kept in fp32 node_Conv" in p.stdout, p.stdout


def test_litert_keeps_the_harmful_modules_in_float(broken_run: Path, tmp_path: Path) -> None:
    """LiteRT (PT2E): the plain int8 file misses the gate; the search keeps the fewest Conv/Linear modules in float
    (named by module), the file passes, and the kept weights cost bytes. ExecuTorch runs the same search
    (``pt2e_search``); its own part, the quantizer keeping modules in float, is the next test."""
    pytest.importorskip("litert_torch")
    run = Path(shutil.copytree(broken_run, tmp_path / "run"))
    (record,) = export_run(run, ["litert"], "int8")  # auto: the plain miss triggers the search
    aware = record["accuracy_aware"]
    print("\n" + json.dumps(aware, indent=1))
    assert aware["plain_int8"]["accuracy_drop"] > 10 and aware["met"] and aware["drop"] <= 1.0
    assert record["passed"] and record["accuracy_drop"] <= 1.0 and record["within_budget"]
    kept = aware["kept_fp32"]
    modules = dict(load_model(run, "student").named_modules())
    assert 1 <= len(kept) <= 3 and all(k["op_type"] == type(modules[k["name"]]).__name__ == "Conv2d" for k in kept), kept
    assert all(k["fp32_weight_bytes"] == 4 * sum(p.numel() for p in modules[k["name"]].parameters()) for k in kept)
    assert aware["extra_bytes"] == record["bytes"] - aware["plain_bytes"] > 0


def test_executorch_runs_the_modules_kept_in_float_as_fp32_nodes(broken_run: Path, tmp_path: Path) -> None:
    """ExecuTorch's quantizer leaves the named modules unquantized: XNNPACK runs them as fp32 nodes (the program's
    delegate graph says so), the file grows by their fp32 weights, and the outlier's accuracy comes back."""
    pytest.importorskip("executorch.runtime")
    import numpy as np

    from exporters.executorch import ExecuTorchPredictor, _export_pte, executorch_executed_graph
    from prokt_deploy.data import load_recipe_data
    from prokt_deploy.recipe import load_recipe as load_run_recipe

    student = load_model(broken_run, "student")
    data = load_recipe_data(load_run_recipe(broken_run / "recipe.yaml"))
    calibration, x, y = data.train.x[:300].numpy(), data.test.x.numpy(), data.test.y.numpy()
    found = {}
    for kept in ((), ("features.3", "features.6")):
        path = tmp_path / f"{len(kept)}.pte"
        _export_pte(student, "int8", data.train.x[:2], calibration, path, kept)
        accuracy = float((ExecuTorchPredictor(path, threads=1).predict(x).argmax(1) == y).mean())
        found[kept] = (executorch_executed_graph(path, threads=1), path.stat().st_size, accuracy)
    (plain, plain_bytes, plain_acc), (aware, aware_bytes, aware_acc) = found.values()
    reference = float((student(data.test.x).argmax(1).numpy() == y).mean())
    assert aware["int8_layers"] == plain["int8_layers"] - 2 and len(aware["float_layers"]) == len(plain["float_layers"]) + 2, (plain, aware)
    kept_bytes = 4 * sum(p.numel() for n in ("features.3", "features.6") for p in dict(student.named_modules())[n].parameters())
    assert aware_bytes - plain_bytes > kept_bytes // 2, (plain_bytes, aware_bytes, kept_bytes)
    assert plain_acc < reference - 0.10 and aware_acc >= reference - 0.01, (plain_acc, aware_acc, reference)
    assert np.isfinite(aware_acc)
