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
- Re-exporting a format+precision replaces the earlier artifact and its manifest entry, whatever the
  outcome: a failed re-export also removes the earlier directory, so the directory on disk is always
  the one the manifest describes as passed.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

import exporters
from prokt_deploy.budget import format_size
from prokt_deploy.data import DataBundle
from prokt_deploy.errors import ExportFailed, GateFailed, UsageError
from prokt_deploy.run.reader import DEFAULT_CALIBRATION_SAMPLES, DEFAULT_MAX_ACCURACY_DROP, open_run
from prokt_deploy.run.workspace import filesystem_cause, update_manifest

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

    ``all`` expands to every registered format; those without ``precision`` are skipped. A format named
    explicitly that lacks ``precision`` is a UsageError, and so is a request that leaves nothing to export.
    """
    check_format_names(formats)
    check_precision_name(precision)
    targets: list[str] = []
    skipped: dict[str, str] = {}
    for fmt in formats:
        for name in exporters.FORMATS if fmt == "all" else [fmt]:
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


def _finite(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


def _remove_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)


def _move_into_place(staging: Path, final: Path) -> None:
    """Rename ``staging`` to ``final``, replacing an earlier artifact directory."""
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.old-"))
        os.rename(final, old / final.name)
    os.rename(staging, final)
    if old is not None:
        _remove_dir(old)


def _record_artifact(manifest: dict, run: Path, record: dict) -> None:
    """Replace the entry of the record's format+precision in the manifest as it is on disk now (re-read
    under the run's lock: another export may have recorded its artifact since this one started)."""
    key = (record["format"], record["precision"])

    def change(current: dict) -> None:
        artifacts = current.get("artifacts")
        kept = [
            a
            for a in (artifacts if isinstance(artifacts, list) else [])
            if not (isinstance(a, dict) and (a.get("format"), a.get("precision")) == key)
        ]
        current["artifacts"] = [*kept, record]

    manifest.update(update_manifest(run, change))


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
) -> dict:
    """Export, validate and size one artifact; move it into place if it passed. Returns its record."""
    root = run / ARTIFACTS_DIR
    created_root = not root.exists()
    root.mkdir(exist_ok=True)
    final = root / f"{fmt}-{precision}"
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name}.partial-"))
    os.chmod(staging, 0o755)  # mkdtemp makes 0700 directories
    try:
        say(f"{fmt} {precision}: exporting" + (f" (calibrating on {len(calibration)} training samples)" if calibration is not None else ""))
        aware = None
        if accuracy_aware:
            say(f"{fmt} {precision}: accuracy-aware search on {len(data.val)} validation samples")
            aware = exporters.export_accuracy_aware(
                student,
                fmt,
                staging,
                example_input=data.train.x[:2],
                calibration=calibration,
                validation_x=data.val.x.numpy(),
                validation_y=data.val.y.numpy(),
                max_accuracy_drop=max_accuracy_drop,
            )
            artifact = aware.artifact
        else:
            artifact = exporters.export(student, fmt, precision, staging, example_input=data.train.x[:2], calibration=calibration)
        size = artifact.bytes
        say(f"{fmt} {precision}: validating in {artifact.runtime} on {len(data.test)} test samples")
        predictor = exporters.load(artifact, fmt, device=device)
        tol = tolerance if tolerance is not None else exporters.default_tolerance(precision)
        report = exporters.validate(
            predictor,
            student,
            data.test.x.numpy(),
            data.test.y.numpy(),
            tolerance=tol,
            max_accuracy_drop=max_accuracy_drop if precision == "int8" else None,
        )
        failures = list(report.failures)
        if aware is not None and not aware.met:
            failures.append(
                f"accuracy-aware int8 found no layers to keep in fp32 that meet a {max_accuracy_drop:.2f} point drop "
                f"on the validation split (plain int8 lost {aware.to_dict()['plain_drop']:.2f} points there)"
            )
        within = size <= budget
        if budget_gated and not within:
            failures.append(
                f"artifact is {size:,} B ({format_size(size)}), over the budget of {budget:,} B ({format_size(budget)}) by {size - budget:,} B"
            )
        passed = not failures
        files = [final / f.name for f in artifact.files]
        record = {
            "format": fmt,
            "precision": precision,
            "files": [str(f.relative_to(run)) for f in files] if passed else [],
            "bytes": size,
            "runtime": artifact.runtime,
            "max_abs_diff": _finite(report.max_abs_diff),
            "top1_agreement": round(report.top1_agreement, 6),
            "test_accuracy": round(report.test_accuracy, 6) if report.test_accuracy is not None else None,
            "reference_accuracy": round(report.reference_accuracy, 6) if report.reference_accuracy is not None else None,
            "accuracy_drop": round(report.accuracy_drop, 4) if report.accuracy_drop is not None else None,
            "tolerance": tol,
            "max_accuracy_drop": max_accuracy_drop if precision == "int8" else None,
            "calibration_samples": len(calibration) if calibration is not None else None,
            "test_samples": len(data.test),
            "budget_bytes": budget,
            "within_budget": within,
            "budget_gated": budget_gated,
            "passed": passed,
            "failures": failures,
        }
        if aware is not None:
            record["accuracy_aware"] = aware.to_dict()
        if passed and data.is_text:
            record["tokenizer_files"] = _store_tokenizer(run, staging, final)
            record["tokenizer_bytes"] = sum(f.stat().st_size for f in (staging / "tokenizer").iterdir()) if record["tokenizer_files"] else 0
        if passed:
            _move_into_place(staging, final)
        else:
            _remove_dir(final)  # the failed export replaces the earlier one (module docstring)
        return record
    except (exporters.ExportError, RuntimeError, OSError) as exc:
        cause = filesystem_cause(exc, staging)  # a full disk is exit 13 with the OS message, not an export failure
        if cause is not None and cause is not exc:
            raise cause from None
        raise
    finally:
        _remove_dir(staging)
        if created_root and root.is_dir() and not any(root.iterdir()):
            root.rmdir()  # a failed first export leaves the run as it was


