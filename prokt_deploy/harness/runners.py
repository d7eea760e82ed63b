"""Runners: one model file opened in one runtime with explicit threads, and timed (numpy and the runtime only).

A runner is what the timing harness (:mod:`measure`) knows of a runtime. Each deploy format names the runner that
times its artifacts (``Exporter.runner`` in ``exporters/registry.py``), and every engine spec and every bundle's
``bundle.json`` carries that name as a string, so a worker process or a board finds the same class:

- a built-in runner by name (:data:`RUNNERS`): ``onnxruntime``, ``openvino``, and ``torch`` (the host's PyTorch rows);
- ``<file>.py:<Class>``: a runner class written in that file, e.g. in a format's own ``exporters/<fmt>.py``. Only the
  class's own source is executed (:func:`load_class`), in this module's namespace (``np``, :class:`Runner`,
  :func:`split_inputs`, the built-in runners), never the rest of its file: the file may import torch and the
  exporters, the class itself imports its runtime inside its methods. ``prokt-deploy bundle`` copies that source
  (:func:`class_source`) into the bundle, so a board without torch or prokt-deploy runs it too;
- ``<module>:<Class>``: a class of an importable module that needs nothing of the project (a worker imports it).

A runner class declares :attr:`Runner.name` (the runtime: the key of ``runtime_targets`` and the worker's
``runtime``), :attr:`Runner.modules` (imported before a load is timed; the first tells whether the runtime is
installed), :attr:`Runner.distribution` (whose version a fingerprint records), :attr:`Runner.target_key` (the engine
spec's key of its target) and what ``--device`` means for it (:meth:`Runner.devices`, :meth:`Runner.target`); an
instance opens ``spec["path"]`` with ``threads`` and has ``run(x)`` (logits), ``bind(x)`` then ``infer()`` (the timed
call), optionally ``runtime_latency_ns()`` (the runtime's own timer), and ``runtime``, ``device``, ``config``.

Standalone like :mod:`measure`: ``prokt-deploy bundle`` copies this file next to ``bench_bundle.py``.
"""

from __future__ import annotations
import __future__ as _future

import ast
import importlib
import importlib.util
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import numpy as np

__all__ = [
    "DEVICE_RUNNERS",
    "FINGERPRINT_RUNNERS",
    "RUNNERS",
    "OpenVINORunner",
    "OrtRunner",
    "Runner",
    "RunnerError",
    "TorchRunner",
    "class_source",
    "load_class",
    "resolve",
    "split_inputs",
]


class RunnerError(Exception):
    """A runner reference that names no runner (unknown name, missing file or class)."""


def split_inputs(x: np.ndarray, n_inputs: int) -> list[np.ndarray]:
    """The graph inputs of one batch: an image batch as is; a packed text batch (B, 2, L) as
    contiguous ``input_ids`` and ``attention_mask`` (B, L) int64 arrays."""
    if n_inputs == 2 and x.ndim == 3 and x.shape[1] == 2:
        return [np.ascontiguousarray(x[:, 0], dtype=np.int64), np.ascontiguousarray(x[:, 1], dtype=np.int64)]
    return [x]


