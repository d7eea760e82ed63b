"""Checkpoints and resume: a run stopped mid-way and resumed ends with the same weights."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from conftest import RECIPES
from safetensors.torch import load_file

from prokt_deploy import apply_overrides, distill, load_recipe
from prokt_deploy.errors import InterruptedRun, RunError, TrainingError
from prokt_deploy.rundir.workspace import CHECKPOINT, partial_path


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: 2 threads are slower and less reproducible under load
    yield
    torch.set_num_threads(before)


def recipe(method: str = "prokt", **over):
    r = load_recipe(RECIPES / "digits.yaml")
    return apply_overrides(r, {"method": method, "train.epochs": 3, "data.max_train_samples": 400, "teacher.epochs": 2, **over})


class CrashAt:
    """A progress sink that fails at a given global step, like a machine dying mid-epoch."""

    def __init__(self, step: int, exc: BaseException) -> None:
        self.n, self.at, self.exc = 0, step, exc

    def start(self, phase, total_steps, completed=0):
        pass

    def step(self, metrics):
        self.n += 1
        if self.n == self.at:
            raise self.exc

    def epoch(self, record):
        pass

    def stop(self):
        pass


class CtrlCAt(CrashAt):
    """Sends a real SIGINT to this process at a given step (the engine saves at the next step)."""

    def step(self, metrics):
        self.n += 1
        if self.n == self.at:
            os.kill(os.getpid(), signal.SIGINT)


def weights(run):
    return load_file(str(run / "student.safetensors"))


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize(
    "method,init,crash_step",
    [
        ("prokt", "scratch", 10),  # 7 steps per epoch (400 samples, batch 64): mid second epoch
        ("kd", "scratch", 7 * 2 + 10),  # after the 2 teacher epochs, mid second KD epoch
        ("prokt", "pretrain", 7 * 2 + 3),  # mid first ProKT epoch: the last checkpoint is the pretrained teacher's
    ],
)
def test_resume_after_crash_equals_uninterrupted(tmp_path, method, init, crash_step):
    ref = distill(recipe(method, **{"teacher.init": init}), out=tmp_path / "ref", runs_root=tmp_path / "runs")
    out = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="power cut"):
        distill(
            recipe(method, **{"teacher.init": init}), out=out, runs_root=tmp_path / "runs", progress=CrashAt(crash_step, RuntimeError("power cut"))
        )
    assert not out.exists() and (partial_path(out) / CHECKPOINT).is_file()
    resumed = distill(None, resume=out, runs_root=tmp_path / "runs")
    assert resumed.path == out and out.is_dir() and not partial_path(out).exists()
    assert_same(weights(ref.path), weights(out))
    assert resumed.manifest["metrics"]["student_test_accuracy"] == ref.manifest["metrics"]["student_test_accuracy"]
    assert len(resumed.manifest["metrics"]["history"]["student"]) == 3


def test_ctrl_c_saves_mid_epoch_and_resume_matches(tmp_path):
    ref = distill(recipe(), out=tmp_path / "ref", runs_root=tmp_path / "runs")
    out = tmp_path / "stopped"
    with pytest.raises(InterruptedRun, match="--resume"):
        distill(recipe(), out=out, runs_root=tmp_path / "runs", progress=CtrlCAt(4, KeyboardInterrupt()))
    state = torch.load(partial_path(out) / CHECKPOINT, weights_only=True)
    assert state["current"]["epoch"] == 0 and state["current"]["step"] == 4  # 4 steps done: saved at the next step boundary
    resumed = distill(None, resume=out, runs_root=tmp_path / "runs")
    assert_same(weights(ref.path), weights(resumed.path))


def test_same_seed_same_weights(tmp_path):
    a = distill(recipe(), out=tmp_path / "a", runs_root=tmp_path / "runs")
    b = distill(recipe(), out=tmp_path / "b", runs_root=tmp_path / "runs")
    assert_same(weights(a.path), weights(b.path))
    c = distill(recipe(seed=1), out=tmp_path / "c", runs_root=tmp_path / "runs")
    assert not torch.equal(weights(a.path)["head.weight"], weights(c.path)["head.weight"])


class PoisonAfterFirstEpoch(CrashAt):
    """Writes NaN into the student's weights once the first epoch is checkpointed."""

    def __init__(self, model_holder):
        super().__init__(-1, RuntimeError())
        self.models = model_holder

    def epoch(self, record):
        with torch.no_grad():
            for p in self.models[0].parameters():
                p.fill_(float("nan"))


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    import prokt_deploy.train.distill as api

    holder = []
    original = api._student_method
    monkeypatch.setattr(api, "_student_method", lambda r, s, t, d: holder.append(s) or original(r, s, t, d))
    out = tmp_path / "nan"
    with pytest.raises(TrainingError, match="last good checkpoint is kept"):
        distill(recipe("scratch"), out=out, runs_root=tmp_path / "runs", progress=PoisonAfterFirstEpoch(holder))
    assert not out.exists()
    state = torch.load(partial_path(out) / CHECKPOINT, weights_only=True)
    assert state["current"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["current"]["method"]["student"].values() if v.is_floating_point())


