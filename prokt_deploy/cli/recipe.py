"""`recipe check`: validate recipe files; `recipe new`: write one for your data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from prokt_deploy.cli import options as o
from prokt_deploy.cli.console import err, out
from prokt_deploy.cli.options import code_hooks
from prokt_deploy.recipe import load_recipe, recipe_defaults

app = typer.Typer(help="Work with recipe files.", no_args_is_help=True)


@app.command("check")
def check(files: Annotated[list[Path], typer.Argument(help="Recipe YAML files to validate.")]) -> None:
    """Validate recipes against the schema; the first invalid one fails with its location. Lists the keys each one
    leaves out: those that come from the default recipe or a rule with their values, then the schema's."""
    for f in files:
        r = load_recipe(f)
        out.print(f"{f}: ok ({r.name}: {r.data.source}, {r.method}, budget {r.budget.size} {r.budget.precision})")
        defaults = recipe_defaults(f)
        for d in (d for d in defaults if d.source != "schema"):
            value = d.value if isinstance(d.value, str) else json.dumps(d.value)
            out.print(f"  defaulted: {d.key} = {value} (from {d.source})", highlight=False)
        schema = [d.key for d in defaults if d.source == "schema"]
        if schema:
            out.print(f"  schema defaults for {len(schema)} keys left out: {', '.join(schema)}", highlight=False, soft_wrap=True)
        hooks = code_hooks(r.teacher.factory)
        if hooks:  # valid, but the commands that use it refuse it without consent
            err.print(f"warning: {f} names code to import and run ({', '.join(hooks)}); using it needs --trust-recipe-code", highlight=False)


@app.command("new")
@o.takes_overrides("data_source", "teacher_checkpoint", "teacher_factory", "budget", "formats")
def new(
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            help="Your dataset: a .npz file, a folder of class folders, a folder with the Fashion-MNIST IDX files, or a .csv/.tsv/.jsonl file.",
        ),
    ],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="The recipe file to write (never overwritten).")],
    overrides: dict | None = None,
) -> None:
    """Write a commented recipe for your data: the default recipe's settings with the data's source, path, shape, classes and split sizes filled in."""
    from prokt_deploy.recipe_writer import check_new_path, new_recipe, write_new

    data_source, teacher_checkpoint, teacher_factory, budget, formats = (
        overrides[k] for k in ("data_source", "teacher_checkpoint", "teacher_factory", "budget", "formats")
    )
    if budget is not None:
        o.OVERRIDES["budget"].convert(budget)  # usage errors before the data is read
    if formats is not None:
        formats = o.OVERRIDES["formats"].convert(formats)
    check_new_path(out_file)
    r, d, text = new_recipe(
        data,
        source=data_source,
        teacher_checkpoint=str(teacher_checkpoint) if teacher_checkpoint else None,
        teacher_factory=teacher_factory,
        budget=budget,
        formats=formats,
    )
    write_new(out_file, text)
    out.print(
        f"{out_file}: {r.data.source}, input {'x'.join(map(str, d.input_shape))}, {d.num_classes} classes, "
        f"train/val/test {len(d.train)}/{len(d.val)}/{len(d.test)}; teacher {r.teacher.arch} ({r.teacher.init}); "
        f"run it with: prokt-deploy run {out_file}",
        highlight=False,
    )
