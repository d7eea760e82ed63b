"""Measure models, each in its own worker process: accuracy, latency percentiles, load time, memory.

Standalone on purpose: only the standard library and numpy are imported at module level, and a
runtime (onnxruntime, openvino; torch for the host's PyTorch rows) only inside the engine that uses
it. The same file serves two callers, so host and board are measured the same way:

- ``prokt-deploy bench`` (:mod:`prokt_deploy.benchmarking.bench`) calls :func:`measure` on the host;
- ``prokt-deploy bundle`` copies it into a bundle as ``bench_bundle.py`` (with ``fingerprint.py``);
  ``python bench_bundle.py`` then measures the bundle's artifacts on a board that has numpy and a
  runtime only, and writes a JSON that ``prokt-deploy bench RUN --merge`` adds to the report.

How the numbers are made to hold on a small, noisy machine (TOOLCHAIN.md):

- one worker process per engine (this file with ``--serve``: JSON lines on stdin/stdout) with its
  threads set explicitly: ``torch.set_num_threads(n)``; onnxruntime ``intra_op=n``, ``inter_op=1``,
  sequential; OpenVINO ``INFERENCE_NUM_THREADS=n``, ``NUM_STREAMS=1``, ``PERFORMANCE_HINT=LATENCY``;
  one reused session / infer request; the input is bound once (onnxruntime IOBinding, OpenVINO
  ``set_input_tensor``) and a timed call is one inference, as in OpenVINO's benchmark_app;
- the workers import their runtimes together, then load one at a time (a load is never slowed by
  another), and only one worker runs at any moment after that;
- accuracy is measured once per engine, all workers at once after every load and before any timing
  (nothing is timed while they run), or not at all where the caller passes the value already measured
  on the same samples (engine spec ``accuracy``);
- ``repeats`` rounds, round-robin over the engines with the order rotated every round; in a round an
  engine warms up ``warmup`` calls (:data:`MIN_WARMUP_LATER` from the second round), then times ``runs``
  calls with ``perf_counter_ns`` (garbage collection off). A slow engine (a large PyTorch teacher) gets
  fewer calls: warm-up stops after a quarter of its round time (:func:`round_seconds`: :data:`ROUND_SECONDS`,
  shared down at batch > 1 and for PyTorch rows; at least :data:`MIN_WARMUP` calls) and the timed calls
  are capped to what fits in that time at the warm-up's pace (at least :data:`MIN_RUNS`, :data:`MIN_RUNS_BATCHED`
  at batch > 1); fast engines are not
  affected, and each row records its ``timed_runs``. Each statistic is the median over rounds of its per-round value (the median of
  medians for p50): a slow spell of the machine then lands on one round of every engine instead of on
  all rounds of one engine, so the ratios between engines hold.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "DEFAULTS",
    "DeviceUnavailable",
    "MeasureError",
    "STATS",
    "artifact_engine",
    "bench_bundle",
    "measure",
    "runtime_targets",
    "summarize",
]

#: Default measurement settings (small enough that a digits run benches in seconds).
DEFAULTS = {"threads": 1, "batch": 32, "runs": 200, "warmup": 50, "repeats": 3}

#: Time one engine may spend on the timed calls of one batch size in one round; a slower engine gets
#: fewer calls (never below MIN_RUNS). 200 calls of a 0.1-10 ms artifact fit; a 60 ms teacher gets ~33.
ROUND_SECONDS = 2.0
#: The share of ROUND_SECONDS for batch > 1 (read as throughput: the median of fewer, longer calls is as
#: stable) and for the PyTorch rows (references, not deployables: the slow PyTorch teacher gets fewer calls).
BATCHED_SHARE = 0.5
TORCH_SHARE = 0.5
MIN_RUNS = 30
#: The floor at batch > 1, whose rows are read as throughput (the median): 10 calls of a 330 ms batch
#: of MiniLM per round instead of 30 take the text bench's teacher rows from ~46 s to ~20 s a round.
MIN_RUNS_BATCHED = 10
MIN_WARMUP = 5
#: warm-up calls of the second and later rounds: the engine is loaded and has run; a couple of calls
#: refill the caches the other engines used in between
MIN_WARMUP_LATER = 2


def round_seconds(runtime: str, batch: int) -> float:
    """The time one engine's timed calls at ``batch`` may take in one round (see :data:`ROUND_SECONDS`)."""
    return ROUND_SECONDS * (BATCHED_SHARE if batch > 1 else 1.0) * (TORCH_SHARE if runtime == "torch" else 1.0)


