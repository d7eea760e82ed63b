"""`distill` and `train-teacher`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from prokt_deploy.api import distill as run_distill
from prokt_deploy.api import train_teacher as run_train_teacher
from prokt_deploy.budget import format_size
from prokt_deploy.cli import options as o
from prokt_deploy.cli.console import RichProgress, out, print_json

OutOpt = Annotated[Optional[Path], typer.Option("--out", "-o", help="Run directory to create (default: runs/<time>-<recipe>-<method>).")]


def distill(
    recipe: o.RecipeOpt = None,
    budget: o.BudgetOpt = None,
    method: o.MethodOpt = None,
    epochs: o.EpochsOpt = None,
    seed: o.SeedOpt = None,
    out_dir: OutOpt = None,
    device: o.DeviceOpt = None,
    max_train_samples: o.MaxTrainOpt = None,
    data_dir: o.DataDirOpt = None,
    teacher_checkpoint: o.TeacherCkptOpt = None,
    teacher_init: o.TeacherInitOpt = None,
    teacher_factory: o.TeacherFactoryOpt = None,
    student: o.StudentOpt = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue an interrupted run (its --out directory) from its checkpoint.")] = None,
    as_json: o.JsonOpt = False,
) -> None:
    """Plan the student that fits the budget and distill the teacher into it (ProKT by default)."""
    if resume is not None:
        result = run_distill(None, resume=resume, progress=RichProgress())
        _print(distill_summary(result.path, result.manifest), as_json)
        return
    r = o.resolve_recipe(
        recipe, budget=budget, method=method, epochs=epochs, seed=seed, device=device, max_train_samples=max_train_samples,
        data_dir=data_dir, teacher_checkpoint=teacher_checkpoint, teacher_init=teacher_init, teacher_factory=teacher_factory, student=student,
    )
    result = run_distill(r, out=out_dir, progress=RichProgress())
    _print(distill_summary(result.path, result.manifest), as_json)


def _print(summary: dict, as_json: bool) -> None:
    if as_json:
        print_json(summary)
    else:
        print_summary(summary)


def distill_summary(path: Path, m: dict) -> dict:
    met = m["metrics"]
    return {
        "run": str(path),
        "method": m["method"],
        "budget_bytes": m["budget_bytes"],
        "precision": m["precision"],
        "student": m["student"],
        "teacher": {"arch": m["teacher"]["arch"], "params": m["teacher"]["params"]},
        "plan_note": m["plan"]["note"],
        "student_test_accuracy": met["student_test_accuracy"],
        "teacher_test_accuracy": met["teacher_test_accuracy"],
        "seconds": m["timings"]["total_s"],
    }


def print_summary(s: dict) -> None:
    table = Table(title=f"distilled ({s['method']})", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    st = s["student"]
    table.add_row("run", s["run"])
    table.add_row("budget", f"{format_size(s['budget_bytes'])} at {s['precision']}")
    table.add_row("student", f"{st['arch']}  {st['params']:,} params  est. {format_size(st['estimated_bytes'])}")
    table.add_row("teacher", f"{s['teacher']['arch']}  {s['teacher']['params']:,} params")
    table.add_row("student test acc", f"{s['student_test_accuracy']:.4f}")
    if s["teacher_test_accuracy"] is not None:
        table.add_row("teacher test acc", f"{s['teacher_test_accuracy']:.4f}")
    table.add_row("time", f"{s['seconds']:.1f} s")
    table.add_row("plan", s["plan_note"])
    out.print(table)


def train_teacher(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Directory to create for the teacher.")],
    recipe: o.RecipeOpt = None,
    epochs: o.EpochsOpt = None,
    seed: o.SeedOpt = None,
    device: o.DeviceOpt = None,
    max_train_samples: o.MaxTrainOpt = None,
    data_dir: o.DataDirOpt = None,
    as_json: o.JsonOpt = False,
) -> None:
    """Train a converged teacher with cross-entropy (for `--method kd` or a ProKT warm start)."""
    r = o.resolve_recipe(recipe, seed=seed, device=device, max_train_samples=max_train_samples, data_dir=data_dir)
    if epochs is not None:
        r = r.model_copy(update={"teacher": r.teacher.model_copy(update={"epochs": epochs})})
    result = run_train_teacher(r, out=out_dir, progress=RichProgress())
    met = result.manifest["metrics"]
    summary = {"run": str(result.path), "teacher": result.manifest["teacher"], "teacher_test_accuracy": met["teacher_test_accuracy"], "teacher_val_accuracy": met["teacher_val_accuracy"], "checkpoint": str(result.path / "teacher.safetensors")}
    if as_json:
        print_json(summary)
    else:
        out.print(f"teacher {r.teacher.arch}: test accuracy {met['teacher_test_accuracy']:.4f}; use it with --teacher-checkpoint {result.path / 'teacher.safetensors'}")
