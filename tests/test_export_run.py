"""`export`: gated artifacts of a trained digits run, through the library and the real CLI.

One module-scoped run is distilled on recipes/digits.yaml (student pinned to keep planning short,
planned against both formats at 40 kB so both int8 artifacts can fit). The tests that make an export
fail work on copies of it, so the shared run's manifest only ever holds passing artifacts.
tests/test_exporters_image.py covers the exporters on a hand-written CNN (every format x precision, file
layout, fallbacks); this file adds the registered student families, the run workflow and the CLI.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import RECIPES, cli_in_process

import exporters
from prokt_deploy import apply_overrides, distill, export_run, load_recipe
from prokt_deploy.data import load_data
from prokt_deploy.errors import ExportFailed, GateFailed, UsageError
from prokt_deploy.models import create_model, families

BUDGET = 40_000
STUDENT = "cnn-w8-d1"


@pytest.fixture(scope="module")
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: 1 thread is ~10x faster than 2 when the 2 cores are shared
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, single_thread) -> Path:
    root = tmp_path_factory.mktemp("export")
    recipe = apply_overrides(
        load_recipe(RECIPES / "digits.yaml"),
        {"budget.size": f"{BUDGET}B", "budget.formats": ["onnx", "openvino"], "student.arch": STUDENT, "train.epochs": 6},
    )
    result = distill(recipe, out=root / "run", runs_root=root / "runs")
    assert result.manifest["metrics"]["student_test_accuracy"] > 0.85  # a trained student, or int8 tests mean little
    return result.path


@pytest.fixture(scope="module")
def int8_results(run: Path) -> list[dict]:
    return export_run(run, ["all"], "int8")


def manifest_of(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def nothing_left(run: Path, name: str) -> None:
    """No artifact directory ``name`` and no hidden staging directory of any artifact."""
    artifacts = run / "artifacts"
    assert not (artifacts / name).exists()
    if artifacts.exists():
        assert not [p.name for p in artifacts.iterdir() if p.name.startswith(".")]


def test_int8_both_formats_pass_and_are_recorded(run: Path, int8_results: list[dict]) -> None:
    assert [(r["format"], r["precision"]) for r in int8_results] == [("onnx", "int8"), ("openvino", "int8")]
    recorded = {(a["format"], a["precision"]): a for a in manifest_of(run)["artifacts"]}
    planned = manifest_of(run)["student"]["bytes_by_format"]
    for r in int8_results:
        print(
            f"\n{r['format']} int8: {r['bytes']} B (planned {planned[r['format']]} B), drop {r['accuracy_drop']:+.2f} pts, "
            f"agreement {r['top1_agreement']:.4f}, max|diff| {r['max_abs_diff']:.3g}"
        )
        assert r["passed"] and r["failures"] == []
        assert r["accuracy_drop"] <= 1.0  # the default gate; int8 keeps the trained student's accuracy
        assert r["top1_agreement"] >= 0.95
        assert r["bytes"] <= BUDGET and r["within_budget"] and r["budget_gated"]
        assert r["bytes"] == planned[r["format"]]  # the planner measured the real size, to the byte
        assert recorded[(r["format"], "int8")] == r
        files = [run / f for f in r["files"]]
        assert all(f.is_file() for f in files)
        assert files[0].parent == run / "artifacts" / f"{r['format']}-int8"
        assert sum(f.stat().st_size for f in files) == r["bytes"]
        assert r["runtime"].split()[0] == {"onnx": "onnxruntime", "openvino": "openvino"}[r["format"]]
    nothing_left(run, "none")


@pytest.mark.parametrize("batch", [1, 7])
def test_onnx_batch_is_symbolic(run: Path, int8_results: list[dict], batch: int) -> None:
    import onnx
    import onnxruntime as ort

    path = run / next(r for r in int8_results if r["format"] == "onnx")["files"][0]
    model = onnx.load(str(path))
    assert not model.graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value")
    x = np.random.default_rng(batch).standard_normal((batch, 1, 8, 8)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: x})
    assert logits.shape == (batch, 10)
    one_by_one = np.concatenate([session.run(None, {session.get_inputs()[0].name: x[i : i + 1]})[0] for i in range(batch)])
    np.testing.assert_allclose(logits, one_by_one, atol=1e-6)


def test_all_at_fp16_skips_onnx_and_budget_is_not_a_gate_there(run: Path, int8_results: list[dict]) -> None:
    results = export_run(run, ["all"], "fp16")
    assert results[0] == {"format": "onnx", "precision": "fp16", "skipped": results[0]["skipped"]}
    assert "onnx has no fp16" in results[0]["skipped"]
    ov = results[1]
    assert (ov["format"], ov["precision"], ov["passed"]) == ("openvino", "fp16", True)
    assert ov["max_abs_diff"] <= exporters.default_tolerance("fp16") and ov["budget_gated"] is False
    kinds = {(a["format"], a["precision"]) for a in manifest_of(run)["artifacts"]}
    assert kinds == {("onnx", "int8"), ("openvino", "int8"), ("openvino", "fp16")}  # the int8 entries are kept
    with pytest.raises(UsageError, match="onnx has no fp16"):
        export_run(run, ["onnx"], "fp16")


def test_gate_failure_is_reported_recorded_and_leaves_nothing(run: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(run, tmp_path / "run"))
    with pytest.raises(GateFailed) as info:
        export_run(copy, ["onnx"], "fp32", tolerance=1e-12)
    (record,) = info.value.results
    assert record["passed"] is False and record["files"] == []
    assert any("exceeds tolerance" in f for f in record["failures"])
    assert record["top1_agreement"] == 1.0  # every check is still measured and reported
    assert manifest_of(copy)["artifacts"][-1] == record
    nothing_left(copy, "onnx-fp32")
    # a failed re-export replaces the earlier passing artifact: the manifest never lists files that are gone
    with pytest.raises(GateFailed):
        export_run(copy, ["onnx"], "int8", max_accuracy_drop=-100)
    nothing_left(copy, "onnx-int8")
    onnx_int8 = [a for a in manifest_of(copy)["artifacts"] if (a["format"], a["precision"]) == ("onnx", "int8")]
    assert len(onnx_int8) == 1 and onnx_int8[0]["passed"] is False


def test_export_and_runtime_errors_are_export_failed(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = Path(shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns("artifacts")))
    with pytest.raises(ExportFailed, match="unknown onnxruntime device 'tpu'"):
        export_run(copy, ["onnx"], "fp32", device="tpu")
    nothing_left(copy, "onnx-fp32")

    def missing_runtime(*args, **kwargs):
        raise exporters.BackendMissingError("openvino is not installed: pip install openvino")

    monkeypatch.setattr(exporters, "export", missing_runtime)
    before = manifest_of(copy)["artifacts"]
    with pytest.raises(ExportFailed, match="pip install openvino") as info:
        export_run(copy, ["openvino"], "int8")
    assert info.value.results == [{"format": "openvino", "precision": "int8", "error": str(info.value)}]
    assert manifest_of(copy)["artifacts"] == before  # nothing was measured, nothing is recorded
    nothing_left(copy, "openvino-int8")


@pytest.fixture(scope="module")
def digits_arrays():
    data = load_data("digits")
    return data.train.x, data.train.y, data.test.x.numpy(), data.test.y.numpy()


# student families: a teacher-only family (vgg) offers no candidates and is exported on its own data in the bench tests
@pytest.mark.parametrize("family", sorted(f for f, fam in families().items() if fam.modality == "image" and fam.candidates()))
def test_every_family_exports_every_format_and_precision(family: str, digits_arrays, single_thread, tmp_path: Path) -> None:
    """The smallest student of each registered family, trained briefly, passes every gate in every combo of the
    default formats (ONNX, OpenVINO; the optional LiteRT and ExecuTorch export every family in their own test files,
    tests/test_litert.py and tests/test_executorch.py, with the same gates: not twice here).

    The smallest one: the families' graphs do not change with width, and exports cost seconds each.
    """
    x_train, y_train, x_test, y_test = digits_arrays
    arch = families()[family].candidates()[0]
    torch.manual_seed(0)
    model = create_model(arch, num_classes=10, in_channels=1, image_size=(8, 8))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(4):
        for idx in torch.randperm(len(x_train), generator=gen).split(32):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x_train[idx]), y_train[idx]).backward()
            opt.step()
    model.eval()
    for fmt in exporters.default_formats():
        for precision in exporters.PRECISIONS[fmt]:
            art = exporters.export(
                model,
                fmt,
                precision,
                tmp_path / f"{fmt}-{precision}",
                example_input=x_train[:2],
                calibration=x_train[:300].numpy() if precision == "int8" else None,
            )
            report = exporters.validate(
                exporters.load(art, fmt), model, x_test, y_test, tolerance=exporters.default_tolerance(precision), max_accuracy_drop=1.0
            )
            print(
                f"\n{arch} {fmt} {precision}: {art.bytes} B, acc {report.reference_accuracy:.4f} -> "
                f"{report.test_accuracy:.4f}, max|diff| {report.max_abs_diff:.3g}"
            )
            assert report.reference_accuracy > 0.8, "the model did not train"
            assert report.passed, (arch, fmt, precision, report.failures)


class _PooledTeacher(torch.nn.Module):
    """A user-style teacher: conv stack, ``AdaptiveAvgPool2d(1)`` + ``Flatten``, linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(1, 8, 3, padding=1),
            torch.nn.BatchNorm2d(8),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, stride=2, padding=1),
            torch.nn.BatchNorm2d(16),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
        )
        self.head = torch.nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


