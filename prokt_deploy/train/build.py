"""The models a run trains, built as its recipe asks (the planner and distill both start here)."""

from __future__ import annotations

from torch import nn

from prokt_deploy.data import DataBundle
from prokt_deploy.errors import RecipeError
from prokt_deploy.models import create_model, zero_init_head
from prokt_deploy.models.external import check_teacher_output, is_external
from prokt_deploy.recipe import Recipe
from prokt_deploy.run.checkpoint import build_from_factory, load_weights


def build_teacher(recipe: Recipe, data: DataBundle) -> nn.Module:
    """The teacher as the recipe asks: registered arch or factory; from scratch or a checkpoint."""
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
    zero_head = t.init == "checkpoint-reset-head" or (recipe.method == "prokt" and recipe.prokt.zero_init_heads and t.init == "scratch")
    if zero_head:
        zero_init_head(teacher)
    return teacher


def student_zero_head(recipe: Recipe) -> bool:
    """Whether the student's head starts at zero: student.zero_init_head, else ProKT's zero_init_heads for prokt."""
    if recipe.student.zero_init_head is not None:
        return recipe.student.zero_init_head
    return recipe.method == "prokt" and recipe.prokt.zero_init_heads
