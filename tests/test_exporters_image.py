"""Tests of the standalone ``exporters`` package on a tiny CNN trained on real data (sklearn digits).

One module-scoped fixture trains the CNN for a few seconds and another exports every format x precision
once; the tests then check parity/accuracy, file layout, dynamic batch, sizes and error handling.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import exporters
from exporters import Artifact, ExportError

# the formats exported by default (their runtimes are core dependencies); the optional ones (litert, executorch) have
# test files of their own, and every registered format is exported by every family in test_export_run.py
COMBOS = [(fmt, p) for fmt in exporters.default_formats() for p in exporters.PRECISIONS[fmt]]
N_TEST = 400
N_CALIB = 300


class TinyCNN(nn.Module):
    """2 x (conv3x3 + BN + ReLU) -> global average pool -> linear head; (B,1,8,8) -> (B,10)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@pytest.fixture(scope="module")
def digits() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).reshape(-1, 1, 8, 8).astype(np.float32)
    y = d.target.astype(np.int64)
    idx = np.random.default_rng(0).permutation(len(x))
    train, test = idx[:-N_TEST], idx[-N_TEST:]
    return {"x_train": x[train], "y_train": y[train], "x_test": x[test], "y_test": y[test]}


@pytest.fixture(scope="module")
def trained(digits: dict[str, np.ndarray]) -> TinyCNN:
    torch.manual_seed(0)
    model = TinyCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(digits["x_train"]), torch.from_numpy(digits["y_train"])
    gen = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: 1 thread is ~10x faster than 2 when the 2 cores are shared
    try:
        model.train()
        for _ in range(12):
            perm = torch.randperm(len(xt), generator=gen)
            for i in range(0, len(xt), 32):
                b = perm[i : i + 32]
                opt.zero_grad()
                nn.functional.cross_entropy(model(xt[b]), yt[b]).backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


@pytest.fixture(scope="module")
def artifacts(
    trained: TinyCNN, digits: dict[str, np.ndarray], tmp_path_factory: pytest.TempPathFactory
) -> dict[tuple[str, str], tuple[Artifact, float]]:
    """Every format x precision exported once (each in its own dir, default name), with export seconds."""
    root = tmp_path_factory.mktemp("artifacts")
    example = torch.from_numpy(digits["x_train"][:1])  # batch 1: the exporter must still keep batch dynamic
    out: dict[tuple[str, str], tuple[Artifact, float]] = {}
    for fmt, precision in COMBOS:
        t0 = time.perf_counter()
        art = exporters.export(
            trained,
            fmt,
            precision,
            root / f"{fmt}-{precision}",
            example_input=example,
            calibration=digits["x_train"][:N_CALIB] if precision == "int8" else None,
        )
        out[(fmt, precision)] = (art, time.perf_counter() - t0)
    return out


def test_reference_model_is_trained(trained: TinyCNN, digits: dict[str, np.ndarray]) -> None:
    with torch.no_grad():
        pred = trained(torch.from_numpy(digits["x_test"])).argmax(1).numpy()
    assert (pred == digits["y_test"]).mean() >= 0.9


@pytest.mark.parametrize(("fmt", "precision"), COMBOS)
def test_export_passes_validation(fmt: str, precision: str, artifacts: dict, trained: TinyCNN, digits: dict[str, np.ndarray]) -> None:
    art, seconds = artifacts[(fmt, precision)]
    assert (art.format, art.precision) == (fmt, precision)
    assert art.runtime.startswith({"onnx": "onnxruntime ", "openvino": "openvino "}[fmt])
    predictor = exporters.load(art, fmt, threads=1)
    assert predictor.runtime == art.runtime
    tol = exporters.default_tolerance(precision)
    report = exporters.validate(predictor, trained, digits["x_test"], digits["y_test"], tolerance=tol, max_accuracy_drop=1.0, batch_size=64)
    print(
        f"\n{fmt}/{precision}: {art.bytes} B, export {seconds:.2f} s, max|diff| {report.max_abs_diff:.3g}, "
        f"agreement {report.top1_agreement:.4f}, acc {report.reference_accuracy:.4f} -> {report.test_accuracy:.4f} "
        f"(drop {report.accuracy_drop:+.2f} pts)"
    )
    assert report.passed, report.failures
    assert report.failures == []
    assert report.tolerance == tol and report.max_accuracy_drop == 1.0
    if precision == "fp32":
        assert report.max_abs_diff <= 1e-4
        assert report.top1_agreement == 1.0
    elif precision == "fp16":
        assert report.top1_agreement >= 0.99
    else:
        assert tol is None
        assert report.accuracy_drop is not None and report.accuracy_drop <= 1.0
        assert report.top1_agreement >= 0.95