IMAGE_ARCHS = [*sorted(fam.candidates()[0] for fam in families().values() if fam.modality == "image" and fam.candidates()), "pooled-teacher"]


@pytest.mark.parametrize("stem", ["float", "int8"])
@pytest.mark.parametrize("arch", IMAGE_ARCHS)
def test_int8_onnx_runs_in_int8_in_onnxruntime(arch: str, stem: str, digits_arrays, single_thread, tmp_path: Path, monkeypatch) -> None:
    """Every Conv/Gemm/MatMul of the int8 ONNX file runs as an int8 kernel in onnxruntime's optimized graph,
    and nothing (residual Add, pooling) runs in float between DequantizeLinear and QuantizeLinear; the one
    exception is the 1-channel first conv, which the exporter keeps in fp32 (``stem="float"``, the default;
    exporters/onnx.py, ``_float_stem``) and reads the input directly. With ``FLOAT_STEM_MAX_CHANNELS = 0``
    (``stem="int8"``) it too is a QLinearConv.

    Weights need not be trained for the graph to be right, but must not be special (a zero BN bias is
    dropped): the generic copy the size measurement uses.
    """
    import exporters.onnx as onnx_exporter
    from exporters.onnx import onnxruntime_executed_graph
    from exporters.size import generic_copy

    if stem == "int8":
        monkeypatch.setattr(onnx_exporter, "FLOAT_STEM_MAX_CHANNELS", 0)
    x_train = digits_arrays[0]
    model = _PooledTeacher() if arch == "pooled-teacher" else create_model(arch, num_classes=10, in_channels=1, image_size=(8, 8))
    model = generic_copy(model.eval(), 0).eval()
    art = exporters.export(model, "onnx", "int8", tmp_path, example_input=x_train[:2], calibration=x_train[:64].numpy())
    graph = onnxruntime_executed_graph(art.files[0], providers=["CPUExecutionProvider"], threads=1)
    compute = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in model.modules())
    assert graph["float_layers"] == [], graph
    assert graph["float_ops_between_qdq"] == [], graph
    assert len(graph["float_stem"]) == (1 if stem == "float" else 0), graph
    assert graph["int8_layers"] == compute - len(graph["float_stem"]), graph
    # one QuantizeLinear (the input, or the stem's output), one DequantizeLinear (the logits): no float islands
    assert graph["conversions"].get("QuantizeLinear") == 1 and graph["conversions"].get("DequantizeLinear") == 1, graph


