"""`export`: the run's student as gated int8/fp16/fp32 ONNX and OpenVINO artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.table import Table

from prokt_deploy.budget import format_size
from prokt_deploy.cli import options as o
from prokt_deploy.cli.console import err, out, print_json
from prokt_deploy.errors import ExportFailed, GateFailed
from prokt_deploy.rundir.reader import DEFAULT_CALIBRATION_SAMPLES, DEFAULT_MAX_ACCURACY_DROP
from prokt_deploy.rundir.records import ExportResult, FailedExport, SkippedExport


def export(
    run: Annotated[Optional[Path], typer.Argument(help="Run directory written by 'distill' (default: runs/latest).")] = None,
    formats: Annotated[
        Optional[list[str]],
        typer.Option(
            "--format",
            "-f",
            help="onnx | openvino | litert | executorch | all (onnx and openvino); repeatable (default: the formats the run was planned for).",
        ),
    ] = None,
    precision: Annotated[
        Optional[str], typer.Option(help="fp32 | fp16 | int8 (default: the run's deploy precision). ONNX has no fp16: 'all' skips it.")
    ] = None,
    calibration_samples: Annotated[
        int, typer.Option("--calibration-samples", help="Real training samples to calibrate int8 on.")
    ] = DEFAULT_CALIBRATION_SAMPLES,
    max_accuracy_drop: Annotated[
        float,
        typer.Option(
            "--max-int8-drop",
            help="int8 gate: most test accuracy the int8 file may lose against the student's fp32 PyTorch model, percentage points.",
        ),
    ] = DEFAULT_MAX_ACCURACY_DROP,
    tolerance: Annotated[Optional[float], typer.Option(help="Max |logit diff| vs PyTorch (default: fp32 1e-4, fp16 5e-2, int8 unchecked).")] = None,
    device: Annotated[
        str, typer.Option("--runtime-device", help="Runtime device for validation (OpenVINO device name; onnxruntime: CPU or cuda).")
    ] = "CPU",
    accuracy_aware: Annotated[
        Optional[bool],
        typer.Option(
            "--accuracy-aware/--no-accuracy-aware",
            help="int8: keep the fewest layers in fp32 that meet --max-int8-drop (default: the recipe's budget.accuracy_aware, auto = only when plain int8 misses it).",
        ),
    ] = None,
    qat: Annotated[
        Optional[bool],
        typer.Option(
            "--qat/--no-qat",
            help="int8: fine-tune the student with simulated int8 against its teacher first (default: the recipe's budget.qat, auto = only when post-training int8, accuracy-aware included, misses --max-int8-drop).",
        ),
    ] = None,
    as_json: o.JsonOpt = False,
) -> None:
    """Export, validate in each artifact's own runtime, check the size budget; keep only what passes."""
    from prokt_deploy.benchmarking.bench import runtime_targets
    from prokt_deploy.deploy import export as deploy

    if formats:
        deploy.check_format_names(formats)  # bad names are usage errors even before a run is found
    if precision is not None:
        deploy.check_precision_name(precision)
    path, planned_formats, planned_precision = deploy.run_defaults(run)
    runtime_targets("GPU" if device.lower().startswith("cuda") else device)  # an unavailable device fails before anything is exported
    with err.status("exporting", spinner="dots") as status:  # transient: nothing is left on a non-terminal stderr
        try:
            results = deploy.export_run(
                path,
                formats or planned_formats,
                precision or planned_precision,
                calibration_samples=calibration_samples,
                max_accuracy_drop=max_accuracy_drop,
                tolerance=tolerance,
                device=device,
                progress=status.update,
                accuracy_aware=None if accuracy_aware is None else ("on" if accuracy_aware else "off"),
                qat=None if qat is None else ("on" if qat else "off"),
            )
        except (GateFailed, ExportFailed) as e:
            failure = e
            results = e.results
        else:
            failure = None
    if as_json:
        print_json({"run": str(path), "artifacts": [r.to_dict() for r in results]})
    else:
        print_results(path, results)
    if failure is not None:
        raise failure


def _fmt_float(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _pct(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.2f}%"


def _accuracy_aware_note(name: str, aware: dict) -> str:
    plain = aware.get("plain_int8")
    head = f"{name}: accuracy-aware" + (f" (plain int8 lost {plain['accuracy_drop']:.2f} points on test, {plain['bytes']:,} B)" if plain else "")
    if not aware["kept_fp32"]:
        return f"{head}: nothing kept in fp32 (validation drop {aware['drop']:+.2f} points)"
    layers = ", ".join(f"{k['name']} ({k['op_type']}, {k['fp32_weight_bytes']:,} B fp32 weights)" for k in aware["kept_fp32"])
    return (
        f"{head}: kept in fp32 {layers}; +{aware['extra_bytes']:,} B over plain int8; validation drop "
        f"{aware['plain_drop']:+.2f} -> {aware['drop']:+.2f} points"
    )


def _qat_note(name: str, qat: dict) -> str:
    before = qat.get("before")
    was = f"{before['int8_path']} int8 lost {before['accuracy_drop']:.2f} points on test" if before else "asked for"
    source = "the teacher's soft targets and the labels" if qat["teacher"] else "the labels"
    return (
        f"{name}: quantization-aware fine-tuning ({was}): {qat['steps']} steps on {source}, simulated int8 validation "
        f"accuracy {100 * qat['val_accuracy_simulated_before']:.2f}% -> {100 * qat['val_accuracy_simulated_after']:.2f}%"
    )


def print_results(run: Path, results: list[ExportResult]) -> None:
    table = Table(title=f"artifacts of {run}", box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    table.add_column("artifact", no_wrap=True)
    for col in ("bytes", "budget", "|diff|", "agree", "acc", "drop"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("gate", no_wrap=True)
    notes = []
    reference = None
    for r in results:
        name = f"{r.format}-{r.precision}"
        if isinstance(r, SkippedExport):
            table.add_row(name, *["-"] * 6, "skip")
            notes.append(r.skipped)
            continue
        if isinstance(r, FailedExport):
            table.add_row(name, *["-"] * 6, "[bold red]ERROR[/]")
            notes.append(r.error)
            continue
        reference = r.reference_accuracy
        budget = f"{'<=' if r.within_budget else '>'} {r.budget_bytes:,}" + ("" if r.budget_gated else "*")
        table.add_row(
            name,
            f"{r.bytes:,}",
            budget,
            "inf" if r.max_abs_diff is None else f"{r.max_abs_diff:.1e}",
            _pct(r.top1_agreement),
            _pct(r.test_accuracy),
            _fmt_float(r.accuracy_drop, "+.2f"),
            "[bold green]PASS[/]" if r.passed else "[bold red]FAIL[/]",
        )
        if r.passed:
            notes.append(f"{name}: {', '.join(r.files)} ({format_size(r.bytes)}, {r.runtime})")
        else:
            notes.extend(f"{name}: {f}" for f in r.failures)
        if r.accuracy_aware:
            notes.append(_accuracy_aware_note(name, r.accuracy_aware))
        if r.qat:
            notes.append(_qat_note(name, r.qat))
        if not r.budget_gated:
            notes.append(f"* {name}: the budget is only a gate at the precision the run was planned for")
    out.print(table)
    if reference is not None:
        out.print(
            f"|diff|: max |logit difference| vs the PyTorch student; agree: top-1 agreement with the PyTorch student; acc: test accuracy in the artifact's runtime "
            f"(PyTorch student: {_pct(reference)}); drop: accuracy lost, in points",
            highlight=False,
        )
    for note in notes:
        out.print(note, highlight=False)
