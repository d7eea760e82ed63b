"""Exact deployed-size measurement for a planner: export to a temp dir and count the bytes."""

from __future__ import annotations

import copy
import itertools
import tempfile
from pathlib import Path

import numpy as np
import torch

from ._text import is_text_input, random_text_batch

__all__ = ["generic_copy", "measure_bytes"]


def generic_copy(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A copy of ``model`` whose float parameters and buffers hold generic values: no zeros, no repeats.

    Exporters drop and share special values, so an untrained model exports to a *smaller* file than the
    same architecture trained: a fresh BatchNorm (bias 0, running mean 0) folds into its conv as an all-zero
    bias, which the ONNX optimizer removes (and OpenVINO drops the zero Add), and OpenVINO stores equal
    constants once (e.g. the 0.0 lower bound of every int8 range whose activations never go negative).
    Measured on the cnn/resnet families: the untrained int8 ONNX file was 5-21% smaller than the trained
    one. Each value is scaled by U(0.9, 1.1) and moved by U(0.01, 0.05) up or down at random: the model
    keeps its scale and sign structure (activations before a ReLU stay signed, as in a trained model) and
    variances stay positive, but nothing is zero or equal to anything else. Integer buffers (token id
    tables, counters) are left as they are.
    """
    clone = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in itertools.chain(clone.parameters(), clone.buffers()):
            if t.is_floating_point():
                scale = torch.empty(t.shape).uniform_(0.9, 1.1, generator=gen)
                sign = torch.randint(0, 2, t.shape, generator=gen) * 2 - 1
                shift = torch.empty(t.shape).uniform_(0.01, 0.05, generator=gen) * sign
                t.mul_(scale.to(t.device, t.dtype)).add_(shift.to(t.device, t.dtype))
    return clone


def measure_bytes(
    model: torch.nn.Module,
    fmt: str,
    precision: str,
    *,
    example_input: torch.Tensor,
    calibration_samples: int = 100,
    seed: int = 0,
    calibration: np.ndarray | None = None,
    vocab_size: int | None = None,
    keep_dir: Path | None = None,
    fp32_onnx: Path | None = None,
) -> int:
    """Bytes of the artifact ``export(model, fmt, precision)`` would produce (all files counted).

    The model may be untrained: the size depends on the architecture, not on the weight values, as long
    as no value is special, so a copy with generic values is exported (see :func:`generic_copy`; the
    model itself is not changed). int8 is calibrated on ``calibration`` when given, else on
    ``calibration_samples`` random samples: normal samples of ``example_input``'s shape for an image
    model; for a text model (``example_input`` a packed (B,2,L) integer tensor) token ids uniform in
    ``[0, vocab_size)`` (default: the largest id in ``example_input`` + 1; pass the real ``vocab_size``: a few example
    ids rarely reach the top of the vocabulary) with masks of random real lengths, sequence length L.
    The OpenVINO int8 IR records the sample count as text, so it counts by its number of digits: the
    default 100 has as many as ``prokt-deploy export``'s default of 300 (same bytes) and calibrates in
    about a third of the time (each digit more or less is one byte more or less). The model's train/eval
    mode is left as it was. ``keep_dir``: export there and keep the files (a planner that also times the
    artifact reuses them) instead of into a temporary directory. ``fp32_onnx``: the fp32 ONNX file of
    ``generic_copy(model, seed)`` (the same seed), exported before; the onnx int8 and openvino exports
    start from it instead of exporting again (a planner measuring both formats exports the model once).
    """
    from . import export  # late import: exporters/__init__ imports this module

    rng = np.random.default_rng(seed)
    if precision != "int8":
        calibration = None
    elif calibration is None and is_text_input(example_input):
        vocab = int(vocab_size) if vocab_size is not None else int(example_input[:, 0].max()) + 1
        calibration = random_text_batch(calibration_samples, int(example_input.shape[2]), vocab, rng)
    elif calibration is None:
        shape = (calibration_samples, *tuple(example_input.shape[1:]))
        calibration = rng.standard_normal(shape).astype(np.float32)
    generic = generic_copy(model, seed)
    reuse = {"fp32_onnx": fp32_onnx} if fp32_onnx is not None and (fmt, precision) != ("onnx", "fp32") else {}
    if keep_dir is not None:
        return export(generic, fmt, precision, Path(keep_dir), example_input=example_input, calibration=calibration, **reuse).bytes
    with tempfile.TemporaryDirectory(prefix="exporters-size-") as tmp:
        artifact = export(generic, fmt, precision, Path(tmp), example_input=example_input, calibration=calibration, **reuse)
        return artifact.bytes


_generic_copy = generic_copy  # the former private name