def test_float_stem_rule_and_rewrite(tmp_path: Path) -> None:
    """The stem stays fp32 only up to FLOAT_STEM_MAX_CHANNELS input channels; the ReLU/MaxPool swap that moves
    the quantization point after the pool leaves the fp32 graph's outputs unchanged."""
    import numpy as np
    import onnxruntime as ort
    from onnxruntime.quantization.shape_inference import quant_pre_process

    import exporters.onnx as onnx_exporter

    for channels, expected in ((1, 3), (3, 3), (4, 0)):
        model = create_model("pool-w4-d2", num_classes=10, in_channels=channels, image_size=(8, 8)).eval()
        fp32 = onnx_exporter.export_onnx_fp32(model, torch.randn(1, channels, 8, 8), tmp_path / f"c{channels}.onnx")
        pre = tmp_path / f"c{channels}-pre.onnx"
        quant_pre_process(str(fp32), str(pre))
        before = pre.read_bytes()
        excluded = onnx_exporter._float_stem(pre)
        assert len(excluded) == expected, (channels, excluded)  # conv, maxpool, relu
        if not expected:
            assert pre.read_bytes() == before  # nothing rewritten
            continue
        x = np.random.default_rng(0).normal(size=(5, channels, 8, 8)).astype(np.float32)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        outs = [ort.InferenceSession(path, so, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0] for path in (str(fp32), str(pre))]
        np.testing.assert_allclose(outs[1], outs[0], rtol=1e-5, atol=1e-5)
        types = [n.op_type for n in __import__("onnx").load(str(pre)).graph.node]
        assert types[:3] == ["Conv", "MaxPool", "Relu"], types


