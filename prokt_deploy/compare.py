"""Baselines inside the product: ``run --compare scratch,kd`` and :func:`compare`.

Did distillation help on *this* data? For a finished run, each named baseline method is trained
on the same split, the same student architecture, the same seed, epochs, schedule and
augmentation, into ``RUN/compare/<method>/`` (a run directory of its own), and exported at the
run's deploy precision in its first planned format, so each method's deployed accuracy is
measured in its runtime, as the run's own student is. The run's manifest then lists, per method:
fp32 and deployed test accuracy, best epoch, and the gain over scratch in points with its paired
standard error over the test samples. A gain smaller than twice that standard error is flagged as
within noise (a different seed moves a small student by more than that: see docs/results.md).
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from prokt_deploy.errors import ExportFailed, GateFailed, UsageError
from prokt_deploy.rundir.reader import FinishedRun, Manifest, open_run
from prokt_deploy.rundir.workspace import MANIFEST, is_locked, partial_path, update_manifest
from prokt_deploy.train import methods

COMPARE_DIR = "compare"


def parse_methods(text: str | Sequence[str]) -> list[str]:
    """'scratch,kd' -> ['scratch', 'kd']: registered methods and variants (prokt+label); unknown or repeated names
    are a usage error."""
    known = [*methods.names(), *methods.variants()]
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise UsageError(f"--compare takes methods from {', '.join(known)} separated by commas; got {text!r}")
    if len(set(names)) != len(names):
        raise UsageError(f"--compare names a method twice: {text!r}")
    return names


def baseline_recipe(recipe, method: str, student_arch: str):  # recipe.Recipe
    """The run's recipe with another method (or variant: its base method with its settings), the same student
    pinned and the same student start.

    A method against a frozen teacher (KD, DKD) needs a converged one: a teacher checkpoint is used as it is
    (``checkpoint``); without one, its run trains the teacher with cross-entropy first, as ``distill --method kd``
    does. With few labels (``data.labels``) and a checkpoint whose head the run resets (``checkpoint-reset-head``:
    a pretrained backbone), the head means nothing for this data and must not have seen labels beyond the kept
    ones: the baseline's run fine-tunes the backbone with a zeroed head on the kept labels first (ProKT fine-tunes
    it jointly instead, as its reference does). The student's head starts as the run's student did (student.zero_init_head resolved), so the
    methods differ only in their loss.
    """
    from prokt_deploy.recipe import apply_overrides
    from prokt_deploy.train.build import student_zero_head

    spec, settings = methods.resolve(method)
    teacher = recipe.teacher
    if spec.teacher == "frozen":
        backbone = teacher.init == "checkpoint-reset-head" and recipe.data.labels is not None
        init = "pretrain" if not teacher.checkpoint else ("checkpoint-reset-head" if backbone else "checkpoint")
        teacher = teacher.model_copy(update={"init": init})
    student = recipe.student.model_copy(update={"arch": student_arch, "zero_init_head": student_zero_head(recipe)})
    out = recipe.model_copy(update={"method": spec.name, "student": student, "teacher": teacher})
    return apply_overrides(out, settings) if settings else out


def compare(run: str | Path, methods: str | Sequence[str], *, progress=None, status: Callable[[str], None] | None = None) -> list[dict]:
    """Train and export each baseline of ``methods`` beside the run; record the comparison in its manifest."""
    from prokt_deploy.deploy.export import export_run
    from prokt_deploy.train.distill import distill

    names = parse_methods(methods)
    fr = open_run(run)
    run, manifest = fr.path, fr.manifest
    recipe = fr.recipe()
    student_arch = manifest.student.arch
    say = status or (lambda message: None)
    fmt = manifest.formats[0]
    rows = [_row(manifest.method, ".", manifest, manifest.deployed_accuracy(fmt))]
    for name in names:
        if name == manifest.method:
            continue  # the run itself
        sub = run / COMPARE_DIR / name
        if not (sub / MANIFEST).is_file():
            partial = partial_path(sub)
            if (partial / "recipe.yaml").is_file():  # stopped mid-way (run --resume): continue it from its checkpoint
                say(f"compare: continuing {name}")
                distill(None, resume=sub, progress=progress, latest=False)
            else:
                if partial.is_dir() and not is_locked(partial):
                    shutil.rmtree(partial)  # stopped before it saved anything: nothing to continue
                say(f"compare: training {name}")
                distill(baseline_recipe(recipe, name, student_arch), out=sub, progress=progress, latest=False)
        if not any(a.format == fmt and a.precision == manifest.precision for a in open_run(sub).manifest.artifacts):
            say(f"compare: exporting {name} ({fmt} {manifest.precision})")  # also a baseline stopped in its export
            try:
                export_run(sub, [fmt], manifest.precision)
            except (GateFailed, ExportFailed):
                pass  # recorded in the sub-run's manifest; the row shows the deployed accuracy if measured
        sub_manifest = open_run(sub).manifest
        rows.append(_row(name, f"{COMPARE_DIR}/{name}", sub_manifest, sub_manifest.deployed_accuracy(fmt)))
    _add_gains(fr, rows)
    counts = {"labelled": (manifest.data or {}).get("train"), "unlabelled": (manifest.data or {}).get("unlabelled", 0)}
    update_manifest(run, lambda m: m.update(compare={"format": fmt, "precision": m["precision"], **counts, "rows": rows}))  # under the run's lock
    return rows


def _row(method: str, path: str, manifest: Manifest, deployed: float | None) -> dict:
    m = manifest.metrics
    return {
        "method": method,
        "run": path,
        "student_arch": manifest.student.arch,
        "student_test_accuracy": m["student_test_accuracy"],
        "student_val_accuracy": m.get("student_val_accuracy"),
        "deployed_test_accuracy": deployed,
        "best_epoch": m.get("best_epoch"),
        "epochs": m.get("epochs"),
        "val_curve": [e.get("val_student_accuracy") for e in (m.get("history") or {}).get("student", [])],
        # the method's own cost: wall seconds of the student phase on this machine (a teacher trained first is not counted)
        "train_s": manifest.timings.get("train_s"),
        # and the samples it drew: labelled, and unlabelled from a transfer set (0 for a method that cannot use one)
        "samples_seen": m.get("samples_seen"),
    }


def _add_gains(fr: FinishedRun, rows: list[dict]) -> None:
    """Gain over scratch in points, with the paired standard error over the test samples."""
    import torch

    from prokt_deploy.train.engine import predict_logits

    scratch = next((r for r in rows if r["method"] == "scratch"), None)
    if scratch is None:
        return
    data = fr.data()
    correct = {}
    for r in rows:
        model = fr.model("student") if r["run"] == "." else open_run(fr.path / r["run"]).model("student")
        correct[r["method"]] = (predict_logits(model, data.test.x, torch.device("cpu")).argmax(1) == data.test.y).double()
    base = correct["scratch"]
    for r in rows:
        if r["method"] == "scratch":
            continue
        diff = correct[r["method"]] - base  # (N,) in {-1, 0, 1}
        se = diff.std(unbiased=True).item() / math.sqrt(len(diff)) * 100
        gain = (r["student_test_accuracy"] - scratch["student_test_accuracy"]) * 100
        r["gain_over_scratch_points"] = round(gain, 2)
        r["gain_standard_error_points"] = round(se, 2)
        r["within_noise"] = abs(gain) < 2 * se
    if scratch.get("train_s"):
        for r in rows:
            if r.get("train_s") is not None:
                r["train_time_vs_scratch"] = round(r["train_s"] / scratch["train_s"], 2)