#: Latency statistics of every row, in milliseconds.
STATS = ("p50", "p90", "p99", "mean", "std")

#: onnxruntime execution providers tried for each ``--device``, best first.
ORT_PROVIDERS = {
    "CPU": ("CPUExecutionProvider",),
    "GPU": ("CUDAExecutionProvider", "ROCMExecutionProvider", "DmlExecutionProvider", "CoreMLExecutionProvider"),
    "NPU": ("QNNExecutionProvider", "VitisAIExecutionProvider"),
}

BUNDLE_SPEC = "bundle.json"
BUNDLE_SAMPLES = "samples.npz"
BUNDLE_RESULTS = "device-results.json"
RESULTS_SCHEMA_VERSION = 1
RESULTS_KIND = "device-bench"


class MeasureError(Exception):
    """An engine could not be loaded or run in its worker (the message names the engine)."""


class DeviceUnavailable(Exception):
    """The requested device is not available to any runtime here (the message lists those that are)."""


# --- engines: one model opened in one runtime, with explicit threads -------------------------------


def split_inputs(x: np.ndarray, n_inputs: int) -> list[np.ndarray]:
    """The graph inputs of one batch: an image batch as is; a packed text batch (B, 2, L) as
    contiguous ``input_ids`` and ``attention_mask`` (B, L) int64 arrays."""
    if n_inputs == 2 and x.ndim == 3 and x.shape[1] == 2:
        return [np.ascontiguousarray(x[:, 0], dtype=np.int64), np.ascontiguousarray(x[:, 1], dtype=np.int64)]
    return [x]


class OrtEngine:
    """onnxruntime session: ``intra_op=threads``, ``inter_op=1``, sequential, all graph optimizations.
    Timed calls use an IOBinding made once, so Python builds no feed dict or output list per call."""

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


class OpenVINOEngine:
    """Compiled OpenVINO model with one infer request. On CPU: ``INFERENCE_NUM_THREADS=threads``,
    ``NUM_STREAMS=1``, ``PERFORMANCE_HINT=LATENCY`` and ``INFERENCE_PRECISION_HINT=f32`` (what the
    export's accuracy gate used: CPUs with bf16/AMX would otherwise downcast)."""

    READ_BACK = ("PERFORMANCE_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS", "INFERENCE_PRECISION_HINT", "EXECUTION_DEVICES")

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


