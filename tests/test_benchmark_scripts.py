"""The benchmark scripts run end to end in a tiny configuration, so they cannot rot.

Each runs as ``python benchmarks/<script> ARGS`` would (as ``__main__``, its directory first on sys.path, in
``cwd``), but in this process: a script's interpreter start and its torch/ONNX/OpenVINO imports (several
seconds each) are paid once. What a script changes in the process (environment, working directory, torch's
thread count, sys.path, the benchmarks' own modules it imported) is put back after it, so every run starts
as fresh as a new process would for what the scripts read.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import runpy
import subprocess
import sys
import traceback
from pathlib import Path

import torch
from conftest import RECIPES, ROOT

DIGITS = str(RECIPES / "digits.yaml")
BENCHMARKS = ROOT / "benchmarks"


def bench(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    path = BENCHMARKS / script
    saved = (list(sys.argv), list(sys.path), dict(os.environ), os.getcwd(), torch.get_num_threads(), set(sys.modules))
    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        sys.argv = [str(path), *args]
        sys.path.insert(0, str(BENCHMARKS))
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(str(path), run_name="__main__")
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except Exception:  # noqa: BLE001 - a script's crash is its exit status 1 and traceback, as in a process of its own
                traceback.print_exc()
                code = 1
    finally:
        sys.argv, sys.path[:] = saved[0], saved[1]
        os.environ.clear()
        os.environ.update(saved[2])
        os.chdir(saved[3])
        torch.set_num_threads(saved[4])
        for name in set(sys.modules) - saved[5]:  # the benchmarks' helper modules (quality, ...): fresh for the next run
            if str(BENCHMARKS) in str(getattr(sys.modules[name], "__file__", None) or ""):
                del sys.modules[name]
    proc = subprocess.CompletedProcess(sys.argv[:1] + [str(path), *args], code, out.getvalue(), err.getvalue())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def quality_module():
    """benchmarks/quality.py imported for its functions, then dropped from sys.modules (the other tests run the
    scripts fresh)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import quality
    finally:
        sys.path.remove(str(BENCHMARKS))
        sys.modules.pop("quality", None)
    return quality


def test_distill_throughput(tmp_path):
    out = tmp_path / "t.json"
    bench("distill_throughput.py", "--recipe", DIGITS, "--rounds", "1", "--steps", "2", "--out", str(out), cwd=tmp_path)
    r = json.loads(out.read_text())
    assert set(r["samples_per_s"]) == {"nchw", "nhwc"}  # image data: both memory layouts, side by side
    for layout in ("nchw", "nhwc"):
        assert set(r["samples_per_s"][layout]) == {"scratch", "kd", "prokt"}
    assert set(r["nhwc_speedup"]) == {"scratch", "kd", "prokt"} and all(v > 0 for v in r["nhwc_speedup"].values())
    assert r["prokt_over_kd_time"]["predicted_from_passes"] > 1
    assert r["machine"]["model"]


