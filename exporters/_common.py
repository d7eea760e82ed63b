"""Shared types and helpers of :mod:`exporters` (errors, :class:`Artifact`, quiet context).

Nothing in here imports a runtime (onnxruntime, openvino, nncf); those are imported lazily by
the format modules through :func:`require`.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import shutil
import sys
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = [
    "Artifact",
    "BackendMissingError",
    "ExportError",
    "Predictor",
    "artifact_bytes",
    "as_batch",
    "as_text_batch",
    "move_into",
    "quiet",
    "quiet_native",
    "require",
]


#: OpenVINO's model converter and NNCF send usage telemetry (Google Analytics, from a process they fork: with jax
#: loaded by litert-torch the fork warns of a deadlock) unless the user opted out with their ``opt_in_out`` script.
#: prokt-deploy sends none on its users' behalf: ``openvino_telemetry`` is made unimportable in this process before
#: anything imports openvino (both then use their own no-op stubs). ``PROKT_DEPLOY_OPENVINO_TELEMETRY=1`` leaves it be.
TELEMETRY_ENV = "PROKT_DEPLOY_OPENVINO_TELEMETRY"
if os.environ.get(TELEMETRY_ENV) != "1":
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[assignment]


class ExportError(Exception):
    """Export, quantization or loading failed; the message says what to do next."""


class BackendMissingError(ExportError):
    """An optional runtime is not installed; the message names the pip package to install."""


def require(module: str, pip_name: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`BackendMissingError` naming the pip package to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - all runtimes are installed in this project
        pkg = pip_name or module.split(".")[0]
        raise BackendMissingError(f"{module} is not installed: pip install {pkg}") from exc


def artifact_bytes(files: Iterable[str | os.PathLike[str]]) -> int:
    """Sum of the on-disk sizes of ``files`` (every file of an artifact counts toward its size)."""
    return sum(Path(f).stat().st_size for f in files)


@dataclass
class Artifact:
    """An exported model: every file it consists of, its format/precision and the runtime it targets."""

    format: str
    precision: str
    files: list[Path] = field(default_factory=list)
    runtime: str = ""

    @property
    def bytes(self) -> int:
        """Total size in bytes of all files of the artifact (e.g. ``.xml`` + ``.bin``), as its format counts it."""
        from .registry import FORMATS  # the registry imports this module

        exporter = FORMATS.get(self.format)
        return exporter.size(self.files) if exporter is not None else artifact_bytes(self.files)

    @property
    def main_file(self) -> Path:
        """The file a runtime opens (``model.onnx``; ``model.xml`` of ``.xml`` + ``.bin``), as the format declares it."""
        from .registry import main_file  # the registry imports this module

        return main_file(self.format, self.files)


@runtime_checkable
class Predictor(Protocol):
    """A loaded artifact: ``predict`` maps float32 (B,C,H,W) images, or for a text model packed (B,2,L)
    integer token ids + attention masks, to float32 (B,num_classes) logits."""

    runtime: str

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Return float32 logits for the batch ``x``."""
        ...


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence Python stdout (NNCF/rich progress bars), warnings and log records below ERROR.

    Used around the export/quantization calls so that the public functions print nothing.
    ``logging.disable`` is process-wide; the previous threshold is restored on exit.
    """
    previous_disable = logging.root.manager.disable
    sink = io.StringIO()
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous_disable)


@contextlib.contextmanager
def quiet_native() -> Iterator[None]:
    """:func:`quiet`, plus what native code writes to file descriptor 2 (TensorFlow/absl ``I0000 ...`` lines, cpuinfo
    probes, torchao's "Failed to load" notes, the interpreter's "Created TensorFlow Lite XNNPACK delegate") sent to
    /dev/null, and the root logger's handlers and level restored on exit (importing ``litert_torch`` pulls TensorFlow
    and jax, which install a root handler that would print every later log record a second time, unformatted).

    Errors are unaffected: they are raised as exceptions and turned into one-line messages by the callers."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # read once, when TensorFlow's native library loads
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null, quiet():
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        root.handlers[:] = handlers
        root.setLevel(level)


def move_into(files: Iterable[Path], out_dir: Path) -> list[Path]:
    """Move ``files`` (built in a temp dir) into ``out_dir``, replacing existing files; return new paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    moved: list[Path] = []
    for f in files:
        dest = out_dir / f.name
        if dest.exists():
            dest.unlink()
        shutil.move(str(f), str(dest))
        moved.append(dest)
    return moved


def as_batch(x: np.ndarray) -> np.ndarray:
    """Validate/convert an image predictor input to a C-contiguous float32 (B,C,H,W) array."""
    arr = np.ascontiguousarray(x, dtype=np.float32)
    if arr.ndim != 4:
        raise ExportError(f"predict expects a (B,C,H,W) float32 array, got shape {arr.shape}")
    return arr


def as_text_batch(x: np.ndarray) -> np.ndarray:
    """Validate/convert a text predictor input to a C-contiguous int64 packed (B,2,L) array.

    Row 0 of each sample holds the token ids, row 1 the attention mask (see ``exporters/_text.py``).
    Floats are refused rather than cast: a float array here is an image batch or a bug, not token ids.
    """
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.integer) or arr.ndim != 3 or arr.shape[1] != 2:
        raise ExportError(
            "this is a text model: predict expects a packed (B,2,L) integer array (row 0 input_ids, "
            f"row 1 attention_mask), got a {arr.dtype} array of shape {arr.shape}"
        )
    return np.ascontiguousarray(arr, dtype=np.int64)


@contextlib.contextmanager
def frozen_eval(model: torch.nn.Module):  # noqa: F821 - torch is imported when used
    """``model`` in eval mode under ``torch.no_grad()`` for an export, its train/eval mode restored after."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)
