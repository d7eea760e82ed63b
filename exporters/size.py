"""Exact deployed-size measurement for a planner: export to a temp dir and count the bytes."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

__all__ = ["measure_bytes"]


def measure_bytes(model: torch.nn.Module, fmt: str, precision: str, *, example_input: torch.Tensor,
                  calibration_samples: int = 8, seed: int = 0) -> int:
    """Bytes of the artifact ``export(model, fmt, precision)`` would produce (all files counted).

    The model may be untrained: the size depends on the architecture, not on the weight values, so
    int8 is calibrated on ``calibration_samples`` random normal samples of ``example_input``'s shape.
    The model's train/eval mode is left as it was.
    """
    from . import export  # late import: exporters/__init__ imports this module

    rng = np.random.default_rng(seed)
    shape = (calibration_samples, *tuple(example_input.shape[1:]))
    calibration = rng.standard_normal(shape).astype(np.float32) if precision == "int8" else None
    with tempfile.TemporaryDirectory(prefix="exporters-size-") as tmp:
        artifact = export(model, fmt, precision, Path(tmp), example_input=example_input, calibration=calibration)
        return artifact.bytes