def test_quality_and_ablation_tiny(tmp_path):
    out = tmp_path / "q.json"
    bench(
        "quality.py",
        "--recipe",
        DIGITS,
        "--budgets",
        "20KB",
        "--seeds",
        "0",
        "--epochs",
        "1",
        "--teacher-epochs",
        "1",
        "--max-train-samples",
        "300",
        "--methods",
        "scratch,kd,prokt",
        "--tune",
        "--out",
        str(out),
        cwd=tmp_path,
    )
    everything = json.loads(out.read_text())
    tuning = [r for r in everything if r["phase"] == "tune"]
    records = [r for r in everything if r["phase"] == "grid"]
    assert {r["method"] for r in records} == {"scratch", "kd", "prokt"}
    for method in ("scratch", "kd", "prokt"):  # the same tuning budget for every method, chosen on validation
        tried = [r for r in tuning if r["method"] == method]
        assert len(tried) == 3 and {r["tuned"].get("student.zero_init_head") for r in tried} == {True, False}
        best = max(tried, key=lambda r: r["student_val_accuracy"])
        assert next(r for r in records if r["method"] == method)["tuned"] == best["tuned"]
    for r in records:
        for key in (
            "budget_bytes",
            "method",
            "seed",
            "student_test_accuracy",
            "int8_test_accuracy",
            "student_int8_test_accuracy",
            "teacher_test_accuracy",
            "teacher_params",
            "student_params",
            "best_epoch",
            "epochs",
            "seconds",
        ):
            assert r[key] is not None, key
    assert len({r["student"] for r in records}) == 1  # same student for every method
    assert "| 20KB | prokt |" in out.with_suffix(".md").read_text()
    # --combine keeps each cell once: a copy made to run more seeds beside the first repeats its records
    copy = tmp_path / "copy.json"
    copy.write_text(json.dumps(everything[:4] + [{**everything[-1], "seed": 7}]))
    bench("quality.py", "--combine", str(out), str(copy), "--out", str(tmp_path / "c.json"), cwd=tmp_path)
    combined = json.loads((tmp_path / "c.json").read_text())
    assert combined == everything + [{**everything[-1], "seed": 7}]

    # few labels: scratch on the 50 kept labels, DKD with the rest of the 300 as its transfer set (the same optimizer steps)
    out = tmp_path / "few.json"
    few = ["--set", "data.labels=50", "--set", "data.unlabeled_rest=true", "--set", "data.max_val_samples=100"]
    bench("quality.py", "--recipe", DIGITS, "--budgets", "20KB", "--seeds", "0", "--epochs", "1", "--teacher-epochs", "1",
          "--max-train-samples", "300", "--methods", "scratch,dkd", *few, "--out", str(out), cwd=tmp_path)  # fmt: skip
    few_records = {r["method"]: r for r in json.loads(out.read_text())}
    assert {(r["labelled"], r["unlabelled"]) for r in few_records.values()} == {(50, 250)}
    assert few_records["dkd"]["samples_seen"]["unlabelled"] > 0 and few_records["scratch"]["samples_seen"]["unlabelled"] == 0
    assert "| 20KB | dkd |" in out.with_suffix(".md").read_text()

    out = tmp_path / "a.json"
    bench(
        "ablation.py",
        "--recipe",
        DIGITS,
        "--budgets",
        "20KB",
        "--seeds",
        "0",
        "--epochs",
        "1",
        "--teacher-epochs",
        "1",
        "--max-train-samples",
        "300",
        "--variants",
        "lam=0.7,constrained,teacher=checkpoint-reset-head",
        "--out",
        str(out),
        cwd=tmp_path,
    )
    records = json.loads(out.read_text())
    assert [r["variant"] for r in records] == ["lam=0.7", "constrained", "teacher=checkpoint-reset-head"]
    assert records[0]["settings"]["prokt.lam"] == 0.7


def test_text_quality_tiny(tmp_path):
    """benchmarks/text_quality.py end to end on a random BERT teacher and 64 tweets (seconds, not the real run):
    the tuning runs use the --tune-set subset, the grid cells the full (here: capped) split, and a second
    invocation with --resume keeps every cell and the kept teachers. DKD on the 2-class tweets: its third tuning run
    moves the temperature, not beta (inert with one non-target class)."""
    out = tmp_path / "t.json"
    args = [
        "--methods",
        "dkd",
        "--budgets",
        "1.3MB",
        "--seeds",
        "0",
        "--max-train-samples",
        "64",
        "--epochs",
        "1",
        "--tune-set",
        "data.max_train_samples=32",
        "--teacher-dir",
        str(tmp_path / "teachers"),
        "--set",
        "teacher.arch=bert-h64-l1",
        "--set",
        "data.tokenizer=all-minilm-l6-v2",
        "--set",
        "data.max_length=24",
        "--set",
        "student.init_embeddings=random",
        "--out",
        str(out),
    ]
    bench("text_quality.py", *args, cwd=tmp_path)
    records = json.loads(out.read_text())
    tuning = [r for r in records if r["phase"] == "tune"]
    grid = [r for r in records if r["phase"] == "grid"]
    assert [r["method"] for r in grid] == ["dkd"] and len(tuning) == 3
    assert "dkd.temperature" in tuning[2]["tuned"] and not any("dkd.beta" in r["tuned"] for r in tuning)
    assert {r["train_samples"] for r in tuning} == {32} and {r["train_samples"] for r in grid} == {64}
    assert len({r["student"] for r in records}) == 1
    kept = sorted(p.name for p in (tmp_path / "teachers").iterdir() if not p.name.endswith(".claim"))  # quality._claim's locks
    assert kept == ["teacher-seed0", "teacher-seed0-tune"]
    proc = bench("text_quality.py", *args, "--resume", cwd=tmp_path)
    assert proc.stdout.count("kept from") == 4 and "converged teacher" not in proc.stdout.replace("reusing converged teacher", "")
    assert "| 1.3MB | dkd |" in out.with_suffix(".md").read_text()
    # one more seed in its own invocation (scripts/converged_grid.sh runs a seed per process): seed 0's row stays
    seed1 = [a if a != "0" or args[i - 1] != "--seeds" else "1" for i, a in enumerate(args)]
    bench("text_quality.py", *seed1, "--resume", cwd=tmp_path)
    after = json.loads(out.read_text())
    assert sorted(r["seed"] for r in after if r["phase"] == "grid") == [0, 1] and grid[0] in after