class TorchEngine:
    """A PyTorch model (host only), eval mode, no autograd. The spec names its ``loader`` (``"module:function"``,
    called as ``function(spec["run"], spec["model"])`` and returning the nn.Module): this module imports nothing
    of the project that made the model (prokt-deploy's bench names ``prokt_deploy.run.reader:load_model``)."""

    def __init__(self, spec: dict, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set in this process
            pass
        torch.set_grad_enabled(False)  # this process only ever runs inference
        self._torch = torch
        self._model = _loader(spec)(spec["run"], spec["model"]).eval()
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


def _loader(spec: dict) -> Callable:
    module, _, name = str(spec["loader"]).partition(":")
    return getattr(importlib.import_module(module), name)


ENGINES: dict[str, tuple[type, tuple[str, ...]]] = {
    # runtime -> (engine class, modules to import before the load is timed)
    "onnxruntime": (OrtEngine, ("onnxruntime",)),
    "openvino": (OpenVINOEngine, ("openvino",)),
    "torch": (TorchEngine, ("torch",)),  # and the spec's loader module, imported in `load` before the timed part
}


#: The runtime that runs each artifact format.
RUNTIME_OF_FORMAT = {"onnx": "onnxruntime", "openvino": "openvino"}


def artifact_engine(fmt: str, path: str | os.PathLike[str], targets: dict) -> dict:
    """The worker spec of an artifact file in its format's runtime on the resolved device ``targets``."""
    if fmt == "onnx":
        return {"runtime": "onnxruntime", "path": str(path), "providers": targets["onnxruntime"]}
    if fmt == "openvino":
        return {"runtime": "openvino", "path": str(path), "device": targets["openvino"]}
    raise MeasureError(f"no runtime for format {fmt!r}; known formats: {', '.join(RUNTIME_OF_FORMAT)}")


def available_devices() -> dict[str, list[str]]:
    """OpenVINO devices (plus AUTO) and onnxruntime providers of this machine, per installed runtime."""
    out: dict[str, list[str]] = {}
    if importlib.util.find_spec("openvino") is not None:
        import openvino as ov

        out["openvino"] = [*ov.Core().available_devices, "AUTO"]
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime as ort

        out["onnxruntime"] = list(ort.get_available_providers())
    return out


def runtime_targets(device: str) -> dict:
    """Map ``--device`` (CPU, GPU, NPU, AUTO or an OpenVINO id such as GPU.1) to each runtime.

    Returns ``{"openvino": device, "onnxruntime": [providers], "fallbacks": [notes]}``. A runtime that
    cannot use the device runs on CPU (noted in ``fallbacks``); a device that no runtime here can use
    raises :class:`DeviceUnavailable` listing the devices that are available.
    """
    name = device.strip().upper()
    avail = available_devices()
    ov_devices = avail.get("openvino", [])
    ort_available = avail.get("onnxruntime", [])
    ov_ok = name in ov_devices or any(d.split(".")[0] == name for d in ov_devices)
    if name == "AUTO":
        providers = [p for p in ort_available if p != "AzureExecutionProvider"]
    else:
        wanted = ORT_PROVIDERS.get(name.split(".")[0], ())
        providers = [p for p in wanted if p in ort_available][:1]
        if providers and providers != ["CPUExecutionProvider"]:
            providers.append("CPUExecutionProvider")  # for the nodes the accelerator cannot run
    if not ov_ok and not providers:
        listing = "; ".join(f"{rt}: {', '.join(devs) or 'none'}" for rt, devs in avail.items()) or "no runtime installed"
        raise DeviceUnavailable(f"device {device!r} is not available here ({listing}); pick one of those with --device")
    fallbacks = []
    if "openvino" in avail and not ov_ok:
        fallbacks.append(f"OpenVINO has no {name} device here: OpenVINO rows run on CPU")
    if "onnxruntime" in avail and not providers:
        fallbacks.append(f"onnxruntime has no provider for {name} here: ONNX rows run on CPUExecutionProvider")
    return {"openvino": name if ov_ok else "CPU", "onnxruntime": providers or ["CPUExecutionProvider"], "fallbacks": fallbacks}


# --- statistics -------------------------------------------------------------------------------------


def summarize(ns: Sequence[int]) -> dict[str, float]:
    """Latency statistics in milliseconds of one round's timed calls (nanoseconds)."""
    ms = np.asarray(ns, dtype=np.float64) / 1e6
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    std = float(ms.std(ddof=1)) if len(ms) > 1 else 0.0
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(ms.mean()), "std": std}


def combine_rounds(rounds: list[dict[str, float]]) -> dict[str, float]:
    """Each statistic's median over rounds. Keeps p50 <= p90 <= p99: each round's do, and the median
    of values that are pointwise ordered is ordered."""
    return {k: round(float(np.median([r[k] for r in rounds])), 6) for k in STATS}


# --- the worker (this file with --serve) ------------------------------------------------------------


