"""Several student families in one plan, and on-device planning: `plan --bundle DIR` writes every fitting
candidate's untrained artifact and the teacher's with the torch-free bench script; the device's
results file then drives `plan --latencies` and `distill --latencies`. Real exports, real runtimes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import RECIPES, cli_in_process
from test_cli import cli

from prokt_deploy.data import load_recipe_data
from prokt_deploy.deploy.bundle import write_plan_bundle
from prokt_deploy.errors import BenchError, ModelError
from prokt_deploy.harness.measure import RESULTS_KIND, RESULTS_SCHEMA_VERSION
from prokt_deploy.models import create_model, student_families
from prokt_deploy.planner import SizeCache, plan_student, read_device_latencies
from prokt_deploy.planner import capacity as _capacity
from prokt_deploy.recipe import load_recipe

DIGITS = str(RECIPES / "digits.yaml")
BIG, SMALL = "cnn-w24-d1", "wide-w8-d2"  # ~52k vs ~1.4k parameters, two families


def test_student_families_resolve_lists_and_auto() -> None:
    assert student_families("auto", "image") == ["cnn", "mobile", "pool", "resnet", "wide"]
    assert set(student_families("auto", "text")) == {"bilstm", "tfm"}
    assert student_families(["wide", "resnet", "wide"], "image") == ["wide", "resnet"]
    for bad, match in (
        (["tfm"], "text family but the data is image"),
        ("vgg", "not a student family"),
        ([], "empty list"),
        (["auto", "cnn"], "stands alone"),
        ("nope", "unknown model family"),
    ):
        with pytest.raises(ModelError, match=match):
            student_families(bad, "image")


def test_several_families_form_one_pool_ranked_by_capacity(tmp_path: Path) -> None:
    teacher = create_model("resnet-w24-d1", num_classes=10, in_channels=1)
    p = plan_student(
        30_000,
        family=["cnn", "wide"],
        input_shape=(1, 28, 28),
        num_classes=10,
        teacher=teacher,
        teacher_arch="resnet-w24-d1",
        formats=["onnx"],
        cache=SizeCache(tmp_path / "sizes.json"),
    )
    archs = [c.arch for c in p.candidates]
    assert {a.split("-")[0] for a in archs} == {"cnn", "wide"} and p.families == ["cnn", "wide"]
    keys = [(_capacity(create_model(a, num_classes=10, in_channels=1)), c.macs) for a, c in zip(archs, p.candidates)]
    assert keys == sorted(keys, reverse=True)  # the documented rule: capacity (parameters), then MACs
    assert p.chosen.fits and p.chosen.estimated_bytes <= 30_000
    assert all(not c.fits for c in p.candidates[: p.candidates.index(p.chosen)])  # nothing more capable fits


@pytest.fixture(scope="module")
def measured_bundle(tmp_path_factory) -> tuple[Path, dict]:
    """A plan bundle of two candidates on digits (ONNX: OpenVINO's int8 calibration would triple the time), measured
    by its own bench_bundle.py."""
    tmp = tmp_path_factory.mktemp("plan-bundle")
    data = load_recipe_data(load_recipe(DIGITS))
    teacher = create_model("resnet-w16-d1", num_classes=10, in_channels=1)
    out = tmp / "bundle"

    def writer(models: dict, kept) -> None:
        write_plan_bundle(
            out,
            models,
            kept,
            formats=["onnx"],
            example=data.example(2),
            data=data,
            recipe_name="digits",
            recipe_path=DIGITS,
            budget="100KB",
            samples=16,
        )

    kwargs = dict(
        family="cnn",
        input_shape=data.input_shape,
        num_classes=10,
        teacher=teacher,
        teacher_arch="resnet-w16-d1",
        formats=["onnx"],
        candidates=[BIG, SMALL],
        cache=SizeCache(tmp / "sizes.json"),
    )
    p = plan_student(100_000, **kwargs, bundle=writer)
    assert all(c.latency_ms is None for c in p.candidates)  # a bundle is written, nothing is timed here
    proc = subprocess.run(
        [sys.executable, "bench_bundle.py", "--runs", "20", "--warmup", "5", "--repeats", "1"], cwd=out, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    return out, kwargs


def test_plan_bundle_writes_one_loadable_artifact_per_candidate_and_teacher(measured_bundle) -> None:
    import onnxruntime as ort

    out, _ = measured_bundle
    spec = json.loads((out / "bundle.json").read_text())
    assert spec["kind"] == "plan-bundle" and spec["run"].startswith("plan:")
    ids = sorted(a["id"] for a in spec["artifacts"])
    assert ids == sorted(f"{m}/onnx/{p}" for m, p in ((BIG, "int8"), (SMALL, "int8"), ("teacher", "fp32"), ("teacher", "int8")))
    for art in spec["artifacts"]:
        (main,) = [out / f for f in art["files"] if f.endswith(".onnx")]
        session = ort.InferenceSession(str(main), providers=["CPUExecutionProvider"])
        assert session.get_outputs()[0].shape[-1] == 10
    assert not (out / "torch").exists() and (out / "bench_bundle.py").is_file()


def test_device_latencies_drive_the_plan(measured_bundle, tmp_path: Path) -> None:
    out, kwargs = measured_bundle
    results = out / "device-results.json"
    device = read_device_latencies(results)
    p = plan_student(100_000, **kwargs, device_latencies=device)
    rows = {r["id"]: r["latency_ms"]["p50"] for r in json.loads(results.read_text())["rows"]}
    assert {c.arch: c.latency_ms for c in p.candidates} == {BIG: round(rows[f"{BIG}/onnx/int8"], 6), SMALL: round(rows[f"{SMALL}/onnx/int8"], 6)}
    assert p.teacher_latency_ms == {"fp32": round(rows["teacher/onnx/fp32"], 6), "int8": round(rows["teacher/onnx/int8"], 6)}
    assert p.latency_source.startswith("device results") and "on the device of" in p.note
    with pytest.raises(BenchError, match=f"no openvino int8 latency for {BIG}"):  # the bundle holds ONNX files only
        plan_student(100_000, **kwargs, device_latencies=device, target="openvino")

    data = json.loads(results.read_text())
    data["rows"] = [r for r in data["rows"] if r["model"] != SMALL]
    (tmp_path / "partial.json").write_text(json.dumps(data))
    with pytest.raises(BenchError, match=f"no onnx int8 latency for {SMALL}"):
        plan_student(100_000, **kwargs, device_latencies=read_device_latencies(tmp_path / "partial.json"))
    data["run"] = "20261202-digits-prokt"  # a run bundle's results, not a plan's
    (tmp_path / "run.json").write_text(json.dumps(data))
    with pytest.raises(BenchError, match="not of a plan's"):
        read_device_latencies(tmp_path / "run.json")


def _device_file(path: Path, p50: dict[str, float]) -> Path:
    """A device result file as bench_bundle.py writes it, with chosen latencies (model -> ms, onnx int8)."""
    rows = [
        {
            "id": f"{m}/onnx/{prec}",
            "model": m,
            "format": "onnx",
            "precision": prec,
            "test_accuracy": 0.1,
            "latency_ms": {"p50": ms},
            "batch_latency_ms": {"p50": ms},
        }
        for (m, prec), ms in p50.items()
    ]
    path.write_text(
        json.dumps(
            {
                "schema_version": RESULTS_SCHEMA_VERSION,
                "kind": RESULTS_KIND,
                "run": "plan:digits@11KB",
                "fingerprint": {"id": "board-1", "cpu": {"model": "Test Board"}},
                "rows": rows,
            }
        )
    )
    return path


def test_distill_plans_from_device_latencies(tmp_path: Path) -> None:
    # at 11 KB only wide-w12-d2 (~10.2 kB) and wide-w8-d2 (~8.4 kB) fit; the device says the more capable
    # one is slower than the teacher, so distill must take the other and keep the file for --resume
    device = _device_file(
        tmp_path / "device.json", {("wide-w12-d2", "int8"): 1.0, ("wide-w8-d2", "int8"): 0.01, ("teacher", "fp32"): 0.05, ("teacher", "int8"): 0.04}
    )
    base = ["--recipe", DIGITS, "--family", "wide", "--budget", "11KB"]
    proc = cli_in_process("plan", *base, "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["chosen"]["arch"] == "wide-w12-d2"  # by size alone
    # a subprocess: the terminal width comes from its environment (the console reads COLUMNS when it is made)
    table = cli("plan", *base, "--latencies", str(device), cwd=tmp_path, env={"COLUMNS": "80"}).stdout
    rows = table.split("\nteacher ")[0].splitlines()
    assert "…" not in table and max(map(len, rows)) <= 80, table  # nothing cut in an 80-column terminal
    (chosen,) = [line.split() for line in table.splitlines() if line.strip().startswith("->")]
    assert chosen[1] == "wide-w8-d2" and chosen[-2:] == ["0.0100", "yes"] and "Test Board" in table
    proc = cli_in_process(
        "distill",
        *base,
        "--latencies",
        str(device),
        "--epochs",
        "1",
        "--max-train-samples",
        "128",
        "--out",
        str(tmp_path / "run"),
        "--json",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["student"]["arch"] == "wide-w8-d2"
    assert manifest["plan"]["latency_ms"] == 0.01 and "Test Board" in manifest["plan"]["latency_source"]
    assert json.loads((tmp_path / "run" / "plan-latencies.json").read_text())["run"] == "plan:digits@11KB"


def _in_process(capsys, *argv: str) -> tuple[int, str]:
    """The real CLI entry point in this process (no interpreter start-up): (exit code, stderr)."""
    from prokt_deploy.cli.main import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    return info.value.code, capsys.readouterr().err


def _one_line(result: tuple[int, str], code: int, match: str) -> None:
    got, err = result
    lines = err.strip().splitlines()
    assert got == code and len(lines) == 1 and lines[0].startswith("Error: ") and match in lines[0], err


def test_bad_latencies_file_is_one_line_exit_12(tmp_path: Path, capsys) -> None:
    path = tmp_path / "device.json"
    _one_line(_in_process(capsys, "plan", "--recipe", DIGITS, "--latencies", path), 12, "cannot read device results")  # missing
    for content, match in (("not json", "cannot read device results"), ("{}", "is not a device result file")):
        path.write_text(content)
        _one_line(_in_process(capsys, "plan", "--recipe", DIGITS, "--latencies", path), 12, match)
    # distill reads the file the same way, before anything is written
    _one_line(_in_process(capsys, "distill", "--recipe", DIGITS, "--latencies", path, "--out", tmp_path / "run"), 12, "is not a device result file")
    assert not (tmp_path / "run").exists()


def test_plan_bundle_refusals(tmp_path: Path, capsys) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    code, err = _in_process(capsys, "plan", "--recipe", DIGITS, "--bundle", busy)
    assert code != 0 and "Traceback" not in err and sorted(p.name for p in busy.iterdir()) == ["keep.txt"]
    assert (busy / "keep.txt").read_text() == "mine"
    _one_line(_in_process(capsys, "plan", "--recipe", DIGITS, "--bundle", tmp_path / "b", "--latencies", "x.json"), 2, "one at a time")
    _one_line(_in_process(capsys, "plan", "--recipe", DIGITS, "--bundle", tmp_path / "b", "--student", "wide-w8-d2"), 2, "drop --student")
    _one_line(_in_process(capsys, "plan", "--recipe", DIGITS, "--family", "vgg"), 3, "not a student family")
    assert not (tmp_path / "b").exists()