def test_prokt_dynamics_tiny(tmp_path):
    """benchmarks/prokt_dynamics.py: every variant runs and records a validation path."""
    from prokt_deploy.models import create_model
    from prokt_deploy.rundir.checkpoint import save_weights

    ckpt = tmp_path / "teacher.safetensors"
    save_weights(create_model("resnet-w16-d1", num_classes=10, in_channels=1), ckpt)
    out = tmp_path / "d.json"
    bench(
        "prokt_dynamics.py",
        "--recipe",
        DIGITS,
        "--student",
        "resnet-w4-d1",
        "--max-train-samples",
        "200",
        "--epochs",
        "1",
        "--every",
        "1",
        "--teacher-checkpoint",
        str(ckpt),
        "--out",
        str(out),
        cwd=tmp_path,
    )
    records = json.loads(out.read_text())["records"]
    assert [r["variant"] for r in records] == ["scratch", "soft-targets", "prokt", "prokt-batch-stats"]
    for r in records:
        assert [p["step"] for p in r["path"]] == list(range(1, r["steps"] + 1)) and r["steps"] == 3  # 200 - 20% test - 10% val -> 3 batches of 64
    assert records[0]["teacher_val_accuracy"] is None and records[2]["path"][0]["kl_q_p"] == 0.0  # zero heads: ProKT starts at KL 0
    assert "| prokt-batch-stats | 1 |" in out.with_suffix(".md").read_text()


def test_bench_time_tiny(tmp_path):
    """benchmarks/bench_time.py benches a copy of a finished run with its references removed; the run is untouched."""
    from prokt_deploy import apply_overrides, distill, export_run, load_recipe

    recipe = apply_overrides(load_recipe(DIGITS), {"train.epochs": 1, "data.max_train_samples": 300, "budget.formats": ["onnx"]})
    run = distill(recipe, out=tmp_path / "run", latest=False).path
    export_run(run, ["onnx"], "int8")
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    out = tmp_path / "t.json"
    proc = bench("bench_time.py", str(run), "--runs", "5", "--repeats", "1", "--out", str(out), cwd=tmp_path)
    rec = json.loads(out.read_text())["records"][0]
    assert rec["kind"] == "image" and rec["bench_s"] > 0 and rec["target_s"] == 60.0 and rec["settings"]["runs"] == 5
    steps = [s["step"] for s in rec["steps"]]
    assert any("teacher" in s and "ONNX" in s for s in steps), steps  # the references were rebuilt: a first bench
    assert all(s["seconds"] is not None and s["seconds"] >= 0 for s in rec["steps"])
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before and not (run / "report.json").exists()
    assert "bench" in proc.stdout and "target 60 s" in proc.stdout

    # benchmarks/qat.py on the same run: post-training and QAT int8 of a copy, both measured; the run untouched
    out = tmp_path / "q.json"
    proc = bench("qat.py", str(run), "--out", str(out), cwd=tmp_path)
    (row,) = json.loads(out.read_text())["rows"]
    assert row["format"] == "onnx" and row["ptq"]["bytes"] > 0 and "qat" not in row["ptq"]
    assert row["qat"]["qat"]["steps"] >= 300 and row["qat"]["qat"]["teacher"] is (row["method"] != "scratch")
    assert all(abs(row[p]["accuracy_drop"]) < 100 for p in ("ptq", "qat")) and "mean drop" in proc.stdout
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


