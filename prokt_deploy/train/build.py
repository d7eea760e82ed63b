"""The models a run trains, built as its recipe asks (the planner and distill both start here)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from torch import nn

from prokt_deploy.data import DataBundle, labels_record
from prokt_deploy.errors import RecipeError
from prokt_deploy.models import create_model, zero_init_head
from prokt_deploy.models.external import check_teacher_output, is_external
from prokt_deploy.recipe import Recipe
from prokt_deploy.rundir.checkpoint import build_from_factory, load_weights
from prokt_deploy.train import methods

log = logging.getLogger("prokt_deploy")
_WARNED: set[str] = set()


def build_teacher(recipe: Recipe, data: DataBundle, *, zero_head: bool | None = None) -> nn.Module:
    """The teacher as the recipe asks: registered arch or factory; from scratch or a checkpoint.

    ``zero_head``: whether the method's zeroed head applies (ProKT starts a teacher trained from scratch with
    a zero head); None: as the recipe's method asks, False: never (a teacher trained on its own, or sized by
    the planner). ``teacher.init: checkpoint-reset-head`` resets the head whatever this says: it is how the
    teacher is initialised, not a method's choice."""
    t = recipe.teacher
    num_classes = data.num_classes
    if t.factory:
        teacher = build_from_factory(t.factory, num_classes=num_classes, **data.model_kwargs)
    else:
        teacher = create_model(t.arch, num_classes=num_classes, **data.model_kwargs)
        if not data.is_text and is_external(t.arch):
            check_teacher_output(teacher, data.example(2), num_classes, t.arch)
    if t.init in ("checkpoint", "checkpoint-reset-head"):
        if not t.checkpoint:
            raise RecipeError(f"teacher.init is {t.init!r} but no teacher.checkpoint is set; pass --teacher-checkpoint PATH")
        load_weights(teacher, t.checkpoint)
        if t.init == "checkpoint" and recipe.data.labels is not None:
            _warn_if_teacher_saw_other_labels(recipe, t.checkpoint)
    if zero_head is None:
        zero_head = methods.get(recipe.method).zero_heads(recipe) and t.init == "scratch"
    if zero_head or t.init == "checkpoint-reset-head":
        zero_init_head(teacher)
    return teacher


def student_zero_head(recipe: Recipe) -> bool:
    """Whether the student's head starts at zero: student.zero_init_head, else as the method says (ProKT's
    zero_init_heads for prokt)."""
    if recipe.student.zero_init_head is not None:
        return recipe.student.zero_init_head
    return methods.get(recipe.method).zero_heads(recipe)


def _warn_if_teacher_saw_other_labels(recipe: Recipe, checkpoint: str) -> None:
    """With data.labels, a converged teacher from a checkpoint should have been trained on the same kept labels
    (``prokt-deploy train-teacher --labels N`` with the same seed): its manifest beside the checkpoint says so. One
    warning per checkpoint where it does not (or there is no manifest): such a teacher may have seen labels beyond
    the N kept ones, and a few-label comparison with it is not what a few-label user could do."""
    if checkpoint in _WARNED:
        return
    manifest = Path(checkpoint).parent / "manifest.json"
    try:
        m = json.loads(manifest.read_text())
    except (OSError, ValueError):
        m = None
    want, data = labels_record(recipe), (m or {}).get("data") or {}
    if m is None or any(data.get(k) != v for k, v in want.items()):
        _WARNED.add(checkpoint)
        said = "no manifest beside it" if m is None else f"its manifest: labels {data.get('labels_kept')}, seed {data.get('labels_seed')}"
        log.warning(
            "teacher checkpoint %s was not trained on the %d labels this run keeps (%s): it may have seen labels beyond "
            "them; for a few-label comparison train it with `prokt-deploy train-teacher --labels %d --seed %d`",
            checkpoint,
            want["labels_kept"],
            said,
            want["labels_kept"],
            want["labels_seed"],
        )
