"""Options shared by the commands that read a recipe, and how they override it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from prokt_deploy.budget import parse_size
from prokt_deploy.recipe import Recipe, apply_overrides, load_recipe

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
) -> Recipe:
    """Load the recipe and apply command-line overrides (flags win over the file)."""
    if budget is not None:
        parse_size(budget)  # a malformed budget is a usage error (exit 2), not a recipe error
    base = load_recipe(recipe)
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
