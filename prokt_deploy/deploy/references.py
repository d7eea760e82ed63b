"""The reference artifacts a run's student is measured against, exported on demand into the run.

- ``<run>/artifacts/<which>-<format>-fp32/`` (:func:`ensure_fp32_export`): the teacher's ONNX fp32 file
  (bench's baseline) and the student's fp32 file of a format it only has int8 of;
- ``<run>/artifacts/<which>-<format>-int8/`` (:func:`ensure_int8_export`): the teacher's own int8
  artifacts, made with the student's quantizers, calibration and accuracy gate (the first thing a user
  tries instead of distilling), with the gate's record in ``gate.json``.

Each is exported once and reused by later benches and bundles; none is listed in the manifest (they
are not the run's deliverables). Used by :mod:`prokt_deploy.benchmarking.bench` and :mod:`prokt_deploy.deploy.bundle`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

import exporters
from prokt_deploy.data import DataBundle
from prokt_deploy.deploy.gate import Reference, gate_artifact
from prokt_deploy.errors import ExportFailed
from prokt_deploy.rundir.reader import FinishedRun
from prokt_deploy.rundir.records import GateRecord
from prokt_deploy.rundir.workspace import filesystem_cause, staged_dir

GATE_RECORD = "gate.json"
#: the list of an fp32 reference export's files, written last into its staging directory (the export is complete when it is there)
FILES_RECORD = "files.json"
Progress = Callable[[str], None]


def _finished_files(out: Path) -> list[Path]:
    """The files of a finished reference export in ``out`` (listed in its ``files.json``), or [] when there is none."""
    try:
        files = [out / name for name in json.loads((out / FILES_RECORD).read_text())]
    except (OSError, ValueError, TypeError):
        return []
    return files if files and all(f.is_file() for f in files) else []


def ensure_fp32_export(run: FinishedRun, which: str, fmt: str, example: np.ndarray) -> list[Path]:
    """``<run>/artifacts/<which>-<fmt>-fp32/``, exported once and reused by later benches."""
    out = run.path / "artifacts" / f"{which}-{fmt}-fp32"
    done = _finished_files(out)
    if done:
        return done
    import torch

    model = run.model(which)
    with staged_dir(out) as staged:  # never a half-written export in place
        try:
            artifact = exporters.export(model, fmt, "fp32", staged.path, example_input=torch.from_numpy(example[:2]))
        except (exporters.ExportError, RuntimeError, OSError) as exc:
            cause = filesystem_cause(exc, staged.path)
            if cause is not None:
                raise cause from None
            raise ExportFailed(f"could not export the {which} to {fmt} fp32 for the benchmark: {exc}") from None
        done = _finished_files(out)  # written since by another bench
        if done:
            return done
        (staged.path / FILES_RECORD).write_text(json.dumps([f.name for f in artifact.files]) + "\n")
        staged.commit()
        return [out / f.name for f in artifact.files]


def ensure_int8_export(
    run: FinishedRun,
    which: str,
    fmt: str,
    data: DataBundle,
    *,
    calibration_samples: int,
    max_accuracy_drop: float,
    budget_bytes: int | None,
    progress: Progress,
    cache: dict | None = None,
    reference_accuracy: float | None = None,
) -> GateRecord:
    """``<run>/artifacts/<which>-<fmt>-int8/``: the model exported to int8 by :func:`gate_artifact`, the code that
    makes and gates the student's int8, with the same calibration (the first ``calibration_samples`` training
    samples) and gate (accuracy drop against the same model in PyTorch on the test split <= ``max_accuracy_drop``).

    Returns the gate record (also written to ``gate.json`` in that directory, and reused by later benches
    and bundles while the settings are the same; ``files`` empty when it failed). The budget is recorded
    (``within_budget``), not a gate: the teacher's int8 is a row to beat, fitting or not. An export error is a
    failed record, not an exception: a baseline that cannot be made must not stop the benchmark.

    ``cache``: a dict shared by the calls for one model's formats (one dict per model); the model and its PyTorch test logits
    (the gate's reference) are loaded and computed once into it, not once per format.
    ``reference_accuracy``: the model's PyTorch test accuracy on this same split, measured before (the run's
    manifest records it right after training): the gate compares with it and PyTorch is not run again
    (the record's ``reference`` says which: ``manifest`` or ``pytorch``).
    """
    out = run.path / "artifacts" / f"{which}-{fmt}-int8"
    wanted = {"calibration_samples": calibration_samples, "max_accuracy_drop": max_accuracy_drop, "test_samples": len(data.test)}
    try:
        cached = GateRecord.from_dict(json.loads((out / GATE_RECORD).read_text()))
        if {k: getattr(cached, k) for k in wanted} == wanted and all((run.path / f).is_file() for f in cached.files):
            cached.budget_bytes = budget_bytes
            cached.within_budget = None if budget_bytes is None or cached.bytes is None else cached.bytes <= budget_bytes
            return cached
    except (OSError, ValueError, KeyError, TypeError):
        pass
    progress(f"exporting the {which} to {fmt} int8 (calibrating on {calibration_samples} training samples, gate {max_accuracy_drop:g} points)")
    cache = {} if cache is None else cache
    if "model" not in cache:
        cache["model"] = run.model(which)
    model = cache["model"]
    # every int8 export starts from an fp32 ONNX file: the one bench and bundle keep for this model
    # (exported once, here if not yet) instead of a fresh export per format (~6-13 s each for MiniLM)
    try:
        fp32_onnx: Path | None = ensure_fp32_export(run, which, "onnx", data.train.x[:2].numpy())[0]
    except ExportFailed:
        fp32_onnx = None  # the int8 export below tries on its own and records why it failed
    # text in length-sorted batches cut to their longest sample: the project's text models (MiniLM,
    # the tfm students) mask their padding, so the logits are the same and MiniLM's gate costs about half
    if reference_accuracy is None and "logits" not in cache:
        progress(f"running the {which} in PyTorch on the {len(data.test)} test samples (the int8 gates' reference, once)")
        cache["logits"] = exporters.reference_logits(model, data.test.x.numpy(), trim_padding=True)
    reference = Reference(accuracy=reference_accuracy) if reference_accuracy is not None else Reference(logits=cache["logits"])
    with staged_dir(out) as staged:
        try:
            record = gate_artifact(
                model,
                fmt,
                "int8",
                staged.path,
                final=out,
                run=run.path,
                data=data,
                reference=reference,
                calibration=data.train.x[:calibration_samples].numpy(),
                tolerance=None,
                max_accuracy_drop=max_accuracy_drop,
                budget_bytes=budget_bytes,
                budget_gated=False,
                fp32_onnx=fp32_onnx,
                trim_padding=True,
            )
            record.reference = reference.source
        except exporters.ExportError as exc:
            record = GateRecord(
                format=fmt,
                precision="int8",
                calibration_samples=calibration_samples,
                max_accuracy_drop=max_accuracy_drop,
                test_samples=len(data.test),
                budget_bytes=budget_bytes,
                failures=[f"export failed: {exc}"],
            )
        if not record.passed:
            for f in list(staged.path.iterdir()):
                f.unlink()
        (staged.path / GATE_RECORD).write_text(json.dumps(record.to_dict(), indent=2) + "\n")
        staged.commit()
    return record


def teacher_int8_gates(run: FinishedRun, formats: Iterable[str], data: DataBundle, progress: Progress) -> dict[str, GateRecord]:
    """The teacher's own int8 reference in each of ``formats`` that has int8 (:func:`ensure_int8_export`), made as the
    student's int8 was (its calibration and gate) and gated against the teacher's PyTorch test accuracy the
    manifest records for this split; format -> gate record."""
    m = run.manifest
    calibration, max_drop = m.int8_settings()
    cache: dict = {}
    return {
        fmt: ensure_int8_export(
            run,
            "teacher",
            fmt,
            data,
            calibration_samples=calibration,
            max_accuracy_drop=max_drop,
            budget_bytes=m.budget_bytes,
            progress=progress,
            cache=cache,
            reference_accuracy=m.metrics.get("teacher_test_accuracy"),  # PyTorch, this split, after training
        )
        for fmt in sorted(set(formats) & set(exporters.formats_with("int8")))  # the registered formats with int8
    }
