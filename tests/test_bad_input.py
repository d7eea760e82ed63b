"""A catalogue of bad input across the commands: one line on stderr, a documented exit code,
no traceback, nothing left behind. (distill's own catalogue is in test_cli.py, export's in
test_export_run.py, bench's gates in test_bench_run.py.) The CLI runs in process through its real entry
point (conftest.cli_in_process): what is checked is its exit code and stderr, not a process's start-up."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import RECIPES, cli_in_process
from test_cli import assert_one_line_error

DIGITS = str(RECIPES / "digits.yaml")
TEXT = "task: text-classification\nteacher: {arch: bert-h32-l1}\nstudent: {family: tfm}\n"


def _write(tmp_path, name, data: bytes | str):
    p = tmp_path / name
    p.write_bytes(data) if isinstance(data, bytes) else p.write_text(data)
    return str(p)


CASES = {
    "plan-negative-budget": (lambda t: ["plan", "--recipe", DIGITS, "--budget", "-5MB"], 2, "is not a size"),
    "plan-nan-budget": (lambda t: ["plan", "--recipe", DIGITS, "--budget", "nanKB"], 2, "budget"),
    "plan-missing-recipe": (lambda t: ["plan", "--recipe", str(t / "none.yaml")], 3, "not found"),
    "recipe-check-empty-file": (lambda t: ["recipe", "check", _write(t, "e.yaml", "")], 3, "empty"),
    "recipe-check-binary-file": (lambda t: ["recipe", "check", _write(t, "b.yaml", b"\xff\xfe\x00garbage")], 3, "recipe"),
    "recipe-check-wrong-type": (lambda t: ["recipe", "check", _write(t, "w.yaml", "train: {epochs: many}\n")], 3, "train.epochs"),
    "export-no-such-run": (lambda t: ["export", str(t / "nope")], 7, "not a run directory"),
    "bench-no-such-run": (lambda t: ["bench", str(t / "nope")], 7, "not a run directory"),
    "bundle-no-such-run": (lambda t: ["bundle", str(t / "nope"), "--out", str(t / "b")], 7, "not a run directory"),
    "export-no-latest-run": (lambda t: ["export"], 7, "no run found"),
    "run-bad-budget": (lambda t: ["run", "--recipe", DIGITS, "--budget", "abc", "--out", str(t / "run")], 2, "is not a size"),
    "distill-zero-epochs": (lambda t: ["distill", "--recipe", DIGITS, "--epochs", "0", "--out", str(t / "run")], 2, "epochs"),
    "distill-negative-samples": (
        lambda t: ["distill", "--recipe", DIGITS, "--max-train-samples", "-3", "--out", str(t / "run")],
        2,
        "max_train_samples",
    ),
    "distill-unknown-device": (lambda t: ["distill", "--recipe", DIGITS, "--device", "tpu", "--out", str(t / "run")], 2, "device"),
    "distill-cuda-absent": (lambda t: ["distill", "--recipe", DIGITS, "--device", "cuda", "--out", str(t / "run")], 2, "CUDA"),
    "distill-out-under-a-file": (lambda t: ["distill", "--recipe", DIGITS, "--out", str(t / "f.txt" / "run")], 13, "file system error"),
    "distill-truncated-safetensors": (
        lambda t: [
            "distill",
            "--recipe",
            DIGITS,
            "--teacher-checkpoint",
            _write(t, "t.safetensors", b'\x10\x00\x00\x00\x00\x00\x00\x00{"a":'),
            "--out",
            str(t / "run"),
        ],
        6,
        "not a valid safetensors",
    ),
    "distill-checkpoint-wrong-arch": (
        lambda t: ["distill", "--recipe", DIGITS, "--teacher-checkpoint", _torch_save(t, {"weight": np.zeros(3)}), "--out", str(t / "run")],
        6,
        "does not match the architecture",
    ),
    "distill-bad-factory": (
        lambda t: ["distill", "--recipe", DIGITS, "--teacher-factory", "no_such_module:build", "--out", str(t / "run")],
        6,
        "cannot import",
    ),
    "distill-npz-wrong-shape": (
        lambda t: [
            "distill",
            "--recipe",
            _write(t, "n.yaml", "data: {source: npz}\n"),
            "--data-dir",
            _npz(t, np.zeros((20, 5)), np.zeros(20, int)),
            "--out",
            str(t / "run"),
        ],
        4,
        "x must have shape",
    ),
    "distill-npz-float-labels": (
        lambda t: [
            "distill",
            "--recipe",
            _write(t, "n.yaml", "data: {source: npz}\n"),
            "--data-dir",
            _npz(t, np.zeros((20, 4, 4)), np.zeros(20)),
            "--out",
            str(t / "run"),
        ],
        4,
        "integer class labels",
    ),
    "distill-empty-image-folder": (
        lambda t: [
            "distill",
            "--recipe",
            _write(t, "i.yaml", "data: {source: image-folder}\n"),
            "--data-dir",
            _dirs(t, "a", "b"),
            "--out",
            str(t / "run"),
        ],
        4,
        "no images found",
    ),
    "train-teacher-existing-out": (lambda t: ["train-teacher", "--recipe", DIGITS, "--out", _nonempty(t)], 7, "already exists"),
    "text-unknown-tokenizer": (
        lambda t: [
            "distill",
            "--recipe",
            _write(t, "x.yaml", TEXT + "data: {source: text-file, tokenizer: /no/such/tokenizer}\n"),
            "--data-dir",
            _write(t, "d.csv", "text,label\nhi,0\nbye,1\n"),
            "--out",
            str(t / "run"),
        ],
        4,
        "tokenizer '/no/such/tokenizer' not found",
    ),
    # empty text files and a missing label column: tests/test_text.py::test_bad_text_input (in process)
    "text-task-on-image-data": (
        lambda t: ["distill", "--recipe", _write(t, "x.yaml", TEXT + "data: {source: digits}\n"), "--out", str(t / "run")],
        3,
        "needs a text data.source",
    ),
}


def _torch_save(t, state):
    import torch

    p = t / "wrong.pt"
    torch.save({k: torch.as_tensor(v) for k, v in state.items()}, p)
    return str(p)


def _npz(t, x, y):
    p = t / "d.npz"
    np.savez(p, x=x, y=y)
    return str(p)


def _dirs(t, *names):
    root = t / "images"
    for n in names:
        (root / n).mkdir(parents=True)
    return str(root)


def _nonempty(t):
    d = t / "taken"
    d.mkdir()
    (d / "keep.txt").write_text("x")
    return str(d)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(tmp_path, case):
    make_args, code, match = CASES[case]
    (tmp_path / "f.txt").write_text("a file, not a directory")
    proc = cli_in_process(*make_args(tmp_path), cwd=tmp_path)
    assert_one_line_error(proc, code, match)
    assert not (tmp_path / "run").exists()
    assert not list(tmp_path.glob(".*partial*")) and not list(tmp_path.glob("runs/.*partial*"))
