"""Pick the most capable student whose deployed artifact fits a size budget.

The budget is the size on disk of every file of the deployed artifact at the deploy precision,
for every deploy format (ONNX, OpenVINO IR). Artifact bytes do not depend on the weights' values
(int8 tensors, per-channel scales and graph structure have fixed sizes), so the planner exports
the *untrained* candidate and measures it: the estimate is the real size. Measurements are
cached on disk (``$PROKT_DEPLOY_CACHE`` or ``~/.cache/prokt-deploy``), keyed by architecture,
input shape, classes, format, precision and exporter library versions.

To stay fast, a candidate is only exported when its lower bound (weight elements times bytes
per element) fits; the walk goes from the most capable candidate down and stops at the first
that fits. ``exact=True`` measures every candidate (for ``plan --exact``).

Several families (``student.family: [resnet, wide]`` or ``auto``, every student family of the data's
kind): their candidates form one pool ranked by one capacity rule, the same as within a family:
parameters (for text, parameters outside the embedding tables, see :func:`_capacity`), then MACs. At a
byte budget nearly all bytes are weights, so parameters are what the budget buys whatever the family;
MACs only break ties. The rule says nothing about which family trains better at equal parameters (that
is measured, not assumed: benchmarks/student_speed.py and the quality grid); with a latency target the
rule below moves to a less capable but faster candidate, which is what searching several families is for.

Latency (``target`` given, e.g. ``onnx`` or ``openvino:CPU``; implied as ``onnx`` by a latency budget):
a smaller student is not always a faster one (a ResNet with 10 small convs, adds and pooling can be
slower at batch 1 than a teacher made of a few big convs), so the planner also times, in the target
runtime, the artifact of every candidate that fits the size budget at the deploy precision (an
untrained copy with generic weights has the real graph) and the teacher's fp32 and int8 artifacts.
The harness is ``bench``'s (:func:`prokt_deploy.harness.measure.measure`: one worker process per engine, 1
thread, warm-up, interleaved rounds, median of per-round p50s at batch 1); p50s are cached per machine
fingerprint, candidate, input shape, target, precision and library versions
(``artifact-latency.json`` next to the size cache). The choice rule (:func:`choose_by_latency`):

1. with ``latency_budget_ms``: the most capable candidate that fits the size budget and whose p50 is
   within the latency budget; none: :class:`~prokt_deploy.errors.BudgetError` naming the fastest;
2. without one: the most capable fitting candidate that is faster than the teacher's fastest
   artifact (its own int8 included); when no fitting candidate is, the most capable fitting one,
   and the plan's note says plainly that no student beats the teacher on speed here.

``plan`` (the command) sizes and times every fitting candidate, to show the whole table. ``distill``
(and so ``run``) plans with ``lazy_latency``: it sizes the candidates from the most capable down to the
first that fits, times that one with the teacher's artifacts, and stops there when it already satisfies
the rule (it is then the rule's choice whatever the others measure, since the rule takes the most capable
qualifying candidate). Only when it does not are the remaining candidates sized and timed as above. The
same choice, in a fraction of the time (the default recipe on a fresh machine: 1 of 13 fitting candidates
sized and timed instead of all); the plan in memory then has sizes and latencies for the candidates that
were measured only. A resumed run plans in full (its checkpoint's student must be among the measured).
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from prokt_deploy.budget import format_size, parse_latency, parse_target  # noqa: F401 (re-exported)
from prokt_deploy.data import DataBundle, load_recipe_data
from prokt_deploy.errors import BudgetError, ExportFailed, ModelError, RecipeError, UsageError
from prokt_deploy.models import count_macs, count_params, create_model, families, get_family, student_families
from prokt_deploy.recipe import Recipe
from prokt_deploy.train.build import build_teacher

#: ``bundle(models, kept)`` of :func:`plan_student`: label -> (untrained module, precision), and kept(label, fmt) -> the
#: artifact exported for that label and format (None if not); see :func:`prokt_deploy.deploy.bundle.plan_bundle_writer`
BundleWriter = Callable[[dict[str, tuple[nn.Module, str]], Callable[[str, str], Path | None]], None]

BYTES_PER_ELEMENT = {"fp32": 4, "fp16": 2, "int8": 1}

#: Part of the size-cache key: bump it when the measurement changes so older cached sizes are not reused.
#: 2: measure a copy with generic weights (an untrained BatchNorm folds into an all-zero conv bias that the
#: exporters drop, so v1 sizes were 5-21% below the trained artifact) and stable OpenVINO op names.
#: 3: the ONNX int8 file keeps a 1-3-channel first conv in fp32 (3 bytes more per stem weight).
MEASUREMENT_VERSION = 3


@dataclass
class Candidate:
    arch: str
    params: int
    macs: int
    lower_bound_bytes: int
    bytes: dict[str, int] = field(default_factory=dict)  # format -> measured artifact bytes
    fits: bool | None = None  # None: not decided (not measured, not needed)
    chosen: bool = False
    latency_ms: float | None = None  # p50 at batch 1 in the plan's target runtime, when timed

    @property
    def estimated_bytes(self) -> int | None:
        """Largest artifact over the deploy formats, when measured."""
        return max(self.bytes.values()) if self.bytes else None


@dataclass
class Plan:
    budget_bytes: int
    precision: str
    formats: list[str]
    candidates: list[Candidate]  # most capable first
    chosen: Candidate
    teacher_arch: str
    teacher_params: int
    teacher_bytes: int
    binding: bool
    note: str
    target: str | None = None  # runtime[:device] the latencies were measured in
    latency_budget_ms: float | None = None
    teacher_latency_ms: dict[str, float] = field(default_factory=dict)  # "fp32"/"int8" -> p50 in the target
    families: list[str] = field(default_factory=list)  # the student families searched
    latency_source: str | None = None  # where the latencies come from: "measured here" or a device results file

    def to_dict(self) -> dict:
        d = asdict(self)
        for c, src in zip(d["candidates"], self.candidates):
            c["estimated_bytes"] = src.estimated_bytes
        d["chosen"]["estimated_bytes"] = self.chosen.estimated_bytes
        return d


def weight_elements(model: nn.Module) -> int:
    """Elements of conv, linear and embedding weights: what any artifact must store at least once."""
    return sum(
        m.weight.numel()
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding)) or getattr(m, "original_name", None) in _SCRIPTED_WEIGHTED
    )


#: the same layers inside a TorchScript teacher (RecursiveScriptModule keeps the class name)
_SCRIPTED_WEIGHTED = frozenset({"Conv2d", "Linear", "Embedding"})


class SizeCache:
    """A JSON file of measured artifact sizes; safe to delete."""

    def __init__(self, path: Path | None = None) -> None:
        root = Path(os.environ.get("PROKT_DEPLOY_CACHE", Path.home() / ".cache" / "prokt-deploy"))
        self.path = path or root / "artifact-sizes.json"
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


def _versions_key() -> str:
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
    key = f"v{MEASUREMENT_VERSION}|{label}|{tuple(input_shape)}{vocab}|{num_classes}|{fmt}|{precision}|{_versions_key()}"
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


#: Part of the latency-cache key (bump when the timing changes).
#: 2: half round time at batch > 1, 2 warm-up calls after the first round; 3: ONNX int8 with an fp32 stem.
LATENCY_VERSION = 3
#: Timing settings of a planner latency: bench's harness, batch 1 only, fewer calls than bench.
LATENCY_SETTINGS = {"threads": 1, "batch": 1, "runs": 100, "warmup": 20, "repeats": 3}
#: Label prefix of the teacher's entries among the planner's timed models (``teacher:<arch>:<precision>``).
TEACHER_LABEL = "teacher:"


def model_name(label: str) -> str:
    """A timed model's name in a bundle or device result file: ``teacher`` or the candidate's architecture."""
    return "teacher" if label.startswith(TEACHER_LABEL) else label


class LatencyCache(SizeCache):
    """A JSON file of measured p50 latencies (ms), keyed with the machine's fingerprint id; safe to delete."""

    def __init__(self, path: Path | None = None) -> None:
        root = Path(os.environ.get("PROKT_DEPLOY_CACHE", Path.home() / ".cache" / "prokt-deploy"))
        super().__init__(path or root / "artifact-latency.json")


