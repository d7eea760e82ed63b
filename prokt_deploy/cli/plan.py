"""`plan`: which student fits the budget."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from prokt_deploy.api import plan as run_plan
from prokt_deploy.budget import format_size
from prokt_deploy.cli import options as o
from prokt_deploy.cli.console import out, print_json


def plan(
    recipe: o.RecipeOpt = None,
    budget: o.BudgetOpt = None,
    data_dir: o.DataDirOpt = None,
    data_source: o.DataSourceOpt = None,
    teacher_checkpoint: o.TeacherCkptOpt = None,
    teacher_factory: o.TeacherFactoryOpt = None,
    student: o.StudentOpt = None,
    exact: Annotated[bool, typer.Option("--exact", help="Measure every candidate's artifact, not only those needed to decide.")] = False,
    as_json: o.JsonOpt = False,
) -> None:
    """Show the student candidates (params, MACs, artifact bytes) and mark the one that fits."""
    r = o.resolve_recipe(recipe, budget=budget, data_dir=data_dir, data_source=data_source, teacher_checkpoint=teacher_checkpoint, teacher_factory=teacher_factory, student=student)
    p = run_plan(r, exact=exact)
    if as_json:
        print_json(p.to_dict())
        return
    table = Table(title=f"students of '{r.student.family}' for {format_size(p.budget_bytes)} at {p.precision} ({', '.join(p.formats)})")
    for col in ("", "arch", "params", "MACs", *[f"{f} bytes" for f in p.formats], "fits"):
        table.add_column(col, justify="right" if col not in ("", "arch") else "left", no_wrap=True)
    for c in p.candidates:
        fits = {True: "yes", False: "no", None: "-"}[c.fits]
        if not c.bytes and c.lower_bound_bytes > p.budget_bytes:
            fits = "no (weights)"
        sizes = [format_size(c.bytes[f]) if f in c.bytes else "-" for f in p.formats]
        table.add_row("->" if c.chosen else "", c.arch, f"{c.params:,}", f"{c.macs:,}", *sizes, fits, style="bold green" if c.chosen else None)
    out.print(table)
    out.print(f"teacher {p.teacher_arch}: {p.teacher_params:,} params, {format_size(p.teacher_bytes)} at {p.precision}")
    out.print(p.note)
