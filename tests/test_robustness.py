"""Robustness (issue 16): recipes that cannot run code without consent, validation before side
effects, data sanity, resume corner cases, a full disk, and concurrent manifest updates.

Every refusal is checked for its exit code, one line on stderr, and that nothing finished changed
(a hash of every file and directory of the run before and after). One tiny digits run (ProKT, one
epoch on 200 samples, pinned student, an fp32 ONNX artifact) is shared; tests that write work on
copies of it. Commands run in process through ``prokt_deploy.cli.main.main`` where a subprocess
is not the point (import time), and in subprocesses for the file-size limit and the races.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import RECIPES, ROOT

from prokt_deploy import apply_overrides, distill, export_run, load_recipe
from prokt_deploy.cli.main import main
from prokt_deploy.data import load_data
from prokt_deploy.errors import DataError
from prokt_deploy.recipe import dump_recipe
from prokt_deploy.rundir.workspace import CHECKPOINT, RunWorkspace, load_checkpoint, partial_path, save_checkpoint

OVERRIDES = {"train.epochs": 1, "data.max_train_samples": 200, "student.arch": "cnn-w8-d1", "budget.size": "40KB"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_recipe(**over):
    return apply_overrides(load_recipe(RECIPES / "digits.yaml"), {**OVERRIDES, **over})


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("recipe") / "tiny.yaml"
    p.write_text(dump_recipe(tiny_recipe()))
    return p


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("robust")
    result = distill(tiny_recipe(), out=root / "run", runs_root=root / "runs")
    (record,) = export_run(result.path, ["onnx"], "fp32")
    assert record["passed"]
    return result.path


def copy_of(run: Path, dest: Path) -> Path:
    return Path(shutil.copytree(run, dest, symlinks=True))


def snapshot(root: Path) -> dict[str, str]:
    """Every file (its sha256) and directory under ``root``, hidden ones included."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def cli(capsys, *argv: str) -> tuple[int, str]:
    """The real CLI entry point in this process: (exit code, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    return info.value.code, capsys.readouterr().err


def one_line(code: int, err: str, expected: int, match: str) -> None:
    assert code == expected, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and match in lines[0], err
    assert "Traceback" not in err


# ------------------------------------------------------------------------------ 1. code only with consent

FACTORY_MODULE = """
import pathlib
pathlib.Path(__file__).with_name("imported.marker").write_text("the recipe's module ran")

def build(num_classes):
    return 42  # not a module: proves the factory was called, cheaply (exit 6)
"""


def test_recipe_code_needs_consent(run, tmp_path, capsys, monkeypatch):
    (tmp_path / "recipe_hook.py").write_text(FACTORY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    marker = tmp_path / "imported.marker"
    recipe = tmp_path / "downloaded.yaml"
    recipe.write_text(
        (RECIPES / "digits.yaml").read_text().replace("  arch: resnet-w16-d1\n", "  arch: resnet-w16-d1\n  factory: recipe_hook:build\n")
    )

    for command in (["plan"], ["distill", "--out", tmp_path / "r1"], ["train-teacher", "--out", tmp_path / "r2"], ["run", "--out", tmp_path / "r3"]):
        code, err = cli(capsys, *command, "--recipe", recipe)
        one_line(code, err, 3, "names code to import and run (teacher.factory 'recipe_hook:build')")
        assert "--trust-recipe-code" in err
    assert not marker.exists() and not list(tmp_path.glob("r*/")) and not list(tmp_path.glob(".r*"))

    code, err = cli(capsys, "recipe", "check", recipe)  # validation still works; it warns
    assert code == 0 and "needs --trust-recipe-code" in err

    code, err = cli(capsys, "plan", "--recipe", recipe, "--trust-recipe-code")  # consent: it is imported and called
    one_line(code, err, 6, "returned int, not a torch.nn.Module")
    assert marker.exists()
    marker.unlink()
    sys.modules.pop("recipe_hook")  # imported again below
    code, err = cli(capsys, "plan", "--recipe", RECIPES / "digits.yaml", "--teacher-factory", "recipe_hook:build")  # the flag is consent
    one_line(code, err, 6, "returned int")
    assert marker.exists()
    marker.unlink()
    sys.modules.pop("recipe_hook")

    # a run (or an unfinished run) received from someone else: its teacher factory is code too
    theirs = copy_of(run, tmp_path / "their-run")
    manifest = json.loads((theirs / "manifest.json").read_text())
    manifest["teacher"]["factory"] = "recipe_hook:build"
    (theirs / "manifest.json").write_text(json.dumps(manifest))
    partial = partial_path(tmp_path / "their-unfinished")
    partial.mkdir()
    (partial / "recipe.yaml").write_text(dump_recipe(load_recipe(recipe)))
    before = snapshot(tmp_path)
    for command in (["bench", theirs], ["bundle", theirs, "--out", tmp_path / "bundle"], ["distill", "--resume", tmp_path / "their-unfinished"]):
        code, err = cli(capsys, *command)
        one_line(code, err, 3, "recipe_hook:build")
    assert snapshot(tmp_path) == before and not marker.exists()


def test_hf_loading_never_runs_code_from_the_directory():
    """transformers would import a model directory's own modeling code with trust_remote_code=True."""
    import inspect

    from prokt_deploy import data
    from prokt_deploy.models import text

    assert "trust_remote_code=False, weights_only=True" in inspect.getsource(text.build_hf)
    assert "trust_remote_code=False" in inspect.getsource(data.load_tokenizer)


