"""Export a run's student to deployable artifacts, each with proof: ``export_run``.

For every requested format, at one precision:

1. the student is rebuilt from the run (``manifest.json``, ``student.safetensors``) and the data is
   reloaded with the run's recipe and seed, so the test split is the run's held-out split;
2. the artifact is exported (int8 calibrated on real training samples) into a hidden staging
   directory ``<run>/artifacts/.<format>-<precision>.partial-*``;
3. it is loaded in its own runtime and compared with the PyTorch student on the test split:
   max |logit diff| (fp32 1e-4, fp16 5e-2 by default; int8 is judged by accuracy instead), top-1
   agreement, test accuracy and, for int8, the accuracy drop against ``max_accuracy_drop`` points;
4. its size (every file) is checked against the run's budget, exactly;
5. only when every gate passed is it renamed to ``<run>/artifacts/<format>-<precision>/``.

Every artifact is recorded in ``manifest['artifacts']`` (passed or not; a failed one keeps no files)
and every check is reported before :class:`~prokt_deploy.errors.GateFailed` or
:class:`~prokt_deploy.errors.ExportFailed` is raised; the raised error carries the records in
``.results``.

Choices:

- The budget is a gate at the run's deploy precision (``manifest['precision']``, the one the planner
  sized the student for). At another precision (e.g. fp32 of an int8-planned run) the size is still
  measured and recorded (``within_budget``) but does not fail the export: nothing was planned for it.
- ``formats=["all"]`` means every registered format that supports the precision; a format without it
  (ONNX has no fp16) is skipped with a note. Naming such a format explicitly is a usage error.
- Accuracy-aware int8 (``accuracy_aware``, default: the run recipe's ``budget.accuracy_aware``, itself
  ``auto``): ``on`` exports int8 with :func:`exporters.export_accuracy_aware` (the fewest layers kept
  in fp32 so that the drop on the *validation* split meets ``max_accuracy_drop``); ``auto`` does so only
  after the plain int8 artifact missed the accuracy gate (and nothing else). The record then has
  ``accuracy_aware``: the layers kept in fp32 with their fp32 weight bytes, the exact extra bytes over
  plain int8, the validation accuracies and, under auto, the plain attempt's drop and size. The test
  split still gates the result, and so does the budget.
- Quantization-aware distillation (``qat``, default: the run recipe's ``budget.qat``, itself ``auto``): ``on``
  exports int8 from a copy of the student fine-tuned with simulated int8 against the run's teacher
  (:func:`prokt_deploy.train.qat.quantization_aware_distill`; labels alone for a run without a teacher);
  ``auto`` does so only when the post-training file (accuracy-aware included) still missed the accuracy gate
  alone. The fine-tuning runs once per call and serves every format. The gate's reference stays the run's
  student: the drop is measured against the model that was trained. Every int8 record says which path made
  it (``int8_path``: ptq, accuracy-aware or qat) and a qat record has ``qat``: the fine-tuning and the
  attempt it replaced (``before``). The run's student weights are not changed.
- Re-exporting a format+precision replaces the earlier artifact and its manifest entry, whatever the
  outcome: a failed re-export also removes the earlier directory, so the directory on disk is always
  the one the manifest describes as passed.
"""

from __future__ import annotations

import functools
import math
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

import exporters
from prokt_deploy.data import DataBundle
from prokt_deploy.deploy.gate import Reference, gate_artifact
from prokt_deploy.errors import ExportFailed, GateFailed, UsageError
from prokt_deploy.rundir.reader import DEFAULT_CALIBRATION_SAMPLES, DEFAULT_MAX_ACCURACY_DROP, OLDEST_READ, SCHEMA_VERSION, open_run
from prokt_deploy.rundir.records import ExportResult, FailedExport, GateRecord, SkippedExport
from prokt_deploy.rundir.workspace import filesystem_cause, staged_dir, update_manifest

ARTIFACTS_DIR = "artifacts"

ProgressFn = Callable[[str], None]


def all_precisions() -> list[str]:
    """Every precision some registered format supports, in the order fp32, fp16, int8."""
    seen = {p for ps in exporters.PRECISIONS.values() for p in ps}
    order = ["fp32", "fp16", "int8"]
    return [p for p in order if p in seen] + sorted(seen - set(order))


def _supported() -> str:
    return "; ".join(f"{fmt}: {', '.join(ps)}" for fmt, ps in exporters.PRECISIONS.items())


