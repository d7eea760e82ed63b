"""The choice rules, as pure functions over measured candidates: nothing here exports, times or caches.

Candidates (:class:`~prokt_deploy.planner.candidates.Entry`) come most capable first. The rules:

- **size**: a student fits when its artifact, in every deploy format at the deploy precision, is within the byte
  budget (:func:`fits_size`);
- **capacity**: a student has less capacity (parameters, see :func:`~prokt_deploy.planner.candidates.capacity`) than
  its teacher; when the budget does not bind (the teacher's own artifact fits it), at most ``max_teacher_fraction``
  of the teacher's (:func:`capacity_limit`). A pinned architecture (``student.arch``) skips this rule;
- the **size choice** is the most capable student that fits and passes the capacity rule (:func:`choose_by_size`);
  when the budget does not bind and none is below the fraction, the least capable student that fits and is still
  smaller than the teacher (:func:`fallback`); nothing: :func:`no_fit_error` says which rule left nothing;
- **latency** (when timed): with a latency budget, the most capable fitting student within it; without one, the most
  capable fitting student faster than the teacher's fastest artifact (its own int8 included), else the most capable
  fitting one with a note that says so (:func:`choose_by_latency`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from prokt_deploy.budget import format_size
from prokt_deploy.errors import BudgetError
from prokt_deploy.planner.candidates import Candidate, Entry, families_text


@dataclass(frozen=True)
class SizeRule:
    """What the size and capacity rules compare against: the byte budget, the capacity every student must stay
    below, and whether the architecture is pinned (then the capacity rule does not apply)."""

    budget_bytes: int
    capacity_limit: float
    pinned: bool = False


def is_binding(budget_bytes: int, teacher_bytes: int) -> bool:
    """The budget binds when the teacher's own artifact does not fit it."""
    return budget_bytes < teacher_bytes


def capacity_limit(teacher_capacity: int, *, binding: bool, max_teacher_fraction: float) -> float:
    """Students must have less capacity than this: the teacher's when the budget binds, else the fraction of it."""
    return teacher_capacity * (1.0 if binding else max_teacher_fraction)


def fits_size(c: Candidate, budget_bytes: int) -> bool:
    """Measured, and its largest artifact over the deploy formats is within the budget."""
    return bool(c.bytes) and c.estimated_bytes <= budget_bytes


def below_capacity_limit(e: Entry, rule: SizeRule) -> bool:
    return rule.pinned or e.capacity < rule.capacity_limit


def accepts(e: Entry, rule: SizeRule) -> bool:
    """The size rule and the capacity rule both hold."""
    return fits_size(e.candidate, rule.budget_bytes) and below_capacity_limit(e, rule)


def choose_by_size(entries: Sequence[Entry], rule: SizeRule) -> Entry | None:
    """The most capable accepted candidate (the candidates above it must be measured, or too big by their weights)."""
    return next((e for e in entries if accepts(e, rule)), None)


def fallback(entries: Sequence[Entry], rule: SizeRule, *, binding: bool, teacher_capacity: int) -> Entry | None:
    """When nothing is below the teacher fraction and the budget does not bind: the least capable candidate that fits
    and is still smaller than the teacher; None when the budget binds, the architecture is pinned or none is."""
    if binding or rule.pinned:
        return None
    smaller = [e for e in entries if fits_size(e.candidate, rule.budget_bytes) and e.capacity < teacher_capacity]
    return smaller[-1] if smaller else None


def size_verdicts(entries: Sequence[Entry], rule: SizeRule, choice: Entry | None) -> list[bool | None]:
    """Each candidate's ``fits``: above the choice (or everywhere when there is none) whether both rules hold; the
    choice True; below it whether its measured artifact fits (None when it was not measured: not needed)."""
    verdicts: list[bool | None] = []
    below = False
    for e in entries:
        if e is choice:
            verdicts.append(True)
            below = True
        elif not below:
            verdicts.append(accepts(e, rule))
        else:
            verdicts.append(e.candidate.estimated_bytes <= rule.budget_bytes if e.candidate.bytes else None)
    return verdicts