# ------------------------------------------------------------------------------ 2. validate before side effects


def test_refused_invocations_leave_the_run_unchanged(run, tmp_path, capsys, recipe_file):
    mine = copy_of(run, tmp_path / "run")
    (tmp_path / "a-file").write_text("not a directory")
    bad_results = tmp_path / "device-results.json"
    bad_results.write_text("{}")
    before = snapshot(mine)
    cases = [
        (["export", mine, "--runtime-device", "XPU"], 2, "device 'XPU' is not available"),
        (["export", mine, "--precision", "int8", "--calibration-samples", "0"], 2, "--calibration-samples"),
        (["export", mine, "--format", "tflite"], 2, "unknown format"),
        (["bench", mine, "--runtime-device", "XPU"], 2, "device 'XPU' is not available"),
        (["bench", mine, "--max-latency-ms", "nan"], 2, "--max-latency-ms must be a finite number"),
        (["bench", mine, "--merge", bad_results], 7, "no report.json"),
        (["bundle", mine, "--out", tmp_path / "a-file"], 7, "already exists"),  # exported the teacher into the run first, before
        (["run", "--recipe", recipe_file, "--out", mine], 7, "already exists"),
        (
            ["run", "--recipe", recipe_file, "--out", tmp_path / "new", "--min-speedup-vs-teacher", "0"],
            2,
            "--min-speedup-vs-teacher must be positive",
        ),
        (["distill", "--recipe", recipe_file, "--out", mine], 7, "already exists"),
        (["distill", "--resume", mine], 7, "already finished"),
        (["train-teacher", "--recipe", recipe_file, "--out", mine], 7, "already exists"),
    ]
    for argv, expected, match in cases:
        code, err = cli(capsys, *argv)
        one_line(code, err, expected, match)
        assert snapshot(mine) == before, argv
    assert not (tmp_path / "new").exists() and not list(tmp_path.glob(".*partial*"))


# ------------------------------------------------------------------------------ 3. data sanity


def _npz(path: Path, x, y) -> Path:
    np.savez(path, x=x, y=y)
    return path


def _images(root: Path, specs: dict[str, list[tuple[int, int, str]]]) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, images in specs.items():
        (root / cls).mkdir(parents=True)
        for i, (h, w, mode) in enumerate(images):
            shape = (h, w) if mode == "L" else (h, w, 3)
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(root / cls / f"{i}.png")
    return root


