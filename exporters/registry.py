"""Format registry: one :class:`Exporter` subclass per format, in one file, registered with :func:`register`.

``FORMATS`` maps a format name to an exporter instance and ``PRECISIONS`` maps it to the precisions
that exporter supports; both are filled by the :func:`register` class decorator when a format module
(``exporters/onnx.py``, ``exporters/openvino.py``) is imported.

An exporter carries everything the toolchain needs to know about its format (nothing else in the project
names one): how to export at a precision and load the result for the accuracy gate, which file of the artifact
a runtime opens (:attr:`Exporter.main_suffix`), its exact size, the runtime that times it in the torch-free
harness (:attr:`Exporter.runner`, which also says what ``--device`` means for it), and whether int8 diagnosis
(:meth:`Exporter.executed_graph`) and accuracy-aware int8 (:meth:`Exporter.accuracy_aware`) apply.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, TypeVar

import numpy as np
import torch

from ._common import Artifact, ExportError, Predictor, artifact_bytes

if TYPE_CHECKING:
    from .accuracy_aware import AccuracyAwareResult

__all__ = ["FORMATS", "PRECISIONS", "Exporter", "default_formats", "formats_with", "get_exporter", "main_file", "register"]


class Exporter(ABC):
    """One deployment format. Subclasses set ``name``/``precisions`` and implement export and load.

    ``export`` receives an eval-mode model, a validated precision, an existing ``out_dir``, an
    ``example_input`` (float32 (B,C,H,W) image batch, or int64 packed (B,2,L) text batch, see
    ``exporters/_text.py``) and, for int8, a validated ``calibration`` array of the same kind (float32
    (N,C,H,W) or int64 (N,2,L)). It writes only the final artifact files into ``out_dir``
    (intermediates go to a temp dir).
    """

    name: ClassVar[str]
    precisions: ClassVar[tuple[str, ...]]
    #: the suffix of the file a runtime opens among the artifact's files (``.onnx``; ``.xml`` beside its ``.bin``)
    main_suffix: ClassVar[str]
    #: the runner of the timing harness (``prokt_deploy/harness/runners.py``) that times this format's artifacts, with
    #: numpy and the runtime only (on the host, in a worker process, and on a board from a bundle): the name of a
    #: built-in runner (``"onnxruntime"``, ``"openvino"``), or a runner class of the format's own, written in its
    #: file: only that class's source is run by the harness (the rest of the file, torch and the exporters, never),
    #: so it imports its runtime inside its methods and uses only numpy (``np``) and the harness's names. The runner
    #: also says what ``--device`` means for its runtime, and names the runtime for the fingerprint.
    runner: ClassVar[str | type]
    #: the export starts from the model's fp32 ONNX file and can reuse one already made (``export(fp32_onnx=...)``)
    starts_from_onnx: ClassVar[bool] = False
    #: exported by ``export --format all`` and ``run`` without being named (a format whose runtime is an optional
    #: extra sets False: it is exported where a recipe's ``budget.formats`` or ``--format`` names it)
    default: ClassVar[bool] = True

    def main_file(self, files: list[Path]) -> Path:
        """The file of ``files`` a runtime opens (the one whose name ends in :attr:`main_suffix`)."""
        for f in files:
            if Path(f).name.endswith(self.main_suffix):
                return Path(f)
        raise ExportError(f"no {self.main_suffix} file among the {self.name} artifact's files {[str(f) for f in files]}")

    def size(self, files: list[Path]) -> int:
        """Exact deployed size in bytes of an artifact made of ``files`` (default: every file counts)."""
        return artifact_bytes(files)

    def runner_ref(self) -> str:
        """:attr:`runner` as the harness finds it: a built-in name, or ``"<file>.py:<Class>"`` of the format's own."""
        if isinstance(self.runner, str):
            return self.runner
        return f"{inspect.getsourcefile(self.runner)}:{self.runner.__qualname__}"

    def executed_graph(self, path: Path, *, target: object, threads: int) -> dict | None:
        """int8 diagnosis: the compute layers of the graph the runtime really executes for the artifact whose main
        file is ``path``, on ``target`` (what ``--device`` means for the runtime) with ``threads``: ``runtime``,
        ``int8_layers`` (count), ``float_layers`` (names), ``conversions`` (op -> count), ``threads_used``.
        None: the format's runtime cannot be inspected (the default; a format that can overrides this)."""
        return None

    def accuracy_aware(
        self,
        model: torch.nn.Module,
        out_dir: Path,
        *,
        example_input: torch.Tensor,
        calibration: np.ndarray,
        validation_x: np.ndarray,
        validation_y: np.ndarray,
        max_accuracy_drop: float,
        name: str,
        opset: int,
    ) -> AccuracyAwareResult:
        """Accuracy-aware int8 (see ``exporters/accuracy_aware.py``): the int8 artifact keeping the fewest layers in
        fp32 that meet ``max_accuracy_drop`` on the validation set. Arguments are validated by
        :func:`exporters.export_accuracy_aware`. A format without it does not override this."""
        raise ExportError(f"accuracy-aware int8 is not available for {self.name}; formats with it: {', '.join(formats_with_accuracy_aware())}")

    @property
    def diagnoses_int8(self) -> bool:
        """The format's executed graph can be inspected (:meth:`executed_graph` is implemented)."""
        return type(self).executed_graph is not Exporter.executed_graph

    @property
    def has_accuracy_aware(self) -> bool:
        """Accuracy-aware int8 applies to the format (:meth:`accuracy_aware` is implemented)."""
        return "int8" in self.precisions and type(self).accuracy_aware is not Exporter.accuracy_aware

    @abstractmethod
    def export(
        self,
        model: torch.nn.Module,
        precision: str,
        out_dir: Path,
        *,
        example_input: torch.Tensor,
        calibration: np.ndarray | None,
        name: str,
        opset: int,
        fp32_onnx: Path | None = None,
    ) -> Artifact:
        """Write the artifact for ``model`` at ``precision`` into ``out_dir`` and describe it.

        ``fp32_onnx``: this model's fp32 ONNX export, already made; used in place of exporting again."""

    @abstractmethod
    def load(self, files: list[Path], *, device: str, threads: int | None) -> Predictor:
        """Open the artifact ``files`` in this format's runtime."""

    @abstractmethod
    def runtime(self) -> str:
        """Runtime name and version, e.g. ``"onnxruntime 1.32.0"`` (imports the runtime)."""


