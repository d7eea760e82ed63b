"""`recipe check`: validate recipe files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prokt_deploy.cli.console import err, out
from prokt_deploy.cli.options import code_hooks
from prokt_deploy.recipe import load_recipe

app = typer.Typer(help="Work with recipe files.", no_args_is_help=True)


@app.command("check")
def check(files: Annotated[list[Path], typer.Argument(help="Recipe YAML files to validate.")]) -> None:
    """Validate recipes against the schema; the first invalid one fails with its location."""
    for f in files:
        r = load_recipe(f)
        out.print(f"{f}: ok ({r.name}: {r.data.source}, {r.method}, budget {r.budget.size} {r.budget.precision})")
        hooks = code_hooks(r.teacher.factory)
        if hooks:  # valid, but the commands that use it refuse it without consent
            err.print(f"warning: {f} names code to import and run ({', '.join(hooks)}); using it needs --trust-recipe-code", highlight=False)
