"""Recipes: YAML files (``yaml.safe_load`` only) validated by a pydantic schema.

Unknown keys are errors that name their location (``train.epoch: extra inputs are not
permitted``). Command-line flags override fields through :func:`apply_overrides`.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from prokt_deploy.budget import parse_latency, parse_size, parse_target
from prokt_deploy.errors import RecipeError, UsageError

# The recipes ship inside the package (package data), so a wheel installed anywhere has them; the
# top-level recipes/ of a clone is a symlink to this directory (one source of truth).
RECIPES_DIR = Path(str(files("prokt_deploy") / "recipes"))
DEFAULT_RECIPE = RECIPES_DIR / "fashion-mnist.yaml"
#: ``budget.target: none``: plan by size alone (the default times in the first of ``budget.formats``)
NO_TARGET = "none"


def shipped_recipe(name: str) -> Path | None:
    """The shipped recipe called ``name`` (``digits`` or ``digits.yaml``), so that a user of an
    installed wheel can name one without knowing where site-packages is; None when there is none."""
    if not name or "/" in name or "\\" in name:
        return None
    stem = name.removesuffix(".yaml")
    candidate = RECIPES_DIR / f"{stem}.yaml"
    return candidate if candidate.is_file() else None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Section(_Strict):
    """The base of a method's recipe section (``prokt:``, ``kd:``): unknown keys are errors, assignments validated."""


# --- the methods a recipe may name -------------------------------------------------------------------
# A method is one file in prokt_deploy/train/methods/ (its training step needs the training code, two stages up);
# it registers here the little the recipe needs to validate a recipe: its name and its section's schema. The package
# (prokt_deploy/__init__.py) imports the built-in methods, so they are known wherever a recipe is read.

#: method name -> (its section's key in the recipe, or None; the section's pydantic model)
_METHOD_SECTIONS: dict[str, tuple[str | None, type[Section] | None]] = {}


def register_method_schema(name: str, section: str | None = None, model: type[Section] | None = None) -> None:
    """Let recipes name ``method: NAME`` and, when ``section`` is given, carry ``SECTION:`` validated by ``model``
    (every recipe gets the section, at its defaults when absent). Called by ``prokt_deploy.train.methods.register``."""
    if name in _METHOD_SECTIONS:
        raise ValueError(f"method {name!r} is already registered")
    if (section is None) != (model is None):
        raise ValueError(f"method {name!r}: a section needs both its key and its model")
    taken = set(Recipe.model_fields) | {s for s, _ in _METHOD_SECTIONS.values() if s}
    if section in taken:
        raise ValueError(f"method {name!r}: the recipe already has a {section!r} section")
    if model is not None and not issubclass(model, Section):
        raise TypeError(f"method {name!r}: its section model must subclass prokt_deploy.recipe.Section")
    _METHOD_SECTIONS[name] = (section, model)


def unregister_method_schema(name: str) -> None:
    """Forget a method (a test that registered one cleans up after itself)."""
    _METHOD_SECTIONS.pop(name, None)


def method_names() -> list[str]:
    """The methods a recipe may name, in registration order."""
    return list(_METHOD_SECTIONS)


def _method_sections() -> dict[str, type[Section]]:
    return {section: model for section, model in _METHOD_SECTIONS.values() if section is not None and model is not None}


class AugmentConfig(_Strict):
    """On-the-fly training-split augmentation for images (prokt_deploy/train/augment.py); all off by default."""

    crop_padding: int = Field(0, ge=0, le=64)  # pad by p pixels of background, crop back at a random offset
    hflip: bool = False  # mirror left-right with probability 1/2 (off for digits and text)
    resized_crop: float | None = Field(None, gt=0, le=1)  # random crop of at least this area fraction, resized back


