"""The typed records that cross stages: an artifact's export-and-gate record, a skipped or failed export, a
bench row, a gate and a bench report.

Each is a dataclass whose fields are the JSON the run directory holds (``manifest.json``'s ``artifacts``,
``gate.json``, ``report.json``); ``to_dict()`` writes that JSON (in the documented key order, optional fields
left out when unset) and ``from_dict()`` reads it back. Code of this project reads them by attribute.

For callers written against the dict records of earlier versions (notebooks, scripts), a record also answers
``record["key"]``, ``record.get("key")`` and ``"key" in record`` read-only, with the keys of its JSON.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, TypeVar

R = TypeVar("R", bound="Record")


class Record:
    """Base of the records: JSON out and in, and read-only dict-style access to that JSON."""

    #: fields written only when they are not None (extras of some records)
    OPTIONAL: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if value is None and f.name in self.OPTIONAL:
                continue
            out[f.name] = _plain(value)
        out.update(getattr(self, "extra", None) or {})
        return out

    @classmethod
    def from_dict(cls: type[R], d: dict[str, Any]) -> R:
        """The record of a JSON object; keys it does not name are kept in ``extra`` where the record has one."""
        names = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
        known = {k: v for k, v in d.items() if k in names and k != "extra"}
        missing = [n for n, f in names.items() if n != "extra" and n not in known and f.default is MISSING and f.default_factory is MISSING]
        if missing:
            raise KeyError(missing[0])
        if "extra" in names:
            known["extra"] = {k: v for k, v in d.items() if k not in names}
        return cls(**known)

    # read-only dict-style access, with the keys of to_dict()
    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self.to_dict()

    def keys(self):  # dict_keys
        return self.to_dict().keys()

    def __eq__(self, other: object) -> bool:
        """Equal to a record of the same JSON, or to that JSON as a dict."""
        if isinstance(other, (Record, dict)):
            return self.to_dict() == (other.to_dict() if isinstance(other, Record) else other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment] - mutable


def _plain(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@dataclass(eq=False)
class GateRecord(Record):
    """One artifact exported and checked: the student's (``manifest['artifacts']``, written by export) or the
    teacher's own int8 (``gate.json`` of ``artifacts/teacher-<format>-int8``, made the same way by the same code).

    ``files`` are relative to the run and empty when a gate failed (a failed artifact keeps no files);
    accuracies are fractions of the test split, ``accuracy_drop`` is in percentage points against the same
    model in PyTorch (``reference_accuracy``); ``max_abs_diff``/``tolerance`` are the parity check (fp32, fp16);
    ``budget_gated``: whether the byte budget was a gate (the run's deploy precision) or only recorded."""

    format: str
    precision: str
    files: list[str] = field(default_factory=list)
    bytes: int | None = None
    runtime: str | None = None
    max_abs_diff: float | None = None
    top1_agreement: float | None = None
    test_accuracy: float | None = None
    reference_accuracy: float | None = None
    accuracy_drop: float | None = None
    tolerance: float | None = None
    max_accuracy_drop: float | None = None
    calibration_samples: int | None = None
    test_samples: int | None = None
    budget_bytes: int | None = None
    within_budget: bool | None = None
    budget_gated: bool = False
    passed: bool = False
    failures: list[str] = field(default_factory=list)
    #: the file a runtime opens (relative to the run), among ``files``; manifest schema 2
    main_file: str | None = None
    #: how the accuracy gate's reference was had: "pytorch" (run here) or "manifest" (recorded after training)
    reference: str | None = None
    accuracy_aware: dict | None = None
    tokenizer_files: list[str] | None = None
    tokenizer_bytes: int | None = None
    #: int8 only: what produced the file: "ptq" (post-training), "accuracy-aware" (some layers kept in fp32) or "qat"
    #: (the student fine-tuned with simulated int8 first, prokt_deploy/train/qat.py)
    int8_path: str | None = None
    #: the quantization-aware fine-tuning, when it ran: steps, teacher, the simulated validation accuracy before and
    #: after, and ``before``: the post-training attempt it replaced (path, bytes, test accuracy, drop)
    qat: dict | None = None

    OPTIONAL: ClassVar[tuple[str, ...]] = (
        "main_file",
        "reference",
        "accuracy_aware",
        "tokenizer_files",
        "tokenizer_bytes",
        "int8_path",
        "qat",
    )

    @property
    def key(self) -> tuple[str, str]:
        return self.format, self.precision

    def accuracy_missed_alone(self) -> bool:
        """Failed on its accuracy drop and nothing else (within budget or not gated by it)."""
        fits = self.within_budget or not self.budget_gated
        return (
            not self.passed
            and self.accuracy_drop is not None
            and self.max_accuracy_drop is not None
            and self.accuracy_drop > self.max_accuracy_drop
            and bool(fits)
            and len(self.failures) == 1
        )


@dataclass(eq=False)
class SkippedExport(Record):
    """A format ``export --format all`` left out, with the reason (it has no such precision)."""

    format: str
    precision: str
    skipped: str
    passed: ClassVar[None] = None


@dataclass(eq=False)
class FailedExport(Record):
    """A format whose export or runtime failed (not a missed gate): no artifact, the error."""

    format: str
    precision: str
    error: str
    passed: ClassVar[None] = None


ExportResult = GateRecord | SkippedExport | FailedExport


@dataclass(eq=False)
class Gate(Record):
    """One bench gate checked against the recommended artifact (``report.json``'s ``gates``)."""

    name: str
    limit: float
    value: float | None
    artifact: str | None
    passed: bool
    message: str


@dataclass(eq=False)
class Recommendation(Record):
    """The student file to ship and why (``report.json``'s ``recommendation``)."""

    id: str
    reason: str


@dataclass(eq=False)
class BenchRow(Record):
    """One model in one runtime, measured (``report.json``'s ``rows``; the fields are documented in
    :mod:`prokt_deploy.benchmarking.report`). The measurement's statistics are kept as measured (``latency_ms``
    etc. are dicts of p50/p90/p99/mean/std); fields only some rows have are ``None`` and left out of the JSON."""

    id: str
    model: str
    format: str
    precision: str
    kind: str
    files: list[str] = field(default_factory=list)
    bytes: int | None = None
    runtime: str | None = None
    device: str | None = None
    test_accuracy: float | None = None
    latency_ms: dict | None = None
    batch_latency_ms: dict | None = None
    batch: int | None = None
    speedup_vs_teacher: float | None = None
    batch_speedup_vs_teacher: float | None = None
    accuracy_drop_vs_teacher: float | None = None
    speedup_vs_teacher_pytorch: float | None = None
    within_budget: bool | None = None
    budget_bytes: int | None = None
    passed: bool | None = None
    fingerprint_id: str | None = None
    #: every other measured field (engine_config, rounds_p50_ms, timed_runs, throughput, load_s, peak_mem_mb, ...)
    extra: dict = field(default_factory=dict)

    OPTIONAL: ClassVar[tuple[str, ...]] = ("within_budget", "budget_bytes", "passed", "fingerprint_id")

    @property
    def p50_ms(self) -> float:
        """Batch-1 median latency in milliseconds."""
        return float((self.latency_ms or {})["p50"])


@dataclass(eq=False)
class BenchReport(Record):
    """What ``bench`` measured and decided (``report.json``; schema in :mod:`prokt_deploy.benchmarking.report`)."""

    schema_version: int
    kind: str
    created: str
    run: str
    recipe: str | None
    method: str | None
    student: dict
    teacher: dict
    fingerprint: dict
    settings: dict
    rows: list[BenchRow]
    not_benchmarked: list[dict]
    int8: list[dict]
    recommendation: Recommendation | None
    gates: list[Gate]
    devices: dict
    compare: dict | None
    learning_curves: dict | None
    budget_bytes: int | None
    per_class: dict | None = None
    versus_teacher: dict | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchReport:
        rep = super().from_dict(d)
        rep.rows = [r if isinstance(r, BenchRow) else BenchRow.from_dict(r) for r in rep.rows]
        rep.gates = [g if isinstance(g, Gate) else Gate.from_dict(g) for g in rep.gates]
        if isinstance(rep.recommendation, dict):
            rep.recommendation = Recommendation.from_dict(rep.recommendation)
        return rep

    def row(self, row_id: str) -> BenchRow | None:
        return next((r for r in self.rows if r.id == row_id), None)

    @property
    def recommended(self) -> BenchRow | None:
        """The recommended row, if any."""
        return self.row(self.recommendation.id) if self.recommendation else None

    @property
    def missed_gates(self) -> list[Gate]:
        return [g for g in self.gates if not g.passed]
