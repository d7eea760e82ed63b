"""The search: build the candidates, measure what the rules need (sizes, then latencies), apply the rules.

Measuring and choosing are separate: this module decides *what to measure* (a candidate is only exported when its
lower bound fits; the walk stops at the size rule's choice unless every size is needed) and asks the pure rules of
:mod:`prokt_deploy.planner.rules` *what to choose* from what was measured.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from prokt_deploy.budget import format_size, parse_target
from prokt_deploy.errors import BudgetError, UsageError
from prokt_deploy.models import count_params
from prokt_deploy.planner import rules
from prokt_deploy.planner.candidates import (
    BYTES_PER_ELEMENT,
    Candidate,
    Entry,
    build_candidates,
    candidate_names,
    capacity,
    families_text,
    teacher_label,
    weight_elements,
)
from prokt_deploy.planner.latency import TEACHER_LABEL, LatencyCache, lookup_device_latencies, measure_latencies
from prokt_deploy.planner.sizing import SizeCache, Sizer
from prokt_deploy.recipe import NO_TARGET

#: ``bundle(models, kept)`` of :func:`plan_student`: label -> (untrained module, precision), and kept(label, fmt) -> the
#: artifact exported for that label and format (None if not); see :func:`prokt_deploy.deploy.bundle.plan_bundle_writer`
BundleWriter = Callable[[dict[str, tuple[nn.Module, str]], Callable[[str, str], Path | None]], None]


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
    ram_budget_bytes: int | None = None  # peak activation memory allowed (budget.ram), when set

    def to_dict(self) -> dict:
        d = asdict(self)
        for c, src in zip(d["candidates"], self.candidates):
            c["estimated_bytes"] = src.estimated_bytes
        d["chosen"]["estimated_bytes"] = self.chosen.estimated_bytes
        return d


@dataclass(frozen=True)
class Task:
    """What a plan is for: the data (input shape, classes, model keywords, an example batch), the teacher, and the
    student families to search."""

    families: tuple[str, ...]
    input_shape: tuple[int, ...]
    num_classes: int
    teacher: nn.Module
    teacher_arch: str
    model_kwargs: dict | None = None
    example: torch.Tensor | None = None

    def student_kwargs(self) -> dict:
        if self.model_kwargs is not None:
            return self.model_kwargs
        shape = self.input_shape
        return {"in_channels": shape[0], **({"image_size": tuple(shape[1:])} if len(shape) == 3 else {})}


@dataclass(frozen=True)
class PlanOptions:
    """How to plan (the keywords of :func:`plan_student`, which documents them)."""

    precision: str = "int8"
    formats: tuple[str, ...] = ("onnx", "openvino")
    max_teacher_fraction: float = 0.25
    student_arch: str | None = None
    candidates: tuple[str, ...] | None = None
    exact: bool = False
    target: str | None = None
    latency_budget_ms: float | None = None
    device_latencies: dict | None = None
    bundle: BundleWriter | None = None
    lazy_latency: bool = False
    ram_budget_bytes: int | None = None
    #: why the plan times in ``target`` when the caller did not name it (said in the note), e.g. the default rule
    target_reason: str | None = None

    def checked(self) -> PlanOptions:
        """Validated (UsageError), with the implied target: a latency budget, device latencies or a bundle time in onnx."""
        if self.latency_budget_ms is not None and not self.latency_budget_ms > 0:
            raise UsageError(f"--latency-budget must be a positive number of milliseconds, got {self.latency_budget_ms}")
        opts = self
        if opts.target is not None and opts.target.strip().lower() == NO_TARGET:
            opts = dataclasses.replace(opts, target=None)  # plan by size alone, unless what follows asks for latencies
        if (opts.latency_budget_ms is not None or opts.device_latencies is not None or opts.bundle is not None) and opts.target is None:
            opts = dataclasses.replace(opts, target="onnx")
        if opts.student_arch is not None and (opts.device_latencies is not None or opts.bundle is not None):
            raise UsageError("--student pins the architecture, so there are no candidates to bundle or to choose by device latency; drop --student")
        if opts.target is not None:
            parse_target(opts.target)
        return opts

    @property
    def timing(self) -> bool:
        """Latencies take part in the choice (a pinned architecture has nothing to choose)."""
        return self.target is not None and self.student_arch is None

    @property
    def lazy(self) -> bool:
        """Time the size rule's choice first and stop there when it satisfies the latency rule (module docstring)."""
        return self.timing and self.lazy_latency and not self.exact and self.device_latencies is None and self.bundle is None


@dataclass(frozen=True)
class TeacherSize:
    """The teacher as the rules compare students to it."""

    label: str
    params: int
    capacity: int
    bytes: int
    exact: bool  # measured; False: its weights' lower bound (a budget far below it, or TorchScript)


