"""`distill` and `train-teacher`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table

from prokt_deploy.budget import format_size
from prokt_deploy.cli import options as o
from prokt_deploy.cli.console import RichProgress, out, print_json
from prokt_deploy.errors import TrainingError, UsageError
from prokt_deploy.recipe import load_recipe
from prokt_deploy.rundir.workspace import check_out_dir, final_path, find_resumable

if TYPE_CHECKING:
    from prokt_deploy.rundir.reader import Manifest

OutOpt = Annotated[Optional[Path], typer.Option("--out", "-o", help="Run directory to create (default: runs/<time>-<recipe>-<method>).")]


@o.takes_overrides(*o.TRAINING)
def distill(
    recipe_file: o.RecipeArg = None,
    recipe: o.RecipeOpt = None,
    overrides: dict | None = None,
    out_dir: OutOpt = None,
    latencies: o.LatenciesOpt = None,
    resume: Annotated[
        Optional[Path],
        typer.Option("--resume", help="Continue an interrupted run (its --out directory) from its checkpoint, with the recipe it was started with."),
    ] = None,
    nproc_per_node: Annotated[
        int, typer.Option("--nproc-per-node", min=1, help="Train with DistributedDataParallel on N local processes (torchrun).")
    ] = 1,
    trust_recipe_code: o.TrustCodeOpt = False,
    as_json: o.JsonOpt = False,
) -> None:
    """Plan the student that fits the budget and distill the teacher into it (ProKT by default)."""
    recipe = o.one_recipe(recipe_file, recipe)
    r = None
    if resume is None:
        r = o.resolve_recipe(recipe, overrides, trust_recipe_code=trust_recipe_code)
    else:
        given = {"--recipe": recipe, "--out": out_dir, "--latencies": latencies}
        check_resume(resume, [k for k, v in given.items() if v is not None] + o.given_flags(overrides), trust_recipe_code)
    from prokt_deploy.train import distributed  # torch: imported once the arguments are known to be good
    from prokt_deploy.train.distill import distill as run_distill

    if nproc_per_node > 1 and not distributed.launched_by_torchrun():
        _launch_distributed(r, nproc_per_node, out_dir)
        return
    main = int(os.environ.get("RANK", "0")) == 0
    result = run_distill(r, out=out_dir, resume=resume, progress=RichProgress(quiet=not main), latencies=latencies)
    if main:
        _print(distill_summary(result.path, result.manifest), as_json)


def check_resume(resume: Path, overrides: list[str], trusted: bool) -> None:
    """Refuse a resume that would not continue the same run, before anything is loaded or written.

    A resumed run is the run it was started as (its saved recipe, its optimiser schedules over the
    planned number of steps): flags that change the recipe, ``--epochs`` included, are usage errors
    rather than silently ignored or half applied. To train longer, start a new run.
    """
    partial = find_resumable(resume)
    saved = load_recipe(partial / "recipe.yaml")
    if overrides:
        what = ", ".join(overrides)
        hint = f" (the run trains {saved.train.epochs} epochs; for more, start a new run with --epochs)" if "--epochs" in overrides else ""
        raise UsageError(
            f"--resume continues {final_path(partial)} with the recipe it was started with; {what} cannot change it{hint}: "
            f"drop {what}, or start a new run"
        )
    o.require_code_consent(o.code_hooks(saved.teacher.factory), trusted, f"the run's recipe {str(partial / 'recipe.yaml')!r}")


def _launch_distributed(r, nproc: int, out_dir: Path | None) -> None:
    """Check what can be checked here (recipe, data, budget, output), then re-launch under torchrun."""
    from prokt_deploy.data import load_recipe_data
    from prokt_deploy.planner import plan as run_plan
    from prokt_deploy.train import distributed

    if r is not None:
        data = load_recipe_data(r)
        run_plan(r, data)
        if out_dir is not None:
            check_out_dir(out_dir)
    argv = strip_option(sys.argv[1:], "--nproc-per-node")
    code = distributed.launch(nproc, argv)
    if code != 0:
        raise TrainingError(f"distributed training exited with code {code} (see the ranks' messages above)")


def strip_option(argv: list[str], name: str) -> list[str]:
    """argv without ``name VALUE`` / ``name=VALUE``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            out.append(arg)
    return out


def _print(summary: dict, as_json: bool) -> None:
    if as_json:
        print_json(summary)
    else:
        print_summary(summary)


def distill_summary(path: Path, m: Manifest) -> dict:
    met = m.metrics
    return {
        "run": str(path),
        "method": m.method,
        "budget_bytes": m.budget_bytes,
        "precision": m.precision,
        "student": m.student.to_dict() if m.student else None,
        "teacher": {"arch": m.teacher.arch, "params": m.teacher.params},
        "plan_note": (m.plan or {}).get("note"),
        "student_test_accuracy": met["student_test_accuracy"],
        "teacher_test_accuracy": met["teacher_test_accuracy"],
        "seconds": m.timings["total_s"],
        "epochs": met.get("epochs"),
        "schedule": met.get("schedule"),
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
    for phase, sched in (s.get("schedule") or {}).items():
        if "reason" in sched:  # train.min_steps raised the epochs
            table.add_row(f"{phase} epochs", f"{sched['epochs']} ({sched['reason']})")
    table.add_row("time", f"{s['seconds']:.1f} s")
    table.add_row("plan", s["plan_note"])
    out.print(table)


@o.takes_overrides("epochs", "seed", "device", "max_train_samples", "data_dir", "data_source", "min_steps", "labels", "max_val_samples")
def train_teacher(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Directory to create for the teacher.")],
    recipe: o.RecipeOpt = None,
    overrides: dict | None = None,
    trust_recipe_code: o.TrustCodeOpt = False,
    as_json: o.JsonOpt = False,
) -> None:
    """Train a converged teacher with cross-entropy (for `--method kd` or a ProKT warm start)."""
    from prokt_deploy.train.distill import train_teacher as run_train_teacher

    epochs = overrides.pop("epochs")  # the teacher's epochs (teacher.epochs), not the student's
    r = o.resolve_recipe(recipe, overrides, trust_recipe_code=trust_recipe_code)
    if epochs is not None:
        r = r.model_copy(update={"teacher": r.teacher.model_copy(update={"epochs": epochs})})
    result = run_train_teacher(r, out=out_dir, progress=RichProgress())
    met = result.manifest.metrics
    summary = {
        "run": str(result.path),
        "teacher": result.manifest.teacher.to_dict(),
        "teacher_test_accuracy": met["teacher_test_accuracy"],
        "teacher_val_accuracy": met["teacher_val_accuracy"],
        "checkpoint": str(result.path / "teacher.safetensors"),
    }
    if as_json:
        print_json(summary)
    else:
        out.print(
            f"teacher {r.teacher.arch}: test accuracy {met['teacher_test_accuracy']:.4f}; use it with --teacher-checkpoint {result.path / 'teacher.safetensors'}"
        )
