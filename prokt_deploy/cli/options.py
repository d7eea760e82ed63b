"""Options shared by the commands that read a recipe, and how they override it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from prokt_deploy.budget import parse_size
from prokt_deploy.errors import RecipeError
from prokt_deploy.recipe import DEFAULT_RECIPE, Recipe, apply_overrides, load_recipe

RecipeOpt = Annotated[Optional[Path], typer.Option("--recipe", "-r", help="Recipe YAML, or a shipped recipe by name (digits, fashion-mnist, tweets-minilm; default: fashion-mnist).")]
BudgetOpt = Annotated[Optional[str], typer.Option(help="Size budget of the deployed artifact, e.g. 5MB, 200KB, 1.5MiB (kB/MB = 1000, KiB/MiB = 1024).")]
MethodOpt = Annotated[Optional[str], typer.Option(help="prokt | kd | scratch.")]
EpochsOpt = Annotated[Optional[int], typer.Option(help="Training epochs.")]
SeedOpt = Annotated[Optional[int], typer.Option(help="Random seed (data split, init, order).")]
DeviceOpt = Annotated[Optional[str], typer.Option(help="Training device: cpu, cuda, cuda:N or auto.")]
MaxTrainOpt = Annotated[Optional[int], typer.Option("--max-train-samples", help="Use only the first N (seeded) training samples: a quick run.")]
DataDirOpt = Annotated[Optional[Path], typer.Option("--data-dir", help="Dataset location (Fashion-MNIST IDX files, image folder, .npz, or a .csv/.tsv/.jsonl text file).")]
TeacherCkptOpt = Annotated[Optional[Path], typer.Option("--teacher-checkpoint", help="Teacher weights (.safetensors or a state_dict).")]
TeacherInitOpt = Annotated[Optional[str], typer.Option("--teacher-init", help="scratch | checkpoint | checkpoint-reset-head | pretrain (CE first in this run, then ProKT with the head reset).")]
TeacherFactoryOpt = Annotated[Optional[str], typer.Option("--teacher-factory", help="'module:function' returning the teacher nn.Module.")]
StudentOpt = Annotated[Optional[str], typer.Option("--student", help="Pin the student architecture instead of planning it, e.g. resnet-w8-d1.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")]
TrustCodeOpt = Annotated[bool, typer.Option("--trust-recipe-code", help="Allow the recipe (or the run's saved recipe) to name code to import and run (teacher.factory). Only for recipes you trust.")]


def code_hooks(teacher_factory: str | None) -> list[str]:
    """The recipe fields that make the tool import and call code (a recipe is otherwise plain data)."""
    return [f"teacher.factory {teacher_factory!r}"] if teacher_factory else []


def require_code_consent(hooks: list[str], trusted: bool, source: str) -> None:
    """Refuse (RecipeError, exit 3) to run code a recipe or run names unless the user consented.

    The convention of ``transformers``' ``trust_remote_code``: a file received from someone else must
    not run anything importable (a module placed beside it) just by being used. ``--teacher-factory``
    on the command line is consent for the factory it names.
    """
    if hooks and not trusted:
        raise RecipeError(f"{source} names code to import and run ({', '.join(hooks)}); refused without consent: "
                          "pass --trust-recipe-code if you trust it, or name the factory yourself with --teacher-factory")


def resolve_recipe(
    recipe: Path | None,
    *,
    budget: str | None = None,
    method: str | None = None,
    epochs: int | None = None,
    seed: int | None = None,
    device: str | None = None,
    max_train_samples: int | None = None,
    data_dir: Path | None = None,
    teacher_checkpoint: Path | None = None,
    teacher_init: str | None = None,
    teacher_factory: str | None = None,
    student: str | None = None,
    trust_recipe_code: bool = False,
) -> Recipe:
    """Load the recipe and apply command-line overrides (flags win over the file). A recipe that names
    code is refused unless ``trust_recipe_code`` or the code is named on the command line."""
    if budget is not None:
        parse_size(budget)  # a malformed budget is a usage error (exit 2), not a recipe error
    base = load_recipe(recipe)
    if teacher_factory is None:
        require_code_consent(code_hooks(base.teacher.factory), trust_recipe_code, f"recipe {str(recipe or DEFAULT_RECIPE)!r}")
    init = teacher_init
    if teacher_checkpoint is not None and init is None and base.teacher.init in ("scratch", "pretrain"):
        init = "checkpoint"  # a given checkpoint is used as it is unless --teacher-init says otherwise
    return apply_overrides(
        base,
        {
            "budget.size": budget,
            "method": method,
            "train.epochs": epochs,
            "seed": seed,
            "device": device,
            "data.max_train_samples": max_train_samples,
            "data.path": str(data_dir) if data_dir is not None else None,
            "teacher.checkpoint": str(teacher_checkpoint) if teacher_checkpoint is not None else None,
            "teacher.init": init,
            "teacher.factory": teacher_factory,
            "student.arch": student,
        },
    )