def generic_calibration(example: torch.Tensor, n: int = 100):
    """int8 calibration samples for an untrained candidate: normal samples of an image ``example``'s shape,
    or for text ``example`` itself repeated (token ids must stay in the vocabulary)."""
    import numpy as np

    shape = tuple(example.shape[1:])
    if not example.is_floating_point():
        return np.resize(example.numpy(), (n, *shape))
    return np.random.default_rng(0).standard_normal((n, *shape)).astype(np.float32)


def generic_artifact(
    model: nn.Module, label: str, fmt: str, precision: str, example: torch.Tensor, calibration, out_dir: Path, done: Path | None = None
) -> list[Path]:
    """The files of ``model``'s ``fmt``/``precision`` artifact with generic weights (the real graph): those in
    ``done`` when it already holds them (the size measurement's export), else exported into ``out_dir``.

    The teacher (label ``teacher:...``) is exported with its own weights: they are real (a checkpoint) or
    fresh, and a deep trained network with generic offsets added to every weight overflows its activations
    (onnxruntime's int8 calibration then fails on a vgg-w32 teacher)."""
    import exporters
    from exporters.size import generic_copy

    files = sorted(done.iterdir()) if done is not None and done.is_dir() else []
    if files:
        try:
            exporters.main_file(fmt, files)
            return files
        except exporters.ExportError:
            pass  # not this format's artifact: export it
    try:
        as_exported = model if label.startswith(TEACHER_LABEL) else generic_copy(model, 0)  # export() evaluates in eval mode, mode restored
        return exporters.export(
            as_exported, fmt, precision, out_dir, example_input=example, calibration=calibration if precision == "int8" else None
        ).files
    except exporters.ExportError as exc:
        raise ExportFailed(f"cannot export {label} to {fmt} {precision}: {exc}") from None


