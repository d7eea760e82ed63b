"""`plan`: which student fits the budget."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.table import Table

from prokt_deploy.budget import compact, format_size, parse_latency, parse_target
from prokt_deploy.cli import options as o
from prokt_deploy.cli.console import out, print_json
from prokt_deploy.deploy.bundle import plan_bundle_writer
from prokt_deploy.errors import UsageError
from prokt_deploy.recipe import NO_TARGET
from prokt_deploy.rundir.workspace import check_out_dir


@o.takes_overrides("budget", "formats", "ram_budget", "data_dir", "data_source", "teacher_checkpoint", "teacher_factory", "student", "family")
def plan(
    recipe_file: o.RecipeArg = None,
    recipe: o.RecipeOpt = None,
    overrides: dict | None = None,
    exact: Annotated[bool, typer.Option("--exact", help="Measure every candidate's artifact, not only those needed to decide.")] = False,
    latency_budget: Annotated[
        Optional[str],
        typer.Option(
            "--latency-budget", help="Keep only students whose batch-1 p50 in --target is within it, e.g. 0.2ms (times every fitting candidate)."
        ),
    ] = None,
    target: Annotated[
        Optional[str],
        typer.Option(
            "--target",
            help="Time the fitting candidates and the teacher in this runtime: onnx, openvino[:DEVICE], litert or executorch; none: plan by size alone "
            "(default: the recipe's budget.target, else its first format).",
        ),
    ] = None,
    latencies: o.LatenciesOpt = None,
    bundle: Annotated[
        Optional[Path],
        typer.Option(
            "--bundle",
            help="Write every fitting candidate's untrained artifact, the teacher's and bench_bundle.py into DIR, to time them on the device itself.",
        ),
    ] = None,
    trust_recipe_code: o.TrustCodeOpt = False,
    as_json: o.JsonOpt = False,
) -> None:
    """Show the student candidates (params, MACs, artifact bytes, latency with --target) and mark the chosen one.

    On-device planning: `plan --bundle DIR`, then `python bench_bundle.py` in DIR on the board, then
    `plan --latencies DIR/device-results.json` (or `distill --latencies ...`) chooses from the board's latencies."""
    from prokt_deploy.data import load_recipe_data
    from prokt_deploy.planner import plan as run_plan

    latency_ms = parse_latency(latency_budget) if latency_budget is not None else None
    if target is not None and target.strip().lower() != NO_TARGET:
        parse_target(target)
    r = o.resolve_recipe(o.one_recipe(recipe_file, recipe), overrides, trust_recipe_code=trust_recipe_code)
    if bundle is not None and latencies is not None:
        raise UsageError("--bundle writes the artifacts to measure on the device and --latencies reads what was measured: use one at a time")
    writer = data = None
    if bundle is not None:
        check_out_dir(bundle)  # before the data is loaded
        data = load_recipe_data(r)
        writer = plan_bundle_writer(bundle, r, data, recipe_path=str(recipe) if recipe is not None else None)
    p = run_plan(r, data, exact=exact, target=target, latency_budget_ms=latency_ms, latencies=latencies, bundle=writer)
    if bundle is not None:
        if not as_json:
            out.print(
                f"plan bundle written to {bundle} (fitting candidates and the teacher, {', '.join(p.formats)}); on the device: "
                f"python bench_bundle.py, then: prokt-deploy plan ... --latencies {bundle}/device-results.json"
            )
    if as_json:
        print_json(p.to_dict())
        return
    fams = ", ".join(p.families) or str(r.student.family)
    # fits an 80-column terminal without cutting a name, a size, a latency or the verdict
    table = Table(
        title=f"students of {fams} for {format_size(p.budget_bytes)} at {p.precision}", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True
    )
    for col in ("", "arch", "params", "MACs", *p.formats, "RAM", *(["p50 ms"] if p.target else []), "fits"):
        table.add_column(col, justify="right" if col not in ("", "arch") else "left", no_wrap=True)
    over_by_weights = over_ram = False
    for c in p.candidates:
        fits = {True: "yes", False: "no", None: "-"}[c.fits]
        if p.ram_budget_bytes is not None and c.ram_bytes is not None and c.ram_bytes > p.ram_budget_bytes:
            fits, over_ram = "no+", True
        elif not c.bytes and c.lower_bound_bytes > p.budget_bytes:
            fits, over_by_weights = "no*", True
        sizes = [kilo(c.bytes[f]) if f in c.bytes else "-" for f in p.formats]
        ram = kilo(c.ram_bytes) if c.ram_bytes is not None else "-"
        latency = [f"{c.latency_ms:.4f}" if c.latency_ms is not None else "-"] if p.target else []
        table.add_row(
            "->" if c.chosen else "",
            c.arch,
            compact(c.params),
            compact(c.macs),
            *sizes,
            ram,
            *latency,
            fits,
            style="bold green" if c.chosen else None,
        )
    out.print(table)
    out.print(
        f"teacher {p.teacher_arch}: {p.teacher_params:,} params, {format_size(p.teacher_bytes)} at {p.precision}"
        + (f"; p50 in {p.target}: " + ", ".join(f"{k} {v:.4f} ms" for k, v in p.teacher_latency_ms.items()) if p.teacher_latency_ms else "")
    )
    out.print(f"sizes: artifact bytes per format, k = 1000 bytes; RAM: peak activation memory at batch 1, {p.precision} (weights not counted)")
    if over_by_weights:
        out.print(f"no*: its {p.precision} weights alone exceed the budget (not exported)")
    if over_ram:
        out.print(f"no+: its peak activation memory exceeds the RAM budget {format_size(p.ram_budget_bytes or 0)}")
    out.print(p.note)
    if p.latency_source and p.latency_source != "measured here":
        out.print(f"latencies from {p.latency_source}")


def kilo(n: int) -> str:
    """Bytes in thousands with one decimal, '54.6k' (the table's unit line says k = 1000 bytes): a size column of an
    80-column table."""
    return f"{n / 1000:.1f}k"