def test_every_argparse_script_builds_its_options(tmp_path):
    """``--help`` of every benchmark script with its own options: what its argument parser computes at start-up (the
    formats a default names, ...) still exists; the scripts nothing else here runs are at least this far alive."""
    scripts = sorted(p.name for p in BENCHMARKS.glob("*.py") if "ArgumentParser(" in p.read_text())
    assert "accuracy_aware.py" in scripts and "runtimes.py" in scripts
    for script in scripts:
        assert "usage:" in bench(script, "--help", cwd=tmp_path).stdout, script


def test_a_methods_third_tuning_run_moves_a_knob_that_acts_on_the_data():
    """DKD's beta weights NCKD, which is 0 on 2 classes: there the third run moves the temperature instead; the class
    count is read only for a method that has a 2-class alternative."""
    quality = quality_module()
    asked = []

    def classes(n):
        return lambda: asked.append(n) or n

    assert quality.tuning_alternative("dkd", classes(10)) == {"dkd.beta": 2.0}
    assert quality.tuning_alternative("dkd", classes(2)) == {"dkd.temperature": 2.0}
    assert quality.tuning_alternative("kd", classes(2)) == {"kd.alpha": 0.5, "kd.temperature": 2.0}
    assert quality.tuning_alternative("prokt+label", classes(2)) == {"prokt.student_label_weight": 0.5}
    assert asked == [10, 2]


def test_a_kept_teacher_is_claimed_by_one_grid_at_a_time(tmp_path):
    """Two grids started together (kd and dkd over one --teacher-dir) must not both train the same teacher: the first
    holds .<name>.claim while it looks the teacher up and trains it, a second process cannot take it meanwhile, and
    the claim is free again once the first lets go (or dies)."""
    quality = quality_module()
    kept = tmp_path / "teachers" / "teacher-seed0"
    probe = (
        "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR)\n"
        "try: fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept OSError: sys.exit(3)\n"
    )
    claim = str(kept.parent / ".teacher-seed0.claim")
    with quality._claim(kept):
        assert subprocess.run([sys.executable, "-c", probe, claim]).returncode == 3  # held: another grid would wait
    assert subprocess.run([sys.executable, "-c", probe, claim]).returncode == 0


def test_two_grids_on_one_out_keep_each_others_cells(tmp_path):
    """--resume grids writing one --out (seeds 1,2 run beside seed 0 once the tuning runs are in it): each write keeps
    the cells another process wrote since this one read the file; a cell of both is this process's; without --resume
    the file is this invocation's records alone."""
    quality = quality_module()

    def cell(seed, acc, phase="grid"):
        return {"phase": phase, "budget": "64KB", "method": "kd", "seed": seed, "settings": {"kd.alpha": 0.5}, "student_test_accuracy": acc}

    out = tmp_path / "grid.json"
    tune = cell(0, 0.80, "tune")
    quality._write_records(out, [tune, cell(0, 0.85)], merge=True)  # process A: tuning, then seed 0
    b_read = [tune]  # process B started after the tuning runs were written
    quality._write_records(out, [*b_read, cell(1, 0.86)], merge=True)  # B's seed 1
    held = quality._write_records(out, [tune, cell(0, 0.85), cell(2, 0.84)], merge=True)  # A's seed 2, not knowing B's
    assert held == json.loads(out.read_text())
    assert sorted((r["phase"], r["seed"], r["student_test_accuracy"]) for r in held) == [
        ("grid", 0, 0.85), ("grid", 1, 0.86), ("grid", 2, 0.84), ("tune", 0, 0.80)
    ]  # fmt: skip
    quality._write_records(out, [cell(1, 0.9)], merge=True)  # the same cell again: replaced, not doubled
    assert [r["student_test_accuracy"] for r in json.loads(out.read_text()) if r["seed"] == 1] == [0.9]
    quality._write_records(out, [cell(5, 0.5)])  # a fresh grid (no --resume): its records alone
    assert [r["seed"] for r in json.loads(out.read_text())] == [5] and not list(tmp_path.glob("*.tmp"))