class DataConfig(_Strict):
    source: Literal["digits", "fashion-mnist", "image-folder", "npz", "tweets", "text-file"] = "digits"
    path: str | None = None
    val_fraction: float = Field(0.1, gt=0, lt=1)
    # The seed of the train/val(/test) split; None: the recipe's seed. Fix it to compare seeds on one
    # split (the shipped Fashion-MNIST teacher was trained on split 0's training part only).
    split_seed: int | None = None
    test_fraction: float = Field(0.2, gt=0, lt=1)
    max_train_samples: int | None = Field(None, ge=1)
    image_size: tuple[int, int] | None = None
    channels: Literal[1, 3] | None = None
    # text sources (tweets, text-file)
    tokenizer: str | None = None  # directory or offline alias; default: the hf: teacher's own tokenizer
    max_length: int = Field(64, ge=2, le=4096)  # tokens: padded on the right and truncated to this
    text_column: str = "text"
    label_column: str = "label"
    augment: AugmentConfig = AugmentConfig()
    # Few labels and a transfer set (docs/data.md#few-labels-and-unlabelled-data). labels: keep N labelled training
    # samples, the same number per class (seeded); unlabeled_rest: the rest of the training split joins the
    # unlabelled pool with its labels dropped; unlabeled: a file or folder of unlabelled inputs (npz with x, a folder
    # of images, a .txt/.csv/.tsv/.jsonl of texts). Methods with a teacher (kd, dkd, prokt) learn from the pool too.
    labels: int | None = Field(None, ge=2)
    unlabeled_rest: bool = False
    unlabeled: str | None = None
    max_val_samples: int | None = Field(None, ge=1)  # the first N (seeded) validation samples: a few-label user's validation set

    @model_validator(mode="after")
    def _rest_needs_labels(self) -> DataConfig:
        if self.unlabeled_rest and self.labels is None:
            raise ValueError("data.unlabeled_rest needs data.labels: it passes the training samples beyond the kept labels unlabelled")
        return self


class TeacherConfig(_Strict):
    arch: str = "resnet-w16-d1"
    factory: str | None = None  # 'module:function' returning an nn.Module (then arch is only a label)
    # scratch: random weights (ProKT trains it jointly from there; KD first trains it with CE in the run);
    # checkpoint / checkpoint-reset-head: load teacher.checkpoint, keep its head or zero it (the reference);
    # pretrain: train it with CE in this run first (teacher.epochs), then for ProKT zero its head and
    # fine-tune it jointly: checkpoint-reset-head without a separate train-teacher run.
    init: Literal["scratch", "checkpoint", "checkpoint-reset-head", "pretrain"] = "scratch"
    checkpoint: str | None = None
    epochs: int | None = Field(None, ge=1)  # epochs when training a converged teacher (kd, pretrain, train-teacher); default train.epochs

    @model_validator(mode="after")
    def _checkpoint_matches_init(self) -> TeacherConfig:
        if self.checkpoint is not None and self.init in ("scratch", "pretrain"):
            raise ValueError(f"teacher.checkpoint is set but teacher.init is {self.init!r}: use checkpoint or checkpoint-reset-head to load it")
        return self


class StudentConfig(_Strict):
    # One family, a list of families searched together (e.g. [resnet, wide]) or auto (every student family
    # of the data's kind); across families the planner ranks by capacity (prokt_deploy.planner).
    family: str | list[str] = "resnet"
    arch: str | None = None  # pin an architecture instead of planning one from the budget
    # text: start the student's token embeddings from the teacher's, projected onto their top
    # principal components (same for every method; not part of ProKT itself)
    init_embeddings: Literal["random", "teacher-pca"] = "random"
    # Zero the student's classification head before training. None: ProKT's prokt.zero_init_heads for
    # prokt, the family's default init for kd and scratch. true/false: the same for every method (a level
    # comparison gives every method the same student start).
    zero_init_head: bool | None = None


