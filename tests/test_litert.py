"""The ``litert`` format (``exporters/litert.py``): every image family and the text students export to ``.tflite`` at fp32
and int8 and pass the gates on real data; the int8 file's recorded input/output quantization parameters reproduce
PyTorch's top-1 when a "board" quantizes the input itself; the harness times a ``.tflite`` in a worker; a run whose
int8 ``.tflite`` is exported by ``export_run`` and then corrupted makes ``prokt-deploy bench`` exit 12 with one line.

Tiny settings: sklearn digits (8x8), students trained for 3 epochs in well under a second each; a conversion takes
2-5 s on 2 shared cores, which is most of this file's time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import RECIPES

import exporters
from exporters._text import random_text_batch

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

N_TEST = 400
IMAGE_FAMILIES = {
    "cnn": "cnn-w4-d1",
    "resnet": "resnet-w4-d1",
    "wide": "wide-w8-d2",
    "pool": "pool-w4-d2",
    "vgg": "vgg-w8",
    "mobile": "mobile-w8-d2-e2",
}


@pytest.fixture(scope="module")
def digits() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).reshape(-1, 1, 8, 8).astype(np.float32)
    y = d.target.astype(np.int64)
    idx = np.random.default_rng(0).permutation(len(x))
    return {"x_train": x[idx[:-N_TEST]], "y_train": y[idx[:-N_TEST]], "x_test": x[idx[-N_TEST:]], "y_test": y[idx[-N_TEST:]]}


@pytest.fixture(scope="module")
def exported(digits, tmp_path_factory):
    """``get(family) -> (model, {precision: Artifact})``: a student trained for 3 epochs, exported at fp32 and int8 once."""
    from prokt_deploy.models.registry import get_family

    cache: dict[str, tuple] = {}
    root = tmp_path_factory.mktemp("litert")

    def get(family: str):
        if family in cache:
            return cache[family]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            fam = get_family(family)
            torch.manual_seed(0)
            model = fam.build(fam.parse(IMAGE_FAMILIES[family]), num_classes=10, in_channels=1, image_size=(8, 8))
            opt = torch.optim.Adam(model.parameters(), lr=3e-3)
            xt, yt = torch.from_numpy(digits["x_train"]), torch.from_numpy(digits["y_train"])
            model.train()
            for _ in range(3):
                for i in range(0, len(xt), 64):
                    opt.zero_grad()
                    torch.nn.functional.cross_entropy(model(xt[i : i + 64]), yt[i : i + 64]).backward()
                    opt.step()
            model.eval()
            arts = {
                p: exporters.export(
                    model, "litert", p, root / f"{family}-{p}", example_input=xt[:2], calibration=digits["x_train"][:300] if p == "int8" else None
                )
                for p in ("fp32", "int8")
            }
        finally:
            torch.set_num_threads(threads)
        cache[family] = (model, arts)
        return cache[family]

    return get


def test_registered_as_an_optional_format_without_importing_its_runtime():
    exporter = exporters.get_exporter("litert")
    assert exporters.PRECISIONS["litert"] == ("fp32", "int8") and exporter.main_suffix == ".tflite"
    assert not exporter.default and "litert" not in exporters.default_formats()
    assert exporter.runner_ref().endswith("exporters/litert.py:LiteRTRunner")
    assert exporter.has_accuracy_aware and not exporter.diagnoses_int8
    code = "import sys, exporters, prokt_deploy; print([m for m in ('jax', 'litert_torch', 'ai_edge_litert') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_missing_runtime_names_the_extra(monkeypatch):
    from exporters import litert

    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)  # import ai_edge_litert -> ImportError
    with pytest.raises(exporters.BackendMissingError, match=r"pip install 'prokt-deploy\[litert\]'"):
        litert.litert_runtime()


# every image family, in both batch modes: a dynamic batch (cnn, resnet, wide) and the static batch-1 file run per
# sample (pool, the default student family, vgg and mobile: a flattened spatial head); tests/test_export_run.py covers
# the default formats only
@pytest.mark.parametrize("family", sorted(IMAGE_FAMILIES))
def test_image_students_export_at_both_precisions_and_pass_the_gates(family, exported, digits):
    model, arts = exported(family)
    fp32, int8 = arts["fp32"], arts["int8"]
    assert [f.name for f in fp32.files] == ["model.tflite"] and [f.name for f in int8.files] == ["model.tflite", "model.quant.json"]
    assert int8.bytes == sum(f.stat().st_size for f in int8.files) < fp32.bytes and fp32.runtime.startswith("litert ")
    ref = exporters.reference_logits(model, digits["x_test"])
    v = exporters.validate(exporters.load(fp32, "litert", threads=1), None, digits["x_test"], digits["y_test"], tolerance=1e-4, reference_outputs=ref)
    assert v.passed and v.max_abs_diff <= 1e-4 and v.top1_agreement == 1.0, v
    v = exporters.validate(
        exporters.load(int8, "litert", threads=1), None, digits["x_test"], digits["y_test"], max_accuracy_drop=1.5, reference_outputs=ref
    )
    assert v.passed and v.top1_agreement >= 0.97, v
    # any batch the callers use: validation's 256, bench's 1 and 32, an odd one
    pred = exporters.load(int8, "litert", threads=1)
    for b in (1, 7, 32, 256):
        assert pred.predict(digits["x_test"][:b]).shape == (b, 10)


def test_int8_has_int8_io_and_its_recorded_parameters_reproduce_pytorch_top1(exported, digits):
    """A board's view: quantize the float input with the recorded scale/zero point, run the int8 graph, dequantize."""
    from ai_edge_litert.interpreter import Interpreter

    model, arts = exported("cnn")
    tflite, quant = arts["int8"].files
    params = json.loads(quant.read_text())
    (inp,), (out,) = params["inputs"], params["outputs"]
    assert inp["dtype"] == out["dtype"] == "int8" and inp["scale"] > 0 and out["scale"] > 0 and params["layout"] == "NCHW"
    it = Interpreter(model_path=str(tflite), num_threads=1)
    x = digits["x_test"]
    it.resize_tensor_input(0, list(x.shape), strict=True)
    it.allocate_tensors()
    d, o = it.get_input_details()[0], it.get_output_details()[0]
    assert d["dtype"] == np.int8 and o["dtype"] == np.int8
    it.set_tensor(d["index"], np.clip(np.round(x / inp["scale"]) + inp["zero_point"], -128, 127).astype(np.int8))
    it.invoke()
    logits = (it.get_tensor(o["index"]).astype(np.float32) - out["zero_point"]) * out["scale"]
    with torch.no_grad():
        torch_top1 = model(torch.from_numpy(x)).argmax(1).numpy()
    assert np.mean(logits.argmax(1) == torch_top1) >= 0.97
    assert abs(np.mean(logits.argmax(1) == digits["y_test"]) - np.mean(torch_top1 == digits["y_test"])) <= 0.015


