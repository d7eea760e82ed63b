"""A recipe's plan: its data, teacher, families, budget and latency settings turned into a search."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from prokt_deploy.budget import parse_latency, parse_size
from prokt_deploy.data import DataBundle, load_recipe_data
from prokt_deploy.errors import ModelError, RecipeError
from prokt_deploy.models import student_families
from prokt_deploy.planner.latency import read_device_latencies
from prokt_deploy.planner.search import BundleWriter, Plan, PlanOptions, Task, search
from prokt_deploy.recipe import NO_TARGET, Recipe
from prokt_deploy.train.build import build_teacher


def plan_families(recipe: Recipe, data: DataBundle) -> list[str]:
    """The student families the recipe's ``student.family`` names for this data (RecipeError if it cannot)."""
    try:
        return student_families(recipe.student.family, "text" if data.is_text else "image")
    except ModelError as exc:
        raise RecipeError(f"student.family: {exc}") from None


def timing_target(recipe: Recipe, target: str | None = None) -> tuple[str | None, str | None]:
    """The runtime the plan times in, and why when nobody named it: ``target`` (``--target``), else the recipe's
    ``budget.target``, else the first of ``budget.formats`` (the default rule: never slower than the teacher's fastest
    artifact); ``none`` in either place plans by size alone (a latency budget, ``--latencies`` or ``--bundle`` still
    time, in onnx)."""
    named = target if target is not None else recipe.budget.target
    if named is not None:
        return (None if named.strip().lower() == NO_TARGET else named), None
    first = recipe.budget.formats[0]
    return first, f"budget.target not set: the first of budget.formats; budget.target: {NO_TARGET} plans by size alone"


def plan(
    recipe: Recipe,
    data: DataBundle | None = None,
    teacher: nn.Module | None = None,
    *,
    exact: bool = False,
    target: str | None = None,
    latency_budget_ms: float | None = None,
    latencies: str | Path | None = None,
    bundle: BundleWriter | None = None,
    lazy_latency: bool = False,
) -> Plan:
    """Plan the student for the recipe's budget (raises BudgetError when none fits).

    ``target`` / ``latency_budget_ms`` default to the recipe's ``budget.target`` / ``budget.latency``; a recipe
    that sets no ``budget.target`` times in the first of its ``budget.formats`` (:func:`timing_target`).
    ``latencies``: take the candidates' latencies from a plan bundle's device result file instead of timing them
    here (BenchError, exit 12, for a bad file). ``bundle``: hand every fitting candidate's untrained model and the
    teacher's to this writer instead of timing them (nothing is timed here):
    :func:`prokt_deploy.deploy.bundle.plan_bundle_writer` writes them into an on-device bundle.
    ``lazy_latency``: measure only what the choice needs (``distill``; see the package docstring)."""
    target, reason = timing_target(recipe, target)
    if latency_budget_ms is None and recipe.budget.latency is not None:
        latency_budget_ms = parse_latency(recipe.budget.latency)
    device_latencies = read_device_latencies(latencies) if latencies is not None else None  # a bad file fails before any work
    data = data or load_recipe_data(recipe)
    fams = plan_families(recipe, data)
    teacher = teacher if teacher is not None else build_teacher(recipe, data, zero_head=False)
    task = Task(
        tuple(fams),
        tuple(data.input_shape),
        data.num_classes,
        teacher,
        recipe.teacher.factory or recipe.teacher.arch,
        model_kwargs=data.model_kwargs,
        example=data.example(2),
    )
    options = PlanOptions(
        precision=recipe.budget.precision,
        formats=tuple(recipe.budget.formats),
        max_teacher_fraction=recipe.budget.max_teacher_fraction,
        student_arch=recipe.student.arch,
        exact=exact,
        target=target,
        latency_budget_ms=latency_budget_ms,
        device_latencies=device_latencies,
        bundle=bundle,
        lazy_latency=lazy_latency,
        ram_budget_bytes=parse_size(recipe.budget.ram) if recipe.budget.ram is not None else None,
        target_reason=reason,
    )
    return search(recipe.budget.bytes, task, options)
