"""Parity/accuracy gate: compare a loaded artifact against the PyTorch reference model."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ._common import ExportError, Predictor
from ._text import is_text_input

__all__ = ["TOLERANCES", "Validation", "default_tolerance", "predict_logits", "reference_logits", "validate"]

#: Default max |logit difference| per precision.
#: fp32: same math, only summation order differs -> 1e-4 on logits of O(10).
#: fp16: weights are stored as fp16 (relative rounding error up to 2**-11 ~ 4.9e-4 per weight; the CPU
#:   still computes in f32). The logit error grows with the logit scale: measured on the tiny digits CNN
#:   0.006 with logits up to 13 and 0.015 with logits up to 18, so 1e-2 would reject correct fp16
#:   artifacts. 5e-2 covers logits up to ~60 and still catches real bugs (wrong weights/layout give O(1)).
#: int8: logits legitimately move by O(0.1-1); int8 is judged by accuracy drop + top-1 agreement.
TOLERANCES: dict[str, float | None] = {"fp32": 1e-4, "fp16": 5e-2, "int8": None}


def default_tolerance(precision: str) -> float | None:
    """Default max-abs logit tolerance: fp32 1e-4, fp16 5e-2, int8 ``None`` (use accuracy drop instead)."""
    try:
        return TOLERANCES[precision]
    except KeyError:
        raise ExportError(f"unknown precision {precision!r}; valid precisions: {', '.join(TOLERANCES)}") from None


@dataclass
class Validation:
    """Result of :func:`validate`. Accuracies and agreement are fractions in [0, 1];
    ``max_accuracy_drop`` is in percentage points. ``failures`` lists every missed check."""

    max_abs_diff: float | None  # None: gated on a known reference accuracy, no reference logits
    top1_agreement: float | None
    test_accuracy: float | None
    reference_accuracy: float | None
    tolerance: float | None
    max_accuracy_drop: float | None
    passed: bool
    failures: list[str] = field(default_factory=list)

    @property
    def accuracy_drop(self) -> float | None:
        """Reference minus artifact accuracy in percentage points (``None`` without labels)."""
        if self.test_accuracy is None or self.reference_accuracy is None:
            return None
        return 100.0 * (self.reference_accuracy - self.test_accuracy)


def _batches(x: np.ndarray, batch_size: int, trim_padding: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """(indices, batch) pairs that cover ``x`` once: consecutive slices, or with ``trim_padding`` (packed
    text only) the samples sorted by length (up to the last real token: right padding), each batch cut
    after its longest sample's last real token, so a batch of short tweets does not pay for 64 positions
    (about 2x less work on the tweets). Only for models whose logits ignore masked padding (attention
    with the mask, masked pooling): a BiLSTM that reads the padding gives other logits on shorter input."""
    if not (trim_padding and is_text_input(x)):
        return [(np.arange(i, min(i + batch_size, len(x))), x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    mask = x[:, 1] != 0
    length = np.where(mask.any(axis=1), x.shape[2] - np.argmax(mask[:, ::-1], axis=1), 1)
    order = np.argsort(length, kind="stable")
    out = []
    for i in range(0, len(x), batch_size):
        idx = order[i : i + batch_size]
        out.append((idx, np.ascontiguousarray(x[idx, :, : int(length[idx].max())])))
    return out


def _run(predict, x: np.ndarray, batch_size: int, trim_padding: bool) -> np.ndarray:  # a batch -> logits callable
    out: np.ndarray | None = None
    for idx, xb in _batches(x, batch_size, trim_padding):
        logits = np.asarray(predict(xb))
        if out is None:
            out = np.empty((len(x), *logits.shape[1:]), dtype=logits.dtype)
        out[idx] = logits
    assert out is not None
    return out


def reference_logits(reference: torch.nn.Module, x: np.ndarray, batch_size: int = 256, *, trim_padding: bool = False) -> np.ndarray:
    """The PyTorch model's logits on ``x`` (eval mode, no grad, batched as :func:`validate` does), to
    compute once and pass to several :func:`validate` calls as ``reference_outputs`` (one model
    exported to several formats)."""
    x = _as_input(x)
    was_training = reference.training
    reference.eval()
    try:
        device = next(reference.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    try:
        with torch.no_grad():
            return _run(lambda xb: reference(torch.from_numpy(xb).to(device)).detach().float().cpu().numpy(), x, batch_size, trim_padding)
    finally:
        reference.train(was_training)


def _as_input(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    text = is_text_input(x)
    x = np.ascontiguousarray(x, dtype=np.int64 if text else np.float32)
    if not (text or x.ndim == 4) or len(x) == 0:
        raise ExportError(
            f"validate expects a non-empty float (N,C,H,W) image array or packed (N,2,L) integer text array, got a {x.dtype} array of shape {x.shape}"
        )
    return x


def validate(
    predictor: Predictor,
    reference: torch.nn.Module | None,
    x: np.ndarray,
    y: np.ndarray | None = None,
    *,
    tolerance: float | None = None,
    max_accuracy_drop: float | None = None,
    batch_size: int = 256,
    reference_outputs: np.ndarray | None = None,
    reference_accuracy: float | None = None,
    trim_padding: bool = False,
) -> Validation:
    """Run ``predictor`` and ``reference`` on ``x`` in batches and check parity/accuracy.

    ``x``: float32 (N,C,H,W) images, or for a text model packed (N,2,L) integer token ids + attention
    masks (kept int64 for both the predictor and the reference).

    Always reports max |logit diff| and top-1 agreement; with ``y`` also both accuracies.
    Checks (all are reported, not just the first failure): outputs have the same shape and are finite;
    ``max_abs_diff <= tolerance`` if ``tolerance`` is given; ``reference_acc - artifact_acc <=
    max_accuracy_drop`` percentage points if both ``max_accuracy_drop`` and ``y`` are given.
    ``reference_outputs``: the reference's logits on ``x``, computed once by :func:`reference_logits`
    (then ``reference`` is not run and may be ``None``; pass the same ``trim_padding``).
    ``trim_padding``: text batches of similar lengths, cut after their longest sample (see ``_batches``).
    ``reference_accuracy``: with ``y``, the reference's accuracy on the same ``x`` measured before (for example
    right after training): neither the reference nor its outputs are needed, only the accuracy is gated, and
    ``max_abs_diff`` / ``top1_agreement`` are None (nothing to compare the logits with).
    """
    x = _as_input(x)
    if batch_size < 1:
        raise ExportError("batch_size must be >= 1")
    if reference_outputs is None and reference is None and reference_accuracy is not None:
        return _accuracy_gate(predictor, x, y, reference_accuracy, max_accuracy_drop, batch_size, trim_padding)
    if reference_outputs is not None:
        ref = np.asarray(reference_outputs)
        if len(ref) != len(x):
            raise ExportError(f"reference_outputs has {len(ref)} rows for {len(x)} inputs")
    elif reference is None:
        raise ExportError("validate needs a reference model or its reference_outputs")
    else:
        ref = reference_logits(reference, x, batch_size, trim_padding=trim_padding)
    art = _run(predictor.predict, x, batch_size, trim_padding)
    failures: list[str] = []

    if art.shape != ref.shape:
        failures.append(f"artifact output shape {art.shape} != reference output shape {ref.shape}")
        max_abs_diff, agreement = float("inf"), 0.0
        art_pred = None
    else:
        finite = bool(np.isfinite(art).all())
        if not finite:
            failures.append("artifact produced non-finite logits (NaN/inf)")
        max_abs_diff = float(np.max(np.abs(art.astype(np.float64) - ref.astype(np.float64)))) if finite else float("inf")
        art_pred = art.argmax(axis=1)
        agreement = float(np.mean(art_pred == ref.argmax(axis=1)))

    test_acc = ref_acc = None
    if y is not None:
        y = np.asarray(y).reshape(-1)
        if len(y) != len(x):
            raise ExportError(f"y has {len(y)} labels for {len(x)} inputs")
        ref_acc = float(np.mean(ref.argmax(axis=1) == y))
        test_acc = float(np.mean(art_pred == y)) if art_pred is not None else 0.0

    if tolerance is not None and not max_abs_diff <= tolerance:
        failures.append(f"max |logit diff| {max_abs_diff:.3g} exceeds tolerance {tolerance:.3g}")
    if max_accuracy_drop is not None and y is not None:
        assert test_acc is not None and ref_acc is not None
        drop = 100.0 * (ref_acc - test_acc)
        if drop > max_accuracy_drop:
            failures.append(
                f"accuracy drop {drop:.2f} points (reference {100 * ref_acc:.2f}% -> artifact "
                f"{100 * test_acc:.2f}%) exceeds the allowed {max_accuracy_drop:.2f} points"
            )

    return Validation(
        max_abs_diff=max_abs_diff,
        top1_agreement=agreement,
        test_accuracy=test_acc,
        reference_accuracy=ref_acc,
        tolerance=tolerance,
        max_accuracy_drop=max_accuracy_drop,
        passed=not failures,
        failures=failures,
    )


def _accuracy_gate(
    predictor: Predictor,
    x: np.ndarray,
    y: np.ndarray | None,
    reference_accuracy: float,
    max_accuracy_drop: float | None,
    batch_size: int,
    trim_padding: bool,
) -> Validation:
    """:func:`validate` against a reference accuracy measured before: the artifact's accuracy and drop only."""
    if y is None:
        raise ExportError("a reference accuracy needs the labels y")
    y = np.asarray(y).reshape(-1)
    if len(y) != len(x):
        raise ExportError(f"y has {len(y)} labels for {len(x)} inputs")
    art = _run(predictor.predict, x, batch_size, trim_padding)
    failures: list[str] = []
    if not np.isfinite(art).all():
        failures.append("artifact produced non-finite logits (NaN/inf)")
    test_acc = float(np.mean(art.argmax(axis=1) == y))
    drop = 100.0 * (reference_accuracy - test_acc)
    if max_accuracy_drop is not None and drop > max_accuracy_drop:
        failures.append(
            f"accuracy drop {drop:.2f} points (reference {100 * reference_accuracy:.2f}% -> artifact "
            f"{100 * test_acc:.2f}%) exceeds the allowed {max_accuracy_drop:.2f} points"
        )
    return Validation(
        max_abs_diff=None,
        top1_agreement=None,
        test_accuracy=test_acc,
        reference_accuracy=float(reference_accuracy),
        tolerance=None,
        max_accuracy_drop=max_accuracy_drop,
        passed=not failures,
        failures=failures,
    )


def predict_logits(predictor: Predictor, x: np.ndarray, batch_size: int = 256, *, trim_padding: bool = False) -> np.ndarray:
    """The artifact's logits on ``x``, batched as :func:`validate` runs it (``trim_padding``: see ``_batches``)."""
    return _run(predictor.predict, _as_input(x), batch_size, trim_padding)