@pytest.mark.parametrize(
    "case,match",
    [
        ("one-class", "found a single class ('0')"),
        ("label-gap", "class '1' has no samples"),
        ("missing-from-validation", "has no samples in the validation split"),
        ("nan", "NaN or inf"),
        ("images-mixed-sizes", "images of different sizes"),
        ("images-mixed-channels", "images of different channels"),
        ("text-one-class", "a single class"),
    ],
)
def test_data_sanity(tmp_path, case, match):
    rng = np.random.default_rng(0)
    x = rng.random((60, 4, 4)).astype(np.float32)
    if case == "one-class":
        source, path = "npz", _npz(tmp_path / "d.npz", x, np.zeros(60, int))
    elif case == "label-gap":
        source, path = "npz", _npz(tmp_path / "d.npz", x, np.repeat([0, 2], 30))
    elif case == "missing-from-validation":  # class 2 has two samples: at most two of the three splits see it
        source, path = "npz", _npz(tmp_path / "d.npz", x, np.r_[np.repeat([0, 1], 29), [2, 2]])
    elif case == "nan":
        x[3, 1, 1] = np.inf
        source, path = "npz", _npz(tmp_path / "d.npz", x, np.repeat([0, 1], 30))
    elif case == "images-mixed-sizes":
        source, path = "image-folder", _images(tmp_path / "img", {"a": [(8, 8, "L")] * 30, "b": [(8, 8, "L")] * 29 + [(12, 8, "L")]})
    elif case == "images-mixed-channels":
        source, path = "image-folder", _images(tmp_path / "img", {"a": [(8, 8, "L")] * 30, "b": [(8, 8, "RGB")] * 30})
    else:
        source, path = "text-file", tmp_path / "t.csv"
        path.write_text("text,label\n" + "".join(f"sample {i},positive\n" for i in range(20)))
    text = {"tokenizer": "all-minilm-l6-v2", "max_length": 8} if source == "text-file" else None
    with pytest.raises(DataError, match=match.replace("(", r"\(").replace(")", r"\)")):
        load_data(source, path=path, seed=0, text=text)
    if source == "image-folder":  # what the message offers works
        fixed = load_data(source, path=path, seed=0, image_size=(8, 8), channels=1)
        assert fixed.input_shape == (1, 8, 8)


def test_data_sanity_cli(tmp_path, capsys):
    recipe = tmp_path / "n.yaml"
    recipe.write_text("data: {source: npz}\n")
    data = _npz(tmp_path / "d.npz", np.zeros((40, 4, 4), np.float32), np.zeros(40, int))
    code, err = cli(capsys, "distill", "--recipe", recipe, "--data-dir", data, "--out", tmp_path / "run")
    one_line(code, err, 4, "a classifier needs at least 2")
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".*partial*"))


# ------------------------------------------------------------------------------ 4. resume corner cases


class Crash:
    """A progress sink that fails at a given step, like a machine dying."""

    def __init__(self, at: int) -> None:
        self.n, self.at = 0, at

    def start(self, phase, total_steps, completed=0):
        pass

    def step(self, metrics):
        self.n += 1
        if self.n == self.at:
            raise RuntimeError("power cut")

    def epoch(self, record):
        pass

    def stop(self):
        pass


def _weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "student.safetensors"))