def test_onnx_is_single_checked_file(artifacts: dict) -> None:
    import onnx

    for precision in ("fp32", "int8"):
        art, _ = artifacts[("onnx", precision)]
        assert [f.name for f in art.files] == ["model.onnx"]
        assert sorted(p.name for p in art.files[0].parent.iterdir()) == ["model.onnx"]  # no .data sidecar
        onnx.checker.check_model(str(art.files[0]), full_check=True)
        model = onnx.load(str(art.files[0]))
        assert [i.name for i in model.graph.input] == ["input"]
        assert [o.name for o in model.graph.output] == ["logits"]
        assert not model.graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value")
        assert all(len(n.metadata_props) == 0 for n in model.graph.node)  # no stack traces / local paths
    int8_ops = {n.op_type for n in onnx.load(str(artifacts[("onnx", "int8")][0].files[0])).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= int8_ops  # QDQ format


@pytest.mark.parametrize("batch", [1, 7])
def test_batch_dimension_is_dynamic(batch: int, artifacts: dict, trained: TinyCNN, digits: dict) -> None:
    import openvino as ov

    x = digits["x_test"][:batch]
    with torch.no_grad():
        ref = trained(torch.from_numpy(x)).numpy()
    core = ov.Core()
    for (fmt, precision), (art, _) in artifacts.items():
        out = exporters.load(art, fmt, threads=1).predict(x)
        assert out.shape == (batch, 10) and out.dtype == np.float32
        if precision == "fp32":
            np.testing.assert_allclose(out, ref, atol=1e-4)
        if fmt == "onnx":  # the ONNX file also runs in OpenVINO with any batch size
            # f32 as the product runs it: on CPUs with AMX-BF16 OpenVINO's default inference precision is bf16
            compiled = core.compile_model(str(art.files[0]), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
            ov_out = compiled({0: x})[compiled.output(0)]
            assert ov_out.shape == (batch, 10)
            if precision == "fp32":
                np.testing.assert_allclose(ov_out, ref, atol=1e-4)


def test_openvino_artifact_has_xml_bin_and_bytes(artifacts: dict) -> None:
    for precision in exporters.PRECISIONS["openvino"]:
        art, _ = artifacts[("openvino", precision)]
        assert sorted(f.name for f in art.files) == ["model.bin", "model.xml"]
        assert all(f.exists() for f in art.files)
        sizes = sum(f.stat().st_size for f in art.files)
        assert art.bytes == sizes == exporters.artifact_bytes(art.files)
    # a missing .bin is reported, not a crash inside OpenVINO
    xml = artifacts[("openvino", "fp32")][0].files
    with pytest.raises(ExportError):
        exporters.load([f for f in xml if f.suffix == ".xml"][0].with_name("nope.xml"), "openvino")


def test_int8_smaller_than_fp32(artifacts: dict) -> None:
    for fmt in exporters.default_formats():
        assert artifacts[(fmt, "int8")][0].bytes < artifacts[(fmt, "fp32")][0].bytes
    assert artifacts[("openvino", "fp16")][0].bytes < artifacts[("openvino", "fp32")][0].bytes


def test_unknown_format_or_precision(trained: TinyCNN, tmp_path: Path) -> None:
    ex = torch.zeros(1, 1, 8, 8)
    with pytest.raises(ExportError) as info:
        exporters.export(trained, "tflite", "fp32", tmp_path, example_input=ex)
    assert "onnx" in str(info.value) and "openvino" in str(info.value)
    with pytest.raises(ExportError) as info:
        exporters.export(trained, "onnx", "fp16", tmp_path, example_input=ex)
    assert "fp32" in str(info.value) and "int8" in str(info.value)
    with pytest.raises(ExportError):
        exporters.load(tmp_path / "model.onnx", "tflite")
    with pytest.raises(ExportError):
        exporters.default_tolerance("int4")
    assert list(tmp_path.iterdir()) == []


def test_int8_requires_valid_calibration(trained: TinyCNN, tmp_path: Path) -> None:
    ex = torch.zeros(1, 1, 8, 8)
    for fmt in exporters.FORMATS:  # every registered format refuses int8 without real calibration samples
        with pytest.raises(ExportError, match="calibration"):
            exporters.export(trained, fmt, "int8", tmp_path, example_input=ex)
    with pytest.raises(ExportError, match="shape"):
        exporters.export(trained, "onnx", "int8", tmp_path, example_input=ex, calibration=np.zeros((4, 3, 8, 8)))
    assert list(tmp_path.iterdir()) == []


def test_static_batch_falls_back_to_torchscript_exporter(trained: TinyCNN, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import exporters.onnx as onnx_format

    real = onnx_format.batch_is_symbolic
    calls: list[bool] = []

    def first_says_static(path: Path) -> bool:  # pretend the dynamo export fixed the batch dimension
        calls.append(True)
        return False if len(calls) == 1 else real(path)

    monkeypatch.setattr(onnx_format, "batch_is_symbolic", first_says_static)
    with pytest.warns(UserWarning, match="TorchScript fallback"):
        art = exporters.export(trained, "onnx", "fp32", tmp_path, example_input=torch.zeros(2, 1, 8, 8))
    assert len(calls) >= 2 and real(art.files[0])
    x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(exporters.load(art, "onnx").predict(x), trained(torch.from_numpy(x)), atol=1e-4)


def test_batch_dependent_model_is_rejected(tmp_path: Path) -> None:
    class FixedBatch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.reshape(2, 64))  # hard-codes the batch size

    with pytest.raises(ExportError, match="batch"):
        exporters.export(FixedBatch(), "onnx", "fp32", tmp_path, example_input=torch.zeros(2, 1, 8, 8))
    assert list(tmp_path.iterdir()) == []


def test_validation_gate_can_fail(artifacts: dict, trained: TinyCNN, digits: dict) -> None:
    predictor = exporters.load(artifacts[("onnx", "fp32")][0], "onnx")
    perturbed = copy.deepcopy(trained)
    with torch.no_grad():
        perturbed.head.weight.add_(0.01 * torch.randn_like(perturbed.head.weight))
    report = exporters.validate(predictor, perturbed, digits["x_test"], tolerance=1e-4)
    assert not report.passed
    assert len(report.failures) == 1 and "tolerance" in report.failures[0]
    assert report.test_accuracy is None and report.reference_accuracy is None

    class Garbage:
        runtime = "garbage"

        def predict(self, x: np.ndarray) -> np.ndarray:
            return np.zeros((len(x), 10), dtype=np.float32)  # always class 0

    report = exporters.validate(Garbage(), trained, digits["x_test"], digits["y_test"], tolerance=1.0, max_accuracy_drop=1.0)
    assert not report.passed
    assert len(report.failures) == 2  # every failed check is reported, not just the first
    assert any("tolerance" in f for f in report.failures) and any("accuracy drop" in f for f in report.failures)
    assert report.accuracy_drop is not None and report.accuracy_drop > 50


def test_measure_bytes_independent_of_weights(artifacts: dict, digits: dict, capfd: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(123)
    untrained = TinyCNN()  # left in train mode on purpose
    example = torch.from_numpy(digits["x_train"][:2])
    sizes = {}
    for fmt, precision in COMBOS:
        sizes[(fmt, precision)] = exporters.measure_bytes(untrained, fmt, precision, example_input=example)
    captured = capfd.readouterr()
    assert captured.out == ""  # exporters are silent on stdout (no NNCF progress bars, no exporter chatter)
    assert untrained.training  # export restores the caller's train/eval mode
    for (fmt, precision), measured in sizes.items():
        real = artifacts[(fmt, precision)][0].bytes
        print(f"{fmt}/{precision}: untrained {measured} B, trained {real} B")
        assert abs(measured - real) <= 0.02 * real


def test_import_is_lazy() -> None:
    code = "import sys, exporters; print(sorted(m for m in ('onnxruntime', 'openvino', 'nncf', 'onnx', 'onnxscript') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_int8_starts_from_the_given_fp32_onnx(fmt: str, artifacts: dict, trained: TinyCNN, digits: dict, tmp_path: Path) -> None:
    """``fp32_onnx`` is what the int8 export quantizes: given the fp32 file of a *different* model (another
    head), the int8 artifact follows that file's predictions, not the module's; the file is not changed."""
    other = copy.deepcopy(trained)
    with torch.no_grad():
        other.head.weight.copy_(other.head.weight.flip(0))  # the same features, the class rows reversed
        other.head.bias.copy_(other.head.bias.flip(0))
    example = torch.from_numpy(digits["x_train"][:1])
    theirs = exporters.export(other, "onnx", "fp32", tmp_path / "other", example_input=example)
    before = theirs.files[0].read_bytes()
    art = exporters.export(
        trained, fmt, "int8", tmp_path / "int8", example_input=example, calibration=digits["x_train"][:N_CALIB], fp32_onnx=theirs.files[0]
    )
    x = digits["x_test"]
    pred = exporters.load(art, fmt).predict(x).argmax(1)
    with torch.no_grad():
        theirs_pred = other(torch.from_numpy(x)).argmax(1).numpy()
        ours_pred = trained(torch.from_numpy(x)).argmax(1).numpy()
    assert (pred == theirs_pred).mean() > 0.95
    assert (pred == ours_pred).mean() < 0.5
    assert theirs.files[0].read_bytes() == before
    # and given this model's own fp32 file, the result is the int8 export made from scratch
    own = artifacts[("onnx", "fp32")][0].files[0]
    reused = exporters.export(trained, fmt, "int8", tmp_path / "own", example_input=example, calibration=digits["x_train"][:N_CALIB], fp32_onnx=own)
    fresh = artifacts[(fmt, "int8")][0]
    np.testing.assert_allclose(exporters.load(reused, fmt).predict(x), exporters.load(fresh, fmt).predict(x), atol=1e-5)


def test_missing_fp32_onnx_is_an_export_error(trained: TinyCNN, digits: dict, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="fp32_onnx"):
        exporters.export(
            trained,
            "onnx",
            "int8",
            tmp_path,
            example_input=torch.from_numpy(digits["x_train"][:1]),
            calibration=digits["x_train"][:N_CALIB],
            fp32_onnx=tmp_path / "nope.onnx",
        )