class BudgetConfig(_Strict):
    size: str = "5MB"
    precision: str = "int8"  # a precision of the exporter registry (exporters.PRECISIONS)
    formats: list[str] = ["onnx", "openvino"]  # formats of the exporter registry (exporters.FORMATS)
    max_teacher_fraction: float = Field(0.25, gt=0, le=1)
    # int8 export: keep the fewest layers in fp32 that meet the accuracy gate (exporters/accuracy_aware.py);
    # auto = only when plain int8 misses --max-int8-drop
    accuracy_aware: Literal["auto", "on", "off"] = "auto"
    # int8 export: fine-tune the student with simulated int8 against its teacher first (prokt_deploy/train/qat.py);
    # auto = only when post-training int8, accuracy-aware included, still misses --max-int8-drop
    qat: Literal["auto", "on", "off"] = "auto"
    # Latency in the plan (prokt_deploy.planner): time every fitting candidate and the teacher's artifacts in
    # this runtime (onnx, openvino[:DEVICE], litert or executorch) and never choose a student slower than the teacher's fastest
    # artifact when a faster one fits. Left out (or null): the same rule, timed in the first of `formats`.
    # none: plan by size alone (a latency budget, --latencies or --bundle still time, in onnx).
    target: str | None = None
    latency: str | None = None  # a latency budget, e.g. 0.2ms: only students whose batch-1 p50 is within it
    # a RAM budget, e.g. 64KB: only students whose peak activation memory at batch 1 and the deploy precision is within
    # it (prokt_deploy/planner/memory.py: the arena a microcontroller needs; weights are not counted)
    ram: str | None = None

    @field_validator("target", "latency")
    @classmethod
    def _valid_latency_plan(cls, v: str | None, info) -> str | None:  # pydantic's ValidationInfo
        if info.field_name == "target" and v is not None and v.strip().lower() == NO_TARGET:
            return NO_TARGET
        if v is not None:
            parse, flag = {"target": (parse_target, "--target"), "latency": (parse_latency, "--latency-budget")}[info.field_name]
            try:
                parse(v)
            except UsageError as e:
                raise ValueError(str(e).replace(flag, f"budget.{info.field_name}")) from None
        return v

    @field_validator("precision")
    @classmethod
    def _known_precision(cls, v: str) -> str:
        import exporters

        known = sorted({p for ps in exporters.PRECISIONS.values() for p in ps})
        if v not in known:
            raise ValueError(f"unknown precision {v!r}; the exporters know {', '.join(known)}")
        return v

    @field_validator("formats")
    @classmethod
    def _known_formats(cls, v: list[str]) -> list[str]:
        import exporters

        unknown = [f for f in v if f not in exporters.FORMATS]
        if unknown:
            raise ValueError(f"unknown format {unknown[0]!r}; the exporters know {', '.join(exporters.FORMATS)}")
        return v

    @field_validator("size", "ram")
    @classmethod
    def _valid_size(cls, v: str | None) -> str | None:
        try:
            if v is not None:
                parse_size(v)
        except UsageError as e:
            raise ValueError(str(e)) from None
        return v

    @property
    def bytes(self) -> int:
        """``size`` in bytes (the one place the budget string is read; the field keeps what the user wrote)."""
        return parse_size(self.size)


class OptimizerConfig(_Strict):
    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    warmup_steps: int = Field(0, ge=0)


class TrainConfig(_Strict):
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(128, ge=1)
    grad_clip: float | None = Field(1.0, gt=0)
    teacher_optimizer: OptimizerConfig = OptimizerConfig(lr=1e-3)
    student_optimizer: OptimizerConfig = OptimizerConfig(lr=3e-3)
    # Keep the weights of the epoch with the best validation accuracy (the authors report the best
    # validation checkpoint); the manifest records it as best_epoch. false: keep the last epoch.
    keep_best: bool = True
    # A floor on optimizer steps per training phase (the student's, and a teacher CE phase): when
    # epochs x steps per epoch is below it, the phase runs ceil(min_steps / steps per epoch) epochs
    # instead, so a recipe tuned on a large dataset still converges on a small one. 0: off.
    min_steps: int = Field(0, ge=0)
    # With an unlabelled pool (data.unlabeled / data.unlabeled_rest), the share of each batch drawn from the labelled
    # samples (the rest from the pool) for the methods that learn from it; an epoch is a pass over both together.
    labeled_share: float = Field(0.25, gt=0, lt=1)