@pytest.mark.parametrize("student", ["tfm-h32-l1", "bilstm-e32-h32"])
def test_text_students_export_at_both_precisions(student, tmp_path):
    from prokt_deploy.models.registry import get_family

    x = random_text_batch(120, 12, 50, np.random.default_rng(0))
    fam = get_family(student.split("-")[0])
    torch.manual_seed(0)
    model = fam.build(fam.parse(student), num_classes=3, vocab_size=50, max_length=12).eval()
    ref = exporters.reference_logits(model, x)
    for p in ("fp32", "int8"):
        art = exporters.export(model, "litert", p, tmp_path / p, example_input=torch.from_numpy(x[:2]), calibration=x[:64] if p == "int8" else None)
        pred = exporters.load(art, "litert", threads=1)
        v = exporters.validate(pred, None, x, tolerance=exporters.default_tolerance(p), reference_outputs=ref)
        assert v.passed and v.top1_agreement >= (1.0 if p == "fp32" else 0.95), (p, v)
        # shorter batches (validation trims padding) are right-padded to the file's length: same logits, the
        # project's students mask padding (a model that reads its padding would differ here)
        short = x[:5, :, :7].copy()
        short[:, 1, 0] = 1
        with torch.no_grad():
            ref_short = model(torch.from_numpy(short)).numpy()
        assert np.abs(pred.predict(short) - ref_short).max() <= (1e-4 if p == "fp32" else 1.0)


def test_an_unsupported_op_is_refused_in_one_line_naming_it(tmp_path):
    class Erfinv(torch.nn.Module):  # no LiteRT lowering for aten.erfinv
        def forward(self, x):
            return torch.erfinv(x.clamp(-0.5, 0.5)).flatten(1)

    with pytest.raises(exporters.ExportError) as info:
        exporters.export(Erfinv(), "litert", "fp32", tmp_path, example_input=torch.rand(2, 1, 8, 8))
    message = str(info.value)
    assert "\n" not in message and "unsupported op aten.erfinv.default" in message and len(message) < 300, message
    assert not list(tmp_path.iterdir())  # nothing left behind


