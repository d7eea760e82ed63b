"""2-process DistributedDataParallel on digits through the real CLI (gloo on CPU)."""

import json
import subprocess
import sys

from conftest import RECIPES


def test_ddp_two_processes_on_digits(tmp_path):
    out = tmp_path / "ddp"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "prokt_deploy",
            "distill",
            "--recipe",
            str(RECIPES / "digits.yaml"),
            "--epochs",
            "2",
            "--max-train-samples",
            "512",
            "--nproc-per-node",
            "2",
            "--out",
            str(out),
            "--json",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)  # only rank 0 prints
    manifest = json.loads((out / "manifest.json").read_text())
    assert summary["run"] == str(out)
    assert manifest["distributed"] == {"world_size": 2, "backend": "gloo"}
    # metrics are reduced over both ranks: every training sample is counted once per epoch
    assert [r["train_samples"] for r in manifest["metrics"]["history"]["student"]] == [512, 512]
    assert (out / "student.safetensors").is_file() and not list(tmp_path.glob(".ddp.partial*"))


def test_strip_option():
    from prokt_deploy.cli.train import strip_option

    assert strip_option(["distill", "--nproc-per-node", "2", "--epochs", "1"], "--nproc-per-node") == ["distill", "--epochs", "1"]
    assert strip_option(["--nproc-per-node=4", "x"], "--nproc-per-node") == ["x"]