def _only_accuracy_missed(record: dict) -> bool:
    """The int8 record failed on its accuracy drop alone (within budget, parity unchecked for int8)."""
    drop, limit = record.get("accuracy_drop"), record.get("max_accuracy_drop")
    fits = record["within_budget"] or not record["budget_gated"]
    return not record["passed"] and drop is not None and limit is not None and drop > limit and fits and len(record["failures"]) == 1


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
) -> list[dict]:
    """Export the run's student to each of ``formats`` at ``precision`` and gate every artifact.

    ``run`` is a run directory written by ``distill`` (None: ``runs/latest``). ``formats`` holds format
    names or ``"all"``; ``precision`` is one of fp32, fp16, int8. int8 is calibrated on the first
    ``calibration_samples`` training samples (the training split is already a seeded shuffle).
    ``tolerance`` overrides the default max |logit diff| of the precision (fp32 1e-4, fp16 5e-2, int8 none);
    ``max_accuracy_drop`` (percentage points) gates int8. ``device`` is the runtime device used for
    validation ("CPU"). ``progress`` receives one-line status messages. ``accuracy_aware`` is auto, on
    or off (None: the run recipe's ``budget.accuracy_aware``); see the module docstring.

    Returns one record per requested format: the manifest entry (see the module docstring), or for a
    skipped format ``{"format", "precision", "skipped": reason}``. Raises UsageError (bad names or
    numbers), RunError (no run, corrupted manifest), ModelError (unloadable weights), DataError, and
    after every artifact was tried and recorded: ExportFailed if an export or its runtime failed,
    else GateFailed if an artifact missed a gate (both carry the records in ``.results``).
    """
    say = progress or (lambda message: None)
    targets, skipped = export_targets(formats, precision)
    if calibration_samples < 1:
        raise UsageError(f"--calibration-samples must be at least 1, got {calibration_samples}")
    if not math.isfinite(max_accuracy_drop):
        raise UsageError(f"--max-accuracy-drop must be a finite number of points, got {max_accuracy_drop}")
    if tolerance is not None and not (math.isfinite(tolerance) and tolerance >= 0):
        raise UsageError(f"--tolerance must be a non-negative number, got {tolerance}")
    if accuracy_aware not in (None, "auto", "on", "off"):
        raise UsageError(f"accuracy-aware must be auto, on or off, got {accuracy_aware!r}")

    fr = open_run(run)
    path, budget, planned_precision = fr.path, fr.manifest.budget_bytes, fr.manifest.precision
    manifest = dict(fr.manifest.raw)  # _record_artifact keeps it as it is on disk
    say(f"loading the run's data and student {fr.manifest.student.arch}")
    data = fr.data()
    student = fr.model("student")
    calibration = data.train.x[:calibration_samples].numpy() if precision == "int8" else None
    aware_mode = accuracy_aware or fr.recipe().budget.accuracy_aware  # the schema's default (auto) for older recipes

    results: list[dict] = []
    errors: list[str] = []
    for fmt in exporters.FORMATS:
        if fmt in skipped:
            results.append({"format": fmt, "precision": precision, "skipped": skipped[fmt]})
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
            record = _export_one(**one, accuracy_aware=precision == "int8" and aware_mode == "on")
            if precision == "int8" and aware_mode == "auto" and _only_accuracy_missed(record) and exporters.get_exporter(fmt).has_accuracy_aware:
                say(f"{fmt} int8 missed the accuracy gate by {record['accuracy_drop'] - max_accuracy_drop:.2f} points: retrying accuracy-aware")
                plain = record
                record = _export_one(**one, accuracy_aware=True)
                record["accuracy_aware"]["plain_int8"] = {k: plain[k] for k in ("bytes", "test_accuracy", "accuracy_drop", "failures")}
        except exporters.BackendMissingError as e:
            errors.append(f"{fmt} {precision} needs a runtime that is not installed ({e})")
            results.append({"format": fmt, "precision": precision, "error": errors[-1]})
            continue
        except exporters.ExportError as e:
            errors.append(f"{fmt} {precision} export failed: {e}")
            results.append({"format": fmt, "precision": precision, "error": errors[-1]})
            continue
        try:
            _record_artifact(manifest, path, record)
        except OSError:  # e.g. the disk filled up: an artifact on disk that the manifest does not list is removed
            if record["passed"]:
                _remove_dir(path / ARTIFACTS_DIR / f"{fmt}-{precision}")
            raise
        results.append(record)
        verdict = "passed" if record["passed"] else "FAILED: " + "; ".join(record["failures"])
        say(f"{fmt} {precision}: {record['bytes']:,} B, {verdict}")

    failed = [r for r in results if r.get("passed") is False]
    gate_summary = "; ".join(f"{r['format']} {r['precision']}: " + "; ".join(r["failures"]) for r in failed)
    if errors:
        message = "; ".join(errors) + (f" (also missed a gate: {gate_summary})" if failed else "")
        err: ExportFailed | GateFailed = ExportFailed(message)
    elif failed:
        err = GateFailed(
            f"{len(failed)} of {len(failed) + sum(1 for r in results if r.get('passed'))} artifacts missed a gate and were not kept: {gate_summary}"
        )
    else:
        return results
    err.results = results  # type: ignore[attr-defined]
    raise err