def _proc_status(key: str) -> int | None:
    """A memory line of /proc/self/status in bytes (``None`` off Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) so the peak covers only what follows."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    hwm = _proc_status("VmHWM")
    if hwm is not None:
        return hwm
    import resource  # not on Windows; ru_maxrss is KiB on Linux, bytes on macOS

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class _Served:
    """The state of one worker: its engine, its test data and its memory baseline."""

    def __init__(self) -> None:
        self.engine = None
        self.x: np.ndarray | None = None
        self.x_time: np.ndarray | None = None
        self.y: np.ndarray | None = None
        self.inputs: dict[int, np.ndarray] = {}
        self.rss_before = 0

    def prepare(self, runtime: str) -> dict:
        for module in ENGINES[runtime][1]:
            importlib.import_module(module)
        return {}

    def load(self, engine: dict, threads: int, data: str) -> dict:
        with np.load(data) as f:
            x = f["x"]
            text = np.issubdtype(x.dtype, np.integer)  # packed text (N, 2, L) int64; images (N, C, H, W) float32
            self.x = np.ascontiguousarray(x, dtype=np.int64 if text else np.float32)
            self.y = f["y"].astype(np.int64)  # (N,)
            # text: the timed inputs are cut to a realistic length (the caller's choice), not max_length
            self.x_time = np.ascontiguousarray(f["x_time"], dtype=np.int64) if "x_time" in f.files else self.x
        self.prepare(engine["runtime"])  # a no-op after `prepare`: the import is never part of load_s
        if "loader" in engine:
            _loader(engine)  # nor the import of a PyTorch model's loader
        gc.collect()
        self.rss_before = _proc_status("VmRSS") or _peak_rss()
        _reset_peak_rss()
        t0 = time.perf_counter_ns()
        self.engine = ENGINES[engine["runtime"]][0](engine, threads)
        load_s = (time.perf_counter_ns() - t0) / 1e9
        return {"load_s": round(load_s, 4), "runtime": self.engine.runtime, "device": self.engine.device, "engine_config": self.engine.config}

    def accuracy(self, batch: int, predictions: bool = False) -> dict:
        order, x = np.arange(len(self.x)), self.x
        predicted = np.zeros(len(x), dtype=np.int64)
        if x.ndim == 3:  # packed text: similar lengths together, each batch cut after its last real token
            mask = x[:, 1] != 0  # (the project's text models mask padding: same logits, half the work on tweets)
            length = np.where(mask.any(axis=1), x.shape[2] - np.argmax(mask[:, ::-1], axis=1), 1)
            order = np.argsort(length, kind="stable")
        for i in range(0, len(x), batch):
            idx = order[i : i + batch]
            xb = x[idx] if x.ndim != 3 else np.ascontiguousarray(x[idx, :, : int(length[idx].max())])
            predicted[idx] = np.asarray(self.engine.run(xb)).argmax(axis=1)
        correct = int((predicted == self.y).sum())
        return {"accuracy": correct / len(self.y), "samples": len(self.y), **({"predictions": predicted.tolist()} if predictions else {})}

    def time(self, batch: int, warmup: int, runs: int, max_seconds: float | None = None) -> dict:
        if batch not in self.inputs:  # the first `batch` test samples, repeated if there are fewer
            self.inputs[batch] = np.ascontiguousarray(np.resize(self.x_time, (batch, *self.x_time.shape[1:])))
        self.engine.bind(self.inputs[batch])
        infer = self.engine.infer
        t0, done = time.perf_counter_ns(), 0
        for done in range(1, warmup + 1):
            infer()
            if max_seconds is not None and done >= MIN_WARMUP and time.perf_counter_ns() - t0 > max_seconds / 4 * 1e9:
                break
        if max_seconds is not None:  # a slow engine: as many calls as fit in max_seconds at the warm-up's pace
            if done == 0:
                infer()
                done = 1
            per_call = (time.perf_counter_ns() - t0) / done / 1e9
            floor = MIN_RUNS if batch == 1 else MIN_RUNS_BATCHED
            runs = max(min(runs, floor), min(runs, int(max_seconds / max(per_call, 1e-9))))
        runtime_timer = getattr(self.engine, "runtime_latency_ns", None)
        ns, runtime_ns = [0] * runs, [0] * runs
        gc.disable()
        try:
            for i in range(runs):
                t0 = time.perf_counter_ns()
                infer()
                ns[i] = time.perf_counter_ns() - t0
                if runtime_timer is not None:  # read after the timed span
                    runtime_ns[i] = runtime_timer()
        finally:
            gc.enable()
        return {"ns": ns, "runtime_ns": runtime_ns if runtime_timer is not None else None, "runs": runs}

    def memory(self) -> dict:
        return {"peak_mem_mb": round(max(0, _peak_rss() - self.rss_before) / 2**20, 2)}


def serve() -> None:
    """Worker loop: one JSON request per stdin line, one JSON reply per line on the original stdout."""
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything a library prints goes to stderr and cannot corrupt the replies
    served = _Served()
    for line in sys.stdin:
        request = json.loads(line)
        cmd = request.pop("cmd")
        if cmd == "quit":
            break
        try:
            reply = {"ok": True, **getattr(served, cmd)(**request)}
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises MeasureError
            reply = {"ok": False, "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}"}
        replies.write(json.dumps(reply) + "\n")


# --- the parent side ----------------------------------------------------------------------------------

# runpy runs this file without importing the prokt_deploy package (whose __init__ imports torch: ~2 s
# and ~200 MB in every onnxruntime/OpenVINO worker) and without putting its folder on sys.path.
_BOOTSTRAP = "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"


class _Worker:
    """A worker process running one engine; ``call`` sends a request and waits for its reply."""

    def __init__(self, name: str, threads: int) -> None:
        self.name = name
        self._log = tempfile.TemporaryFile(mode="w+")
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _BOOTSTRAP, str(Path(__file__).resolve()), "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=env,
        )

    def send(self, cmd: str, **kwargs: object) -> None:
        try:
            self._proc.stdin.write(json.dumps({"cmd": cmd, **kwargs}) + "\n")
            self._proc.stdin.flush()
        except BrokenPipeError:
            raise MeasureError(f"{self.name}: the worker process exited ({self._stderr_tail()})") from None

    def receive(self) -> dict:
        line = self._proc.stdout.readline()
        if not line:
            raise MeasureError(f"{self.name}: the worker process exited ({self._stderr_tail()})")
        reply = json.loads(line)
        if not reply.pop("ok"):
            raise MeasureError(f"{self.name}: {reply['error']}")
        return reply

    def call(self, cmd: str, **kwargs: object) -> dict:
        self.send(cmd, **kwargs)
        return self.receive()

    def _stderr_tail(self) -> str:
        self._proc.poll()
        self._log.seek(0)
        lines = [ln.strip() for ln in self._log.read().splitlines() if ln.strip()]
        return f"exit code {self._proc.returncode}; last stderr line: {lines[-1][:300] if lines else 'none'}"

    def close(self) -> None:
        try:
            if self._proc.poll() is None:
                self.send("quit")
                self._proc.wait(timeout=10)
        except (MeasureError, OSError, subprocess.TimeoutExpired):
            self._proc.kill()
            self._proc.wait()
        finally:
            self._log.close()


Progress = Callable[[str], None]


def measure(
    engines: list[dict],
    data: str | os.PathLike[str],
    *,
    threads: int = DEFAULTS["threads"],
    batch: int = DEFAULTS["batch"],
    runs: int = DEFAULTS["runs"],
    warmup: int = DEFAULTS["warmup"],
    repeats: int = DEFAULTS["repeats"],
    progress: Progress | None = None,
    keep_predictions: bool = False,
) -> list[dict]:
    """Measure every engine spec (``{"id", "runtime", ...}``, see :data:`ENGINES`) on ``data``.

    ``data`` is an .npz with ``x`` (N,C,H,W float32, preprocessed) and ``y`` (N,) labels. Returns, in
    the order of ``engines``: ``load_s``, ``runtime``, ``device``, ``engine_config``, ``test_accuracy``,
    ``accuracy_samples``, ``latency_ms`` (batch 1, wall clock around the Python call),
    ``runtime_latency_ms`` (batch 1 by the runtime's own timer, as benchmark_app reports it: OpenVINO
    only, else None), ``batch``, ``batch_latency_ms``, ``throughput`` (samples/s at ``batch``, from
    its p50), ``rounds_p50_ms``, ``timed_runs`` (the fewest timed calls of a round, see
    :data:`ROUND_SECONDS`), ``accuracy_measured`` (False where the spec's ``accuracy`` was reused, unless it says ``measured``: the
    caller measured it on this machine just before) and
    ``peak_mem_mb`` (peak RSS over the load and all runs, minus the RSS before the load); with
    ``keep_predictions`` also ``predictions`` (the predicted class of every sample) where accuracy was
    measured, for the caller to reuse (bench's per-class accuracy) and drop.

    ``progress(text)`` is called once per step (:func:`measure_steps` gives their number); a callback
    with a ``step(engine_id, done, total)`` method also gets, per engine, how many of its own steps
    (load, each round) are done, to draw one progress bar per engine.
    """
    progress = progress or (lambda text: None)
    step = getattr(progress, "step", None)
    batches = (1,) if batch == 1 else (1, batch)
    workers = [_Worker(e["id"], threads) for e in engines]
    try:
        for w, e in zip(workers, engines):  # runtimes import in parallel ...
            w.send("prepare", runtime=e["runtime"])
        for w in workers:
            w.receive()
        results = []
        for w, e in zip(workers, engines):  # ... models load one at a time
            progress(f"loading {e['id']}")
            spec = {k: v for k, v in e.items() if k not in ("id", "accuracy")}
            results.append(w.call("load", engine=spec, threads=threads, data=str(data)))
        pending = [i for i, e in enumerate(engines) if e.get("accuracy") is None]
        if pending:
            progress(f"accuracy of {len(pending)} engine(s) on the test samples")
        for i in pending:  # all at once: nothing is being timed now
            workers[i].send("accuracy", batch=batch, predictions=keep_predictions)
        for i, (res, e) in enumerate(zip(results, engines)):
            acc = workers[i].receive() if i in pending else e["accuracy"]
            res.update(
                {
                    "test_accuracy": round(acc["accuracy"], 6),
                    "accuracy_samples": acc["samples"],
                    "accuracy_measured": i in pending or bool(acc.get("measured")),
                }
            )
            if "predictions" in acc:
                res["predictions"] = acc["predictions"]
            if step:
                step(e["id"], 1, 1 + repeats)
        rounds: list[dict[int, list[dict]]] = [{b: [] for b in batches} for _ in engines]
        runtime_rounds: list[list[dict]] = [[] for _ in engines]  # the runtime's own timer, batch 1
        timed_runs = [runs] * len(engines)
        for r in range(repeats):
            for k in range(len(engines)):
                i = (k + r) % len(engines)  # rotate the order every round
                progress(f"round {r + 1}/{repeats}: {engines[i]['id']}")
                for b in batches:
                    timed = workers[i].call(
                        "time",
                        batch=b,
                        warmup=warmup if r == 0 else min(warmup, MIN_WARMUP_LATER),
                        runs=runs,
                        max_seconds=round_seconds(engines[i]["runtime"], b),
                    )
                    timed_runs[i] = min(timed_runs[i], timed["runs"])
                    rounds[i][b].append(summarize(timed["ns"]))
                    if b == 1 and timed["runtime_ns"]:
                        runtime_rounds[i].append(summarize(timed["runtime_ns"]))
                if step:
                    step(engines[i]["id"], 2 + r, 1 + repeats)
        for w, res, rs, rt, n in zip(workers, results, rounds, runtime_rounds, timed_runs):
            res["timed_runs"] = n
            res["latency_ms"] = combine_rounds(rs[1])
            res["runtime_latency_ms"] = combine_rounds(rt) if rt else None
            res["batch"] = batch
            res["batch_latency_ms"] = combine_rounds(rs[batch])
            res["throughput"] = round(batch / (res["batch_latency_ms"]["p50"] / 1e3), 2)
            res["rounds_p50_ms"] = [round(s["p50"], 6) for s in rs[1]]
            res.update(w.call("memory"))
        return results
    finally:
        for w in workers:
            w.close()


def read_results(path: Path) -> dict:
    """A ``bench_bundle.py`` result file (what :func:`main` writes), checked enough to merge or plan from safely;
    MeasureError with one line otherwise."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise MeasureError(f"cannot read device results {str(path)!r}: {exc}") from None
    if not isinstance(data, dict) or data.get("kind") != RESULTS_KIND:
        raise MeasureError(f"{path} is not a device result file (write it with 'python bench_bundle.py' in a bundle)")
    if data.get("schema_version") != RESULTS_SCHEMA_VERSION:
        raise MeasureError(f"{path} has schema_version {data.get('schema_version')!r}; this version reads {RESULTS_SCHEMA_VERSION}")
    for row in data.get("rows", []):
        missing = [k for k in ("id", "model", "format", "precision", "test_accuracy", "latency_ms", "batch_latency_ms") if k not in row]
        if missing:
            raise MeasureError(f"{path}: a row lacks {', '.join(missing)}")
    if "id" not in data.get("fingerprint", {}):
        raise MeasureError(f"{path}: no device fingerprint")
    return data


def measure_steps(n_engines: int, repeats: int, *, accuracy: bool = True) -> int:
    """How many times :func:`measure` calls its ``progress`` (``accuracy``: some engine measures it)."""
    return n_engines * (1 + repeats) + int(accuracy)


# --- on a board: python bench_bundle.py ---------------------------------------------------------------


def bench_bundle(bundle: Path, *, device: str = "CPU", **settings: int) -> dict:
    """Measure every artifact of a bundle written by ``prokt-deploy bundle``; return the results JSON."""
    from fingerprint import fingerprint  # copied next to bench_bundle.py by `prokt-deploy bundle`

    spec = json.loads((bundle / BUNDLE_SPEC).read_text())
    settings = {**DEFAULTS, **spec.get("settings", {}), **{k: v for k, v in settings.items() if v is not None}}
    targets = runtime_targets(device)
    rows, engines, skipped = [], [], []
    for art in spec["artifacts"]:
        runtime = RUNTIME_OF_FORMAT.get(art["format"], art["format"])
        if importlib.util.find_spec(runtime) is None:
            skipped.append(f"{art['id']}: {runtime} is not installed")
            continue
        main_file = next(f for f in art["files"] if f.endswith((".onnx", ".xml")))
        engines.append({"id": art["id"], **artifact_engine(art["format"], bundle / main_file, targets)})
        rows.append({k: art[k] for k in ("id", "model", "format", "precision", "files", "bytes", "host_test_accuracy")})
    if not engines:
        raise MeasureError("no artifact of the bundle can run here: " + "; ".join(skipped))
    results = measure(engines, bundle / BUNDLE_SAMPLES, progress=lambda text: print(text, file=sys.stderr), **settings)
    return {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "kind": RESULTS_KIND,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run": spec.get("run"),
        "fingerprint": fingerprint(),
        "settings": {**settings, "device": device, "fallbacks": targets["fallbacks"]},
        "rows": [{**row, **res} for row, res in zip(rows, results)],
        "skipped": skipped,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure this bundle's artifacts (accuracy and latency) with numpy and a runtime only.")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # worker mode
    parser.add_argument("--out", type=Path, help=f"results JSON to write (default: {BUNDLE_RESULTS} in the bundle)")
    parser.add_argument("--device", default="CPU", help="CPU, GPU, NPU or AUTO (default CPU)")
    for name in DEFAULTS:
        parser.add_argument(f"--{name}", type=int, help=f"default: the bundle's setting, else {DEFAULTS[name]}")
    args = parser.parse_args(argv)
    if args.serve:
        serve()
        return 0
    bundle = Path(__file__).resolve().parent
    try:
        result = bench_bundle(bundle, device=args.device, **{k: getattr(args, k) for k in DEFAULTS})
    except (MeasureError, DeviceUnavailable, OSError, ValueError) as exc:
        print(f"Error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    out = args.out or bundle / BUNDLE_RESULTS
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'artifact':<24} {'accuracy':>8} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'load s':>7}")
    for row in result["rows"]:
        lat = row["latency_ms"]
        print(f"{row['id']:<24} {row['test_accuracy']:>8.4f} {lat['p50']:>9.4f} {lat['p90']:>9.4f} {lat['p99']:>9.4f} {row['load_s']:>7.3f}")
    for note in result["skipped"]:
        print(f"skipped {note}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