def measure_latencies(
    models: dict[str, tuple[nn.Module, str]],
    target: str,
    *,
    example: torch.Tensor,
    cache: LatencyCache | None = None,
    key_extra: str = "",
    exported: dict[str, Path] | None = None,
) -> dict[str, float]:
    """Batch-1 p50 (ms) of each labelled ``(model, precision)``'s artifact in ``target``, measured together
    (interleaved rounds, so the ratios between them hold on a noisy machine).

    Each model is exported as a copy with generic weights (:func:`exporters.size.generic_copy`: the real
    graph, nothing special folded away; int8 calibrated on normal samples of ``example``'s shape, or for
    text on ``example`` itself) and timed with :func:`prokt_deploy.harness.measure.measure`, all candidates in
    one interleaved measurement. Cached per machine fingerprint. ``exported``: label -> a directory that
    already holds that artifact (the planner's size measurement), used instead of exporting again.
    """
    import numpy as np

    from prokt_deploy import formats
    from prokt_deploy.harness import measure

    fmt, device = parse_target(target)
    cache = cache if cache is not None else LatencyCache()
    machine = formats.fingerprint(runtimes=False)["id"]
    shape = tuple(example.shape[1:])
    keys = {
        label: f"v{LATENCY_VERSION}|{machine}|{label}|{shape}{key_extra}|{fmt}:{device}|{precision}|{LATENCY_SETTINGS}|{_versions_key()}"
        for label, (_, precision) in models.items()
    }
    result = {label: cache.get(k) for label, k in keys.items()}
    todo = [label for label, v in result.items() if v is None]
    if not todo:
        return result  # type: ignore[return-value]
    try:
        targets = formats.runtime_targets(device)
    except measure.DeviceUnavailable as exc:
        raise UsageError(str(exc)) from None
    x = example.numpy()
    calibration = generic_calibration(example)
    with tempfile.TemporaryDirectory(prefix="prokt-plan-latency-") as tmp:
        engines = []
        for i, label in enumerate(todo):
            model, precision = models[label]
            files = generic_artifact(model, label, fmt, precision, example, calibration, Path(tmp) / str(i), (exported or {}).get(label))
            engines.append({"id": label, **formats.artifact_engine(fmt, files, targets), "accuracy": {"accuracy": 0.0, "samples": 0}})
        data = Path(tmp) / "x.npz"
        np.savez(data, x=np.resize(x, (8, *shape)), y=np.zeros(8, dtype=np.int64))
        try:
            rows = measure.measure(engines, data, **LATENCY_SETTINGS)
        except measure.MeasureError as exc:
            raise ExportFailed(f"cannot time the candidates in {target}: {exc}") from None
    for label, row in zip(todo, rows):
        result[label] = row["latency_ms"]["p50"]
        cache.put(keys[label], result[label])
    return result  # type: ignore[return-value]


