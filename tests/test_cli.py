"""The real CLI: its entry point, end to end on digits and --debug's traceback in a subprocess; plan, recipe check
and bad input through the same entry point in process (conftest.cli_in_process: exit code, stdout, stderr)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import RECIPES, cli_in_process

DIGITS = str(RECIPES / "digits.yaml")


def cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "prokt_deploy", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, match: str) -> None:
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("Error: ") and match in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


def nothing_left(tmp_path: Path, out: Path) -> None:
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.partial-*"))


def test_version_and_help(tmp_path):
    proc = cli("--version", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("prokt-deploy ")
    for command in (["distill"], ["plan"], ["train-teacher"], ["recipe", "check"]):
        proc = cli(*command, "--help", cwd=tmp_path)
        assert proc.returncode == 0 and "Usage" in proc.stdout, command


def test_distill_end_to_end_on_digits(tmp_path):
    out = tmp_path / "run"
    proc = cli("distill", "--recipe", DIGITS, "--budget", "20KB", "--epochs", "1", "--out", str(out), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    manifest = json.loads((out / "manifest.json").read_text())
    assert summary["run"] == str(out)
    assert manifest["budget_bytes"] == 20_000
    assert 0 < manifest["student"]["estimated_bytes"] <= manifest["budget_bytes"]
    assert manifest["method"] == "prokt" and manifest["seed"] == 0
    assert manifest["student"]["params"] < manifest["teacher"]["params"]
    for key in ("shape", "dtype", "mean", "std", "scale"):
        assert key in manifest["input"]
    assert len(manifest["classes"]) == 10
    assert 0.0 <= manifest["metrics"]["student_test_accuracy"] <= 1.0
    assert manifest["metrics"]["teacher_test_accuracy"] is not None
    assert len(manifest["metrics"]["history"]["student"]) == 1
    assert manifest["versions"]["torch"].startswith("2.13")
    for f in ("student.safetensors", "teacher.safetensors", "recipe.yaml", "log.txt"):
        assert (out / f).is_file(), f
    assert (tmp_path / "runs" / "latest").resolve() == out.resolve()
    # the progress display goes to stderr, never into the JSON on stdout
    assert "prokt" in proc.stderr


def test_plan_json_marks_a_fitting_student(tmp_path):
    proc = cli_in_process("plan", "--recipe", DIGITS, "--budget", "30KB", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    chosen = [c for c in plan["candidates"] if c["chosen"]]
    assert len(chosen) == 1 and chosen[0]["estimated_bytes"] <= 30_000
    # every more capable candidate that was measured does not fit
    more = [c for c in plan["candidates"] if c["params"] > chosen[0]["params"] and c["estimated_bytes"]]
    assert all(c["estimated_bytes"] > 30_000 for c in more)


def test_budget_that_does_not_bind(tmp_path):
    proc = cli_in_process("plan", "--recipe", DIGITS, "--budget", "5MB", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["binding"] is False and "does not bind" in plan["note"]
    assert plan["chosen"]["params"] <= 0.25 * plan["teacher_params"]


def test_recipe_check(tmp_path):
    proc = cli_in_process("recipe", "check", *map(str, sorted(RECIPES.glob("*.yaml"))), cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.count(": ok") >= 2


def _bad_recipe(tmp_path: Path, text: str) -> str:
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    return str(p)


def _pickle_bomb(tmp_path: Path) -> tuple[str, Path]:
    marker = tmp_path / "pwned"

    class Bomb:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    p = tmp_path / "bomb.pt"
    p.write_bytes(pickle.dumps({"weight": Bomb()}))
    return str(p), marker


@pytest.mark.parametrize(
    "case,code,match",
    [
        ("malformed-yaml", 3, "not valid YAML"),
        ("typo-in-recipe", 3, "train.epoch"),
        ("unknown-model", 6, "unknown architecture"),
        ("bad-budget", 2, "is not a size"),
        ("zero-budget", 2, "positive"),
        ("impossible-budget", 5, "no student fits"),
        ("missing-data", 4, "apt-get install dataset-fashion-mnist"),
        ("unreadable-checkpoint", 6, "cannot be loaded safely"),
        ("pickle-with-code", 6, "cannot be loaded safely"),
        ("missing-checkpoint", 6, "not found"),
        ("unknown-method", 2, "method"),
        ("unknown-option", 2, "No such option"),
        ("missing-recipe", 3, "not found"),
    ],
)
def test_bad_input(tmp_path, case, code, match):
    out = tmp_path / "run"
    args = ["distill", "--recipe", DIGITS, "--epochs", "1", "--out", str(out)]
    marker = None
    if case == "malformed-yaml":
        args[2] = _bad_recipe(tmp_path, "train: {epochs: 2\nseed: [")
    elif case == "typo-in-recipe":
        args[2] = _bad_recipe(tmp_path, "train:\n  epoch: 2\n")
    elif case == "unknown-model":
        args[2] = _bad_recipe(tmp_path, "teacher: {arch: resnet-huge}\n")
    elif case == "bad-budget":
        args += ["--budget", "lots"]
    elif case == "zero-budget":
        args += ["--budget", "0KB"]
    elif case == "impossible-budget":
        args += ["--budget", "1KB"]
    elif case == "missing-data":
        args[2] = _bad_recipe(tmp_path, "data: {source: fashion-mnist}\n")
        args += ["--data-dir", str(tmp_path), "--data-source", "fashion-mnist"]  # forced: the folder holds no IDX file
    elif case == "unreadable-checkpoint":
        (tmp_path / "t.pt").write_bytes(b"\x00garbage" * 10)
        args += ["--teacher-checkpoint", str(tmp_path / "t.pt")]
    elif case == "pickle-with-code":
        path, marker = _pickle_bomb(tmp_path)
        args += ["--teacher-checkpoint", path]
    elif case == "missing-checkpoint":
        args += ["--teacher-checkpoint", str(tmp_path / "nope.safetensors")]
    elif case == "unknown-method":
        args += ["--method", "magic"]
    elif case == "unknown-option":
        args += ["--bogus"]
    elif case == "missing-recipe":
        args[2] = str(tmp_path / "nope.yaml")
    proc = cli_in_process(*args, cwd=tmp_path)
    assert_one_line_error(proc, code, match)
    nothing_left(tmp_path, out)
    if marker is not None:
        assert not marker.exists(), "the pickle ran code"


def test_existing_out_dir_is_never_overwritten(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    proc = cli_in_process("distill", "--recipe", DIGITS, "--epochs", "1", "--out", str(out), cwd=tmp_path)
    assert_one_line_error(proc, 7, "already exists")
    assert (out / "precious.txt").read_text() == "keep me"


def test_debug_shows_traceback(tmp_path):
    proc = cli("--debug", "distill", "--recipe", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_bare_prokt_deploy_shows_the_help_and_exits_0(tmp_path):
    r = cli_in_process(cwd=tmp_path)
    assert r.returncode == 0 and "Usage: prokt-deploy" in r.stdout and "Error" not in r.stderr


def test_run_distill_and_plan_take_the_recipe_the_same_way(tmp_path):
    """A positional RECIPE or --recipe, a path or a shipped name; two different ones are a usage error (exit 2)."""
    for command in ("plan", "distill", "run"):
        r = cli_in_process(command, "digits", "--recipe", "fashion-mnist", cwd=tmp_path)
        assert r.returncode == 2 and "two recipes given (digits and --recipe fashion-mnist)" in r.stderr, (command, r.stderr)
    r = cli_in_process("plan", RECIPES / "digits.yaml", "--budget", "20KB", "--target", "none", cwd=tmp_path)
    assert r.returncode == 0 and "chose" in r.stdout


def test_run_resume_refuses_flags_that_would_change_the_run(tmp_path):
    r = cli_in_process("run", "--resume", tmp_path / "r", "--epochs", "3", "--compare", "kd", "--runs", "5", cwd=tmp_path)
    assert r.returncode == 2 and "--compare, --runs, --epochs cannot change them" in r.stderr, r.stderr
    # a setting given at its default value is refused too (it would otherwise be silently ignored)
    r = cli_in_process("run", "--resume", tmp_path / "r", "--threads", "1", "--runtime-device", "CPU", cwd=tmp_path)
    assert r.returncode == 2 and "--threads, --runtime-device cannot change them" in r.stderr, r.stderr
    r = cli_in_process("run", "--resume", tmp_path / "nothing", cwd=tmp_path)
    assert r.returncode != 0 and "no unfinished run" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_renamed_flags_still_work_for_one_release_with_a_deprecation_line(tmp_path):
    """Each flag name means one thing: the old names are rewritten to the new ones, said on stderr (prokt_deploy/cli/main.py)."""
    from prokt_deploy.cli.main import RENAMED, _renamed_flags

    assert _renamed_flags(["export", "RUN", "--max-accuracy-drop", "1"]) == ["export", "RUN", "--max-int8-drop", "1"]
    assert _renamed_flags(["bench", "--max-accuracy-drop=2", "--device", "CPU"]) == ["bench", "--max-drop-vs-teacher=2", "--runtime-device", "CPU"]
    assert _renamed_flags(["distill", "--device", "cpu"]) == ["distill", "--device", "cpu"]  # the training device keeps its name
    # only flags: not an option's value (a directory called --min-speedup), nothing after --
    assert _renamed_flags(["run", "--out", "--min-speedup", "--min-speedup", "2"]) == [
        "run",
        "--out",
        "--min-speedup",
        "--min-speedup-vs-teacher",
        "2",
    ]
    assert _renamed_flags(["bench", "--", "--device"]) == ["bench", "--", "--device"]
    r = cli_in_process("bench", tmp_path / "no-run", "--device", "XPU", cwd=tmp_path)
    assert "warning: bench --device is deprecated, use --runtime-device" in r.stderr and r.returncode != 0
    for (command, _old), (new, _) in RENAMED.items():  # every new name exists on its command
        assert new in json.loads((Path(__file__).parent / "data" / "cli_options.json").read_text())[command], (command, new)