class Runner:
    """The defaults of a runner (see the module docstring); a runner class need not subclass it: :func:`resolve` adds
    these defaults to one that does not."""

    #: the runtime's name: the key of ``runtime_targets`` and the engine spec's ``runtime``
    name: ClassVar[str]
    #: modules imported before the load is timed; the runtime is installed when every one of them can be found
    modules: ClassVar[tuple[str, ...]] = ()
    #: the pip distribution whose version the fingerprint records (None: none)
    distribution: ClassVar[str | None] = None
    #: the engine spec's key for this runtime's target (what ``runtime_targets`` gives it)
    target_key: ClassVar[str] = "device"
    #: how its rows are named in a fallback note ("OpenVINO rows run on CPU")
    label: ClassVar[str] = ""

    @classmethod
    def missing(cls) -> list[str]:
        """The modules of :attr:`modules` that cannot be found here (a package whose own import fails counts as
        missing: ExecuTorch's Python runtime is installed on a board without torch, but cannot be imported)."""
        gone = []
        for m in cls.modules:
            try:
                found = importlib.util.find_spec(m) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                gone.append(m)
        return gone

    @classmethod
    def installed(cls) -> bool:
        return not cls.missing()

    @classmethod
    def devices(cls) -> list[str]:
        """The devices (or providers) the runtime offers here (only asked when it is installed)."""
        return ["CPU"]

    @classmethod
    def target(cls, device: str, devices: list[str]) -> object | None:
        """What ``device`` (upper case: CPU, GPU, NPU, AUTO, GPU.1) means for this runtime, given its ``devices``;
        None when it cannot use it (its rows then run on :meth:`cpu_target`)."""
        return device if device in devices else None

    @classmethod
    def cpu_target(cls) -> object:
        return "CPU"

    @classmethod
    def fallback(cls, device: str) -> str:
        """The note recorded when this runtime cannot use ``device``."""
        return f"{cls.name} has no {device} device here: {cls.label or cls.name} rows run on CPU"

    @classmethod
    def fingerprint(cls) -> dict:
        """What the runtime reports about this machine, for the fingerprint's ``runtimes``."""
        return {}


#: onnxruntime execution providers tried for each ``--device``, best first.
ORT_PROVIDERS = {
    "CPU": ("CPUExecutionProvider",),
    "GPU": ("CUDAExecutionProvider", "ROCMExecutionProvider", "DmlExecutionProvider", "CoreMLExecutionProvider"),
    "NPU": ("QNNExecutionProvider", "VitisAIExecutionProvider"),
}


class OrtRunner(Runner):
    """onnxruntime session: ``intra_op=threads``, ``inter_op=1``, sequential, all graph optimizations.
    Timed calls use an IOBinding made once, so Python builds no feed dict or output list per call."""

    name = "onnxruntime"
    modules = ("onnxruntime",)
    distribution = "onnxruntime"
    target_key = "providers"
    label = "ONNX"

    @classmethod
    def devices(cls) -> list[str]:
        import onnxruntime as ort

        return list(ort.get_available_providers())

    @classmethod
    def target(cls, device: str, devices: list[str]) -> list[str] | None:
        if device == "AUTO":
            providers = [p for p in devices if p != "AzureExecutionProvider"]
        else:
            wanted = ORT_PROVIDERS.get(device.split(".")[0], ())
            providers = [p for p in wanted if p in devices][:1]
            if providers and providers != ["CPUExecutionProvider"]:
                providers.append("CPUExecutionProvider")  # for the nodes the accelerator cannot run
        return providers or None

    @classmethod
    def cpu_target(cls) -> list[str]:
        return ["CPUExecutionProvider"]

    @classmethod
    def fallback(cls, device: str) -> str:
        return f"onnxruntime has no provider for {device} here: ONNX rows run on CPUExecutionProvider"

    @classmethod
    def fingerprint(cls) -> dict:
        return {"onnxruntime_providers": cls.devices()}

    def __init__(self, spec: dict, threads: int) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        self._session = ort.InferenceSession(spec["path"], sess_options=so, providers=spec["providers"])
        self._inputs = [i.name for i in self._session.get_inputs()]  # text: input_ids, attention_mask
        self._output = self._session.get_outputs()[0].name
        self._binding = None
        self._bound: list[np.ndarray] = []
        providers = self._session.get_providers()
        self.runtime = f"onnxruntime {ort.__version__}"
        self.device = providers[0]
        self.config = {"intra_op_num_threads": threads, "inter_op_num_threads": 1, "execution_mode": "sequential", "providers": providers}

    def run(self, x: np.ndarray) -> np.ndarray:
        return self._session.run([self._output], dict(zip(self._inputs, split_inputs(x, len(self._inputs)))))[0]

    def bind(self, x: np.ndarray) -> None:
        self._binding = self._session.io_binding()
        self._bound = split_inputs(x, len(self._inputs))  # kept alive: the binding points into them
        for name, arr in zip(self._inputs, self._bound):
            self._binding.bind_cpu_input(name, arr)
        self._binding.bind_output(self._output, "cpu")

    def infer(self) -> None:
        self._session.run_with_iobinding(self._binding)


