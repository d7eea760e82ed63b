"""The ``executorch`` format (exporters/executorch.py): ``.pte`` programs with the XNNPACK delegate, fp32 and PT2E int8.

Every image family's smallest student (vgg: the smallest teacher), trained briefly on digits, exports at both precisions
and passes the gates; a text student exports (tfm) or is refused in one line naming the op (bilstm: aten.lstm); the
format's own harness runner times a .pte in a worker process; a corrupted .pte in a run's manifest makes ``bench``
exit 12 with one line. Exports cost 2-10 s each here (ExecuTorch's lowering passes), so models are the smallest.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import RECIPES
from test_bench_run import assert_one_line_error, cli

import exporters
from exporters import executorch as et
from prokt_deploy import formats
from prokt_deploy.data import load_data
from prokt_deploy.harness import measure
from prokt_deploy.models import create_model, families

pytest.importorskip("executorch.runtime", reason="the executorch extra is not installed")

FMT = "executorch"
#: the smallest model of each image family: students' smallest candidate, vgg (a teacher family) its smallest width
# (tests/test_export_run.py covers the default formats only: every family's ExecuTorch export is here)
ARCHS = {
    f: (fam.candidates() or ["vgg-w8"])[0] for f, fam in sorted(families().items()) if fam.modality == "image" and (fam.candidates() or f == "vgg")
}


@pytest.fixture(scope="module")
def digits():
    data = load_data("digits")
    return data.train.x, data.train.y, data.test.x.numpy(), data.test.y.numpy()


@pytest.fixture(scope="module")
def one_thread_module():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _trained(arch: str, x: torch.Tensor, y: torch.Tensor) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(arch, num_classes=10, in_channels=1, image_size=(8, 8))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(4):
        for idx in torch.randperm(len(x), generator=gen).split(32):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def test_registered_optional_and_imported_lazily():
    exporter = exporters.get_exporter(FMT)
    assert exporters.PRECISIONS[FMT] == ("fp32", "int8") and exporter.main_suffix == ".pte"
    assert not exporter.default and FMT not in exporters.default_formats()
    assert exporter.runner_ref().endswith("exporters/executorch.py:ExecuTorchRunner") and formats.runtime_name(FMT) == "executorch"
    assert exporter.diagnoses_int8 and exporter.has_accuracy_aware
    code = "import sys, exporters, prokt_deploy; print([m for m in sys.modules if m.split('.')[0] in ('executorch', 'torchao')])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_missing_runtime_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "executorch.exir", None)  # import executorch.exir -> ImportError
    with pytest.raises(exporters.BackendMissingError, match=r"pip install 'prokt-deploy\[executorch\]'"):
        exporters.export(torch.nn.Flatten(), FMT, "fp32", tmp_path, example_input=torch.zeros(2, 1, 8, 8))


@pytest.fixture(scope="module")
def family_results(digits, one_thread_module, tmp_path_factory) -> dict:
    """Every image family at fp32 and int8: artifact, gate report (one export per combination, shared by the tests)."""
    x_train, y_train, x_test, y_test = digits
    out = {}
    root = tmp_path_factory.mktemp("et")
    for family, arch in ARCHS.items():
        model = _trained(arch, x_train, y_train)
        for precision in ("fp32", "int8"):
            art = exporters.export(
                model,
                FMT,
                precision,
                root / f"{arch}-{precision}",
                example_input=x_train[:2],
                calibration=x_train[:300].numpy() if precision == "int8" else None,
            )
            report = exporters.validate(
                exporters.load(art, FMT, threads=1), model, x_test, y_test, tolerance=exporters.default_tolerance(precision), max_accuracy_drop=1.0
            )
            out[family, precision] = (art, report, model)
    return out


@pytest.mark.parametrize("family", sorted(ARCHS))
def test_every_family_exports_and_passes_the_gates(family, family_results):
    for precision in ("fp32", "int8"):
        art, report, _ = family_results[family, precision]
        print(
            f"\n{ARCHS[family]} executorch {precision}: {art.bytes} B, acc {report.reference_accuracy:.4f} -> {report.test_accuracy:.4f}, "
            f"agreement {report.top1_agreement:.4f}, max|diff| {report.max_abs_diff:.3g}"
        )
        assert [f.name for f in art.files] == ["model.pte"] and art.bytes == art.files[0].stat().st_size
        assert art.runtime.startswith("executorch ")
        assert report.reference_accuracy > 0.8, "the model did not train"
        assert report.passed, (family, precision, report.failures)
    fp32, int8 = family_results[family, "fp32"][0], family_results[family, "int8"][0]
    if family in ("cnn", "resnet", "wide", "vgg"):  # the tiniest pool/mobile students (1-5k parameters) carry more per-op
        assert int8.bytes < fp32.bytes  # quantization data (scales, q/dq nodes) than int8 saves on their weights


def test_any_batch_runs_and_int8_is_diagnosed(family_results, digits):
    art, _, model = family_results["resnet", "int8"]
    predictor = exporters.load(art, FMT, threads=1)
    assert predictor.max_batch == et.MAX_BATCH
    x = np.concatenate([digits[2]] * 2)[:300]  # more than the exported bound: chunked
    whole = predictor.predict(x)
    assert whole.shape == (300, 10)
    np.testing.assert_allclose(predictor.predict(x[:1]), whole[:1], atol=1e-5)
    fp32 = exporters.load(family_results["resnet", "fp32"][0], FMT)
    with torch.no_grad():
        np.testing.assert_allclose(fp32.predict(x), model(torch.from_numpy(x)).numpy(), atol=1e-4)
    graph = exporters.get_exporter(FMT).executed_graph(art.main_file, target="CPU", threads=1)
    assert graph["runtime"] == "executorch" and graph["int8_layers"] > 0 and graph["threads_used"] == 1
    assert graph["float_layers"] == [] and graph["conversions"]["XNNConvert"] >= 2
    fp32_graph = exporters.get_exporter(FMT).executed_graph(family_results["resnet", "fp32"][0].main_file, target="CPU", threads=1)
    assert fp32_graph["int8_layers"] == 0 and fp32_graph["float_layers"]


def test_text_students_export_or_are_refused_with_the_op(tmp_path, one_thread_module):
    rng = np.random.default_rng(0)
    x = exporters._text.random_text_batch(40, 24, 100, rng)
    torch.manual_seed(0)
    tfm = create_model("tfm-h32-l1", num_classes=2, vocab_size=100, max_length=24).eval()
    art = exporters.export(tfm, FMT, "fp32", tmp_path / "tfm", example_input=torch.from_numpy(x[:2]))
    report = exporters.validate(exporters.load(art, FMT, threads=1), tfm, x, tolerance=1e-4)
    assert report.passed, report.failures
    short = x[:3, :, :7]  # another batch and sequence length
    with torch.no_grad():
        np.testing.assert_allclose(exporters.load(art, FMT).predict(short), tfm(torch.from_numpy(short)).numpy(), atol=1e-4)

    lstm = create_model("bilstm-e32-h32", num_classes=2, vocab_size=100, max_length=24).eval()
    with pytest.raises(exporters.ExportError) as info:
        exporters.export(lstm, FMT, "int8", tmp_path / "lstm", example_input=torch.from_numpy(x[:2]), calibration=x)
    message = str(info.value)
    assert "unsupported op aten.lstm" in message and "\n" not in message and not (tmp_path / "lstm" / "model.pte").exists()


def test_the_runner_times_a_pte_in_a_worker(family_results, digits, tmp_path):
    art, report, _ = family_results["cnn", "int8"]
    targets = formats.runtime_targets("CPU", [FMT])
    assert targets["executorch"] == "CPU"
    engine = {"id": "student/executorch/int8", **formats.artifact_engine(FMT, art.files, targets)}
    data = tmp_path / "test.npz"
    np.savez(data, x=digits[2], y=digits[3])
    (row,) = measure.measure([engine], data, threads=1, batch=32, runs=20, warmup=3, repeats=1)
    print(f"\ncnn int8 .pte in its worker: p50 {row['latency_ms']['p50']:.4f} ms (batch 1), {row['batch_latency_ms']['p50']:.4f} ms (batch 32)")
    assert row["runtime"].startswith("executorch ") and row["engine_config"]["threads"] == 1
    assert 0 < row["latency_ms"]["p50"] <= row["latency_ms"]["p99"] and row["batch_latency_ms"]["p50"] > 0
    assert row["test_accuracy"] == pytest.approx(report.test_accuracy)  # the runner's chunked run = the predictor's


def test_a_corrupted_pte_makes_bench_exit_12_in_one_line(tmp_path, one_thread_module):
    from prokt_deploy import apply_overrides, distill, export_run, load_recipe

    recipe = apply_overrides(
        load_recipe(RECIPES / "digits.yaml"),
        {
            "train.epochs": 1,
            "data.max_train_samples": 300,
            "student.arch": "cnn-w4-d1",
            "teacher.arch": "cnn-w8-d1",
            "budget.size": "64KB",
            "method": "scratch",  # no teacher: bench times the student's files only (the corrupted one is the point)
        },
    )
    run = distill(recipe, out=tmp_path / "run", latest=False).path
    (result,) = export_run(run, [FMT], "fp32")
    assert result["passed"], result
    manifest = json.loads((run / "manifest.json").read_text())
    (pte,) = [a["files"][0] for a in manifest["artifacts"] if a["format"] == FMT]
    (run / pte).write_bytes(b"not an ExecuTorch program" * 10)
    proc = cli("bench", str(run), "--runs", "5", "--warmup", "1", "--repeats", "1", "--batch", "4", cwd=tmp_path)
    assert_one_line_error(proc, 12, "student/executorch/fp32")
