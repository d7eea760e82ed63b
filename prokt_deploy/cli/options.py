"""Options shared by the commands that read a recipe, and how they override it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from prokt_deploy.budget import parse_size
from prokt_deploy.data import TEXT_SOURCES, infer_source
from prokt_deploy.errors import RecipeError, UsageError
from prokt_deploy.recipe import DEFAULT_RECIPE, RECIPES_DIR, Recipe, apply_overrides, load_recipe

TEXT_DEFAULT_RECIPE = RECIPES_DIR / "tweets-minilm.yaml"

RecipeOpt = Annotated[Optional[Path], typer.Option("--recipe", "-r", help="Recipe YAML, or a shipped recipe by name (digits, fashion-mnist, tweets-minilm; default: fashion-mnist).")]
BudgetOpt = Annotated[Optional[str], typer.Option(help="Size budget of the deployed artifact, e.g. 5MB, 200KB, 1.5MiB (kB/MB = 1000, KiB/MiB = 1024).")]
MethodOpt = Annotated[Optional[str], typer.Option(help="prokt | kd | scratch.")]
EpochsOpt = Annotated[Optional[int], typer.Option(help="Training epochs.")]
SeedOpt = Annotated[Optional[int], typer.Option(help="Random seed (data split, init, order).")]
DeviceOpt = Annotated[Optional[str], typer.Option(help="Training device: cpu, cuda, cuda:N or auto.")]
MaxTrainOpt = Annotated[Optional[int], typer.Option("--max-train-samples", help="Use only the first N (seeded) training samples: a quick run.")]
DataDirOpt = Annotated[Optional[Path], typer.Option(
    "--data", "--data-dir",
    help="Your dataset; its kind picks data.source: a .npz file (npz), a folder of class folders (image-folder), a folder with the "
         "Fashion-MNIST IDX .gz files (fashion-mnist), a .csv/.tsv/.jsonl file (text-file: a text task). Shape, channels and classes come from the data.")]
DataSourceOpt = Annotated[Optional[str], typer.Option("--data-source", help="Force data.source instead of inferring it from --data: digits, fashion-mnist, image-folder, npz, tweets or text-file.")]
MinStepsOpt = Annotated[Optional[int], typer.Option("--min-steps", help="train.min_steps: raise the epochs of a training phase until it gets at least N optimizer steps (0: off).")]
TeacherCkptOpt = Annotated[Optional[Path], typer.Option("--teacher-checkpoint", help="Teacher weights (.safetensors or a state_dict).")]
TeacherInitOpt = Annotated[Optional[str], typer.Option("--teacher-init", help="scratch | checkpoint | checkpoint-reset-head | pretrain (CE first in this run, then ProKT with the head reset).")]
TeacherFactoryOpt = Annotated[Optional[str], typer.Option("--teacher-factory", help="'module:function' returning the teacher nn.Module.")]
TargetOpt = Annotated[Optional[str], typer.Option("--target", help="Plan by latency too: time the fitting candidates and the teacher in onnx or openvino[:DEVICE] (recipe budget.target).")]
LatencyBudgetOpt = Annotated[Optional[str], typer.Option("--latency-budget", help="Only students whose batch-1 p50 is within it, e.g. 0.2ms (recipe budget.latency; implies --target onnx).")]
FamilyOpt = Annotated[Optional[str], typer.Option("--family", help="Student families to search: one (resnet), several (resnet,wide) or auto (every family for the data).")]
LatenciesOpt = Annotated[Optional[Path], typer.Option("--latencies", help="Plan from latencies measured on the device: the device-results.json of a 'plan --bundle' bundle (exit 12 if unreadable).")]
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
    data_source: str | None = None,
    min_steps: int | None = None,
    teacher_checkpoint: Path | None = None,
    teacher_init: str | None = None,
    teacher_factory: str | None = None,
    student: str | None = None,
    trust_recipe_code: bool = False,
    family: str | None = None,
    target: str | None = None,
    latency_budget: str | None = None,
) -> Recipe:
    """Load the recipe and apply command-line overrides (flags win over the file). A recipe that names
    code is refused unless ``trust_recipe_code`` or the code is named on the command line."""
    if budget is not None:
        parse_size(budget)  # a malformed budget is a usage error (exit 2), not a recipe error
    base = load_recipe(recipe)
    if data_dir is not None or data_source is not None:
        base = with_data(base, recipe, data_dir, data_source)
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
            "train.min_steps": min_steps,
            "teacher.checkpoint": str(teacher_checkpoint) if teacher_checkpoint is not None else None,
            "teacher.init": init,
            "teacher.factory": teacher_factory,
            "student.arch": student,
            "student.family": parse_families(family) if family is not None else None,
            "budget.target": target,
            "budget.latency": latency_budget,
        },
    )


def parse_families(text: str) -> str | list[str]:
    """``--family resnet`` / ``resnet,wide`` / ``auto`` -> the recipe's student.family value."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UsageError(f"--family {text!r} names no family; use e.g. resnet, resnet,wide or auto")
    return names[0] if len(names) == 1 else names


def with_data(base: Recipe, recipe_path: Path | None, path: Path | None, source: str | None) -> Recipe:
    """The recipe with ``--data PATH`` / ``--data-source S``: the source is the forced one, else the path's kind.

    Text data needs a text task, teacher and student: on the default recipe (no ``--recipe``) the
    text defaults of recipes/tweets-minilm.yaml are used instead; an image recipe the user named is
    not rewritten behind their back, the error says what to add (and the reverse for text recipes).
    """
    from prokt_deploy.cli.console import err

    source = source or infer_source(path)
    what = repr(str(path)) if path is not None else f"data source {source!r}"
    text_recipe = base.task == "text-classification"
    if source in TEXT_SOURCES and not text_recipe:
        if recipe_path is not None:
            raise RecipeError(
                f"{what} is text data ({source}) but recipe {str(recipe_path)!r} is an image recipe: use a text recipe "
                f"(e.g. {TEXT_DEFAULT_RECIPE}) or add to it task: text-classification, a text teacher (teacher: {{arch: hf:all-minilm-l6-v2, "
                f"init: scratch}} or teacher.factory) and student: {{family: tfm}}"
            )
        base = apply_overrides(load_recipe(TEXT_DEFAULT_RECIPE), {})
        base.data.max_train_samples = None  # that recipe's cap is sized for the tweets, not for this file
        err.print(f"note: {what} is text: using the text defaults of {TEXT_DEFAULT_RECIPE.name} (MiniLM teacher, tfm student, 5MB)", highlight=False)
    elif source not in TEXT_SOURCES and text_recipe:
        raise RecipeError(
            f"{what} is image data ({source}) but recipe {str(recipe_path or TEXT_DEFAULT_RECIPE)!r} is a text recipe: use an image recipe "
            "(e.g. the default) or set task: image-classification, an image teacher (e.g. teacher: {arch: vgg-w32, init: pretrain}) "
            "and student: {family: resnet}"
        )
    return apply_overrides(base, {"data.source": source, "data.path": str(path) if path is not None else None})