# --- the real CLI (its entry point, in process: exit code, stdout, stderr) --------------------------


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return cli_in_process("export", *args, cwd=cwd)


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, match: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("Error: ") and match in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


def test_cli_exports_the_latest_run_with_its_defaults(run: Path, int8_results: list[dict]) -> None:
    # cwd holds runs/latest -> the module's run; no --precision: the run's deploy precision (int8)
    proc = cli("--format", "onnx", "--json", cwd=run.parent)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # progress is transient: nothing is left on a non-terminal stderr
    out = json.loads(proc.stdout)
    assert Path(out["run"]).resolve() == run.resolve()
    (record,) = out["artifacts"]
    assert (record["format"], record["precision"], record["passed"]) == ("onnx", "int8", True)
    assert record["bytes"] == next(r for r in int8_results if r["format"] == "onnx")["bytes"]


@pytest.mark.parametrize(
    "case,code,match",
    [
        ("no-run", 7, "no run found"),
        ("corrupted-manifest", 7, "cannot read"),
        ("corrupted-recipe", 7, "recipe.yaml cannot be used"),  # the run is broken, not a recipe the user gave
        ("unknown-format", 2, "unknown format 'tflite'"),
        ("unknown-precision", 2, "unknown precision 'int4'"),
        ("corrupted-weights", 6, "not a valid safetensors file"),
    ],
)
def test_cli_bad_input(run: Path, tmp_path: Path, case: str, code: int, match: str) -> None:
    copy = Path(shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns("artifacts")))
    args = [str(copy), "--format", "onnx", "--precision", "int8"]
    if case == "no-run":
        args = args[1:]  # cwd is an empty directory: no runs/latest
        (tmp_path / "empty").mkdir()
        proc = cli(*args, cwd=tmp_path / "empty")
    else:
        if case == "corrupted-manifest":
            (copy / "manifest.json").write_text('{"kind": "distill", "stud')
        elif case == "corrupted-recipe":
            (copy / "recipe.yaml").write_text("name: [unclosed\n")
        elif case == "unknown-format":
            args[2] = "tflite"
        elif case == "unknown-precision":
            args[4] = "int4"
        elif case == "corrupted-weights":
            weights = copy / "student.safetensors"
            weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        proc = cli(*args, cwd=tmp_path)
    assert_one_line_error(proc, code, match)
    assert proc.stdout == ""
    nothing_left(copy, "onnx-int8")


def test_cli_gate_missed_openvino_int8_over_20kb(run: Path, tmp_path: Path) -> None:
    """The done-when case: OpenVINO's int8 IR carries ~20 kB of XML, so it cannot fit a 20 kB budget;
    that is a gate failure naming the real size, not a crash. (Parity and accuracy-drop gates: the
    library test above; the CLI path is the same.)"""
    copy = Path(shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns("artifacts")))
    manifest = manifest_of(copy)
    manifest["budget_bytes"] = 20_000
    (copy / "manifest.json").write_text(json.dumps(manifest))
    proc = cli(str(copy), "--format", "openvino", "--precision", "int8", "--json", cwd=tmp_path)
    assert_one_line_error(proc, 10, "over the budget of 20,000 B")
    (record,) = json.loads(proc.stdout)["artifacts"]  # every check is reported before the error
    assert record["passed"] is False and record["files"] == [] and record["bytes"] > 20_000
    assert f"artifact is {record['bytes']:,} B" in proc.stderr
    assert len(record["failures"]) == 1 and record["failures"][0] in proc.stderr  # only the budget gate missed
    assert manifest_of(copy)["artifacts"][-1] == record
    nothing_left(copy, "openvino-int8")
