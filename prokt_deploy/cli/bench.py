"""`bench` (teacher vs student vs artifacts, with gates) and `bundle` (the on-device half of it)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from prokt_deploy.benchmarking.report import REPORT_HTML, REPORT_JSON, REPORT_MD, headline_lines, table_rows, versus_line
from prokt_deploy.cli import options as o
from prokt_deploy.cli.console import err, out, print_json
from prokt_deploy.deploy.bundle import DEFAULT_SAMPLES, write_bundle
from prokt_deploy.errors import UsageError
from prokt_deploy.harness import measure
from prokt_deploy.pipeline import check_gate_values
from prokt_deploy.rundir.records import BenchReport
from prokt_deploy.rundir.workspace import check_out_dir, read_manifest, resolve_run

D = measure.DEFAULTS
RunArg = Annotated[Optional[Path], typer.Argument(help="Run directory (default: the latest run, runs/latest).", show_default=False)]
ThreadsOpt = Annotated[int, typer.Option(min=1, help="Threads per engine (torch, onnxruntime intra-op, OpenVINO).")]
BatchOpt = Annotated[int, typer.Option(min=1, help="The larger batch for batch latency and throughput (batch 1 is always measured).")]
RunsOpt = Annotated[int, typer.Option(min=1, help="Timed calls per round and batch size.")]
WarmupOpt = Annotated[int, typer.Option(min=0, help="Untimed calls before the first round's timed calls (2 before each later round).")]
RepeatsOpt = Annotated[int, typer.Option(min=1, help="Rounds, interleaved across engines; statistics are medians over rounds.")]
TargetOpt = Annotated[
    str,
    typer.Option("--runtime-device", help="Runtime device: CPU, GPU, NPU, AUTO or an OpenVINO device id; onnxruntime uses the matching provider."),
]
MaxLatencyOpt = Annotated[Optional[float], typer.Option("--max-latency-ms", help="Gate: the recommended artifact's batch-1 p50 latency, ms.")]
MaxDropOpt = Annotated[
    Optional[float], typer.Option("--max-drop-vs-teacher", help="Gate: the recommended file's test accuracy below the teacher's, percentage points.")
]
MinSpeedupOpt = Annotated[
    Optional[float],
    typer.Option(
        "--min-speedup-vs-teacher", help="Gate: batch-1 speed-up of the recommended file over the teacher's fastest file (the report's verdict)."
    ),
]


class EngineBars:
    """bench's ``progress``: status text to ``status``, and one bar per engine in ``display`` (its load and
    accuracy, then each timing round; see :func:`prokt_deploy.harness.measure.measure`)."""

    def __init__(self, display: Progress, status) -> None:  # Callable[[str], None]
        self._display, self._status, self._bars = display, status, {}

    def __call__(self, text: str) -> None:
        self._status(text)

    def step(self, engine_id: str, done: int, total: int) -> None:
        if engine_id not in self._bars:
            self._bars[engine_id] = self._display.add_task(engine_id, total=total, stats="")
        self._display.update(self._bars[engine_id], completed=done)


def bench(
    run: RunArg = None,
    threads: ThreadsOpt = D["threads"],
    batch: BatchOpt = D["batch"],
    runs: RunsOpt = D["runs"],
    warmup: WarmupOpt = D["warmup"],
    repeats: RepeatsOpt = D["repeats"],
    device: TargetOpt = "CPU",
    max_latency_ms: MaxLatencyOpt = None,
    max_accuracy_drop: MaxDropOpt = None,
    min_speedup: MinSpeedupOpt = None,
    merge: Annotated[
        Optional[list[Path]], typer.Option("--merge", help="Add a bench_bundle.py result file to the run's report (no new measurement); repeatable.")
    ] = None,
    trust_recipe_code: o.TrustCodeOpt = False,
    as_json: o.JsonOpt = False,
) -> None:
    """Measure teacher, student and every passed artifact: accuracy, latency p50/p90/p99, throughput, size.

    Writes report.json, report.md and report.html into the run directory. A missed gate exits with code 11 after the report is written.
    """
    from prokt_deploy.benchmarking.bench import bench as run_bench
    from prokt_deploy.benchmarking.bench import check_gates, merge_device_results

    if merge:  # gates belong to a measurement: merging neither checks them nor fails on the stored ones
        if any(g is not None for g in (max_latency_ms, max_accuracy_drop, min_speedup)):
            raise UsageError("--merge only adds device rows to the existing report; gates are checked when measuring (run bench without --merge)")
        show_report(merge_device_results(run, merge), as_json)
        return
    check_gate_values(max_latency_ms, max_accuracy_drop, min_speedup)
    check_run_code(run, trust_recipe_code)
    display = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"), console=err, transient=True
    )  # transient: nothing is left on a non-terminal stderr
    with display:
        line = display.add_task("bench", total=None, stats="")
        bars = EngineBars(display, lambda text: display.update(line, stats=text))
        rep = run_bench(
            run,
            threads=threads,
            batch=batch,
            runs=runs,
            warmup=warmup,
            repeats=repeats,
            device=device,
            max_latency_ms=max_latency_ms,
            max_accuracy_drop=max_accuracy_drop,
            min_speedup=min_speedup,
            progress=bars,
        )
    show_report(rep, as_json)
    check_gates(rep)


def check_run_code(run: Path | None, trusted: bool, *, teacher: bool = True) -> None:
    """A run whose teacher was built by a factory ('module:function') imports and calls it to load the
    teacher again: refused without --trust-recipe-code (a run directory may come from someone else)."""
    spec = read_manifest(resolve_run(run)).get("teacher") or {}
    if teacher and isinstance(spec, dict) and spec.get("factory") and spec.get("weights"):
        o.require_code_consent(o.code_hooks(spec["factory"]), trusted, f"the run {str(resolve_run(run))!r}")


def show_report(rep: BenchReport, as_json: bool) -> None:
    """The report on stdout: its JSON, or a Rich table with the recommendation, int8 verdicts and gates."""
    if as_json:
        print_json(rep.to_dict())
        return
    as_dict = rep.to_dict()
    for line in headline_lines(as_dict.get("headline"), rep.method):  # the four answers first
        key, _, rest = line.partition(": ")
        out.print(f"[bold {'red' if key == 'Warning' else 'green'}]{key}[/]: {escape(rest)}" if rest else line, highlight=False)
    header, cells = table_rows(as_dict)
    s = rep.settings
    table = Table(title=f"{Path(rep.run).name}: batch-1 latency, batch-{s['batch']} throughput, {s['threads']} thread(s), {s['device']}")
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i < 2 else "right", no_wrap=i == 0)
    rec = rep.recommendation
    for r, c in zip(rep.rows, cells):
        table.add_row(*c, style="bold green" if rec and rec.id == r.id else ("magenta" if r.kind == "device" else None))
    # piped or redirected: Rich would squeeze the table into 80 columns; print it at its natural width
    (out if out.is_terminal else Console(file=out.file, width=200)).print(table)
    out.print(
        f"speed-ups vs {s['baseline']}; * = recommended"
        + (f": {rec.id} ({rec.reason})" if rec else ": none (no passed artifact within the accuracy gate)")
    )
    if rep.versus_teacher:
        out.print(f"versus the teacher's own artifacts: {versus_line(rep.versus_teacher)}")
    for a in rep.not_benchmarked:
        out.print(f"not benchmarked: {a['id']} failed its export gates ({'; '.join(a['failures'])})")
    for f in rep.int8:
        out.print(f"{f['artifact']} vs {f['counterpart']}: {f['verdict']}")
        for cause in f["causes"]:
            out.print(f"  - {cause}")
    for g in rep.gates:
        out.print(f"gate {g.name}: {'pass' if g.passed else '[bold red]FAIL[/]'} ({g.message})")
    run = Path(rep.run)
    out.print(f"reports: {run / REPORT_JSON}, {run / REPORT_MD}, {run / REPORT_HTML}")


def bundle(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Bundle directory to create (must not exist or be empty).")],
    run: RunArg = None,
    samples: Annotated[int, typer.Option(min=1, help="Test samples to include (all if the test split is smaller).")] = DEFAULT_SAMPLES,
    no_teacher: Annotated[
        bool, typer.Option("--no-teacher", help="Leave out the teacher's ONNX fp32 baseline (then no speed-ups on the device).")
    ] = False,
    threads: ThreadsOpt = D["threads"],
    batch: BatchOpt = D["batch"],
    runs: RunsOpt = D["runs"],
    warmup: WarmupOpt = D["warmup"],
    repeats: RepeatsOpt = D["repeats"],
    trust_recipe_code: o.TrustCodeOpt = False,
) -> None:
    """Write an on-device bundle: passed artifacts, test samples, input spec and bench_bundle.py (numpy + runtime only).

    On the board: `python bench_bundle.py` writes device-results.json; then `prokt-deploy bench RUN --merge device-results.json`.
    """
    settings = {"threads": threads, "batch": batch, "runs": runs, "warmup": warmup, "repeats": repeats}
    check_out_dir(out_dir)  # before the run is resolved or its teacher exported
    check_run_code(run, trust_recipe_code, teacher=not no_teacher)
    with err.status("writing the bundle", spinner="dots"):
        path = write_bundle(run, out_dir, samples=samples, teacher=not no_teacher, settings=settings)
    out.print(f"bundle written to {path}; on the device: python bench_bundle.py, then: prokt-deploy bench RUN --merge device-results.json")