def test_a_kept_teacher_is_reused_when_trained_as_asked_whatever_its_epoch_count(tmp_path):
    """A teacher fine-tuned on 1,000 labels with train.min_steps 500 runs 63 epochs, not its 5: the kept-teacher test
    compares how it was asked to train (epochs, step floor, batch, optimizer, data), not its history's length, which
    made every such grid retrain its teachers."""
    from prokt_deploy.recipe import dump_recipe

    quality = quality_module()
    from prokt_deploy import apply_overrides, load_recipe
    from prokt_deploy.data import LABELS_DRAW
    from prokt_deploy.train.distill import train_teacher

    asked = apply_overrides(
        load_recipe(RECIPES / "digits.yaml"),
        {"train.min_steps": 20, "data.labels": 100, "teacher.epochs": 1, "teacher.arch": "cnn-w4-d1", "data.max_train_samples": 300},
    )
    kept = tmp_path / "teacher"
    train_teacher(asked, out=kept)  # its manifest says how its labels were drawn
    assert json.loads((kept / "manifest.json").read_text())["data"]["labels_draw"] == LABELS_DRAW
    assert quality._kept_matches(kept, asked)
    for change in ({"train.min_steps": 0}, {"data.labels": 200}, {"teacher.epochs": 6}, {"train.teacher_optimizer.lr": 0.1}):
        assert not quality._kept_matches(kept, apply_overrides(asked, change)), change
    assert not quality._kept_matches(tmp_path / "missing", asked)
    # a teacher kept from before data.labels drew from the whole split saw other labels: not reused
    old = tmp_path / "old"
    old.mkdir()
    (old / "recipe.yaml").write_text(dump_recipe(asked))
    manifest = json.loads((kept / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**manifest, "data": {}}))
    assert not quality._kept_matches(old, asked)
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert quality._kept_matches(old, asked)


def test_the_few_label_grid_script_asks_quality_py_for_the_documented_grid(tmp_path):
    """scripts/few_label_grid.sh's command line (captured by a stand-in for its Python) parses with the grid's own
    options and makes a valid recipe: N labels kept, the rest unlabelled, 500 validation samples, the 64 px
    EfficientNet-Lite0 teacher by default (docs/results.md's grid), the same min_steps for every method; a wrong
    kind is refused with exit 2."""
    quality = quality_module()
    from prokt_deploy.recipe import apply_overrides, load_recipe

    echo = tmp_path / "py"
    echo.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    echo.chmod(0o755)
    script = ROOT / "scripts" / "few_label_grid.sh"

    def argv(*args: str, **env: str) -> list[str]:
        p = subprocess.run(["bash", str(script), *args], env={**os.environ, "PY": str(echo), **env}, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        return p.stdout.splitlines()

    for method, teacher in (("kd", None), ("prokt", "pretrained:efficientnet-lite0@96")):
        cmd = argv("image", "5000", method, **({"TEACHER": teacher} if teacher else {}))
        assert cmd[0] == "benchmarks/quality.py"
        args = quality.parse_args(cmd[1:])
        assert args.methods == method and args.seeds == "0,1,2" and args.tune and args.resume and args.threads == 1
        assert args.out == f"benchmarks/results/few-labels-image-5000-{method}.json"
        recipe = apply_overrides(load_recipe(ROOT / args.recipe), quality.extra_overrides(args.set))
        assert recipe.teacher.arch == (teacher or "pretrained:efficientnet-lite0@64")
        assert recipe.data.labels == 5000 and recipe.data.unlabeled_rest and recipe.data.max_val_samples == 500
        assert recipe.train.min_steps == 500 and recipe.student.family == "pool"
        assert quality.extra_overrides(args.tune_set) == {"data.max_train_samples": 12000}
    text = argv("text", "1000", "dkd", "1,2")
    assert text[0] == "benchmarks/text_quality.py"
    assert quality.parse_args(text[1:]).seeds == "1,2" and "data.labels=1000" in text and "--epochs" in text
    bad = subprocess.run(["bash", str(script), "video", "1000", "kd"], env={**os.environ, "PY": str(echo)}, capture_output=True, text=True)
    assert bad.returncode == 2 and "usage:" in bad.stderr
