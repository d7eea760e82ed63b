"""Options shared by the commands that read a recipe, and how they override it."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from prokt_deploy.budget import parse_size
from prokt_deploy.errors import RecipeError, UsageError
from prokt_deploy.recipe import DEFAULT_RECIPE, RECIPES_DIR, Recipe, apply_overrides, load_recipe
from prokt_deploy.train import methods

TEXT_DEFAULT_RECIPE = RECIPES_DIR / "tweets-minilm.yaml"

RecipeOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--recipe",
        "-r",
        help="Recipe YAML, or a shipped recipe by name ("
        + ", ".join(sorted(f.stem for f in RECIPES_DIR.glob("*.yaml")))
        + "; default: fashion-mnist).",
    ),
]
RecipeArg = Annotated[
    Optional[Path], typer.Argument(metavar="RECIPE", help="Recipe YAML or a shipped recipe's name (the same as --recipe).", show_default=False)
]


def one_recipe(positional: Path | None, option: Path | None) -> Path | None:
    """The recipe given as the positional RECIPE or as --recipe (the same for run, distill and plan); both: a usage error
    unless they are the same."""
    if positional is not None and option is not None and positional != option:
        raise UsageError(f"two recipes given ({positional} and --recipe {option}); give one")
    return positional or option


LatenciesOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--latencies", help="Plan from latencies measured on the device: the device-results.json of a 'plan --bundle' bundle (exit 12 if unreadable)."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")]
TrustCodeOpt = Annotated[
    bool,
    typer.Option(
        "--trust-recipe-code",
        help="Allow the recipe (or the run's saved recipe) to name code to import and run (teacher.factory). Only for recipes you trust.",
    ),
]


def _size(text: str) -> str:
    parse_size(text)  # a malformed budget is a usage error (exit 2) before the recipe is read; the schema keeps the string
    return text


def _formats(text: str) -> list[str]:
    """``onnx,litert`` -> ["onnx", "litert"]: registered format names (a usage error otherwise, exit 2)."""
    import exporters

    names = [f.strip().lower() for f in text.split(",") if f.strip()]
    unknown = [f for f in names if f not in exporters.FORMATS]
    if unknown or not names:
        raise UsageError(f"--formats {text!r}: use registered formats, comma-separated: {', '.join(exporters.FORMATS)}")
    return list(dict.fromkeys(names))


@dataclass(frozen=True)
class Override:
    """One command-line flag that overrides a recipe field: ``--budget 5MB`` sets ``budget.size``."""

    name: str  # the command function's parameter
    flags: tuple[str, ...]
    type: type
    help: str
    path: str | None  # the recipe field it sets; None: resolve_recipe handles it (the data flags)
    convert: Callable[[Any], Any] | None = None  # flag value -> recipe value (and the usage check)

    def annotation(self) -> Any:
        return Annotated[Optional[self.type], typer.Option(*self.flags, help=self.help)]


#: Every recipe override of the CLI, in the order the commands list them. A new flag is one line here
#: (and its name in the commands' ``@takes_overrides``).
OVERRIDES: dict[str, Override] = {
    o.name: o
    for o in (
        Override(
            "budget",
            ("--budget",),
            str,
            "Size budget of the deployed artifact, e.g. 5MB, 200KB, 1.5MiB (kB/MB = 1000, KiB/MiB = 1024).",
            "budget.size",
            _size,
        ),
        Override(
            "formats",
            ("--formats",),
            str,
            "Deploy formats, comma-separated: onnx, openvino, litert, executorch (recipe budget.formats; the size budget binds on the "
            "largest; run exports them).",
            "budget.formats",
            _formats,
        ),
        Override("method", ("--method",), str, " | ".join(methods.names()) + ".", "method"),  # the methods registered at import
        Override("epochs", ("--epochs",), int, "Training epochs.", "train.epochs"),
        Override("seed", ("--seed",), int, "Random seed (data split, init, order).", "seed"),
        Override("device", ("--device",), str, "Training device: cpu, cuda, cuda:N or auto.", "device"),
        Override(
            "max_train_samples",
            ("--max-train-samples",),
            int,
            "Use only the first N (seeded) training samples: a quick run.",
            "data.max_train_samples",
        ),
        Override(
            "labels",
            ("--labels",),
            int,
            "Keep N labelled training samples, the same number per class (seeded): the few-label setting (recipe data.labels).",
            "data.labels",
        ),
        Override(
            "unlabeled_rest",
            ("--unlabeled-rest",),
            bool,
            "With --labels: pass the rest of the training split unlabelled, as a transfer set for kd, dkd and prokt (data.unlabeled_rest).",
            "data.unlabeled_rest",
        ),
        Override(
            "unlabeled",
            ("--unlabeled",),
            Path,
            "Unlabelled inputs for kd, dkd and prokt to learn from (a transfer set): an .npz with x, a folder of images, or a .txt/.csv/"
            ".tsv/.jsonl of texts; the shape, channels and scale of --data's (recipe data.unlabeled).",
            "data.unlabeled",
            str,
        ),
        Override(
            "max_val_samples",
            ("--max-val-samples",),
            int,
            "Use only the first N (seeded) validation samples: the validation set a few-label user has (data.max_val_samples).",
            "data.max_val_samples",
        ),
        Override(
            "data_dir",
            ("--data", "--data-dir"),
            Path,
            "Your dataset; its kind picks data.source: a .npz file (npz), a folder of class folders (image-folder), a folder with the "
            "Fashion-MNIST IDX .gz files (fashion-mnist), a .csv/.tsv/.jsonl file (text-file: a text task). Shape, channels and classes come from the data.",
            None,
        ),
        Override(
            "data_source",
            ("--data-source",),
            str,
            "Force data.source instead of inferring it from --data: digits, fashion-mnist, image-folder, npz, tweets or text-file.",
            None,
        ),
        Override(
            "min_steps",
            ("--min-steps",),
            int,
            "train.min_steps: raise the epochs of a training phase until it gets at least N optimizer steps (0: off).",
            "train.min_steps",
        ),
        Override("teacher_checkpoint", ("--teacher-checkpoint",), Path, "Teacher weights (.safetensors or a state_dict).", "teacher.checkpoint", str),
        Override(
            "teacher_init",
            ("--teacher-init",),
            str,
            "scratch | checkpoint | checkpoint-reset-head | pretrain (CE first in this run, then ProKT with the head reset).",
            "teacher.init",
        ),
        Override("teacher_factory", ("--teacher-factory",), str, "'module:function' returning the teacher nn.Module.", "teacher.factory"),
        Override("student", ("--student",), str, "Pin the student architecture instead of planning it, e.g. resnet-w8-d1.", "student.arch"),
        Override(
            "family",
            ("--family",),
            str,
            "Student families to search: one (resnet), several (resnet,wide) or auto (every family for the data).",
            "student.family",
            lambda text: parse_families(text),
        ),
        Override(
            "target",
            ("--target",),
            str,
            "The runtime the plan times the fitting candidates and the teacher in: onnx, openvino[:DEVICE], litert or executorch; none: plan by size alone "
            "(recipe budget.target; default: the recipe's first format).",
            "budget.target",
        ),
        Override(
            "ram_budget",
            ("--ram-budget",),
            str,
            "Only students whose peak activation memory at batch 1 and the deploy precision is within it, e.g. 32KB (recipe "
            "budget.ram; the arena a microcontroller needs, weights not counted).",
            "budget.ram",
            _size,
        ),
        Override(
            "latency_budget",
            ("--latency-budget",),
            str,
            "Only students whose batch-1 p50 is within it, e.g. 0.2ms (recipe budget.latency; implies --target onnx).",
            "budget.latency",
        ),
    )
}
#: the overrides of the training commands (distill, run)
TRAINING = tuple(OVERRIDES)


def takes_overrides(*names: str) -> Callable[[Callable], Callable]:
    """Give a Typer command the override flags ``names`` (from :data:`OVERRIDES`), in place of its parameter
    ``overrides``; the command receives ``overrides``: a dict of the given flags' values by name (None when not
    given), for :func:`resolve_recipe`."""
    table = [OVERRIDES[n] for n in names]

    def decorate(command: Callable) -> Callable:
        sig = inspect.signature(command, eval_str=True)
        params = list(sig.parameters.values())
        at = [p.name for p in params].index("overrides")
        added = [inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=o.annotation()) for o in table]
        new_params = (
            [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params[:at]]
            + added
            + [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params[at + 1 :]]
        )

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            given = {o.name: kwargs.pop(o.name) for o in table}
            return command(**kwargs, overrides=given)

        wrapper.__signature__ = sig.replace(parameters=new_params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in new_params}
        return wrapper

    return decorate


def given_flags(overrides: dict[str, Any]) -> list[str]:
    """The flags of the overrides that were given (for messages such as --resume's refusal)."""
    return [OVERRIDES[n].flags[0] for n, v in overrides.items() if v is not None]


def on_command_line(ctx: typer.Context, param: str) -> bool:
    """Whether the option ``param`` (its Python name) was given on the command line (or its environment variable),
    even at its default value, which a comparison with the default cannot see: ``--resume --threads 1`` must be
    refused like ``--threads 2``."""
    source = ctx.get_parameter_source(param)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


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
        raise RecipeError(
            f"{source} names code to import and run ({', '.join(hooks)}); refused without consent: "
            "pass --trust-recipe-code if you trust it, or name the factory yourself with --teacher-factory"
        )


def resolve_recipe(recipe: Path | None, overrides: dict[str, Any] | None = None, *, trust_recipe_code: bool = False) -> Recipe:
    """Load the recipe and apply the command-line ``overrides`` (by :data:`OVERRIDES` name; flags win over
    the file). A recipe that names code is refused unless ``trust_recipe_code`` or the code is named on
    the command line."""
    given = {n: v for n, v in (overrides or {}).items() if v is not None}
    values = {n: (OVERRIDES[n].convert(v) if OVERRIDES[n].convert else v) for n, v in given.items()}  # usage errors first
    base = load_recipe(recipe)
    if "data_dir" in given or "data_source" in given:
        base = with_data(base, recipe, given.get("data_dir"), given.get("data_source"))
    if "teacher_factory" not in given:
        require_code_consent(code_hooks(base.teacher.factory), trust_recipe_code, f"recipe {str(recipe or DEFAULT_RECIPE)!r}")
    if "teacher_checkpoint" in given and "teacher_init" not in given and base.teacher.init in ("scratch", "pretrain"):
        values["teacher_init"] = "checkpoint"  # a given checkpoint is used as it is unless --teacher-init says otherwise
    return apply_overrides(base, {OVERRIDES[n].path: v for n, v in values.items() if OVERRIDES[n].path is not None})


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
    from prokt_deploy.data import TEXT_SOURCES, infer_source

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