def check_format_names(formats: Sequence[str]) -> None:
    """Raise UsageError for a format name that is neither registered nor ``all``."""
    valid = [*exporters.FORMATS, "all"]
    for fmt in formats:
        if fmt not in valid:
            raise UsageError(f"unknown format {fmt!r}; valid formats: {', '.join(valid)}")
    if not formats:
        raise UsageError(f"no format given; valid formats: {', '.join(valid)}")


def check_precision_name(precision: str) -> None:
    """Raise UsageError for a precision no format supports."""
    if precision not in all_precisions():
        raise UsageError(f"unknown precision {precision!r}; valid precisions: {', '.join(all_precisions())} ({_supported()})")


def export_targets(formats: Sequence[str], precision: str) -> tuple[list[str], dict[str, str]]:
    """The formats to export at ``precision`` and the skipped ones with the reason.

    ``all`` expands to the registered formats exported by default (:func:`exporters.default_formats`: those whose
    runtime is an optional extra are exported where named); those without ``precision`` are skipped. A format named
    explicitly that lacks ``precision`` is a UsageError, and so is a request that leaves nothing to export.
    """
    check_format_names(formats)
    check_precision_name(precision)
    targets: list[str] = []
    skipped: dict[str, str] = {}
    for fmt in formats:
        for name in exporters.default_formats() if fmt == "all" else [fmt]:
            if name in targets or name in skipped:
                continue
            if precision in exporters.PRECISIONS[name]:
                targets.append(name)
            elif fmt == "all":
                skipped[name] = f"{name} has no {precision} (it supports {', '.join(exporters.PRECISIONS[name])}); skipped"
            else:
                raise UsageError(f"{name} has no {precision}; valid precisions per format: {_supported()}")
    if not targets:
        raise UsageError(f"no format supports {precision}; valid precisions per format: {_supported()}")
    return targets, skipped


def run_defaults(run: str | Path | None) -> tuple[Path, list[str], str]:
    """The run directory (default: the latest run), its planned formats and its deploy precision."""
    fr = open_run(run)
    return fr.path, fr.manifest.formats or ["all"], fr.manifest.precision


def _record_artifact(run: Path, record: GateRecord) -> None:
    """Replace the entry of the record's format+precision in the manifest as it is on disk now (re-read
    under the run's lock: another export may have recorded its artifact since this one started)."""

    def change(current: dict) -> None:
        artifacts = current.get("artifacts")
        kept = [
            a
            for a in (artifacts if isinstance(artifacts, list) else [])
            if not (isinstance(a, dict) and (a.get("format"), a.get("precision")) == record.key)
        ]
        current["artifacts"] = [*kept, record.to_dict()]
        current["schema_version"] = max(int(current.get("schema_version") or OLDEST_READ), SCHEMA_VERSION)  # a v2 record is in it now

    update_manifest(run, change)


def _export_one(
    *,
    run: Path,
    fmt: str,
    precision: str,
    student: torch.nn.Module,
    data: DataBundle,
    calibration: np.ndarray | None,
    budget: int,
    budget_gated: bool,
    tolerance: float | None,
    max_accuracy_drop: float,
    device: str,
    say: ProgressFn,
    accuracy_aware: bool = False,
    reference_model: torch.nn.Module | None = None,
) -> GateRecord:
    """Export, validate and size one artifact (:func:`gate_artifact`) of ``student`` against ``reference_model``
    (default: the same model); move it into place if it passed, else remove the earlier one of the same format and
    precision. Returns its record."""
    root = run / ARTIFACTS_DIR
    created_root = not root.exists()
    final = root / f"{fmt}-{precision}"
    try:
        with staged_dir(final) as staged:
            try:
                record = gate_artifact(
                    student,
                    fmt,
                    precision,
                    staged.path,
                    final=final,
                    run=run,
                    data=data,
                    reference=Reference(model=reference_model if reference_model is not None else student),
                    calibration=calibration,
                    tolerance=tolerance if tolerance is not None else exporters.default_tolerance(precision),
                    max_accuracy_drop=max_accuracy_drop if precision == "int8" else None,
                    budget_bytes=budget,
                    budget_gated=budget_gated,
                    accuracy_aware=accuracy_aware,
                    device=device,
                    say=say,
                )
            except (exporters.ExportError, RuntimeError, OSError) as exc:
                cause = filesystem_cause(exc, staged.path)  # a full disk is exit 13 with the OS message, not an export failure
                if cause is not None and cause is not exc:
                    raise cause from None
                raise
            if record.passed and data.is_text:
                record.tokenizer_files = _store_tokenizer(run, staged.path, final)
                record.tokenizer_bytes = sum(f.stat().st_size for f in (staged.path / "tokenizer").iterdir()) if record.tokenizer_files else 0
            if record.passed:
                staged.commit()
            else:
                _remove_dir(final)  # the failed export replaces the earlier one (module docstring)
        return record
    finally:
        if created_root and root.is_dir() and not any(root.iterdir()):
            root.rmdir()  # a failed first export leaves the run as it was


