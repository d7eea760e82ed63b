"""One artifact exported and checked: :func:`gate_artifact`, the gates every artifact passes, the student's
(``export``) and the teacher's own int8 (the reference the report compares with) alike, so the report's
promise that the teacher's int8 is made exactly as the student's holds by construction.

The gates, in order: the export itself (int8 calibrated on real samples; optionally accuracy-aware, keeping
the fewest layers in float that meet the drop on the validation split); parity with PyTorch in the format's
runtime (max |logit diff| within the precision's tolerance, fp32 1e-4, fp16 5e-2; int8 is judged by accuracy);
the accuracy drop on the test split against the same model in PyTorch (int8); and the exact bytes on disk
against the byte budget (a gate at the run's deploy precision, recorded at the others).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import exporters
from prokt_deploy.budget import format_size
from prokt_deploy.data import DataBundle
from prokt_deploy.rundir.records import GateRecord

Say = Callable[[str], None]


@dataclass(frozen=True)
class Reference:
    """What the artifact is compared with: the model in PyTorch (run here on the test split), or what was
    measured of it before on the same split (its logits, or only its accuracy: then parity is not checked)."""

    model: torch.nn.Module | None = None
    logits: np.ndarray | None = None
    accuracy: float | None = None

    @property
    def source(self) -> str:
        return "manifest" if self.model is None and self.logits is None and self.accuracy is not None else "pytorch"


def _finite(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def gate_artifact(
    model: torch.nn.Module,
    fmt: str,
    precision: str,
    staging: Path,
    *,
    final: Path,
    run: Path,
    data: DataBundle,
    reference: Reference,
    calibration: np.ndarray | None,
    tolerance: float | None,
    max_accuracy_drop: float | None,
    budget_bytes: int | None,
    budget_gated: bool,
    accuracy_aware: bool = False,
    fp32_onnx: Path | None = None,
    trim_padding: bool = False,
    device: str = "CPU",
    say: Say = lambda message: None,
) -> GateRecord:
    """Export ``model`` to ``fmt``/``precision`` into ``staging`` and check it; the record names its files as
    they will be once ``staging`` is moved to ``final`` (inside ``run``), and none when a gate failed.

    ``tolerance``: max |logit diff| against the reference (None: not checked, as for int8);
    ``max_accuracy_drop``: points on the test split (None: not checked); ``budget_bytes``: the run's byte
    budget, a gate when ``budget_gated`` and recorded otherwise. Raises :class:`exporters.ExportError` when the
    export or its runtime fails (the caller decides whether that stops it); a missed gate is a record with
    ``passed`` false and every failure named."""
    aware = None
    if accuracy_aware:
        say(f"{fmt} {precision}: accuracy-aware search on {len(data.val)} validation samples")
        aware = exporters.export_accuracy_aware(
            model,
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
        say(f"{fmt} {precision}: exporting" + (f" (calibrating on {len(calibration)} training samples)" if calibration is not None else ""))
        artifact = exporters.export(model, fmt, precision, staging, example_input=data.train.x[:2], calibration=calibration, fp32_onnx=fp32_onnx)
    say(f"{fmt} {precision}: validating in {artifact.runtime} on {len(data.test)} test samples")
    report = exporters.validate(
        exporters.load(artifact, fmt, device=device),
        reference.model,
        data.test.x.numpy(),
        data.test.y.numpy(),
        tolerance=tolerance,
        max_accuracy_drop=max_accuracy_drop,
        reference_outputs=reference.logits,
        reference_accuracy=reference.accuracy if reference.model is None and reference.logits is None else None,
        trim_padding=trim_padding,
    )
    failures = list(report.failures)
    if aware is not None and not aware.met:
        failures.append(
            f"accuracy-aware int8 found no layers to keep in fp32 that meet a {max_accuracy_drop:.2f} point drop "
            f"on the validation split (plain int8 lost {aware.to_dict()['plain_drop']:.2f} points there)"
        )
    size = artifact.bytes
    within = None if budget_bytes is None else size <= budget_bytes
    if budget_gated and within is False:
        failures.append(
            f"artifact is {size:,} B ({format_size(size)}), over the budget of {budget_bytes:,} B ({format_size(budget_bytes)}) by {size - budget_bytes:,} B"
        )
    passed = not failures
    placed = [final / f.name for f in artifact.files]
    return GateRecord(
        format=fmt,
        precision=precision,
        files=[str(f.relative_to(run)) for f in placed] if passed else [],
        bytes=size,
        runtime=artifact.runtime,
        max_abs_diff=_finite(report.max_abs_diff),
        top1_agreement=_round(report.top1_agreement, 6),
        test_accuracy=_round(report.test_accuracy, 6),
        reference_accuracy=_round(report.reference_accuracy, 6),
        accuracy_drop=_round(report.accuracy_drop, 4),
        tolerance=tolerance,
        max_accuracy_drop=max_accuracy_drop,
        calibration_samples=len(calibration) if calibration is not None else None,
        test_samples=len(data.test),
        budget_bytes=budget_bytes,
        within_budget=within,
        budget_gated=budget_gated,
        passed=passed,
        failures=failures,
        main_file=str((final / artifact.main_file.name).relative_to(run)) if passed else None,
        accuracy_aware=aware.to_dict() if aware is not None else None,
    )
