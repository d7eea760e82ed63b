"""The method registry: what a training method is, for everything that lists, checks or runs methods.

A method is one file (``prokt_deploy/train/methods/<name>.py``, or any module of the user's) that declares a
:class:`MethodSpec` and registers it in one line, ``register(MethodSpec(...))``. The spec says:

* ``name``: what ``method:`` in a recipe, ``--method`` and ``--compare`` call it (the manifest records it);
* ``step``: the training step, a function of a :class:`StepSetup` (the recipe, the models, the number of steps)
  that returns the :class:`~prokt_deploy.train.engine.Method` the engine's loop runs;
* ``teacher``: which models it trains and what it needs. ``"none"``: the student alone, no teacher (scratch);
  ``"frozen"``: the student alone, against a converged teacher that it does not change (KD), so the teacher is
  trained with cross-entropy first unless ``teacher.init: checkpoint`` gives a converged one; ``"joint"``: teacher
  and student together (ProKT), the teacher trained with cross-entropy first only with ``teacher.init: pretrain``;
* ``section`` and ``config``: its recipe section (a :class:`prokt_deploy.recipe.Section` model: unknown keys are
  errors) with its defaults; ``recipe.<section>`` is the validated section;
* ``zero_heads``: whether the heads start at zero (the student's, and a teacher trained from scratch in the run);
  ``reset_pretrained_teacher_head``: whether a teacher pre-trained in the run gets its head zeroed before the method;
* ``unlabeled``: whether its step learns from a transfer set (data.unlabeled / data.unlabeled_rest): it is then
  given batches of labelled and unlabelled samples, the unlabelled ones with label -1 (``engine.NO_LABEL``), and
  must skip their label terms (``losses.labelled_ce``); a method without it trains on the labelled samples alone,
  for as many optimizer steps as the methods with it;
* ``label``, ``description`` and ``shown``: how it appears in the report (``teacher (during ProKT)``), the note
  above its section in ``recipe new`` and the keys written there even at their defaults.

A :class:`Variant` is a registered method with fixed settings (``prokt+label``): ``--compare`` trains it as its
base method with those settings, under the variant's name.

Layering: the recipe (the foundation) validates ``method:`` and the sections through
:func:`prokt_deploy.recipe.register_method_schema`, which :func:`register` calls; the training code a step needs
lives here in ``train``. The package imports the built-in methods (``prokt_deploy/__init__.py``), so they are
registered before any recipe is read. Method files import torch and the engine inside their step functions only:
``import prokt_deploy`` (and so ``--help`` and ``recipe check``) stays free of torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from prokt_deploy.errors import UsageError
from prokt_deploy.recipe import Recipe, Section, register_method_schema, unregister_method_schema

if TYPE_CHECKING:
    from torch import nn

    from prokt_deploy.train.engine import Method

TeacherRole = Literal["none", "frozen", "joint"]


@dataclass(frozen=True)
class StepSetup:
    """What a method's ``step`` builds its :class:`~prokt_deploy.train.engine.Method` from."""

    recipe: Recipe
    student: nn.Module
    teacher: nn.Module | None  # None for a method whose ``teacher`` is "none"
    total_steps: int  # optimizer steps of the phase (the schedules decay over them)
    config: Any = None  # the method's recipe section (``recipe.<section>``), None without one
    #: a frozen teacher's logits for a batch (``engine.FrozenOutputs``: each unaugmented sample's computed once);
    #: None for the other roles
    teacher_outputs: Callable[[Any], Any] | None = None


@dataclass(frozen=True)
class MethodSpec:
    name: str
    step: Callable[[StepSetup], Method]
    teacher: TeacherRole
    label: str
    description: str = ""  # recipe new's note above the section
    section: str | None = None  # the recipe key of its settings; None: no settings
    config: type[Section] | None = None
    shown: tuple[str, ...] = ()  # section keys recipe new writes even at their defaults
    zero_heads: Callable[[Recipe], bool] = field(default=lambda recipe: False)
    reset_pretrained_teacher_head: bool = False
    unlabeled: bool = False

    @property
    def needs_teacher(self) -> bool:
        """Whether the run uses a teacher (and keeps its weights)."""
        return self.teacher != "none"

    @property
    def trains_teacher(self) -> bool:
        """Whether the method's own phase updates the teacher too."""
        return self.teacher == "joint"

    def pretrains_teacher(self, recipe: Recipe) -> bool:
        """Whether the run trains the teacher with cross-entropy before the method's phase."""
        if self.teacher == "frozen":
            return recipe.teacher.init != "checkpoint"
        return self.teacher == "joint" and recipe.teacher.init == "pretrain"

    def settings(self, recipe: Recipe) -> Any:
        """The method's section of ``recipe`` (None when it has none)."""
        return getattr(recipe, self.section) if self.section else None


@dataclass(frozen=True)
class Variant:
    """A registered method with fixed settings of its section, compared under its own name."""

    name: str
    base: str
    settings: dict[str, Any]  # section keys -> values
    description: str = ""

    def overrides(self) -> dict[str, Any]:
        """The settings as dotted recipe overrides (``prokt.student_label_weight``)."""
        section = get(self.base).section
        return {f"{section}.{k}": v for k, v in self.settings.items()}


_REGISTRY: dict[str, MethodSpec] = {}
_VARIANTS: dict[str, Variant] = {}


def register(spec: MethodSpec) -> MethodSpec:
    """Make ``spec`` a method: recipes, ``--method``, ``--compare``, ``recipe new`` and the report know it."""
    if spec.name in _REGISTRY or spec.name in _VARIANTS:
        raise ValueError(f"method {spec.name!r} is already registered")
    if spec.teacher not in ("none", "frozen", "joint"):
        raise ValueError(f"method {spec.name!r}: teacher must be none, frozen or joint, not {spec.teacher!r}")
    register_method_schema(spec.name, spec.section, spec.config)
    _REGISTRY[spec.name] = spec
    return spec


def register_variant(variant: Variant) -> Variant:
    if variant.name in _REGISTRY or variant.name in _VARIANTS:
        raise ValueError(f"method {variant.name!r} is already registered")
    config = get(variant.base).config
    if config is None:
        raise ValueError(f"variant {variant.name!r}: {variant.base} has no settings to fix")
    config(**variant.settings)  # valid settings, checked now
    _VARIANTS[variant.name] = variant
    return variant


def unregister(name: str) -> None:
    """Forget a method or variant (and the variants of a method)."""
    if name in _REGISTRY:
        del _REGISTRY[name]
        unregister_method_schema(name)
        for v in [v for v in _VARIANTS.values() if v.base == name]:
            del _VARIANTS[v.name]
    _VARIANTS.pop(name, None)


def get(name: str) -> MethodSpec:
    """The registered method ``name``; a usage error listing the known ones otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown method {name!r}; known methods: {', '.join(_REGISTRY)}") from None


def find(name: str | None) -> MethodSpec | None:
    return _REGISTRY.get(name) if name else None


def names() -> list[str]:
    """The registered methods, in registration order (``prokt``, ``kd``, ``scratch``, then the user's)."""
    return list(_REGISTRY)


def variants() -> dict[str, Variant]:
    return dict(_VARIANTS)


def resolve(name: str) -> tuple[MethodSpec, dict[str, Any]]:
    """A method or variant name -> the method and the recipe overrides it implies."""
    if name in _VARIANTS:
        v = _VARIANTS[name]
        return get(v.base), v.overrides()
    return get(name), {}
