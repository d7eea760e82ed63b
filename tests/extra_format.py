"""``onnx-copy``: a deploy format written as ONE file, the way ``exporters/<fmt>.py`` is (tests/test_extra_format.py).

It wraps the ONNX exporter (the same graph, renamed ``<name>.ort.onnx``) and brings its own runtime runner,
``ort-copy`` (onnxruntime on CPU only: its own device mapping), so every path a new format with a new runtime takes
is exercised: planning, export and its gates, bench in worker processes, int8 diagnosis, bundles timed on a board
without torch. It has no accuracy-aware int8 (a format need not). Importing this module registers it: that import
is the "registration line" (``from . import <fmt>`` in ``exporters/__init__.py`` for a shipped format).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

import exporters
from exporters import Artifact, Exporter, register

NAME = "onnx-copy"


class OrtCopyRunner:
    """The harness's runner of ``onnx-copy`` files: onnxruntime, CPU provider only, explicit threads. Self-contained:
    the harness runs this class's source alone (in a worker process, and from a bundle on a board without torch),
    so it imports its runtime in its methods and uses only numpy (``np``)."""

    name = "ort-copy"
    modules = ("onnxruntime",)
    distribution = "onnxruntime"
    target_key = "providers"
    label = "onnx-copy"

    @classmethod
    def devices(cls) -> list[str]:
        return ["CPU"]

    @classmethod
    def target(cls, device: str, devices: list[str]) -> list[str] | None:
        return ["CPUExecutionProvider"] if device in devices else None

    @classmethod
    def cpu_target(cls) -> list[str]:
        return ["CPUExecutionProvider"]

    def __init__(self, spec: dict, threads: int) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self._session = ort.InferenceSession(spec["path"], sess_options=so, providers=spec["providers"])
        self._input = self._session.get_inputs()[0].name
        self._x = None
        self.runtime = f"ort-copy {ort.__version__}"
        self.device = self._session.get_providers()[0]
        self.config = {"intra_op_num_threads": threads, "providers": self._session.get_providers()}

    def run(self, x: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: x})[0]

    def bind(self, x: np.ndarray) -> None:
        self._x = {self._input: x}

    def infer(self) -> None:
        self._session.run(None, self._x)


@register
class OnnxCopyExporter(Exporter):
    """``onnx-copy``: the ONNX export, one ``<name>.ort.onnx`` file, timed by :class:`OrtCopyRunner`."""

    name = NAME
    precisions = ("fp32", "int8")
    main_suffix = ".ort.onnx"
    runner = OrtCopyRunner
    starts_from_onnx = True

    def export(self, model, precision, out_dir, *, example_input, calibration, name, opset, fp32_onnx=None) -> Artifact:
        with tempfile.TemporaryDirectory(prefix="onnx-copy-") as tmp:  # only the final file goes into out_dir
            inner = exporters.get_exporter("onnx").export(
                model, precision, Path(tmp), example_input=example_input, calibration=calibration, name=name, opset=opset, fp32_onnx=fp32_onnx
            )
            final = out_dir / f"{name}{self.main_suffix}"
            shutil.move(str(inner.files[0]), final)
        return Artifact(format=self.name, precision=precision, files=[final], runtime=self.runtime())

    def load(self, files: list[Path], *, device: str, threads: int | None):  # exporters.Predictor
        return exporters.get_exporter("onnx").load(files, device=device, threads=threads)

    def runtime(self) -> str:
        return "ort-copy " + exporters.get_exporter("onnx").runtime().split()[-1]

    def executed_graph(self, path: Path, *, target: object, threads: int) -> dict | None:
        return exporters.get_exporter("onnx").executed_graph(path, target=target, threads=threads)


def unregister() -> None:
    """Take the format out of the registry again (the test's teardown: the registry is process-wide)."""
    exporters.FORMATS.pop(NAME, None)
    exporters.PRECISIONS.pop(NAME, None)
