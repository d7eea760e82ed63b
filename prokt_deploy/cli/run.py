"""`run`: argument parsing and a progress display around :func:`prokt_deploy.pipeline.run` (recipe -> distill ->
compare -> export at the deploy precision -> bench -> report)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from prokt_deploy import pipeline
from prokt_deploy.cli import bench as b
from prokt_deploy.cli import options as o
from prokt_deploy.cli.console import RichProgress, err
from prokt_deploy.cli.train import OutOpt
from prokt_deploy.errors import UsageError
from prokt_deploy.pipeline import STAGES


class PipelineProgress(RichProgress):
    """One display for the whole pipeline: a bar over the stages and, under it, the current stage's
    bar (training steps with loss and accuracy) or status line (export, bench)."""

    def __init__(self) -> None:
        super().__init__(console=err)
        self._display = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            console=err,
        )
        self._stages = self._display.add_task("run", total=len(STAGES), stats="")
        self._status = None

    def __enter__(self) -> PipelineProgress:
        self._started = False  # the display starts with the first stage: an argument refused before it prints one line
        return self

    def __exit__(self, exc_type: type | None, *rest: object) -> None:
        if not self._started:
            return
        if exc_type is None:
            self._clear_status()
            self._display.update(self._stages, completed=len(STAGES), description="run", stats="done")
        self._display.stop()

    def _clear_status(self) -> None:
        if self._status is not None:
            self._display.remove_task(self._status)
            self._status = None

    def stage(self, name: str) -> None:
        if not self._started:
            self._display.start()
            self._started = True
        index = STAGES.index(name)
        self._display.update(self._stages, completed=index, description=f"run {index + 1}/{len(STAGES)}", stats=name)
        self._clear_status()

    @property
    def display(self) -> Progress:
        """The shared display (bench adds one bar per engine to it)."""
        return self._display

    def status(self, text: str) -> None:
        """The library's ``progress(text)`` callback (export, bench): one status line under the stages."""
        if self._status is None:
            self._status = self._display.add_task("", total=None, stats="")
        self._display.update(self._status, stats=text)

    # engine.Progress: training phases get a bar in the shared display (step/epoch come from RichProgress)
    def start(self, phase: str, total_steps: int, completed: int = 0) -> None:
        self._phase = phase
        self._progress = self._display
        self._task = self._display.add_task(phase, total=total_steps, completed=completed, stats="")

    def stop(self) -> None:
        self._progress = None


@o.takes_overrides(*o.TRAINING)
def run(
    ctx: typer.Context,
    recipe_file: o.RecipeArg = None,
    recipe: o.RecipeOpt = None,
    overrides: dict | None = None,
    out_dir: OutOpt = None,
    latencies: o.LatenciesOpt = None,
    threads: b.ThreadsOpt = b.D["threads"],
    batch: b.BatchOpt = b.D["batch"],
    runs: b.RunsOpt = b.D["runs"],
    warmup: b.WarmupOpt = b.D["warmup"],
    repeats: b.RepeatsOpt = b.D["repeats"],
    bench_device: Annotated[
        str, typer.Option("--runtime-device", help="bench's runtime device: CPU, GPU, NPU, AUTO or an OpenVINO device id.")
    ] = "CPU",
    max_latency_ms: b.MaxLatencyOpt = None,
    max_accuracy_drop: b.MaxDropOpt = None,
    min_speedup: b.MinSpeedupOpt = None,
    trust_recipe_code: o.TrustCodeOpt = False,
    compare_methods: Annotated[
        Optional[str],
        typer.Option(
            "--compare", help="Also train these baselines on the same split, student and epochs, e.g. scratch,kd; the report compares them."
        ),
    ] = None,
    resume: Annotated[
        Optional[Path],
        typer.Option(
            "--resume",
            help="Continue an interrupted run (its --out directory): the stage that was stopped (training, baselines, export, bench) "
            "and the ones after it, with the recipe and settings it was started with.",
        ),
    ] = None,
    as_json: o.JsonOpt = False,
) -> None:
    """Distill, export ONNX and OpenVINO at the deploy precision, benchmark and write the report, in one go.

    Bare `prokt-deploy run` trains the default recipe: ProKT from the shipped Fashion-MNIST teacher into a 64 kB student for 15 epochs (about 45 minutes on 2 CPU cores; each training phase prints its steps and a time estimate after its first steps), then exports, benchmarks and writes the report. `run digits` is a one-minute recipe.

    Takes the overrides of `distill`; `--out DIR` is the run directory, where report.json, report.md and report.html are written. An artifact that misses its export gates is left out of the bench and listed in the report; after the report, a missed bench gate exits with code 11, and a missed export gate of a format the recipe plans for (budget.formats) with code 10.
    """
    if resume is not None:
        given = {"RECIPE": recipe_file, "--recipe": recipe, "--out": out_dir, "--latencies": latencies, "--compare": compare_methods}
        given.update({"--max-latency-ms": max_latency_ms, "--max-drop-vs-teacher": max_accuracy_drop, "--min-speedup-vs-teacher": min_speedup})
        # a bench setting given at all is refused, even at its default value (not silently ignored)
        settings = {"--threads": "threads", "--batch": "batch", "--runs": "runs", "--warmup": "warmup", "--repeats": "repeats"}
        settings["--runtime-device"] = "bench_device"
        flags = [k for k, v in given.items() if v is not None] + [f for f, p in settings.items() if o.on_command_line(ctx, p)]
        flags += o.given_flags(overrides)
        if flags:
            raise UsageError(
                f"--resume continues {resume} with the recipe and settings it was started with; {', '.join(flags)} cannot change them: "
                f"drop {', '.join(flags)}, or start a new run"
            )
        _consent_for_saved_recipe(resume, trust_recipe_code)
        r = None
    else:
        r = o.resolve_recipe(o.one_recipe(recipe_file, recipe), overrides, trust_recipe_code=trust_recipe_code)
    with PipelineProgress() as progress:
        result = pipeline.run(
            r,
            resume=resume,
            out=out_dir,
            compare=compare_methods,
            latencies=latencies,
            threads=threads,
            batch=batch,
            runs=runs,
            warmup=warmup,
            repeats=repeats,
            bench_device=bench_device,
            max_latency_ms=max_latency_ms,
            max_accuracy_drop=max_accuracy_drop,
            min_speedup=min_speedup,
            progress=progress,
            training_progress=progress,
            bench_progress=b.EngineBars(progress.display, progress.status),
        )
    b.show_report(result.report, as_json)
    result.check()


def _consent_for_saved_recipe(run_dir: Path, trusted: bool) -> None:
    """A resumed run imports what its saved recipe names (teacher.factory) only with --trust-recipe-code."""
    from prokt_deploy.recipe import load_recipe
    from prokt_deploy.rundir.workspace import partial_path

    for saved in (run_dir / "recipe.yaml", partial_path(run_dir) / "recipe.yaml"):
        if saved.is_file():
            o.require_code_consent(o.code_hooks(load_recipe(saved).teacher.factory), trusted, f"the run's recipe {str(saved)!r}")
            return