def read_device_latencies(path: str | os.PathLike[str]) -> dict:
    """The batch-1 p50s of a plan bundle's device result file (``python bench_bundle.py`` in the directory
    ``plan --bundle`` wrote), as ``{"path", "device", "p50": {(model, format, precision): ms}}``.

    Raises :class:`~prokt_deploy.errors.BenchError` (exit 12) with one line for a file that is missing,
    not JSON, not a device result file, or the result of a run's bundle rather than a plan's.
    """
    from prokt_deploy.errors import BenchError
    from prokt_deploy.harness import measure

    try:
        data = measure.read_results(Path(path))
    except measure.MeasureError as exc:
        raise BenchError(str(exc)) from None
    if not str(data.get("run") or "").startswith(PLAN_BUNDLE_PREFIX):
        raise BenchError(
            f"{path} holds the results of a run's bundle, not of a plan's: write one with 'prokt-deploy plan --bundle DIR', "
            "run 'python bench_bundle.py' in it on the device, and pass its device-results.json"
        )
    p50 = {}
    for row in data["rows"]:
        value = (row.get("latency_ms") or {}).get("p50")
        if not isinstance(value, (int, float)) or not value > 0:
            raise BenchError(f"{path}: row {row['id']!r} has no positive batch-1 p50 latency")
        p50[(row["model"], row["format"], row["precision"])] = float(value)
    fp = data["fingerprint"]
    device = fp.get("cpu", {}).get("model") if isinstance(fp.get("cpu"), dict) else None
    return {"path": str(path), "device": device or fp["id"], "p50": p50}


#: ``bundle.json`` "run" of a plan bundle: the prefix tells its device results from a run bundle's
PLAN_BUNDLE_PREFIX = "plan:"


def lookup_device_latencies(device: dict, models: dict[str, tuple[nn.Module, str]], fmt: str) -> dict[str, float]:
    """label -> p50 ms from ``device`` (:func:`read_device_latencies`) for the planner's ``models``
    (candidates by architecture name, the teacher as ``teacher:...:precision``); BenchError if one is missing."""
    from prokt_deploy.errors import BenchError

    out = {}
    for label, (_, precision) in models.items():
        model = model_name(label)
        value = device["p50"].get((model, fmt, precision))
        if value is None:
            raise BenchError(
                f"{device['path']} has no {fmt} {precision} latency for {model}: it was measured for another recipe, budget or "
                "format; write the bundle again with 'prokt-deploy plan --bundle DIR' and measure it on the device"
            )
        out[label] = value
    return out


def qualifies(latency_ms: float | None, *, teacher_fastest_ms: float | None, latency_budget_ms: float | None) -> bool:
    """Whether a candidate's p50 satisfies the latency rule: within the latency budget when there is one,
    else faster than the teacher's fastest artifact (anything timed qualifies when the teacher was not)."""
    if latency_ms is None:
        return False
    if latency_budget_ms is not None:
        return latency_ms <= latency_budget_ms
    return teacher_fastest_ms is None or latency_ms < teacher_fastest_ms


def choose_by_latency(fitting: list[Candidate], *, teacher_fastest_ms: float | None, latency_budget_ms: float | None) -> tuple[Candidate, str]:
    """The latency rule of the module docstring over ``fitting`` (most capable first, each timed).

    Returns the choice and a note; raises BudgetError when a latency budget leaves nothing.
    """
    if latency_budget_ms is not None:
        within = [c for c in fitting if qualifies(c.latency_ms, teacher_fastest_ms=teacher_fastest_ms, latency_budget_ms=latency_budget_ms)]
        if not within:
            fastest = min(fitting, key=lambda c: c.latency_ms if c.latency_ms is not None else float("inf"))
            raise BudgetError(
                f"no student that fits the size budget runs within {latency_budget_ms:g} ms: the fastest, {fastest.arch}, "
                f"takes {fastest.latency_ms:.4f} ms (p50, batch 1); raise --latency-budget or the size budget"
            )
        return within[0], f"the most capable student within {latency_budget_ms:g} ms (p50 {within[0].latency_ms:.4f} ms)"
    if teacher_fastest_ms is None:
        return fitting[0], "the most capable student that fits"
    faster = [c for c in fitting if qualifies(c.latency_ms, teacher_fastest_ms=teacher_fastest_ms, latency_budget_ms=None)]
    if faster:
        c = faster[0]
        skipped = fitting.index(c)
        return c, (
            f"the most capable fitting student faster than the teacher's fastest artifact ({teacher_fastest_ms:.4f} ms): "
            f"p50 {c.latency_ms:.4f} ms" + (f"; {skipped} more capable one(s) were slower than the teacher" if skipped else "")
        )
    return fitting[0], (
        f"NO student that fits is faster than the teacher's fastest artifact ({teacher_fastest_ms:.4f} ms; the fastest "
        f"fitting student takes {min(c.latency_ms for c in fitting if c.latency_ms is not None):.4f} ms): "
        "chose the most capable that fits; distilling buys size here, not speed"
    )


