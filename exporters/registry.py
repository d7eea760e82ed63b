"""Format registry: one :class:`Exporter` subclass per format, registered with :func:`register`.

``FORMATS`` maps a format name to an exporter instance and ``PRECISIONS`` maps it to the precisions
that exporter supports; both are filled by the :func:`register` class decorator when a format module
(``exporters/onnx.py``, ``exporters/openvino.py``) is imported.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar, TypeVar

import numpy as np
import torch

from ._common import Artifact, ExportError, Predictor

__all__ = ["FORMATS", "PRECISIONS", "Exporter", "get_exporter", "main_file", "register"]


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

    def main_file(self, files: list[Path]) -> Path:
        """The file of ``files`` a runtime opens (the one with :attr:`main_suffix`)."""
        for f in files:
            if Path(f).suffix == self.main_suffix:
                return Path(f)
        raise ExportError(f"no {self.main_suffix} file among the {self.name} artifact's files {[str(f) for f in files]}")

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