def test_unfinished_run_is_not_silently_restarted(tmp_path):
    out = tmp_path / "x"
    with pytest.raises(RuntimeError):
        distill(recipe(), out=out, runs_root=tmp_path / "runs", progress=CrashAt(10, RuntimeError("boom")))
    with pytest.raises(RunError, match="resume it with --resume"):
        distill(recipe(), out=out, runs_root=tmp_path / "runs")
    with pytest.raises(RunError, match="no unfinished run"):
        distill(None, resume=tmp_path / "nothing-here", runs_root=tmp_path / "runs")


def _quality_script():
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("quality_bench", ROOT / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quality_grid_cell_continues_from_its_checkpoint(tmp_path):
    """benchmarks/quality.py --work-dir: a grid cell cut off mid-run continues from its last checkpoint (same result as
    an uninterrupted run); one left with other settings is set aside, not mixed in; a finished one is read back."""
    quality = _quality_script()
    runs = tmp_path / "runs"
    ref = distill(recipe("kd"), out=tmp_path / "ref", runs_root=runs)
    cell = tmp_path / "work" / "kd-20KB-seed0-grid"
    with pytest.raises(RuntimeError, match="power cut"):
        distill(recipe("kd"), out=cell, runs_root=runs, progress=CrashAt(7 * 2 + 10, RuntimeError("power cut")))
    manifest, resumed_at = quality.run_cell(recipe("kd"), cell, runs)
    assert resumed_at == 1  # 2 teacher epochs, then the KD phase's first epoch was checkpointed before the cut
    assert manifest["metrics"]["student_test_accuracy"] == ref.manifest["metrics"]["student_test_accuracy"]
    assert_same(weights(ref.path), weights(cell))
    assert quality.run_cell(recipe("kd"), cell, runs) == (manifest, 3)  # finished, not yet recorded: read back, not retrained

    other = tmp_path / "work" / "kd-20KB-seed1-grid"
    with pytest.raises(RuntimeError, match="power cut"):
        distill(recipe("kd"), out=other, runs_root=runs, progress=CrashAt(7 * 2 + 10, RuntimeError("power cut")))
    manifest, resumed_at = quality.run_cell(recipe("kd", seed=1), other, runs)  # other settings than the partial run's
    assert resumed_at is None and manifest["seed"] == 1 and len(manifest["metrics"]["history"]["student"]) == 3  # a fresh run
    assert (tmp_path / "work" / ".kd-20KB-seed1-grid.partial.stale-0" / CHECKPOINT).is_file()  # kept aside, untouched

    import fcntl

    busy = tmp_path / "work" / "kd-20KB-seed2-grid"
    with pytest.raises(RuntimeError, match="power cut"):
        distill(recipe("kd", seed=2), out=busy, runs_root=runs, progress=CrashAt(7 * 2 + 10, RuntimeError("power cut")))
    with open(partial_path(busy) / ".lock") as held:  # another invocation is writing this cell: neither joined nor set aside
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(SystemExit, match="another process is running the cell"):
            quality.run_cell(recipe("kd"), busy, runs)
    assert partial_path(busy).is_dir()


def _pipeline(out, **kw):
    from prokt_deploy import pipeline

    r = recipe("prokt", **{"student.arch": "cnn-w8-d1", "budget.size": "64KB", "train.epochs": 2})
    return pipeline.run(r, out=out, compare="scratch", runs=20, warmup=3, repeats=2, batch=8, **kw)


def _artifacts(run):
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted((run / "artifacts").rglob("*")) if p.is_file()}


