"""Exact artifact bytes: a candidate's untrained copy exported and counted, cached on disk.

Artifact bytes do not depend on the weights' values (int8 tensors, per-channel scales and graph structure have
fixed sizes), so the planner exports the *untrained* candidate and measures it: the estimate is the real size.
Measurements are cached (``$PROKT_DEPLOY_CACHE`` or ``~/.cache/prokt-deploy``), keyed by architecture, input
shape, classes, format, precision and exporter library versions.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from prokt_deploy.errors import ExportFailed

#: Part of the size-cache key: bump it when the measurement changes so older cached sizes are not reused.
#: 2: measure a copy with generic weights (an untrained BatchNorm folds into an all-zero conv bias that the
#: exporters drop, so v1 sizes were 5-21% below the trained artifact) and stable OpenVINO op names.
#: 3: the ONNX int8 file keeps a 1-3-channel first conv in fp32 (3 bytes more per stem weight).
MEASUREMENT_VERSION = 3


def cache_root() -> Path:
    return Path(os.environ.get("PROKT_DEPLOY_CACHE", Path.home() / ".cache" / "prokt-deploy"))


class SizeCache:
    """A JSON file of measured artifact sizes; safe to delete."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or cache_root() / "artifact-sizes.json"
        try:
            self.data: dict[str, int] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.data = {}

    def get(self, key: str) -> int | None:
        return self.data.get(key)

    def put(self, key: str, value: int) -> None:
        self.data[key] = value
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump(self.data, f, indent=0, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError:
            pass  # a read-only home only costs re-measuring next time


def versions_key() -> str:
    """The exporter and runtime library versions, part of every cache key."""
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for pkg in ("torch", "onnx", "onnxruntime", "openvino", "nncf"):
        try:
            parts.append(f"{pkg}={version(pkg)}")
        except PackageNotFoundError:
            parts.append(f"{pkg}=none")
    return ",".join(parts)


def measure_artifact_bytes(
    model: nn.Module,
    label: str,
    fmt: str,
    precision: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    cache: SizeCache | None = None,
    example: torch.Tensor | None = None,
    vocab_size: int | None = None,
    keep_dir: Path | None = None,
    fp32_onnx: Callable[[], Path] | None = None,
) -> int:
    """Exact bytes of ``model`` exported to ``fmt`` at ``precision`` (cached by ``label``).

    ``example`` is an input batch (default: zeros of ``input_shape``); text models need a real one
    (token ids and masks) and the tokenizer's ``vocab_size`` (part of the key: it sizes the embeddings).
    ``fp32_onnx``: called (only when the size is not cached) for the fp32 ONNX file of the generic copy
    that :func:`exporters.measure_bytes` exports, shared between formats.
    """
    import exporters

    cache = cache if cache is not None else SizeCache()
    vocab = f"|vocab{vocab_size}" if vocab_size else ""
    key = f"v{MEASUREMENT_VERSION}|{label}|{tuple(input_shape)}{vocab}|{num_classes}|{fmt}|{precision}|{versions_key()}"
    cached = cache.get(key)
    if cached is not None:
        return cached
    try:
        extra = {"vocab_size": vocab_size} if vocab_size else {}
        ex = example if example is not None else torch.zeros(1, *input_shape)
        if fp32_onnx is not None and (fmt, precision) != ("onnx", "fp32"):
            extra["fp32_onnx"] = fp32_onnx()
        size = exporters.measure_bytes(model, fmt, precision, example_input=ex, keep_dir=keep_dir, **extra)
    except exporters.ExportError as e:
        raise ExportFailed(f"cannot measure the {fmt} {precision} artifact of {label}: {e}") from None
    cache.put(key, size)
    return size


class Sizer:
    """Measures a model's artifact in every deploy format at the plan's precision (:func:`measure_artifact_bytes`).

    ``keep_root``: keep each export under it (``kept(label, fmt)``), so that timing reuses the files instead of
    exporting again. The ONNX int8 and OpenVINO exports both start from an fp32 ONNX export of the same generic
    copy: it is exported once per model, on first need (never when every size is cached)."""

    def __init__(
        self,
        *,
        formats: list[str],
        precision: str,
        input_shape: tuple[int, ...],
        num_classes: int,
        cache: SizeCache,
        example: torch.Tensor | None = None,
        vocab_size: int | None = None,
        keep_root: Path | None = None,
    ) -> None:
        self.formats, self.precision, self.input_shape, self.num_classes = formats, precision, input_shape, num_classes
        self.cache, self.example, self.vocab_size, self.keep_root = cache, example, vocab_size, keep_root

    def kept(self, label: str, fmt: str) -> Path | None:
        """The directory that holds (or will hold) ``label``'s ``fmt`` export, when exports are kept."""
        if self.keep_root is None:
            return None
        return self.keep_root / label.replace("/", "_").replace(":", "_") / f"{fmt}-{self.precision}"

    def __call__(self, model: nn.Module, label: str) -> dict[str, int]:
        """format -> exact artifact bytes of ``model`` (cached by ``label``)."""
        with tempfile.TemporaryDirectory(prefix="prokt-plan-fp32-") as tmp:

            @functools.cache
            def fp32_onnx() -> Path:
                import exporters
                from exporters.size import generic_copy

                ex = self.example if self.example is not None else torch.zeros(1, *self.input_shape)
                # named as the openvino exporter names its own fp32 step: the IR records the source file name
                return exporters.export(generic_copy(model, 0), "onnx", "fp32", Path(tmp), example_input=ex, name="fp32").files[0]

            reuse = fp32_onnx if len(self.formats) > 1 else None
            return {
                f: measure_artifact_bytes(
                    model,
                    label,
                    f,
                    self.precision,
                    self.input_shape,
                    self.num_classes,
                    self.cache,
                    self.example,
                    self.vocab_size,
                    self.kept(label, f),
                    reuse,
                )
                for f in self.formats
            }