class Recipe(BaseModel):
    """A whole recipe. Its fields are the sections below plus one section per registered method that has settings
    (``recipe.prokt``, ``recipe.kd``: validated by the method's model, see :func:`register_method_schema`); any other
    top-level key is an error, as everywhere else."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)  # "allow" holds the method sections only (_method_sections)
    name: str = "recipe"
    description: str = ""
    task: Literal["image-classification", "text-classification"] = "image-classification"
    seed: int = 0
    device: str = "cpu"
    method: str = "prokt"
    data: DataConfig = DataConfig()
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    budget: BudgetConfig = BudgetConfig()
    train: TrainConfig = TrainConfig()

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        if v not in _METHOD_SECTIONS:
            raise ValueError(f"unknown method {v!r}; known methods: {', '.join(_METHOD_SECTIONS)}")
        return v

    @model_validator(mode="wrap")
    @classmethod
    def _method_sections(cls, data: object, handler):  # pydantic's handler
        """Each registered method's section validated by its model (defaults when absent), after the fixed fields,
        in registration order; any other unknown key is an error, with every error of the recipe reported at once."""
        if not isinstance(data, dict):
            return handler(data)
        sections = _method_sections()
        errors: list[dict] = []
        values: dict[str, object] = {}
        for key, model in sections.items():
            try:
                values[key] = _section_value(key, model, data.get(key, {}))
            except ValidationError as e:
                errors += _line_errors(e)
        fixed = {k: v for k, v in data.items() if k in cls.model_fields}
        errors += [{"type": "extra_forbidden", "loc": (k,), "input": v} for k, v in data.items() if k not in cls.model_fields and k not in sections]
        try:
            recipe = handler({**fixed, **values})
        except ValidationError as e:
            errors = _line_errors(e) + errors
            recipe = None
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return recipe

    def __setattr__(self, name: str, value: object) -> None:
        """An assignment to a method's section is validated by its model; to any other unknown name it is an error."""
        if name in type(self).model_fields or name.startswith("_"):
            return super().__setattr__(name, value)
        sections = _method_sections()
        if name not in sections:
            error = {"type": "no_such_attribute", "loc": (name,), "input": value, "ctx": {"attribute": name}}
            raise ValidationError.from_exception_data(type(self).__name__, [error])
        super().__setattr__(name, _section_value(name, sections[name], value))

    @model_validator(mode="after")
    def _task_matches_data(self) -> Recipe:
        text_source = self.data.source in ("tweets", "text-file")
        if text_source and self.task != "text-classification":
            raise ValueError(f"data.source {self.data.source!r} is text: set task: text-classification")
        if not text_source and self.task == "text-classification":
            raise ValueError(f"task text-classification needs a text data.source (tweets or text-file), not {self.data.source!r}")
        return self

    @model_validator(mode="after")
    def _few_labels_are_few(self) -> Recipe:
        """With data.labels no model may have seen a label beyond the kept ones: the shipped Fashion-MNIST teacher was
        trained on all 54,000 training labels, so on Fashion-MNIST it would carry the pool's labels into every
        distilled student and inflate its gain over scratch."""
        d = self.data
        if (d.unlabeled or d.unlabeled_rest) and self.train.batch_size < 2:
            raise ValueError("unlabelled data needs train.batch_size of at least 2 (each batch mixes labelled and unlabelled samples)")
        ckpt = self.teacher.checkpoint or ""
        if d.labels is not None and d.source == "fashion-mnist" and ckpt.startswith("shipped:fashion-mnist"):
            raise ValueError(
                f"data.labels keeps {d.labels} labels but the teacher {ckpt} was trained on all 54,000 Fashion-MNIST training labels: "
                "it would leak the labels beyond the kept ones; use a teacher that has not seen them (recipes/fashion-mnist-efficientnet.yaml's "
                "ImageNet EfficientNet-Lite0, teacher.init: pretrain, or your own checkpoint)"
            )
        return self


def _line_errors(err: ValidationError) -> list[dict]:
    """``err``'s errors as pydantic takes them back (ValidationError.from_exception_data)."""
    return [{k: v for k, v in e.items() if k in ("type", "loc", "input", "ctx")} for e in err.errors()]


def _section_value(key: str, model: type[Section], raw: object) -> Section:
    """``raw`` validated as the section ``key``; errors located under the key (``prokt.lam``)."""
    if isinstance(raw, model):
        return raw
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise ValidationError.from_exception_data("Recipe", [{**x, "loc": (key, *x["loc"])} for x in _line_errors(e)]) from None


def _format_errors(err: ValidationError, source: str) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    return f"{source}: " + "; ".join(parts)


#: The default recipe of each task: the settings a recipe file leaves out of :data:`TUNED_KEYS` come from it.
DEFAULT_RECIPES = {"image-classification": DEFAULT_RECIPE, "text-classification": RECIPES_DIR / "tweets-minilm.yaml"}

#: Keys a recipe file may leave out and then gets from its task's default recipe (the value that recipe was tuned
#: with) rather than from the schema: the rules of the schedule that hold whatever the dataset, the models, the
#: method and the optimizer (a floor on optimizer steps, keeping the best validation epoch, gradient clipping).
#: Not carried over: the data's settings (augmentation, split seed: the default recipe's belong to Fashion-MNIST and
#: its shipped teacher), the teacher, the student family, epochs, batch size and learning rates (tuned together for
#: that data and teacher), the methods' settings (the method's own defaults). ``budget.target`` left out is the
#: never-slower-than-the-teacher rule timed in the first of ``budget.formats`` (see BudgetConfig.target).
TUNED_KEYS = ("train.min_steps", "train.keep_best", "train.grad_clip")