def test_run_resume_finishes_a_run_killed_in_training_or_in_bench(tmp_path, monkeypatch):
    """`run --resume RUN` continues whatever stage was stopped (training, a baseline, export, bench) with the recipe and
    the request the run was started with, and ends with what an uninterrupted run makes: the same weights, the same
    baseline, byte-identical ONNX artifacts and a report."""
    from prokt_deploy import pipeline

    monkeypatch.chdir(tmp_path)  # runs/latest
    ref = _pipeline(tmp_path / "ref")
    out = tmp_path / "killed"
    with pytest.raises(InterruptedRun, match=f"interrupted in distill; .*'prokt-deploy run --resume {out}'"):
        _pipeline(out, training_progress=CtrlCAt(4, KeyboardInterrupt()))
    assert (partial_path(out) / "run-request.json").is_file() and not out.exists()
    resumed = pipeline.run(resume=out)
    assert_same(weights(ref.path), weights(resumed.path))
    assert_same(
        load_file(str(ref.path / "compare" / "scratch" / "student.safetensors")), load_file(str(out / "compare" / "scratch" / "student.safetensors"))
    )
    onnx = {k: v for k, v in _artifacts(ref.path).items() if k.endswith(".onnx")}
    assert onnx and onnx == {k: v for k, v in _artifacts(out).items() if k.endswith(".onnx")}
    assert set(_artifacts(ref.path)) == set(_artifacts(out))
    assert [r.id for r in resumed.report.rows] == [r.id for r in ref.report.rows]
    assert resumed.report.settings["runs"] == 20 and resumed.report.compare["rows"][1]["method"] == "scratch"  # the saved request

    # killed in bench: training, the baseline and the export are kept; the bench and the report are made again
    killed = tmp_path / "killed-in-bench"

    def stop(text):
        raise KeyboardInterrupt

    with pytest.raises(InterruptedRun, match="interrupted in bench"):
        _pipeline(killed, bench_progress=stop)
    assert (killed / "manifest.json").is_file() and not (killed / "report.json").exists()
    before = (killed / "student.safetensors").stat().st_mtime_ns
    done = pipeline.run(resume=killed)
    assert (killed / "report.json").is_file() and (killed / "student.safetensors").stat().st_mtime_ns == before  # not retrained
    assert [r.id for r in done.report.rows] == [r.id for r in ref.report.rows]
    with pytest.raises(RunError, match="no unfinished run"):
        pipeline.run(resume=tmp_path / "nothing-here")
    with pytest.raises(RunError, match="already finished"):  # a whole run is not made again
        pipeline.run(resume=killed)

    # killed in export, after the ONNX file was exported and recorded: resume exports only what is missing
    in_export = tmp_path / "killed-in-export"

    class StopAfterOnnx:
        def stage(self, name):
            pass

        def status(self, text):
            if text.startswith("onnx int8:") and text.endswith("passed"):  # recorded, before openvino
                raise KeyboardInterrupt

    with pytest.raises(InterruptedRun, match="interrupted in export"):
        _pipeline(in_export, progress=StopAfterOnnx())
    onnx_file = in_export / "artifacts" / "onnx-int8" / "model.onnx"
    stamp = onnx_file.stat().st_mtime_ns
    done = pipeline.run(resume=in_export)
    assert onnx_file.stat().st_mtime_ns == stamp and (in_export / "artifacts" / "openvino-int8").is_dir()
    assert [r.id for r in done.report.rows] == [r.id for r in ref.report.rows]
