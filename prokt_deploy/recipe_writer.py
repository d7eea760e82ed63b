"""``recipe new``: a commented recipe written for the user's data.

Why: the default recipe holds settings tuned for Fashion-MNIST; a user with an ``.npz`` or a folder
of class folders needs the same settings with their data's facts in place, not a blank page. The
recipe is the default recipe (the text recipe for a text file) with the data's source and path,
a teacher start that works for this data, and the facts read from the data (shape, classes, split
sizes) as comments. It is checked by parsing the written text back before the file appears.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path

import yaml

from prokt_deploy.data import TEXT_SOURCES, DataBundle, infer_source
from prokt_deploy.errors import ProktError, UsageError
from prokt_deploy.recipe import DEFAULT_RECIPE, DEFAULT_RECIPES, NO_TARGET, Recipe, apply_overrides, load_recipe
from prokt_deploy.train import methods

TEXT_RECIPE = DEFAULT_RECIPES["text-classification"]

# Keys always written (even at their schema default) because a user tuning a recipe looks for them (a method's
# section: its MethodSpec.shown).
SHOWN = {
    "data": ("source", "path", "val_fraction", "test_fraction", "split_seed", "max_train_samples"),
    "teacher": ("arch", "factory", "init", "checkpoint", "epochs"),
    "student": ("family",),
    "budget": ("size", "precision", "formats"),
    "train": ("epochs", "min_steps", "batch_size", "keep_best"),
}

SECTION_NOTES = {
    "data": "The data. path is absolute, so the recipe works from any directory. augment.hflip mirrors training images:\n"
    "turn it off where a mirror image is another class (digits, letters).",
    "teacher": "The teacher. init: checkpoint-reset-head loads teacher.checkpoint and zeroes its head (ProKT's reference start);\n"
    "pretrain trains it with cross-entropy in the run first (teacher.epochs, default train.epochs), then zeroes its head.",
    "student": "The student family; the planner picks the largest member whose artifact fits budget.size.",
    "budget": "The deployed artifact's size budget, precision and formats.",
    "train": "The schedule. Each training phase runs at least train.min_steps optimizer steps: when epochs x steps per epoch\n"
    "is fewer, the epochs are raised (the run's manifest records the epochs run and why). keep_best keeps the epoch\n"
    "with the best validation accuracy.",
}  # a method's section: its MethodSpec.description


def _method_sections() -> dict[str, methods.MethodSpec]:
    """The registered methods' recipe sections, in registration order (prokt, kd)."""
    return {spec.section: spec for spec in map(methods.get, methods.names()) if spec.section}


def new_recipe(
    data_path: str | Path,
    *,
    source: str | None = None,
    teacher_checkpoint: str | None = None,
    teacher_factory: str | None = None,
    budget: str | None = None,
    formats: list[str] | None = None,
) -> tuple[Recipe, DataBundle, str]:
    """The recipe for the data at ``data_path``, the data as it loads, and the recipe's commented YAML."""
    from prokt_deploy.data import load_recipe_data
    from prokt_deploy.train.build import build_teacher

    path = Path(data_path).expanduser().resolve()
    inferred = source is None
    source = source or infer_source(path)
    text = source in TEXT_SOURCES
    base = load_recipe(TEXT_RECIPE if text else DEFAULT_RECIPE)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", path.stem).strip("-") or "my-data"
    over: dict[str, object] = {
        "name": name,
        "description": f"ProKT on {path.name} from the {'text' if text else 'default'} recipe's settings (prokt-deploy recipe new).",
        "data.source": source,
        "data.path": str(path),
        "budget.size": budget,
        "budget.formats": formats,
        "teacher.factory": teacher_factory,
    }
    recipe = apply_overrides(base, over)
    recipe.data.max_train_samples = None  # the text recipe caps the tweets for time; the user's file is theirs
    if recipe.budget.target == NO_TARGET:
        recipe.budget.target = None  # the text recipe keeps its size-only plan; a new recipe gets the default latency rule
    teacher_note = None
    if teacher_checkpoint is not None:
        recipe.teacher.init = "checkpoint-reset-head"
        recipe.teacher.checkpoint = str(Path(teacher_checkpoint).expanduser().resolve()) if ":" not in teacher_checkpoint else teacher_checkpoint
    elif teacher_factory is not None or recipe.teacher.checkpoint is not None:
        recipe.teacher.checkpoint = None  # the shipped checkpoint belongs to the default arch, not to a factory
        recipe.teacher.init = "pretrain"
    data = load_recipe_data(recipe)
    if not text and teacher_checkpoint is None and teacher_factory is None:
        shipped = base.teacher.checkpoint
        trial = recipe.model_copy(update={"teacher": recipe.teacher.model_copy(update={"init": base.teacher.init, "checkpoint": shipped})})
        try:
            build_teacher(trial, data)  # the shipped teacher fits this data's channels and classes?
            recipe = trial
        except ProktError as e:
            teacher_note = f"{shipped} does not fit this data ({' '.join(str(e).split())[:160]}): the teacher is trained in the run"
    elif teacher_checkpoint is not None:
        build_teacher(recipe, data)  # a checkpoint that does not load fails now, not at run time
    if data.name == "image-folder":  # pin what the folder's first image decided
        recipe.data.image_size = tuple(data.input_shape[1:])
        recipe.data.channels = int(data.input_shape[0])
    recipe = Recipe.model_validate(recipe.model_dump())  # the assignments above, validated as a whole
    text_out = render(recipe, data, path, inferred=inferred, teacher_note=teacher_note)
    if Recipe.model_validate(yaml.safe_load(text_out)) != recipe:
        raise AssertionError("recipe new: the written YAML does not parse back to the recipe")  # a bug, not a user error
    return recipe, data, text_out