@dataclass(frozen=True)
class Defaulted:
    """A key a recipe file leaves out, the value it gets and where that comes from."""

    key: str
    value: object
    source: str


def _read_mapping(path: str | Path | None) -> tuple[Path, dict]:
    path = Path(path) if path is not None else DEFAULT_RECIPE
    if not path.exists() and (shipped := shipped_recipe(str(path))) is not None:
        path = shipped
    try:
        text = path.read_text()
    except FileNotFoundError:
        shipped = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
        raise RecipeError(f"recipe {str(path)!r} not found; shipped recipes (by name): {shipped}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"cannot read recipe {str(path)!r}: {e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "malformed YAML"
        raise RecipeError(f"{path}: not valid YAML{where}: {problem}") from None
    if data is None:
        raise RecipeError(f"{path}: recipe is empty")
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of fields, got {type(data).__name__}")
    return path, data


def _lookup(data: dict, dotted: str) -> tuple[bool, object]:
    node: object = data
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return False, None
        node = node[key]
    return True, node


def _tuned_defaults(data: dict) -> list[Defaulted]:
    """The :data:`TUNED_KEYS` that ``data`` (a recipe mapping) leaves out, with their default recipe's values."""
    task = data.get("task", "image-classification")
    base_path = DEFAULT_RECIPES.get(task, DEFAULT_RECIPE) if isinstance(task, str) else DEFAULT_RECIPE
    base = yaml.safe_load(base_path.read_text())
    out = []
    for dotted in TUNED_KEYS:
        section, _, _ = dotted.partition(".")
        if _lookup(data, dotted)[0] or not isinstance(data.get(section, {}), dict):
            continue  # set, or a malformed section that validation reports
        found, value = _lookup(base, dotted)
        if found:
            out.append(Defaulted(dotted, value, f"{base_path.name}, the default recipe of {task}"))
    return out


def _with_defaults(data: dict, defaults: list[Defaulted]) -> dict:
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for d in defaults:
        section, _, leaf = d.key.partition(".")
        data.setdefault(section, {})[leaf] = d.value
    return data


def _schema_defaults(model: type[BaseModel], data: object, prefix: str = "") -> list[str]:
    """Dotted keys of ``model`` that ``data`` leaves out (leaves; a section left out lists its leaves)."""
    data = data if isinstance(data, dict) else {}
    out = []
    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += _schema_defaults(ann, data.get(name), f"{prefix}{name}.")
        elif name not in data:
            out.append(prefix + name)
    return out


def recipe_defaults(path: str | Path | None = None) -> list[Defaulted]:
    """What the recipe file at ``path`` leaves out and where each value comes from: its task's default recipe
    (:data:`TUNED_KEYS`), the planner's rule (``budget.target``) or the schema (``recipe check`` lists them)."""
    path, data = _read_mapping(path)
    recipe = load_recipe(path)
    tuned = _tuned_defaults(data)
    out = list(tuned)
    if recipe.budget.target is None:
        out.append(
            Defaulted(
                "budget.target",
                recipe.budget.formats[0],
                f"the first of budget.formats: never slower than the teacher's fastest artifact; budget.target: {NO_TARGET} turns it off",
            )
        )
    shown = {d.key for d in out}
    full = recipe.model_dump(mode="json")
    left_out = _schema_defaults(Recipe, data)
    for section, model in _method_sections().items():  # the methods' sections are validated apart from the fields
        left_out += _schema_defaults(model, (data if isinstance(data, dict) else {}).get(section), f"{section}.")
    for dotted in left_out:
        if dotted not in shown:
            out.append(Defaulted(dotted, _lookup(full, dotted)[1], "schema"))
    return out


def load_recipe(path: str | Path | None = None) -> Recipe:
    """Read and validate a recipe; None means the default recipe. Keys of :data:`TUNED_KEYS` the file leaves out
    come from its task's default recipe (:func:`recipe_defaults` lists every key left out)."""
    path, data = _read_mapping(path)
    try:
        return Recipe.model_validate(_with_defaults(data, _tuned_defaults(data)))
    except ValidationError as e:
        raise RecipeError(_format_errors(e, str(path))) from None


def apply_overrides(recipe: Recipe, overrides: dict[str, object]) -> Recipe:
    """Return a copy with dotted-path overrides applied, e.g. {'train.epochs': 2}; None values are skipped."""
    data = recipe.model_dump()
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise UsageError(_format_errors(e, "command-line override")) from None


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
