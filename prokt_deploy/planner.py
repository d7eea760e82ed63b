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
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from prokt_deploy.budget import format_size
from prokt_deploy.errors import BudgetError, ExportFailed
from prokt_deploy.models import count_macs, count_params, create_model, families, get_family

BYTES_PER_ELEMENT = {"fp32": 4, "fp16": 2, "int8": 1}

#: Part of the size-cache key: bump it when the measurement changes so older cached sizes are not reused.
#: 2: measure a copy with generic weights (an untrained BatchNorm folds into an all-zero conv bias that the
#: exporters drop, so v1 sizes were 5-21% below the trained artifact) and stable OpenVINO op names.
MEASUREMENT_VERSION = 2


@dataclass
class Candidate:
    arch: str
    params: int
    macs: int
    lower_bound_bytes: int
    bytes: dict[str, int] = field(default_factory=dict)  # format -> measured artifact bytes
    fits: bool | None = None  # None: not decided (not measured, not needed)
    chosen: bool = False

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

    def to_dict(self) -> dict:
        d = asdict(self)
        for c, src in zip(d["candidates"], self.candidates):
            c["estimated_bytes"] = src.estimated_bytes
        d["chosen"]["estimated_bytes"] = self.chosen.estimated_bytes
        return d


def weight_elements(model: nn.Module) -> int:
    """Elements of conv, linear and embedding weights: what any artifact must store at least once."""
    return sum(m.weight.numel() for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding)) or getattr(m, "original_name", None) in _SCRIPTED_WEIGHTED)


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
    model: nn.Module, label: str, fmt: str, precision: str, input_shape: tuple[int, ...], num_classes: int, cache: SizeCache | None = None,
    example: torch.Tensor | None = None, vocab_size: int | None = None,
) -> int:
    """Exact bytes of ``model`` exported to ``fmt`` at ``precision`` (cached by ``label``).

    ``example`` is an input batch (default: zeros of ``input_shape``); text models need a real one
    (token ids and masks) and the tokenizer's ``vocab_size`` (part of the key: it sizes the embeddings).
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
        size = exporters.measure_bytes(model, fmt, precision, example_input=ex, **extra)
    except exporters.ExportError as e:
        raise ExportFailed(f"cannot measure the {fmt} {precision} artifact of {label}: {e}") from None
    cache.put(key, size)
    return size


def plan_student(
    budget_bytes: int,
    *,
    family: str,
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
) -> Plan:
    """Choose the student; raise BudgetError when none fits.

    The most capable student is the one with the most parameters (then MACs). It must also be
    smaller than the teacher. When the budget is at least the teacher's own artifact, the budget
    does not bind and the student is the most capable one with at most ``max_teacher_fraction``
    of the teacher's parameters.
    """
    formats = list(formats)
    cache = cache if cache is not None else SizeCache()
    fam = get_family(family)
    names = [student_arch] if student_arch else fam.candidates()
    model_kwargs = model_kwargs if model_kwargs is not None else {"in_channels": input_shape[0]}
    vocab_size = model_kwargs.get("vocab_size")
    cands = []
    for name in names:
        model = create_model(name, num_classes=num_classes, **model_kwargs)
        ex = example[:1] if example is not None else None
        cands.append((model, Candidate(name, count_params(model), count_macs(model, input_shape, ex), weight_elements(model) * BYTES_PER_ELEMENT[precision])))
    # Most capable first: by parameters for images; for text by parameters *outside* the embedding
    # tables (every text student of a tokenizer carries vocab x width embeddings, which buy width
    # but no depth), then MACs.
    cands.sort(key=lambda mc: (_capacity(mc[0]), mc[1].macs), reverse=True)

    def measure(model: nn.Module, label: str) -> dict[str, int]:
        return {f: measure_artifact_bytes(model, label, f, precision, input_shape, num_classes, cache, example, vocab_size) for f in formats}

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
    for model, c in cands:
        if exact or chosen is None:
            if c.lower_bound_bytes <= budget_bytes or exact:
                c.bytes = measure(model, c.arch)
            if chosen is None:
                small_enough = student_arch is not None or _capacity(model) < limit
                c.fits = bool(c.bytes) and c.estimated_bytes <= budget_bytes and small_enough
                if c.fits:
                    c.chosen = True
                    chosen = c
            elif c.bytes:
                c.fits = c.estimated_bytes <= budget_bytes
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
        what = f"student {student_arch}" if student_arch else f"the smallest student of family {family!r} ({smallest.arch})"
        raise BudgetError(
            f"no student fits {format_size(budget_bytes)} ({budget_bytes} B) at {precision}: {what} needs "
            f"{format_size(need)} ({need} B); use --budget {need}B or larger"
        )

    if binding and not teacher_exact:
        note = (f"budget {format_size(budget_bytes)} binds (the teacher's {precision} weights alone are "
                f"{format_size(teacher_bytes)}): chose the most capable student that fits")
    elif binding:
        note = f"budget {format_size(budget_bytes)} binds: chose the most capable student that fits"
    else:
        note = (
            f"budget {format_size(budget_bytes)} does not bind (the teacher's own {precision} artifact is "
            f"{format_size(teacher_bytes)}): chose the most capable student with at most "
            f"{max_teacher_fraction:.0%} of the teacher's parameters"
        )
    return Plan(budget_bytes, precision, formats, [c for _, c in cands], chosen, teacher_arch, teacher_params, teacher_bytes, binding, note)


def _capacity(model: nn.Module) -> int:
    """Parameters, counting an embedding table as one row per column (its width), not vocab rows."""
    total = count_params(model)
    for m in model.modules():
        if isinstance(m, nn.Embedding):
            total -= m.weight.numel() - m.weight.shape[1]
    return total


def _is_registered(arch: str) -> bool:
    return any(family.parse(arch) is not None for family in families().values())
