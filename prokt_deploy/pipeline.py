"""``run``: recipe -> distill -> compare (optional baselines) -> export (every format at the deploy precision) ->
bench -> report, in one call; the CLI's ``prokt-deploy run`` is argument parsing around it.

Every check that can fail on the arguments (the output directory, the baseline list, the bench device, the gate
limits) runs before anything is trained. An artifact that misses its export gates does not stop the pipeline:
it is left out of the bench and listed in the report; :meth:`PipelineResult.check` then raises what the CLI
exits with (a missed bench gate first, then a missed export gate of a format the recipe plans for).

    from prokt_deploy import apply_overrides, load_recipe, run
    result = run(apply_overrides(load_recipe("digits"), {"budget.size": "20KB"}), out="runs/digits", compare="scratch,kd")
    result.report.recommendation      # the file to ship, and why
    result.check()                    # raise if a gate was missed
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from prokt_deploy.errors import GateFailed, InterruptedRun, RunError, UsageError
from prokt_deploy.recipe import Recipe, load_recipe

if TYPE_CHECKING:
    from prokt_deploy.rundir.reader import Manifest
    from prokt_deploy.rundir.records import BenchReport, ExportResult

#: the stages of a run, in order (the CLI shows one bar over them)
STAGES = ("distill", "compare", "export", "bench")
#: what ``run`` was asked besides the recipe (baselines, bench settings, gates), kept in the run directory from the
#: start so ``run --resume`` continues with the same
RUN_REQUEST = "run-request.json"
REQUEST_KEYS = ("compare", "threads", "batch", "runs", "warmup", "repeats", "bench_device", "max_latency_ms", "max_accuracy_drop", "min_speedup")


class RunProgress(Protocol):
    """What ``run`` reports progress to (all optional: pass None for silence). ``stage(name)`` at the start of each
    of :data:`STAGES`; ``status(text)`` one-line messages of compare, export and bench; ``training``: the
    training loop's progress (``prokt_deploy.train.engine.Progress``); ``bench``: bench's progress callback."""

    def stage(self, name: str) -> None: ...

    def status(self, text: str) -> None: ...


@dataclass
class PipelineResult:
    """What ``run`` made: the run directory, its manifest after export, the export records, the bench report."""

    path: Path
    manifest: Manifest
    exports: list[ExportResult]
    report: BenchReport
    #: the export's missed gates (the passed artifacts were kept and benchmarked), or None
    export_failure: GateFailed | None = None
    planned_formats: list[str] = field(default_factory=list)

    def check(self) -> None:
        """Raise what ``prokt-deploy run`` exits with: :class:`BenchGateFailed` (exit 11) for a missed bench gate,
        then :class:`GateFailed` (exit 10) when an artifact of a format the recipe plans for missed its export gates."""
        from prokt_deploy.benchmarking.bench import check_gates

        check_gates(self.report)
        planned_failed = [a for a in self.report.not_benchmarked if a["format"] in self.planned_formats]
        if self.export_failure is not None and planned_failed:
            raise self.export_failure


def check_gate_values(max_latency_ms: float | None, max_accuracy_drop: float | None, min_speedup: float | None) -> None:
    """Gate limits that no measurement could meet or miss (NaN, inf, a latency of 0) are usage errors,
    raised before anything is exported, trained or measured."""
    for flag, value in (
        ("--max-latency-ms", max_latency_ms),
        ("--max-drop-vs-teacher", max_accuracy_drop),
        ("--min-speedup-vs-teacher", min_speedup),
    ):
        if value is not None and not math.isfinite(value):
            raise UsageError(f"{flag} must be a finite number, got {value}")
    for flag, value in (("--max-latency-ms", max_latency_ms), ("--min-speedup-vs-teacher", min_speedup)):
        if value is not None and value <= 0:
            raise UsageError(f"{flag} must be positive, got {value:g}")


def run(
    recipe: Recipe | str | Path | None = None,
    *,
    out: str | Path | None = None,
    compare: str | Sequence[str] | None = None,
    latencies: str | Path | None = None,
    threads: int | None = None,
    batch: int | None = None,
    runs: int | None = None,
    warmup: int | None = None,
    repeats: int | None = None,
    bench_device: str = "CPU",
    max_latency_ms: float | None = None,
    max_accuracy_drop: float | None = None,
    min_speedup: float | None = None,
    progress: RunProgress | None = None,
    training_progress: object | None = None,
    bench_progress: Callable[[str], None] | None = None,
    resume: str | Path | None = None,
) -> PipelineResult:
    """Distill ``recipe`` (a :class:`Recipe`, a recipe file or shipped name, None: the default recipe), train the
    ``compare`` baselines beside it (e.g. ``"scratch,kd"``), export at the deploy precision every format exported by
    default (ONNX, OpenVINO) and every other one the recipe's ``budget.formats`` names
    (each gated), benchmark everything and write report.json/.md/.html into the run directory (``out``, default
    ``runs/<recipe>-<method>-<time>``). Bench settings left None take bench's defaults. Gates are recorded in the
    report; call :meth:`PipelineResult.check` to raise on a missed one. Raises the library's typed errors
    (:mod:`prokt_deploy.errors`) for bad input before training starts.

    ``resume``: the run directory of an interrupted ``run`` (pass nothing else): it continues whatever stage was
    stopped, with the recipe and the request it was started with (training from its checkpoint, a baseline from
    its own, then export and bench again), and ends as an uninterrupted run would. Interrupted, ``run`` raises
    :class:`~prokt_deploy.errors.InterruptedRun` saying so."""
    import json

    from prokt_deploy.compare import parse_methods
    from prokt_deploy.rundir.workspace import DEFAULT_RUNS_ROOT, MANIFEST, check_out_dir, default_run_path, find_resumable, partial_path

    request = dict(compare=compare, threads=threads, batch=batch, runs=runs, warmup=warmup, repeats=repeats, bench_device=bench_device)
    request.update(max_latency_ms=max_latency_ms, max_accuracy_drop=max_accuracy_drop, min_speedup=min_speedup)
    if resume is not None:
        final = Path(resume)
        if final.name.endswith(".partial"):
            final = final.with_name(final.name[1 : -len(".partial")])
        finished = (final / MANIFEST).is_file()
        if (final / "report.json").is_file():
            raise RunError(
                f"run {str(final)!r} already finished (it has its report); nothing to resume: 'prokt-deploy bench {final}' measures it again"
            )
        home = final if finished else find_resumable(final)  # a RunError saying what is there otherwise
        if not (home / RUN_REQUEST).is_file():
            raise UsageError(
                f"{final} was not started by 'prokt-deploy run' (no {RUN_REQUEST}): continue its training with 'prokt-deploy distill --resume {final}'"
            )
        request = {**request, **json.loads((home / RUN_REQUEST).read_text())}
        r = None
    else:
        r = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
        final = Path(out) if out is not None else default_run_path(DEFAULT_RUNS_ROOT, r.name, r.method)
        check_out_dir(final)  # before the data is loaded
        finished = False
    compare = request["compare"]
    check_gate_values(request["max_latency_ms"], request["max_accuracy_drop"], request["min_speedup"])
    baselines = parse_methods(compare) if compare else []  # a bad list fails now too
    import exporters  # torch, onnxruntime: imported once the arguments are known to be good
    from prokt_deploy.benchmarking.bench import bench, runtime_targets
    from prokt_deploy.compare import compare as train_baselines
    from prokt_deploy.deploy.export import export_run
    from prokt_deploy.harness import measure
    from prokt_deploy.rundir.reader import open_run
    from prokt_deploy.train.distill import distill

    runtime_targets(request["bench_device"])  # an unavailable device fails now, not after training
    stage = progress.stage if progress is not None else (lambda name: None)
    status = progress.status if progress is not None else (lambda text: None)
    current = "distill"

    def enter(name: str) -> None:
        nonlocal current
        current = name
        stage(name)

    try:
        enter("distill")
        if not finished:
            keep = {RUN_REQUEST: json.dumps({k: request[k] for k in REQUEST_KEYS}, indent=1) + "\n"}
            distill(r, out=final, progress=training_progress, latencies=latencies, keep=keep, resume=final if resume is not None else None)  # type: ignore[arg-type]
        fr = open_run(final)
        r = fr.recipe()
        enter("compare")
        if baselines:
            train_baselines(final, baselines, progress=training_progress, status=status)
        enter("export")
        wanted = [f for f in exporters.FORMATS if f in exporters.default_formats() or f in r.budget.formats]
        # a resumed run keeps the formats it already exported (passed or not); the others are exported now
        done = [a for a in open_run(final).manifest.artifacts if a.precision == r.budget.precision and a.format in wanted]
        todo = [f for f in wanted if f not in {a.format for a in done}]
        exports, export_failure = list(done), None
        try:
            if todo:
                exports += export_run(final, todo, r.budget.precision, progress=status)
        except GateFailed as exc:  # the passed artifacts are kept and benchmarked; the report lists the others
            exports += exc.results
            export_failure = exc
        missed = [a for a in done if not a.passed]
        if missed and export_failure is None:  # what an uninterrupted run raised for the formats exported before the stop
            export_failure = GateFailed(
                f"{len(missed)} artifact(s) missed a gate before the run was resumed: {', '.join(a.format for a in missed)}", results=exports
            )
        enter("bench")
        report = bench(
            final,
            **{k: (measure.DEFAULTS[k] if request[k] is None else request[k]) for k in ("threads", "batch", "runs", "warmup", "repeats")},
            device=request["bench_device"],
            max_latency_ms=request["max_latency_ms"],
            max_accuracy_drop=request["max_accuracy_drop"],
            min_speedup=request["min_speedup"],
            progress=bench_progress or status,
        )
    except (InterruptedRun, KeyboardInterrupt):
        if not ((final / MANIFEST).is_file() or (partial_path(final) / "recipe.yaml").is_file()):
            raise  # nothing on disk to continue from
        raise InterruptedRun(
            f"interrupted in {current}; what is done is kept: continue the whole run (training, baselines, export, bench) "
            f"with 'prokt-deploy run --resume {final}'"
        ) from None
    return PipelineResult(
        path=final,
        manifest=open_run(final).manifest,
        exports=exports,
        report=report,
        export_failure=export_failure,
        planned_formats=list(r.budget.formats),
    )