def test_the_harness_runner_times_a_tflite_in_a_worker(exported, digits, tmp_path):
    from prokt_deploy import formats
    from prokt_deploy.harness import measure

    _, arts = exported("cnn")
    data = tmp_path / "data.npz"
    np.savez(data, x=digits["x_test"][:100], y=digits["y_test"][:100])
    targets = formats.runtime_targets("CPU", ["litert"])
    engines = [{"id": p, **formats.artifact_engine("litert", a.files, targets)} for p, a in arts.items()]
    rows = measure.measure(engines, data, threads=1, batch=32, runs=20, warmup=3, repeats=1)
    for row in rows:
        assert row["runtime"].startswith("litert ") and row["engine_config"]["num_threads"] == 1
        assert 0 < row["latency_ms"]["p50"] <= row["latency_ms"]["p99"] and row["batch_latency_ms"]["p50"] > 0
        assert row["test_accuracy"] > 0.5


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A digits run with a fixed tiny student (no size search), planned against litert alone."""
    from prokt_deploy import apply_overrides, distill, load_recipe

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        recipe = apply_overrides(
            load_recipe(RECIPES / "digits.yaml"),
            {
                "train.epochs": 2,
                "data.max_train_samples": 600,
                "student.arch": "cnn-w4-d1",
                "budget.formats": ["litert"],  # the bundle test exports the other three formats into a copy
                "budget.size": "40KB",
                "method": "scratch",  # no teacher: bench times the student's files only (the corrupted one is the point)
            },
        )
        return distill(recipe, out=tmp_path_factory.mktemp("litert-run") / "run", latest=False).path
    finally:
        torch.set_num_threads(threads)


def test_export_run_gates_litert_and_a_corrupted_tflite_makes_bench_exit_12(run, tmp_path):
    from prokt_deploy import export_run

    (int8,) = export_run(run, ["litert"], "int8", max_accuracy_drop=100.0)
    assert (
        int8["passed"] and int8["within_budget"] and int8["files"] == ["artifacts/litert-int8/model.tflite", "artifacts/litert-int8/model.quant.json"]
    )
    # fp32 through the real CLI, in its own process: the converter's native logging (TensorFlow/absl "I0000" lines,
    # the interpreter's "Created TensorFlow Lite XNNPACK delegate", torchao's "Failed to load") stays off the
    # terminal, and the root log handler jax installs does not print prokt-deploy's records a second time
    broken = tmp_path / "run"
    shutil.copytree(run, broken)
    proc = subprocess.run(
        [sys.executable, "-m", "prokt_deploy", "export", str(broken), "-f", "litert", "--precision", "fp32", "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (fp32,) = json.loads(proc.stdout)["artifacts"]
    assert fp32["passed"] and fp32["max_abs_diff"] <= 1e-4 and fp32["top1_agreement"] == 1.0
    noise = ("I0000", "W0000", "Created TensorFlow Lite", "Failed to load", "INFO:", "absl::InitializeLog", "os.fork()")
    assert not [ln for ln in proc.stderr.splitlines() if any(n in ln for n in noise)], proc.stderr[-2000:]
    (broken / "artifacts" / "litert-int8" / "model.tflite").write_bytes(b"not a flatbuffer" * 8)
    proc = subprocess.run(
        [sys.executable, "-m", "prokt_deploy", "bench", str(broken), "--runs", "5", "--warmup", "1", "--repeats", "1", "--batch", "4"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=600,
    )
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 12, proc.stderr[-2000:]
    assert "litert" in lines[-1] and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_a_bundle_of_all_four_formats_runs_on_a_board_without_torch(run, tmp_path):
    """ONNX, OpenVINO, LiteRT and ExecuTorch files in one bundle; its bench script on a "board" without torch (nor
    prokt-deploy, nor the exporters) times the first three and skips ExecuTorch with a note (its runtime needs torch)."""
    pytest.importorskip("executorch.runtime")
    import textwrap

    from test_bench_run import SHIM

    from prokt_deploy import export_run, write_bundle

    board_run = shutil.copytree(run, tmp_path / "run")
    records = export_run(board_run, ["onnx", "openvino", "litert", "executorch"], "int8", max_accuracy_drop=100.0)
    assert [r["format"] for r in records] == ["onnx", "openvino", "litert", "executorch"] and all(r["passed"] for r in records)
    bundle = write_bundle(board_run, tmp_path / "bundle", samples=64, settings={"runs": 20, "warmup": 3, "repeats": 1})
    spec = json.loads((bundle / "bundle.json").read_text())
    ids = {a["id"] for a in spec["artifacts"]}
    # the int8 files, and the fp32 files the bundle adds as their references
    assert ids == {f"student/{f}/{p}" for f in ("onnx", "openvino", "litert", "executorch") for p in ("fp32", "int8")}
    by_id = {a["id"]: a for a in spec["artifacts"]}
    assert by_id["student/litert/int8"]["main_file"].endswith(".tflite") and by_id["student/executorch/int8"]["main_file"].endswith(".pte")
    assert all((bundle / f).is_file() for a in spec["artifacts"] for f in a["files"])
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(textwrap.dedent(SHIM))
    proc = subprocess.run(
        [sys.executable, "bench_bundle.py", "--out", str(tmp_path / "device.json")],
        cwd=bundle,
        env={**os.environ, "PYTHONPATH": str(shim)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "device.json").read_text())
    rows = {r["id"]: r for r in results["rows"]}
    assert set(rows) == ids - {"student/executorch/fp32", "student/executorch/int8"}
    assert rows["student/litert/int8"]["runtime"].startswith("litert ") and rows["student/litert/int8"]["latency_ms"]["p50"] > 0
    assert all(r["accuracy_samples"] == 64 for r in rows.values())
    assert sorted(results["skipped"]) == [f"student/executorch/{p}: executorch cannot run here (cannot import torch)" for p in ("fp32", "int8")]
    assert "skipped student/executorch/int8" in proc.stdout + proc.stderr
