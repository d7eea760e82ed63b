"""Measure models, each in its own worker process: accuracy, latency percentiles, load time, memory.

Standalone on purpose (the harness package imports nothing of prokt-deploy): only the standard library
and numpy are imported at module level, and a runtime (onnxruntime, openvino; torch for the host's
PyTorch rows) only inside the runner that uses it (:mod:`runners`: one class per runtime, named by each
format's ``Exporter.runner`` and recorded in every engine spec). The same file serves two callers, so
host and board are measured the same way:

- ``prokt-deploy bench`` (:mod:`prokt_deploy.benchmarking.bench`) calls :func:`measure` on the host;
- ``prokt-deploy bundle`` copies it into a bundle as ``bench_bundle.py`` (with ``runners.py``,
  ``fingerprint.py`` and the source of any format's own runner under ``format_runners/``);
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
from types import ModuleType

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

BUNDLE_SPEC = "bundle.json"
BUNDLE_SAMPLES = "samples.npz"
BUNDLE_RESULTS = "device-results.json"
RESULTS_SCHEMA_VERSION = 1
RESULTS_KIND = "device-bench"


class MeasureError(Exception):
    """An engine could not be loaded or run in its worker (the message names the engine)."""


class DeviceUnavailable(Exception):
    """The requested device is not available to any runtime here (the message lists those that are)."""


# --- engines: one model file opened in one runtime (a runner of runners.py), with explicit threads ------


def _sibling(name: str) -> ModuleType:
    """A module of this harness beside this file: ``prokt_deploy.harness.<name>`` in the package, else (a bundle's
    bench_bundle.py, or this file run by path in a worker) the file ``<name>.py`` next to it."""
    if __package__:
        return importlib.import_module(f"{__package__}.{name}")
    key = f"_harness_{name}"  # under its own name: never a module of that name the board may have
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, Path(__file__).resolve().with_name(f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


runners = _sibling("runners")
split_inputs = runners.split_inputs


def _runner(ref: str) -> type:
    try:
        return runners.resolve(ref)
    except runners.RunnerError as exc:
        raise MeasureError(str(exc)) from None


def engine_runner(spec: dict) -> str:
    """The runner reference of an engine spec: its ``runner``, else its ``runtime`` (a built-in runner's name)."""
    return spec.get("runner") or spec["runtime"]


def artifact_engine(runner: str, path: str | os.PathLike[str], targets: dict) -> dict:
    """The worker spec of an artifact file opened by ``runner`` (a runner reference: a format's ``Exporter.runner``,
    see :mod:`runners`) on the resolved device ``targets`` (:func:`runtime_targets`)."""
    cls = _runner(runner)
    if cls.name not in targets:
        raise MeasureError(f"no device target for {cls.name}: pass its runner to runtime_targets")
    spec = {"runtime": cls.name, "path": str(path), cls.target_key: targets[cls.name]}
    if runner not in runners.RUNNERS:
        spec["runner"] = runner  # the worker resolves it again; a built-in is found by its runtime's name
    return spec


def _device_runners(extra: Sequence[str | type] | None) -> list[type]:
    out = list(runners.DEVICE_RUNNERS)
    for r in extra or ():
        cls = _runner(r) if isinstance(r, str) else r
        if cls.name not in {o.name for o in out} and cls.name != "torch":
            out.append(cls)
    return out


def available_devices(extra: Sequence[str | type] | None = None) -> dict[str, list[str]]:
    """The devices (OpenVINO, plus AUTO) or providers (onnxruntime) of this machine per installed runtime, with those of
    the ``extra`` runners (references or classes)."""
    return {r.name: r.devices() for r in _device_runners(extra) if r.installed()}


def runtime_targets(device: str, extra: Sequence[str | type] | None = None) -> dict:
    """Map ``--device`` (CPU, GPU, NPU, AUTO or an OpenVINO id such as GPU.1) to each runtime.

    Returns ``{"openvino": device, "onnxruntime": [providers], <other runtime>: target, "fallbacks": [notes]}``:
    the built-in runtimes and those of the ``extra`` runners (references or classes: the runners of the formats in use).
    A runtime that cannot use the device runs on CPU (noted in ``fallbacks``); a device that no runtime here can
    use raises :class:`DeviceUnavailable` listing the devices that are available.
    """
    name = device.strip().upper()
    chosen = _device_runners(extra)
    avail = {r.name: r.devices() for r in chosen if r.installed()}
    found = {r.name: r.target(name, avail[r.name]) if r.name in avail else None for r in chosen}
    if all(t is None for t in found.values()):
        listing = "; ".join(f"{rt}: {', '.join(devs) or 'none'}" for rt, devs in avail.items()) or "no runtime installed"
        raise DeviceUnavailable(f"device {device!r} is not available here ({listing}); pick one of those with --device")
    fallbacks = [r.fallback(name) for r in chosen if r.name in avail and found[r.name] is None]
    return {**{r.name: found[r.name] if found[r.name] is not None else r.cpu_target() for r in chosen}, "fallbacks": fallbacks}


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

    def prepare(self, runner: str) -> dict:
        for module in _runner(runner).modules:
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
        self.prepare(engine_runner(engine))  # a no-op after `prepare`: the import is never part of load_s
        if "loader" in engine:
            runners.loader(engine)  # nor the import of a PyTorch model's loader
        gc.collect()
        self.rss_before = _proc_status("VmRSS") or _peak_rss()
        _reset_peak_rss()
        t0 = time.perf_counter_ns()
        self.engine = _runner(engine_runner(engine))(engine, threads)
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
        except Exception as exc:  # reported to the parent, which raises MeasureError
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
    """Measure every engine spec (``{"id", "runtime", ...}``: :func:`artifact_engine`, or a ``torch`` spec with a
    ``loader``, see :class:`runners.TorchRunner`) on ``data``.

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
            w.send("prepare", runner=engine_runner(e))
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


#: where a bundle keeps the source of its formats' own runner classes (``<format>.py``; see :func:`runners.class_source`)
BUNDLE_RUNNERS = "format_runners"


def bundle_runner(bundle: Path, ref: str) -> str:
    """A bundle.json artifact's ``runner``: a built-in name, or ``format_runners/<format>.py:<Class>`` relative to the bundle."""
    where, sep, name = ref.rpartition(":")
    return f"{bundle / where}:{name}" if sep and where.endswith(".py") and not Path(where).is_absolute() else ref


def bench_bundle(bundle: Path, *, device: str = "CPU", **settings: int) -> dict:
    """Measure every artifact of a bundle written by ``prokt-deploy bundle``; return the results JSON."""
    fingerprint = _sibling("fingerprint").fingerprint  # copied next to bench_bundle.py by `prokt-deploy bundle`

    spec = json.loads((bundle / BUNDLE_SPEC).read_text())
    settings = {**DEFAULTS, **spec.get("settings", {}), **{k: v for k, v in settings.items() if v is not None}}
    refs = {art["id"]: bundle_runner(bundle, art["runner"]) for art in spec["artifacts"]}
    used = [_runner(r) for r in dict.fromkeys(refs.values())]
    targets = runtime_targets(device, used)
    rows, engines, skipped = [], [], []
    for art in spec["artifacts"]:
        runner = _runner(refs[art["id"]])
        if missing := runner.missing():
            skipped.append(f"{art['id']}: {runner.name} cannot run here (cannot import {', '.join(missing)})")
            continue
        engines.append({"id": art["id"], **artifact_engine(refs[art["id"]], bundle / art["main_file"], targets)})
        rows.append({k: art[k] for k in ("id", "model", "format", "precision", "files", "bytes", "host_test_accuracy")})
    if not engines:
        raise MeasureError("no artifact of the bundle can run here: " + "; ".join(skipped))
    results = measure(engines, bundle / BUNDLE_SAMPLES, progress=lambda text: print(text, file=sys.stderr), **settings)
    return {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "kind": RESULTS_KIND,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run": spec.get("run"),
        "fingerprint": fingerprint(runners=used),
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