FORMATS: dict[str, Exporter] = {}
PRECISIONS: dict[str, tuple[str, ...]] = {}

E = TypeVar("E", bound=type[Exporter])


def register(cls: E) -> E:
    """Class decorator: instantiate ``cls`` and register it under ``cls.name`` with ``cls.precisions``."""
    if cls.name in FORMATS:
        raise ValueError(f"format {cls.name!r} is already registered")
    missing = [a for a in ("name", "precisions", "main_suffix", "runner") if not hasattr(cls, a)]
    if missing:
        raise TypeError(f"format {cls.__name__} declares no {', '.join(missing)}")
    FORMATS[cls.name] = cls()
    PRECISIONS[cls.name] = tuple(cls.precisions)
    return cls


def get_exporter(fmt: str) -> Exporter:
    """Return the exporter for ``fmt`` or raise :class:`ExportError` listing the valid formats."""
    try:
        return FORMATS[fmt]
    except KeyError:
        valid = ", ".join(sorted(FORMATS))
        raise ExportError(f"unknown format {fmt!r}; valid formats: {valid}") from None


def main_file(fmt: str, files: list[Path] | list[str]) -> Path:
    """The file a runtime opens among the files of a ``fmt`` artifact (:meth:`Exporter.main_file`)."""
    return get_exporter(fmt).main_file([Path(f) for f in files])


def formats_with(precision: str) -> tuple[str, ...]:
    """The registered formats that can be written at ``precision``."""
    return tuple(fmt for fmt, precisions in PRECISIONS.items() if precision in precisions)


def formats_with_accuracy_aware() -> tuple[str, ...]:
    """The registered formats that have accuracy-aware int8."""
    return tuple(fmt for fmt, exporter in FORMATS.items() if exporter.has_accuracy_aware)


def default_formats() -> list[str]:
    """The registered formats ``all`` means: those with :attr:`Exporter.default`, in registration order."""
    return [name for name, exporter in FORMATS.items() if exporter.default]