def plan_student(
    budget_bytes: int,
    *,
    family: str | list[str],
    input_shape: tuple[int, ...],
    num_classes: int,
    teacher: nn.Module,
    teacher_arch: str,
    model_kwargs: dict | None = None,
    example: torch.Tensor | None = None,
    precision: str = "int8",
    formats: Sequence[str] = ("onnx", "openvino"),
    max_teacher_fraction: float = 0.25,
    student_arch: str | None = None,
    candidates: list[str] | None = None,
    exact: bool = False,
    target: str | None = None,
    latency_budget_ms: float | None = None,
    device_latencies: dict | None = None,
    bundle: BundleWriter | None = None,
    lazy_latency: bool = False,
    ram_budget_bytes: int | None = None,
    cache: SizeCache | None = None,
    latency_cache: LatencyCache | None = None,
) -> Plan:
    """Choose the student for ``budget_bytes``; raise BudgetError when none fits (the rules:
    :mod:`prokt_deploy.planner.rules`).

    ``family``: one student family or several (one pool ranked by capacity); ``candidates`` replaces their
    candidate lists (names of any registered family); ``student_arch`` pins one architecture. ``teacher`` /
    ``teacher_arch``: the teacher the students are compared to (size and capacity; its artifacts' latencies).
    ``model_kwargs`` / ``example``: how students are built for the data and an input batch (text needs both).

    ``exact``: measure every candidate's artifact. ``target`` / ``latency_budget_ms``: time the fitting candidates
    and choose by the latency rule (a latency budget without a target times in onnx). ``device_latencies``: a plan
    bundle's device result file (:func:`~prokt_deploy.planner.latency.read_device_latencies`): the latencies come
    from it (``target`` picks its format; default onnx). ``bundle(models, kept)``: instead of timing, hand the models
    the latency rule would time (label -> (model, precision); the teacher's as ``teacher:...:fp32/int8``) to the
    callback, which writes them into an on-device bundle; ``kept(label, fmt)`` is the directory that may already hold
    the size measurement's export. ``lazy_latency``: when timing here, size and time the size rule's choice first and
    keep it if it satisfies the latency rule (ignored with ``exact``, ``device_latencies`` or ``bundle``).
    ``ram_budget_bytes``: only candidates whose peak activation memory (:mod:`prokt_deploy.planner.memory`, batch 1,
    the deploy precision) is within it take part in the choice; the others are listed as not fitting.
    ``cache`` / ``latency_cache``: where measured sizes and latencies are cached (default: the user's cache).

    When timing, the artifacts the size measurement exports are kept in a temporary directory and timed."""
    task = Task(tuple([family] if isinstance(family, str) else family), tuple(input_shape), num_classes, teacher, teacher_arch, model_kwargs, example)
    options = PlanOptions(
        precision=precision,
        formats=tuple(formats),
        max_teacher_fraction=max_teacher_fraction,
        student_arch=student_arch,
        candidates=tuple(candidates) if candidates else None,
        exact=exact,
        target=target,
        latency_budget_ms=latency_budget_ms,
        device_latencies=device_latencies,
        bundle=bundle,
        lazy_latency=lazy_latency,
        ram_budget_bytes=ram_budget_bytes,
    )
    return search(budget_bytes, task, options, sizes=cache, latencies=latency_cache)


def search(budget_bytes: int, task: Task, options: PlanOptions, *, sizes: SizeCache | None = None, latencies: LatencyCache | None = None) -> Plan:
    """:func:`plan_student` on a :class:`Task` and :class:`PlanOptions`. When a target or a latency budget is named,
    the size measurement's exports are kept (in a temporary directory) for timing."""
    opts = options.checked()
    named_target = options.target is not None and options.target.strip().lower() != NO_TARGET
    if not named_target and options.latency_budget_ms is None:
        return _search(budget_bytes, task, opts, sizes or SizeCache(), latencies, None)
    with tempfile.TemporaryDirectory(prefix="prokt-plan-") as tmp:
        return _search(budget_bytes, task, opts, sizes or SizeCache(), latencies, Path(tmp))