class OpenVINORunner(Runner):
    """Compiled OpenVINO model with one infer request. On CPU: ``INFERENCE_NUM_THREADS=threads``,
    ``NUM_STREAMS=1``, ``PERFORMANCE_HINT=LATENCY`` and ``INFERENCE_PRECISION_HINT=f32`` (what the
    export's accuracy gate used: CPUs with bf16/AMX would otherwise downcast)."""

    name = "openvino"
    modules = ("openvino",)
    distribution = "openvino"
    target_key = "device"
    label = "OpenVINO"

    READ_BACK = ("PERFORMANCE_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS", "INFERENCE_PRECISION_HINT", "EXECUTION_DEVICES")

    @classmethod
    def devices(cls) -> list[str]:
        import openvino as ov

        return [*ov.Core().available_devices, "AUTO"]

    @classmethod
    def target(cls, device: str, devices: list[str]) -> str | None:
        ok = device in devices or any(d.split(".")[0] == device for d in devices)
        return device if ok else None

    @classmethod
    def fallback(cls, device: str) -> str:
        return f"OpenVINO has no {device} device here: OpenVINO rows run on CPU"

    @classmethod
    def fingerprint(cls) -> dict:
        import openvino as ov

        core = ov.Core()
        out: dict = {"openvino_devices": list(core.available_devices)}
        if "CPU" in core.available_devices:
            out["openvino_cpu_capabilities"] = list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        return out

    def __init__(self, spec: dict, threads: int) -> None:
        import openvino as ov

        device = spec["device"]
        config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY"}
        if device == "CPU":
            config.update({"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "INFERENCE_PRECISION_HINT": "f32"})
        compiled = ov.Core().compile_model(spec["path"], device, config)
        self._request = compiled.create_infer_request()
        self._n_inputs = len(compiled.inputs)
        self._bound: list[np.ndarray] = []
        self.runtime = f"openvino {ov.__version__.split('-')[0]}"
        self.config = {}
        for key in self.READ_BACK:  # what the plugin really uses, not only what was asked
            try:
                value = compiled.get_property(key)
                self.config[key] = [str(v) for v in value] if isinstance(value, (list, tuple)) else str(value)
            except RuntimeError:  # not every device answers every property
                pass
        self.device = ",".join(self.config.get("EXECUTION_DEVICES", [device]))

    def run(self, x: np.ndarray) -> np.ndarray:
        # share_outputs: a view of the output tensor, read by the caller before the next call
        feeds = dict(enumerate(split_inputs(x, self._n_inputs)))
        return self._request.infer(feeds, share_inputs=True, share_outputs=True)[0]

    def bind(self, x: np.ndarray) -> None:
        import openvino as ov

        self._bound = split_inputs(x, self._n_inputs)
        for i, arr in enumerate(self._bound):
            self._request.set_input_tensor(i, ov.Tensor(arr, shared_memory=True))

    def infer(self) -> None:
        # as benchmark_app: the input tensor is set once, the timed call is only infer(); passing a
        # dict of numpy inputs instead adds ~50 us of Python-side work per call here
        self._request.infer(share_outputs=True)

    def runtime_latency_ns(self) -> int:
        """OpenVINO's own timing of the last call (what benchmark_app reports): no Python overhead."""
        return int(self._request.latency * 1e6)  # ms -> ns


class TorchRunner(Runner):
    """A PyTorch model (host only), eval mode, no autograd. The spec names its ``loader`` (``"module:function"``,
    called as ``function(spec["run"], spec["model"])`` and returning the nn.Module): this module imports nothing
    of the project that made the model (prokt-deploy's bench names ``prokt_deploy.rundir.reader:load_model``)."""

    name = "torch"
    modules = ("torch",)  # and the spec's loader module, imported in `load` before the timed part
    distribution = "torch"

    def __init__(self, spec: dict, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set in this process
            pass
        torch.set_grad_enabled(False)  # this process only ever runs inference
        self._torch = torch
        self._model = loader(spec)(spec["run"], spec["model"]).eval()
        self._x = None
        self.runtime = f"torch {torch.__version__.split('+')[0]}"
        self.device = "cpu"
        self.config = {"num_threads": torch.get_num_threads(), "num_interop_threads": torch.get_num_interop_threads()}

    def run(self, x: np.ndarray) -> np.ndarray:
        return self._model(self._torch.from_numpy(x)).numpy()

    def bind(self, x: np.ndarray) -> None:
        self._x = self._torch.from_numpy(x)

    def infer(self) -> None:
        self._model(self._x)


def loader(spec: dict) -> Callable:
    """A PyTorch row's model loader (``spec["loader"]``: ``"module:function"``)."""
    module, _, name = str(spec["loader"]).partition(":")
    return getattr(importlib.import_module(module), name)


#: The built-in runners by name.
RUNNERS: dict[str, type[Runner]] = {r.name: r for r in (OrtRunner, OpenVINORunner, TorchRunner)}
#: The runtimes ``runtime_targets`` always maps ``--device`` to (with those of any other runner in use), in this order.
DEVICE_RUNNERS: tuple[type[Runner], ...] = (OpenVINORunner, OrtRunner)
#: The runtimes a fingerprint always asks about (with those of any other runner in use), in this order.
FINGERPRINT_RUNNERS: tuple[type[Runner], ...] = (OrtRunner, OpenVINORunner)

_RESOLVED: dict[str, type] = {}


def _class_node(path: Path, name: str) -> tuple[ast.ClassDef, str]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise RunnerError(f"runner file {str(path)!r} cannot be read: {exc}") from None
    for node in ast.walk(ast.parse(text, filename=str(path))):
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node, text
    raise RunnerError(f"no class {name!r} in runner file {str(path)!r}")


def class_source(path: str | Path, name: str) -> str:
    """The source of class ``name`` in the file ``path`` alone (dedented): what a bundle ships of a format's runner."""
    node, text = _class_node(Path(path), name)
    return textwrap.dedent(ast.get_source_segment(text, node, padded=True) or "") + "\n"


def load_class(path: str | Path, name: str) -> type:
    """Execute class ``name`` of the file ``path`` (its source alone, not the file) in this module's namespace."""
    node, _ = _class_node(Path(path), name)
    node.decorator_list = []  # a registration decorator belongs to the host's side of the file
    namespace = {k: v for k, v in globals().items() if not k.startswith("__")}
    namespace["__name__"] = f"runner:{Path(path).name}"
    code = compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec", flags=_future.annotations.compiler_flag, dont_inherit=True)
    exec(code, namespace)  # a runner the caller named, the way a worker imports an engine
    return namespace[name]


def resolve(ref: str) -> type:
    """The runner class ``ref`` names (see the module docstring), with :class:`Runner`'s defaults."""
    if ref in RUNNERS:
        return RUNNERS[ref]
    if ref in _RESOLVED:
        return _RESOLVED[ref]
    where, sep, name = str(ref).rpartition(":")
    if not sep or not where or not name:
        raise RunnerError(f"unknown runner {ref!r}: use one of {', '.join(RUNNERS)}, '<file>.py:<Class>' or '<module>:<Class>'")
    if where.endswith(".py"):
        cls = load_class(where, name)
    else:
        try:
            cls = getattr(importlib.import_module(where), name)
        except (ImportError, AttributeError) as exc:
            raise RunnerError(f"runner {ref!r} cannot be imported: {exc}") from None
    if not issubclass(cls, Runner):
        cls = type(cls.__name__, (cls, Runner), {"__doc__": cls.__doc__})
    if not isinstance(getattr(cls, "name", None), str):
        raise RunnerError(f"runner {ref!r} declares no name (the runtime's, e.g. 'onnxruntime')")
    _RESOLVED[ref] = cls
    return cls