def _attempt(record: GateRecord) -> dict:
    """What a replaced int8 attempt is remembered by (its size, test accuracy, drop and failures)."""
    return {"bytes": record.bytes, "test_accuracy": record.test_accuracy, "accuracy_drop": record.accuracy_drop, "failures": record.failures}


def _remove_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)


def _store_tokenizer(run: Path, staging: Path, final: Path) -> list[str]:
    """Copy the run's tokenizer files into the artifact (``<artifact>/tokenizer/``), so the artifact
    directory alone can tokenize on a device. They are listed apart from the model files: the size
    budget is the model's; the tokenizer's bytes are reported next to it."""
    src = run / "tokenizer"
    if not src.is_dir():
        return []
    shutil.copytree(src, staging / "tokenizer")
    return [str((final / "tokenizer" / f.name).relative_to(run)) for f in sorted(src.iterdir()) if f.is_file()]


def export_run(
    run: str | Path | None,
    formats: Sequence[str],
    precision: str,
    *,
    calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES,
    max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP,
    tolerance: float | None = None,
    device: str = "CPU",
    progress: ProgressFn | None = None,
    accuracy_aware: str | None = None,
    qat: str | None = None,
) -> list[ExportResult]:
    """Export the run's student to each of ``formats`` at ``precision`` and gate every artifact.

    ``run`` is a run directory written by ``distill`` (None: ``runs/latest``). ``formats`` holds format
    names or ``"all"``; ``precision`` is one of fp32, fp16, int8. int8 is calibrated on the first
    ``calibration_samples`` training samples (the training split is already a seeded shuffle).
    ``tolerance`` overrides the default max |logit diff| of the precision (fp32 1e-4, fp16 5e-2, int8 none);
    ``max_accuracy_drop`` (percentage points) gates int8. ``device`` is the runtime device used for
    validation ("CPU"). ``progress`` receives one-line status messages. ``accuracy_aware`` is auto, on
    or off (None: the run recipe's ``budget.accuracy_aware``); so is ``qat`` (None: ``budget.qat``); see the module
    docstring.

    Returns one record per requested format: its :class:`~prokt_deploy.rundir.records.GateRecord` (the manifest
    entry, see the module docstring), or a :class:`~prokt_deploy.rundir.records.SkippedExport` for a format
    without this precision. Raises UsageError (bad names or
    numbers), RunError (no run, corrupted manifest), ModelError (unloadable weights), DataError, and
    after every artifact was tried and recorded: ExportFailed if an export or its runtime failed,
    else GateFailed if an artifact missed a gate (both carry the records in ``.results``).
    """
    say = progress or (lambda message: None)
    targets, skipped = export_targets(formats, precision)
    if calibration_samples < 1:
        raise UsageError(f"--calibration-samples must be at least 1, got {calibration_samples}")
    if not math.isfinite(max_accuracy_drop):
        raise UsageError(f"--max-int8-drop must be a finite number of points, got {max_accuracy_drop}")
    if tolerance is not None and not (math.isfinite(tolerance) and tolerance >= 0):
        raise UsageError(f"--tolerance must be a non-negative number, got {tolerance}")
    if accuracy_aware not in (None, "auto", "on", "off"):
        raise UsageError(f"accuracy-aware must be auto, on or off, got {accuracy_aware!r}")
    if qat not in (None, "auto", "on", "off"):
        raise UsageError(f"qat must be auto, on or off, got {qat!r}")

    fr = open_run(run)
    path, budget, planned_precision = fr.path, fr.manifest.budget_bytes, fr.manifest.precision
    say(f"loading the run's data and student {fr.manifest.student.arch}")
    data = fr.data()
    student = fr.model("student")
    calibration = data.train.x[:calibration_samples].numpy() if precision == "int8" else None
    aware_mode = accuracy_aware or fr.recipe().budget.accuracy_aware  # the schema's default (auto) for older recipes
    qat_mode = qat or fr.recipe().budget.qat

    @functools.cache  # one fine-tuning serves every format
    def qat_model() -> tuple[torch.nn.Module, dict]:
        from prokt_deploy.train.augment import from_recipe
        from prokt_deploy.train.qat import quantization_aware_distill

        teacher = fr.model("teacher") if fr.manifest.teacher.weights else None
        say(f"quantization-aware fine-tuning of the student{' against the teacher' if teacher is not None else ' on the labels'}")
        recipe = fr.recipe()
        augment = None if data.is_text else from_recipe(recipe.data.augment, data.input)  # what the student was trained with
        model, result = quantization_aware_distill(
            student, (data.train.x, data.train.y), (data.val.x, data.val.y), teacher=teacher, seed=recipe.seed, augment=augment
        )
        return model, result.to_dict()

    results: list[ExportResult] = []
    errors: list[str] = []
    for fmt in exporters.FORMATS:
        if fmt in skipped:
            results.append(SkippedExport(fmt, precision, skipped[fmt]))
        if fmt not in targets:
            continue
        try:
            one = dict(
                run=path,
                fmt=fmt,
                precision=precision,
                student=student,
                data=data,
                calibration=calibration,
                budget=budget,
                budget_gated=precision == planned_precision,
                tolerance=tolerance,
                max_accuracy_drop=max_accuracy_drop,
                device=device,
                say=say,
            )
            if precision == "int8" and qat_mode == "on":
                model, info = qat_model()
                record = _export_one(**{**one, "student": model}, reference_model=student)
                record.int8_path, record.qat = "qat", dict(info)
            else:
                record = _export_one(**one, accuracy_aware=precision == "int8" and aware_mode == "on")
            if precision == "int8" and aware_mode == "auto" and record.accuracy_missed_alone() and exporters.get_exporter(fmt).has_accuracy_aware:
                say(f"{fmt} int8 missed the accuracy gate by {record.accuracy_drop - max_accuracy_drop:.2f} points: retrying accuracy-aware")
                plain = record
                record = _export_one(**one, accuracy_aware=True)
                record.accuracy_aware["plain_int8"] = _attempt(plain)
            if precision == "int8" and record.int8_path is None:
                record.int8_path = "accuracy-aware" if record.accuracy_aware else "ptq"
            if precision == "int8" and qat_mode == "auto" and record.accuracy_missed_alone():
                say(
                    f"{fmt} int8 ({record.int8_path}) missed the accuracy gate by {record.accuracy_drop - max_accuracy_drop:.2f} points: quantization-aware fine-tuning"
                )
                before = record
                model, info = qat_model()
                record = _export_one(**{**one, "student": model}, reference_model=student)
                record.int8_path = "qat"
                record.qat = {**info, "before": {"int8_path": before.int8_path, **_attempt(before)}}
        except exporters.BackendMissingError as e:
            errors.append(f"{fmt} {precision} needs a runtime that is not installed ({e})")
            results.append(FailedExport(fmt, precision, errors[-1]))
            continue
        except exporters.ExportError as e:
            errors.append(f"{fmt} {precision} export failed: {e}")
            results.append(FailedExport(fmt, precision, errors[-1]))
            continue
        try:
            _record_artifact(path, record)
        except OSError:  # e.g. the disk filled up: an artifact on disk that the manifest does not list is removed
            if record.passed:
                _remove_dir(path / ARTIFACTS_DIR / f"{fmt}-{precision}")
            raise
        results.append(record)
        verdict = "passed" if record.passed else "FAILED: " + "; ".join(record.failures)
        say(f"{fmt} {precision}: {record.bytes:,} B, {verdict}")

    failed = [r for r in results if isinstance(r, GateRecord) and not r.passed]
    gate_summary = "; ".join(f"{r.format} {r.precision}: " + "; ".join(r.failures) for r in failed)
    if errors:
        message = "; ".join(errors) + (f" (also missed a gate: {gate_summary})" if failed else "")
        raise ExportFailed(message, results=results)
    if failed:
        kept = sum(1 for r in results if isinstance(r, GateRecord) and r.passed)
        raise GateFailed(f"{len(failed)} of {len(failed) + kept} artifacts missed a gate and were not kept: {gate_summary}", results=results)
    return results