def test_resume_of_a_run_killed_before_its_first_checkpoint(run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the CLI's runs/latest link goes under tmp_path, not into the checkout
    out = tmp_path / "killed"
    with monkeypatch.context() as m:  # kill -9 during the first epoch: nothing is cleaned up
        m.setattr(RunWorkspace, "abandon", lambda self: self._unlock() or True)
        with pytest.raises(RuntimeError, match="power cut"):
            distill(tiny_recipe(), out=out, runs_root=tmp_path / "runs", progress=Crash(2))
    partial = partial_path(out)
    assert (partial / "recipe.yaml").is_file() and not (partial / CHECKPOINT).exists()

    code, err = cli(capsys, "distill", "--recipe", RECIPES / "digits.yaml", "--out", out)  # not silently restarted
    one_line(code, err, 7, f"resume it with --resume {out}")
    before = snapshot(partial)
    code, err = cli(capsys, "distill", "--resume", out, "--epochs", "3")  # a different --epochs is refused, nothing changes
    one_line(code, err, 2, "--epochs cannot change it (the run trains 1 epochs")
    assert snapshot(partial) == before

    code, err = cli(capsys, "distill", "--resume", out, "--json")  # restarts from step 0 with the saved recipe
    assert code == 0, err
    assert out.is_dir() and not partial.exists()
    ref = _weights(run)  # the shared run is the same recipe and seed, uninterrupted
    assert all(torch.equal(v, ref[k]) for k, v in _weights(out).items())

    empty = partial_path(tmp_path / "empty")
    empty.mkdir()  # killed before even the recipe was written
    code, err = cli(capsys, "distill", "--resume", tmp_path / "empty")
    one_line(code, err, 7, "stopped before it saved its recipe or a checkpoint; nothing to resume: delete it")


def test_checkpoint_write_cut_short_keeps_the_previous_one_and_copied_runs_resume(tmp_path, monkeypatch):
    recipe = tiny_recipe(**{"train.epochs": 2})
    out = tmp_path / "a" / "run"
    with pytest.raises(RuntimeError, match="power cut"):
        distill(recipe, out=out, runs_root=tmp_path / "runs", progress=Crash(6))  # 4 steps per epoch: mid second epoch
    ckpt = partial_path(out) / CHECKPOINT
    good = ckpt.read_bytes()
    state = load_checkpoint(ckpt)

    class Killed(BaseException):
        pass

    def dies_mid_write(fd, data):  # the process dies after writing part of the new checkpoint
        os.write(fd, bytes(data[: len(data) // 2]))
        raise Killed

    import prokt_deploy.rundir.workspace as runs

    with monkeypatch.context() as m:
        m.setattr(
            runs.os,
            "fdopen",
            lambda fd, mode: type(
                "F", (), {"__enter__": lambda s: s, "__exit__": lambda s, *a: False, "write": lambda s, d: dies_mid_write(fd, d)}
            )(),
        )
        with pytest.raises(Killed):
            save_checkpoint(ckpt, {**state, "timings": {"changed": 1.0}})
    assert ckpt.read_bytes() == good  # the previous checkpoint is whole and loads
    (ckpt.parent / ".checkpoint.pt.x1y2.tmp").write_bytes(good[:100])  # what a real kill -9 leaves beside it

    # copied to another machine (another path), the original gone: it resumes there
    moved = tmp_path / "elsewhere" / "run"
    moved.parent.mkdir()
    shutil.copytree(partial_path(out), partial_path(moved))
    shutil.rmtree(tmp_path / "a")
    resumed = distill(None, resume=moved, runs_root=tmp_path / "runs")
    assert resumed.path == moved and not list(moved.glob(".*.tmp")) and not (moved / CHECKPOINT).exists()
    ref = distill(recipe, out=tmp_path / "ref", runs_root=tmp_path / "runs")
    assert all(torch.equal(v, _weights(ref.path)[k]) for k, v in _weights(moved).items())

    # paths inside a run are relative to it: a finished run copied elsewhere exports there
    again = Path(shutil.copytree(moved, tmp_path / "third" / "run"))
    shutil.rmtree(tmp_path / "elsewhere")
    (record,) = export_run(again, ["onnx"], "fp32")
    assert record["passed"] and record["files"] == ["artifacts/onnx-fp32/model.onnx"]
    for name in ("manifest.json", "recipe.yaml"):
        text = (again / name).read_text()
        assert str(tmp_path / "a") not in text and str(tmp_path / "elsewhere") not in text, name


# ------------------------------------------------------------------------------ 5. disk full

DISK_FULL = """
import json, sys
from prokt_deploy.cli.main import main
codes = []
for argv in json.loads(sys.argv[1]):
    sys.stderr.write("=== next\\n"); sys.stderr.flush()
    try:
        main(argv)
    except SystemExit as e:
        codes.append(e.code)
print(json.dumps(codes))
"""


def test_disk_full_is_exit_13_and_leaves_nothing_half_written(run, tmp_path, recipe_file):
    """A 16 KiB file-size limit (``ulimit -f``; Python ignores SIGXFSZ, so writes fail with EFBIG):
    every checkpoint and every artifact of the tiny run is larger. The size cache is warm (the shared
    run planned the same recipe), so the first large write of distill is its checkpoint."""
    mine = copy_of(run, tmp_path / "run")
    shutil.rmtree(mine / "artifacts")
    manifest = json.loads((mine / "manifest.json").read_text())
    manifest["artifacts"] = []
    (mine / "manifest.json").write_text(json.dumps(manifest, indent=2))
    before = snapshot(mine)
    commands = [
        ["distill", "--recipe", str(recipe_file), "--out", str(tmp_path / "new")],
        ["export", str(mine), "--format", "onnx", "--precision", "fp32"],
    ]
    proc = subprocess.run(
        ["bash", "-c", f'ulimit -f 16 && exec "{sys.executable}" -c "$0" "$1"', DISK_FULL, json.dumps(commands)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    codes = json.loads(proc.stdout.strip().splitlines()[-1])
    outputs = [s.strip() for s in proc.stderr.split("=== next\n")[1:]]
    assert codes == [13, 13], proc.stderr
    for err in outputs:
        errors = [line for line in err.splitlines() if line.startswith("Error: ")]
        assert errors and errors[-1].startswith("Error: file system error: File too large"), err
        assert "Traceback" not in err and "internal error" not in err
    assert CHECKPOINT in outputs[0]  # it failed where intended, on the checkpoint
    assert not (tmp_path / "new").exists() and not list(tmp_path.glob(".new*"))  # no checkpoint yet: the partial run is removed
    assert snapshot(mine) == before  # no artifact directory, no staging, no manifest entry


# ------------------------------------------------------------------------------ 6. no lost manifest updates

RACER = """
import sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from prokt_deploy.deploy.export import export_run
run, fmt, sync, rounds = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
(sync / f"ready-{fmt}").touch()
for i in range(rounds):
    while not (sync / f"go-{i}").exists():
        time.sleep(0.01)
    export_run(run, [fmt], "fp32")
    (sync / f"done-{i}-{fmt}").touch()
"""


def test_concurrent_exports_are_both_recorded(run, tmp_path):
    """Two processes export one run at the same moment, round after round; both artifacts must be
    in the manifest after every round (before the lock, the later writer dropped the other's)."""
    mine = copy_of(run, tmp_path / "run")
    sync = tmp_path / "sync"
    sync.mkdir()
    rounds = 2
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-c", RACER, str(mine), fmt, str(sync), str(rounds)], env=env, stderr=subprocess.PIPE, text=True)
        for fmt in ("onnx", "openvino")
    ]
    try:
        for i in range(rounds):
            manifest = json.loads((mine / "manifest.json").read_text())
            manifest["artifacts"] = []  # a fresh start for the round (nobody is writing now)
            (mine / "manifest.json").write_text(json.dumps(manifest, indent=2))
            deadline = time.monotonic() + 300
            while not (all((sync / f"ready-{f}").exists() for f in ("onnx", "openvino"))) and time.monotonic() < deadline:
                assert all(p.poll() is None for p in procs), [p.communicate()[1] for p in procs]
                time.sleep(0.05)
            (sync / f"go-{i}").touch()
            while not all((sync / f"done-{i}-{f}").exists() for f in ("onnx", "openvino")):
                assert all(p.poll() in (None, 0) for p in procs), [p.communicate()[1] for p in procs]
                assert time.monotonic() < deadline, "exports did not finish"
                time.sleep(0.05)
            recorded = {(a["format"], a["precision"], a["passed"]) for a in json.loads((mine / "manifest.json").read_text())["artifacts"]}
            assert recorded == {("onnx", "fp32", True), ("openvino", "fp32", True)}, f"round {i}: {recorded}"
    finally:
        for p in procs:
            p.wait(timeout=120)
    assert [p.returncode for p in procs] == [0, 0]
    assert not [p.name for p in (mine / "artifacts").iterdir() if p.name.startswith(".")]


def test_disk_full_after_a_checkpoint_keeps_the_run_resumable(tmp_path, monkeypatch):
    """The disk fills up when the weights are written at the end: the last checkpoint is kept and
    named in the error, nothing finished-looking is left, and --resume completes once there is room."""
    import errno

    import prokt_deploy.train.distill as api

    out = tmp_path / "run"
    with monkeypatch.context() as m:

        def full(model, path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

        m.setattr(api, "save_weights", full)
        with pytest.raises(OSError, match="No space left on device; the last checkpoint is kept") as info:
            distill(tiny_recipe(), out=out, runs_root=tmp_path / "runs")
    assert info.value.errno == errno.ENOSPC and f"--resume {out}" in str(info.value)
    assert not out.exists() and (partial_path(out) / CHECKPOINT).is_file()
    assert not (partial_path(out) / "manifest.json").exists() and not (partial_path(out) / "student.safetensors").exists()
    resumed = distill(None, resume=out, runs_root=tmp_path / "runs")
    assert resumed.path == out and (out / "student.safetensors").is_file()