def plan_student(budget_bytes: int, **kwargs) -> Plan:  # noqa: ANN003 - the keywords of _plan_student
    """Choose the student; raise BudgetError when none fits (see :func:`_plan_student` for the keywords).
    When timing, the artifacts the size measurement exports are kept in a temporary directory and timed."""
    if kwargs.get("target") is None and kwargs.get("latency_budget_ms") is None:
        return _plan_student(budget_bytes, **kwargs)
    with tempfile.TemporaryDirectory(prefix="prokt-plan-") as tmp:
        return _plan_student(budget_bytes, keep_root=Path(tmp), **kwargs)


def _plan_student(
    budget_bytes: int,
    *,
    family: str | list[str],
    input_shape: tuple[int, ...],
    num_classes: int,
    teacher: nn.Module,
    model_kwargs: dict | None = None,
    example: torch.Tensor | None = None,
    teacher_arch: str,
    precision: str = "int8",
    formats: list[str] | tuple[str, ...] = ("onnx", "openvino"),
    max_teacher_fraction: float = 0.25,
    student_arch: str | None = None,
    exact: bool = False,
    cache: SizeCache | None = None,
    target: str | None = None,
    latency_budget_ms: float | None = None,
    candidates: list[str] | None = None,
    latency_cache: LatencyCache | None = None,
    keep_root: Path | None = None,
    device_latencies: dict | None = None,
    bundle: BundleWriter | None = None,
    lazy_latency: bool = False,
) -> Plan:
    """Choose the student; raise BudgetError when none fits.

    The most capable student is the one with the most parameters (then MACs). It must also be
    smaller than the teacher. When the budget is at least the teacher's own artifact, the budget
    does not bind and the student is the most capable one with at most ``max_teacher_fraction``
    of the teacher's parameters.

    ``target`` / ``latency_budget_ms``: time the fitting candidates and choose by the latency rule of
    the module docstring (a latency budget without a target times in onnx). ``candidates`` replaces
    the family's candidate list (names of any registered family).

    ``device_latencies``: a device result file of a plan bundle (:func:`read_device_latencies`): the
    latencies come from it instead of being measured here (``target`` picks its format; default onnx).
    ``bundle(models, kept)``: instead of timing, hand the models the latency rule would time (label ->
    (model, precision); the teacher's as ``teacher:...:fp32/int8``) to the callback, which writes them
    into an on-device bundle (:func:`prokt_deploy.deploy.bundle.write_plan_bundle`); ``kept(label, fmt)`` is the
    directory that may already hold the size measurement's export.

    ``lazy_latency``: when timing here, first size and time only the size rule's choice (with the teacher's
    artifacts) and keep it if it satisfies the latency rule; otherwise size and time the rest (module
    docstring). Ignored with ``exact``, ``device_latencies`` or ``bundle``.
    """
    formats = list(formats)
    cache = cache if cache is not None else SizeCache()
    if latency_budget_ms is not None and not latency_budget_ms > 0:
        raise UsageError(f"--latency-budget must be a positive number of milliseconds, got {latency_budget_ms}")
    if (latency_budget_ms is not None or device_latencies is not None or bundle is not None) and target is None:
        target = "onnx"
    if student_arch is not None and (device_latencies is not None or bundle is not None):
        raise UsageError("--student pins the architecture, so there are no candidates to bundle or to choose by device latency; drop --student")
    if target is not None:
        parse_target(target)
    fams = [family] if isinstance(family, str) else list(family)
    pool = list(dict.fromkeys(n for f in fams for n in get_family(f).candidates()))  # every family's candidates, once each
    names = [student_arch] if student_arch else (list(candidates) if candidates else pool)
    if model_kwargs is None:
        model_kwargs = {"in_channels": input_shape[0], **({"image_size": tuple(input_shape[1:])} if len(input_shape) == 3 else {})}
    vocab_size = model_kwargs.get("vocab_size")
    cands = []
    for name in names:
        model = create_model(name, num_classes=num_classes, **model_kwargs)
        ex = example[:1] if example is not None else None
        cands.append(
            (model, Candidate(name, count_params(model), count_macs(model, input_shape, ex), weight_elements(model) * BYTES_PER_ELEMENT[precision]))
        )
    # Most capable first: by parameters for images; for text by parameters *outside* the embedding
    # tables (every text student of a tokenizer carries vocab x width embeddings, which buy width
    # but no depth), then MACs.
    cands.sort(key=lambda mc: (_capacity(mc[0]), mc[1].macs), reverse=True)

    def kept(label: str, fmt: str) -> Path | None:
        return keep_root / label.replace("/", "_").replace(":", "_") / f"{fmt}-{precision}" if keep_root is not None else None

    def measure(model: nn.Module, label: str) -> dict[str, int]:
        # the onnx int8 and openvino exports both start from an fp32 ONNX export of the same generic copy:
        # export it once per candidate (on first need; none when every size is cached)
        with tempfile.TemporaryDirectory(prefix="prokt-plan-fp32-") as tmp:

            @functools.cache
            def fp32_onnx() -> Path:
                import exporters
                from exporters.size import generic_copy

                ex = example if example is not None else torch.zeros(1, *input_shape)
                # named as the openvino exporter names its own fp32 step: the IR records the source file name
                return exporters.export(generic_copy(model, 0), "onnx", "fp32", Path(tmp), example_input=ex, name="fp32").files[0]

            reuse = fp32_onnx if len(formats) > 1 else None
            return {
                f: measure_artifact_bytes(model, label, f, precision, input_shape, num_classes, cache, example, vocab_size, kept(label, f), reuse)
                for f in formats
            }

    teacher_params = count_params(teacher)
    teacher_label = teacher_arch if _is_registered(teacher_arch) else f"custom:{teacher_arch}:{teacher_params}"
    teacher_lower_bound = weight_elements(teacher) * BYTES_PER_ELEMENT[precision]
    if budget_bytes < teacher_lower_bound or teacher_arch.startswith("torchscript:"):
        # The budget binds whatever the teacher's exact size: skip exporting it (a 90 MB transformer
        # takes minutes to export and quantize); its weights alone are a lower bound. A TorchScript
        # teacher cannot be exported by torch.onnx at all: its weights are the size used.
        teacher_bytes, teacher_exact = teacher_lower_bound, False
    else:
        teacher_bytes, teacher_exact = max(measure(teacher, teacher_label).values()), True
    binding = budget_bytes < teacher_bytes
    # The teacher fraction compares capacity: parameters, with an embedding table counted by its width
    # (a text student's embeddings are most of its parameters but add no capacity per token).
    teacher_capacity = _capacity(teacher)
    limit = teacher_capacity * (1.0 if binding else max_teacher_fraction)

    chosen = None
    timing = target is not None and student_arch is None
    lazy = timing and lazy_latency and not exact and device_latencies is None and bundle is None

    def size_walk(size_all: bool) -> None:
        nonlocal chosen
        for model, c in cands:
            if size_all or chosen is None:
                if (c.lower_bound_bytes <= budget_bytes or exact) and not c.bytes:
                    c.bytes = measure(model, c.arch)
                if chosen is None:
                    small_enough = student_arch is not None or _capacity(model) < limit
                    c.fits = bool(c.bytes) and c.estimated_bytes <= budget_bytes and small_enough
                    if c.fits:
                        c.chosen = True
                        chosen = c
                elif c.bytes and c.fits is None:  # decided candidates (above the choice) keep their verdict
                    c.fits = c.estimated_bytes <= budget_bytes

    size_walk(exact or (timing and not lazy))
    if chosen is None and not binding and student_arch is None:
        # Nothing is below the teacher fraction: take the smallest student that fits.
        model, smallest = cands[-1]
        smallest.bytes = smallest.bytes or measure(model, smallest.arch)
        smallest.fits = smallest.chosen = True
        chosen = smallest
    if chosen is None:
        smallest_model, smallest = cands[-1]
        smallest.bytes = smallest.bytes or measure(smallest_model, smallest.arch)
        need = smallest.estimated_bytes
        what = f"student {student_arch}" if student_arch else f"the smallest student of {_families_text(fams)} ({smallest.arch})"
        raise BudgetError(
            f"no student fits {format_size(budget_bytes)} ({budget_bytes} B) at {precision}: {what} needs "
            f"{format_size(need)} ({need} B); use --budget {need}B or larger"
        )

    latency_note, teacher_latency, lat, latency_source = "", {}, {}, None
    if timing:
        # every candidate that fits is timed (the walk above measured all sizes; lazily, first the size rule's
        # choice alone); the size rule's choice is the most capable of them, the latency rule may pick a less
        # capable but faster one
        key_extra = f"|{num_classes}" + (f"|vocab{vocab_size}" if vocab_size else "")
        ex = example[:1] if example is not None else torch.zeros(1, *input_shape)
        fmt = parse_target(target)[0]
        teacher_models = {f"{TEACHER_LABEL}{teacher_label}:{p_name}": (teacher, p_name) for p_name in ("fp32", "int8")}

        def time_here(small: list, cache: LatencyCache | None) -> dict[str, float]:
            models = {c.arch: (m, precision) for m, c in small} | teacher_models  # the teacher's own artifacts: what the student must beat
            exported = {c.arch: d for _, c in small if (d := kept(c.arch, fmt)) is not None}
            return measure_latencies(models, target, example=ex, cache=cache, key_extra=key_extra, exported=exported)

        joint_cache = latency_cache
        if lazy and chosen is not None and chosen.bytes and chosen.estimated_bytes <= budget_bytes:
            lat = time_here([(m, c) for m, c in cands if c is chosen], latency_cache)
            fastest_teacher = min(lat[label] for label in teacher_models)
            if not qualifies(
                lat[chosen.arch], teacher_fastest_ms=fastest_teacher, latency_budget_ms=latency_budget_ms
            ):  # the size rule's choice does not satisfy the latency rule: size the rest, time all of them together
                size_walk(True)
                lat = {}
                # a fresh cache: the contested ratios (the rest vs the teacher) come from one interleaved measurement,
                # not from this one and a later one
                joint_cache = LatencyCache((keep_root or Path(tempfile.mkdtemp(prefix="prokt-plan-latency-"))) / "fallback-latency.json")
        small = [(m, c) for m, c in cands if c.bytes and c.estimated_bytes <= budget_bytes and (_capacity(m) < limit or c is chosen)]
        if chosen is not None and small and not lat:
            small = small[[c for _, c in small].index(chosen) :]  # the size rule's choice and everything less capable
            models = {c.arch: (m, precision) for m, c in small} | teacher_models
            if bundle is not None:
                bundle(models, kept)
                lat = {}
            elif device_latencies is not None:
                lat = lookup_device_latencies(device_latencies, models, fmt)
            else:
                lat = time_here(small, joint_cache)
        elif lat:
            small = [(m, c) for m, c in small if c.arch in lat]
        if lat:
            teacher_latency = {p_name: round(lat[f"{TEACHER_LABEL}{teacher_label}:{p_name}"], 6) for p_name in ("fp32", "int8")}
            for _, c in small:
                c.latency_ms = round(lat[c.arch], 6)
            for c in (c for _, c in cands):
                c.chosen = False
            pick, latency_note = choose_by_latency(
                [c for _, c in small], teacher_fastest_ms=min(teacher_latency.values()), latency_budget_ms=latency_budget_ms
            )
            pick.chosen = True
            chosen = pick
            for _, c in small:
                if latency_budget_ms is not None and c.latency_ms > latency_budget_ms:
                    c.fits = False
    if binding and not teacher_exact:
        note = (
            f"budget {format_size(budget_bytes)} binds (the teacher's {precision} weights alone are "
            f"{format_size(teacher_bytes)}): chose the most capable student that fits"
        )
    elif binding:
        note = f"budget {format_size(budget_bytes)} binds: chose the most capable student that fits"
    else:
        note = (
            f"budget {format_size(budget_bytes)} does not bind (the teacher's own {precision} artifact is "
            f"{format_size(teacher_bytes)}): chose the most capable student with at most "
            f"{max_teacher_fraction:.0%} of the teacher's parameters"
        )
    if lat:
        latency_source = f"device results {device_latencies['path']} ({device_latencies['device']})" if device_latencies else "measured here"
    if latency_note:
        where = f" on the device of {device_latencies['path']}" if device_latencies else ""
        note += f"; latency in {target}{where}: {latency_note}"
    return Plan(
        budget_bytes,
        precision,
        formats,
        [c for _, c in cands],
        chosen,
        teacher_arch,
        teacher_params,
        teacher_bytes,
        binding,
        note,
        target=target,
        latency_budget_ms=latency_budget_ms,
        teacher_latency_ms=teacher_latency,
        families=fams,
        latency_source=latency_source,
    )