def _search(budget_bytes: int, task: Task, opts: PlanOptions, sizes: SizeCache, latencies: LatencyCache | None, keep_root: Path | None) -> Plan:
    fams = list(task.families)
    student_kwargs = task.student_kwargs()
    names = candidate_names(fams, student_arch=opts.student_arch, candidates=list(opts.candidates) if opts.candidates else None)
    listed = build_candidates(
        names, num_classes=task.num_classes, input_shape=task.input_shape, model_kwargs=student_kwargs, example=task.example, precision=opts.precision
    )
    entries = _within_ram(listed, opts.ram_budget_bytes, fams, opts.precision)
    sizer = Sizer(
        formats=list(opts.formats),
        precision=opts.precision,
        input_shape=task.input_shape,
        num_classes=task.num_classes,
        cache=sizes,
        example=task.example,
        vocab_size=student_kwargs.get("vocab_size"),
        keep_root=keep_root,
    )
    teacher = _size_teacher(budget_bytes, task, opts.precision, sizer)
    binding = rules.is_binding(budget_bytes, teacher.bytes)
    rule = rules.SizeRule(
        budget_bytes,
        rules.capacity_limit(teacher.capacity, binding=binding, max_teacher_fraction=opts.max_teacher_fraction),
        pinned=opts.student_arch is not None,
    )

    _measure_sizes(entries, rule, sizer, exact=opts.exact, size_all=opts.exact or (opts.timing and not opts.lazy))
    choice = rules.choose_by_size(entries, rule)
    fell_back = False
    if choice is None:
        smallest = entries[-1]
        smallest.candidate.bytes = smallest.candidate.bytes or sizer(smallest.model, smallest.arch)
        choice = rules.fallback(entries, rule, binding=binding, teacher_capacity=teacher.capacity)
        if choice is None:
            raise rules.no_fit_error(
                entries,
                rule,
                precision=opts.precision,
                families=fams,
                student_arch=opts.student_arch,
                teacher_arch=task.teacher_arch,
                teacher_capacity=teacher.capacity,
                teacher_params=teacher.params,
                teacher_bytes=teacher.bytes,
                binding=binding,
            )
        fell_back = True
    _apply_size_verdicts(entries, rule, choice)

    note = rules.size_note(
        budget_bytes=budget_bytes,
        precision=opts.precision,
        binding=binding,
        teacher_exact=teacher.exact,
        teacher_bytes=teacher.bytes,
        max_teacher_fraction=opts.max_teacher_fraction,
        fell_back=fell_back,
    )
    teacher_latency: dict[str, float] = {}
    latency_source = None
    if opts.timing:
        choice, teacher_latency, latency_note = _choose_by_latency(entries, rule, choice, task, teacher, opts, sizer, latencies, keep_root)
        if teacher_latency:
            d = opts.device_latencies
            latency_source = f"device results {d['path']} ({d['device']})" if d else "measured here"
        if latency_note:
            where = f" on the device of {opts.device_latencies['path']}" if opts.device_latencies else ""
            why = f" ({opts.target_reason})" if opts.target_reason else ""
            note += f"; latency in {opts.target}{why}{where}: {latency_note}"
    for e in entries:
        e.candidate.chosen = e is choice
    if opts.ram_budget_bytes is not None:
        note += f"; peak activation RAM within {format_size(opts.ram_budget_bytes)}: {len(entries)} of {len(listed)} candidates"
    return Plan(
        budget_bytes,
        opts.precision,
        list(opts.formats),
        [e.candidate for e in listed],
        choice.candidate,
        task.teacher_arch,
        teacher.params,
        teacher.bytes,
        binding,
        note,
        target=opts.target,
        latency_budget_ms=opts.latency_budget_ms,
        teacher_latency_ms=teacher_latency,
        families=fams,
        latency_source=latency_source,
        ram_budget_bytes=opts.ram_budget_bytes,
    )


def _within_ram(entries: list[Entry], ram_budget: int | None, fams: list[str], precision: str) -> list[Entry]:
    """The entries whose peak activation RAM is within ``ram_budget`` (all without a budget, or without a figure);
    the others are marked as not fitting. None within it: BudgetError naming the smallest figure."""
    if ram_budget is None:
        return entries
    over = [e for e in entries if e.candidate.ram_bytes is not None and e.candidate.ram_bytes > ram_budget]
    for e in over:
        e.candidate.fits = False
    kept = [e for e in entries if e not in over]
    if not kept:
        least = min(over, key=lambda e: e.candidate.ram_bytes or 0)
        raise BudgetError(
            f"no student of the {families_text(fams)} keeps its peak activation memory within the RAM budget "
            f"{format_size(ram_budget)} at {precision} (batch 1): the least is {least.arch} with "
            f"{format_size(least.candidate.ram_bytes or 0)}; raise --ram-budget or try another family"
        )
    return kept


def _size_teacher(budget_bytes: int, task: Task, precision: str, sizer: Sizer) -> TeacherSize:
    """The teacher's artifact bytes: measured, unless the budget is below its weights alone (a 90 MB transformer
    takes minutes to export and quantize, and the budget binds whatever its exact size) or it is TorchScript
    (torch.onnx cannot export it): then its weights' lower bound."""
    teacher = task.teacher
    label = teacher_label(task.teacher_arch, teacher)
    lower_bound = weight_elements(teacher) * BYTES_PER_ELEMENT[precision]
    if budget_bytes < lower_bound or task.teacher_arch.startswith("torchscript:"):
        size, exact = lower_bound, False
    else:
        size, exact = max(sizer(teacher, label).values()), True
    return TeacherSize(label, count_params(teacher), capacity(teacher), size, exact)