def no_fit_error(
    entries: Sequence[Entry],
    rule: SizeRule,
    *,
    precision: str,
    families: list[str],
    student_arch: str | None,
    teacher_arch: str,
    teacher_capacity: int,
    teacher_params: int,
    teacher_bytes: int,
    binding: bool,
) -> BudgetError:
    """Why no student was chosen, and what to do. ``entries[-1]`` (the least capable) must be measured.

    Two different reasons: no artifact fits the budget (raise the budget), or some do but every one of them has at
    least the teacher's capacity (a student must be smaller than its teacher: a larger teacher, or a pinned student)."""
    budget = rule.budget_bytes
    where = f"{format_size(budget)} ({budget} B) at {precision}"
    fitting = [e for e in entries if fits_size(e.candidate, budget)]
    if fitting and not student_arch:
        big, small = fitting[0], fitting[-1]
        counted = any(e.capacity != e.candidate.params for e in fitting) or teacher_capacity != teacher_params
        unit = "parameters (an embedding table counted by its width)" if counted else "parameters"
        have = (
            f"the {len(fitting)} that fit have from {small.capacity:,} ({small.arch}) to {big.capacity:,} ({big.arch})"
            if small is not big
            else f"the one that fits has {big.capacity:,} ({big.arch})"
        )
        teacher_fits = (
            f"; or deploy the teacher itself: its own {precision} artifact ({format_size(teacher_bytes)}) fits the budget" if not binding else ""
        )
        return BudgetError(
            f"no student of {families_text(families)} that fits {where} is smaller than the teacher {teacher_arch} "
            f"({teacher_capacity:,} {unit}): {have}, and a student must have fewer than its teacher. Use a larger teacher, "
            f"or pin a student to distil into it anyway: --student {big.arch} (student.arch){teacher_fits}"
        )
    smallest = entries[-1].candidate
    need = smallest.estimated_bytes
    what = f"student {student_arch}" if student_arch else f"the smallest student of {families_text(families)} ({smallest.arch})"
    return BudgetError(f"no student fits {where}: {what} needs {format_size(need)} ({need} B); use --budget {need}B or larger")


def size_note(
    *, budget_bytes: int, precision: str, binding: bool, teacher_exact: bool, teacher_bytes: int, max_teacher_fraction: float, fell_back: bool
) -> str:
    """The plan's note on the size choice."""
    if binding and not teacher_exact:
        return (
            f"budget {format_size(budget_bytes)} binds (the teacher's {precision} weights alone are "
            f"{format_size(teacher_bytes)}): chose the most capable student that fits"
        )
    if binding:
        return f"budget {format_size(budget_bytes)} binds: chose the most capable student that fits"
    start = f"budget {format_size(budget_bytes)} does not bind (the teacher's own {precision} artifact is {format_size(teacher_bytes)}): "
    if fell_back:
        return start + f"no student has at most {max_teacher_fraction:.0%} of the teacher's parameters; chose the least capable one that fits"
    return start + f"chose the most capable student with at most {max_teacher_fraction:.0%} of the teacher's parameters"


def timing_pool(entries: Sequence[Entry], rule: SizeRule, choice: Entry) -> list[Entry]:
    """The candidates the latency rule chooses from: the size choice and every less capable one that fits and passes
    the capacity rule (the size choice is the most capable of them)."""
    pool = [e for e in entries if fits_size(e.candidate, rule.budget_bytes) and (below_capacity_limit(e, rule) or e is choice)]
    return pool[pool.index(choice) :] if choice in pool else pool


def qualifies(latency_ms: float | None, *, teacher_fastest_ms: float | None, latency_budget_ms: float | None) -> bool:
    """Whether a candidate's p50 satisfies the latency rule: within the latency budget when there is one,
    else faster than the teacher's fastest artifact (anything timed qualifies when the teacher was not)."""
    if latency_ms is None:
        return False
    if latency_budget_ms is not None:
        return latency_ms <= latency_budget_ms
    return teacher_fastest_ms is None or latency_ms < teacher_fastest_ms


def choose_by_latency(fitting: list[Candidate], *, teacher_fastest_ms: float | None, latency_budget_ms: float | None) -> tuple[Candidate, str]:
    """The latency rule over ``fitting`` (most capable first, each timed): returns the choice and a note; raises
    BudgetError when a latency budget leaves nothing."""
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


def latency_verdicts(pool: Sequence[Entry], latency_budget_ms: float | None) -> list[bool | None]:
    """``fits`` of the timed candidates after the latency rule: False over the latency budget, else unchanged."""
    return [False if latency_budget_ms is not None and e.candidate.latency_ms > latency_budget_ms else e.candidate.fits for e in pool]
