"""The candidates: which students a plan considers, built untrained, and how they are ranked (capacity, then MACs)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from prokt_deploy.models import count_macs, count_params, create_model, families, get_family
from prokt_deploy.planner.memory import peak_activation_bytes

BYTES_PER_ELEMENT = {"fp32": 4, "fp16": 2, "int8": 1}

#: the same layers inside a TorchScript teacher (RecursiveScriptModule keeps the class name)
_SCRIPTED_WEIGHTED = frozenset({"Conv2d", "Linear", "Embedding"})


@dataclass
class Candidate:
    """One student architecture of a plan as ``plan --json`` shows it: counts, sizes and latency when measured,
    and the plan's verdicts."""

    arch: str
    params: int
    macs: int
    lower_bound_bytes: int
    bytes: dict[str, int] = field(default_factory=dict)  # format -> measured artifact bytes
    fits: bool | None = None  # None: not decided (not measured, not needed)
    chosen: bool = False
    latency_ms: float | None = None  # p50 at batch 1 in the plan's target runtime, when timed
    ram_bytes: int | None = None  # peak activation memory at batch 1 and the deploy precision (planner/memory.py)

    @property
    def estimated_bytes(self) -> int | None:
        """Largest artifact over the deploy formats, when measured."""
        return max(self.bytes.values()) if self.bytes else None


@dataclass(eq=False)
class Entry:
    """A candidate as the choice rules see it: its record and its capacity (:func:`capacity`); ``model`` is the
    untrained module that is exported to measure it (None in unit tests of the rules, which measure nothing)."""

    candidate: Candidate
    capacity: int
    model: nn.Module | None = None

    @property
    def arch(self) -> str:
        return self.candidate.arch


def weight_elements(model: nn.Module) -> int:
    """Elements of conv, linear and embedding weights: what any artifact must store at least once."""
    return sum(
        m.weight.numel()
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding)) or getattr(m, "original_name", None) in _SCRIPTED_WEIGHTED
    )


def capacity(model: nn.Module) -> int:
    """Parameters, counting an embedding table as one row per column (its width), not vocab rows.

    The one capacity rule of the planner: candidates are ranked by it (then MACs) within and across families, and
    the teacher fraction compares it (a text student's embeddings are most of its parameters but add no capacity
    per token)."""
    total = count_params(model)
    for m in model.modules():
        if isinstance(m, nn.Embedding):
            total -= m.weight.numel() - m.weight.shape[1]
    return total


def is_registered(arch: str) -> bool:
    return any(family.parse(arch) is not None for family in families().values())


def teacher_label(teacher_arch: str, teacher: nn.Module) -> str:
    """The teacher's key in the caches: its architecture name, or for a factory/external one, its name and size."""
    return teacher_arch if is_registered(teacher_arch) else f"custom:{teacher_arch}:{count_params(teacher)}"


def families_text(fams: list[str]) -> str:
    return f"family {fams[0]!r}" if len(fams) == 1 else "families " + ", ".join(repr(f) for f in fams)


def candidate_names(fams: list[str], *, student_arch: str | None = None, candidates: list[str] | None = None) -> list[str]:
    """The architectures a plan considers: the pinned one, an explicit list, or every family's candidates (once each)."""
    if student_arch:
        return [student_arch]
    if candidates:
        return list(candidates)
    return list(dict.fromkeys(n for f in fams for n in get_family(f).candidates()))


def build_candidates(
    names: list[str],
    *,
    num_classes: int,
    input_shape: tuple[int, ...],
    model_kwargs: dict,
    example: torch.Tensor | None,
    precision: str,
) -> list[Entry]:
    """The untrained candidates, most capable first: by :func:`capacity`, then MACs. For text, capacity leaves out
    the embedding tables (every text student of a tokenizer carries vocab x width embeddings, which buy width but
    no depth)."""
    entries = []
    ex = example[:1] if example is not None else None
    for name in names:
        model = create_model(name, num_classes=num_classes, **model_kwargs)
        c = Candidate(name, count_params(model), count_macs(model, input_shape, ex), weight_elements(model) * BYTES_PER_ELEMENT[precision])
        c.ram_bytes = peak_activation_bytes(model, ex if ex is not None else torch.zeros(1, *input_shape), BYTES_PER_ELEMENT[precision])
        entries.append(Entry(c, capacity(model), model))
    entries.sort(key=lambda e: (e.capacity, e.candidate.macs), reverse=True)
    return entries