def _facts(data: DataBundle, path: Path, source: str, inferred: bool, split_seed: int) -> list[str]:
    n = len(data.train) + len(data.val) + len(data.test)
    shape = " x ".join(map(str, data.input_shape))
    classes = ", ".join(data.classes[:12]) + (", ..." if len(data.classes) > 12 else "")
    if data.is_text:
        kind = f"text, tokenised to (2, {data.input['max_length']}): ids and mask"
    else:
        kind = f"images, input shape (C, H, W) {shape}"
    return [
        f"Data: {path}",
        f"  source: {source} ({'inferred from the path' if inferred else 'given with --data-source'})",
        f"  {n:,} samples; {kind}",
        f"  {data.num_classes} classes: {classes}",
        f"  splits (split seed {split_seed}): train {len(data.train):,} / val {len(data.val):,} / test {len(data.test):,}",
    ]


def _section(recipe: Recipe, key: str) -> dict:
    model = getattr(recipe, key)
    full = model.model_dump(mode="json")
    lean = model.model_dump(mode="json", exclude_defaults=True)
    spec = _method_sections().get(key)
    shown = spec.shown if spec else SHOWN.get(key, ())
    return {k: v for k, v in full.items() if k in lean or k in shown}


def render(recipe: Recipe, data: DataBundle, path: Path, *, inferred: bool = True, teacher_note: str | None = None) -> str:
    """The recipe as commented YAML: a header of data facts, then each section with a note."""
    split_seed = recipe.seed if recipe.data.split_seed is None else recipe.data.split_seed
    lines = [
        f"# Written by `prokt-deploy recipe new` on {time.strftime('%Y-%m-%d')}; check it with `prokt-deploy recipe check FILE`,",
        "# run it with `prokt-deploy run FILE`. Every key is documented in docs/data.md (Recipes).",
        "#",
    ]
    lines += [f"# {line}" for line in _facts(data, path, recipe.data.source, inferred, split_seed)]
    steps = -(-len(data.train) // recipe.train.batch_size)
    lines.append(f"#   {steps} optimizer steps per epoch at batch {recipe.train.batch_size}")
    top = {k: getattr(recipe, k) for k in ("name", "description", "task", "seed", "device", "method")}
    lines += ["", yaml.safe_dump(top, sort_keys=False, width=1000).rstrip()]
    sections = _method_sections()
    for key in ("data", "teacher", "student", "budget", "train", *sections):
        section = _section(recipe, key)
        lines.append("")
        note = sections[key].description if key in sections else SECTION_NOTES[key]
        if key == "teacher" and teacher_note:
            note += "\n" + teacher_note
        lines += [f"# {line}" for line in note.splitlines()]
        lines.append(yaml.safe_dump({key: section}, sort_keys=False, default_flow_style=None, width=1000).rstrip())
    return "\n".join(lines) + "\n"


def check_new_path(out: Path) -> None:
    """``recipe new`` never overwrites: an existing file is a usage error (checked before the data is read)."""
    if out.exists() or out.is_symlink():
        raise UsageError(f"{out} already exists; recipe new does not overwrite a file: choose another --out or remove it")


def write_new(out: Path, text: str) -> None:
    """Write ``text`` to ``out`` atomically and without clobbering: a temporary file beside it, then a hard
    link (which fails if ``out`` appeared meanwhile), so ``out`` is either absent or complete."""
    out = Path(out)
    check_new_path(out)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, out)
        except FileExistsError:
            raise UsageError(f"{out} already exists; recipe new does not overwrite a file") from None
        except OSError:  # a file system without hard links: a rename after the check above
            if out.exists():
                raise UsageError(f"{out} already exists; recipe new does not overwrite a file") from None
            os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