def _measure_sizes(entries: list[Entry], rule: rules.SizeRule, sizer: Sizer, *, exact: bool, size_all: bool) -> None:
    """Measure, most capable first, every candidate whose weights alone fit the budget (every one with ``exact``),
    down to the size rule's choice, or all of them with ``size_all``."""
    for e in entries:
        if (e.candidate.lower_bound_bytes <= rule.budget_bytes or exact) and not e.candidate.bytes:
            e.candidate.bytes = sizer(e.model, e.arch)
        if not size_all and rules.accepts(e, rule):
            return


def _apply_size_verdicts(entries: list[Entry], rule: rules.SizeRule, choice: Entry) -> None:
    for e, fits in zip(entries, rules.size_verdicts(entries, rule, choice)):
        e.candidate.fits = fits


def _choose_by_latency(
    entries: list[Entry],
    rule: rules.SizeRule,
    choice: Entry,
    task: Task,
    teacher: TeacherSize,
    opts: PlanOptions,
    sizer: Sizer,
    latency_cache: LatencyCache | None,
    keep_root: Path | None,
) -> tuple[Entry, dict[str, float], str]:
    """Latencies for the size choice and every less capable fitting candidate (with the teacher's fp32 and int8
    artifacts: what a student must beat), then the latency rule. Lazily: the size choice alone first, kept when it
    satisfies the rule. Returns the choice, the teacher's latencies and the latency note (empty when nothing was
    timed: a bundle was written instead)."""
    fmt = parse_target(opts.target)[0]
    vocab_size = sizer.vocab_size
    key_extra = f"|{task.num_classes}" + (f"|vocab{vocab_size}" if vocab_size else "")
    ex = task.example[:1] if task.example is not None else torch.zeros(1, *task.input_shape)
    teacher_models = {f"{TEACHER_LABEL}{teacher.label}:{p}": (task.teacher, p) for p in ("fp32", "int8")}

    def models_of(pool: list[Entry]) -> dict[str, tuple[nn.Module, str]]:
        return {e.arch: (e.model, opts.precision) for e in pool} | teacher_models

    def time_here(pool: list[Entry], cache: LatencyCache | None) -> dict[str, float]:
        exported = {e.arch: d for e in pool if (d := sizer.kept(e.arch, fmt)) is not None}
        return measure_latencies(models_of(pool), opts.target, example=ex, cache=cache, key_extra=key_extra, exported=exported)

    lat: dict[str, float] = {}
    joint_cache = latency_cache
    if opts.lazy and rules.fits_size(choice.candidate, rule.budget_bytes):
        lat = time_here([choice], latency_cache)
        fastest_teacher = min(lat[label] for label in teacher_models)
        if not rules.qualifies(lat[choice.arch], teacher_fastest_ms=fastest_teacher, latency_budget_ms=opts.latency_budget_ms):
            # the size rule's choice does not satisfy the latency rule: size the rest, time all of them together
            _measure_sizes(entries, rule, sizer, exact=False, size_all=True)
            _apply_size_verdicts(entries, rule, choice)
            lat = {}
            # a fresh cache: the contested ratios (the rest vs the teacher) come from one interleaved measurement,
            # not from this one and a later one
            joint_cache = LatencyCache((keep_root or Path(tempfile.mkdtemp(prefix="prokt-plan-latency-"))) / "fallback-latency.json")
    pool = rules.timing_pool(entries, rule, choice)
    if pool and not lat:
        if opts.bundle is not None:
            opts.bundle(models_of(pool), sizer.kept)
        elif opts.device_latencies is not None:
            lat = lookup_device_latencies(opts.device_latencies, models_of(pool), fmt)
        else:
            lat = time_here(pool, joint_cache)
    elif lat:
        pool = [e for e in pool if e.arch in lat]
    if not lat:
        return choice, {}, ""
    teacher_latency = {p: round(lat[f"{TEACHER_LABEL}{teacher.label}:{p}"], 6) for p in ("fp32", "int8")}
    for e in pool:
        e.candidate.latency_ms = round(lat[e.arch], 6)
    pick, note = rules.choose_by_latency(
        [e.candidate for e in pool], teacher_fastest_ms=min(teacher_latency.values()), latency_budget_ms=opts.latency_budget_ms
    )
    for e, fits in zip(pool, rules.latency_verdicts(pool, opts.latency_budget_ms)):
        e.candidate.fits = fits
    return next(e for e in pool if e.candidate is pick), teacher_latency, note