def _families_text(fams: list[str]) -> str:
    return f"family {fams[0]!r}" if len(fams) == 1 else "families " + ", ".join(repr(f) for f in fams)


def _capacity(model: nn.Module) -> int:
    """Parameters, counting an embedding table as one row per column (its width), not vocab rows."""
    total = count_params(model)
    for m in model.modules():
        if isinstance(m, nn.Embedding):
            total -= m.weight.numel() - m.weight.shape[1]
    return total


def _is_registered(arch: str) -> bool:
    return any(family.parse(arch) is not None for family in families().values())


def plan_families(recipe: Recipe, data: DataBundle) -> list[str]:
    """The student families the recipe's ``student.family`` names for this data (RecipeError if it cannot)."""
    try:
        return student_families(recipe.student.family, "text" if data.is_text else "image")
    except ModelError as exc:
        raise RecipeError(f"student.family: {exc}") from None


def plan(
    recipe: Recipe,
    data: DataBundle | None = None,
    teacher: nn.Module | None = None,
    *,
    exact: bool = False,
    target: str | None = None,
    latency_budget_ms: float | None = None,
    latencies: str | Path | None = None,
    bundle: BundleWriter | None = None,
    lazy_latency: bool = False,
) -> Plan:
    """Plan the student for the recipe's budget (raises BudgetError when none fits); ``target`` /
    ``latency_budget_ms``: also time the fitting candidates (see :func:`plan_student`).

    ``latencies``: take the candidates' latencies from a plan bundle's device result file instead of
    timing them here (BenchError, exit 12, for a bad file). ``bundle``: hand every fitting candidate's
    untrained model and the teacher's to this writer instead of timing them (nothing is timed here):
    :func:`prokt_deploy.deploy.bundle.plan_bundle_writer` writes them into an on-device bundle.
    ``target`` / ``latency_budget_ms`` default to the recipe's ``budget.target`` / ``budget.latency``.
    ``lazy_latency``: measure only what the choice needs (``distill``; see the module docstring)."""
    target = target or recipe.budget.target
    if latency_budget_ms is None and recipe.budget.latency is not None:
        latency_budget_ms = parse_latency(recipe.budget.latency)
    device_latencies = read_device_latencies(latencies) if latencies is not None else None  # a bad file fails before any work
    data = data or load_recipe_data(recipe)
    fams = plan_families(recipe, data)
    teacher = teacher if teacher is not None else build_teacher(recipe, data, zero_head=False)
    return plan_student(
        recipe.budget.bytes,
        family=fams,
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        model_kwargs=data.model_kwargs,
        example=data.example(2),
        teacher=teacher,
        teacher_arch=recipe.teacher.factory or recipe.teacher.arch,
        precision=recipe.budget.precision,
        formats=recipe.budget.formats,
        max_teacher_fraction=recipe.budget.max_teacher_fraction,
        student_arch=recipe.student.arch,
        exact=exact,
        target=target,
        latency_budget_ms=latency_budget_ms,
        device_latencies=device_latencies,
        bundle=bundle,
        lazy_latency=lazy_latency,
    )
