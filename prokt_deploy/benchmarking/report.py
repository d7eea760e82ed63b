"""Benchmark reports: ``report.json`` (the schema below), ``report.md`` and a self-contained ``report.html``.

The HTML has its plots as inline SVG and no scripts, fonts, styles or images from anywhere else: it
opens in a browser with no network.

report.json, schema_version 1
-----------------------------
- ``schema_version`` (1), ``kind`` ("bench"), ``created`` (local ISO time), ``run`` (the run directory),
  ``recipe``, ``method``, ``student`` / ``teacher`` (``arch``, ``params``; the student also ``macs``).
- ``fingerprint``: the host (:func:`prokt_deploy.harness.fingerprint.fingerprint`): ``id``, ``cpu`` (``model``,
  ``arch``, ``logical_cores``, ``physical_cores``, ``usable_cores``, ``cgroup_cpu_quota``, ``flags``,
  ``int8_dot_product``), ``os``, ``python``, ``versions``, ``runtimes``.
- ``settings``: ``threads``, ``batch``, ``runs``, ``warmup``, ``repeats``, ``device``, ``fallbacks``
  (runtimes that could not use the device and ran on CPU), ``baseline`` (the row speed-ups refer to),
  ``accuracy_split`` ("test"), ``faster_threshold``, ``measure_s``.
- ``rows``: one per engine, in table order:

  - ``id`` ("model/format/precision", device rows end in "@<fingerprint id>"), ``model`` ("teacher" |
    "student"), ``format`` ("pytorch" | "onnx" | "openvino"), ``precision`` ("fp32" | "fp16" | "int8"),
    ``kind`` ("reference": PyTorch, the fp32 exports and the teacher's int8 artifacts the bench made;
    "artifact": a passed artifact of the run; "device": measured on another machine and merged);
  - ``runtime`` (name and version), ``device`` (OpenVINO device / onnxruntime provider / "cpu"),
    ``engine_config`` (thread and stream settings as the runtime reports them);
  - ``files`` (relative to the run, or to the bundle for device rows), ``bytes`` (all files);
  - ``test_accuracy`` (0..1), ``accuracy_samples``, ``accuracy_measured`` (false: the value recorded
    on the same test split by export or training was reused), ``accuracy_drop_vs_teacher`` (percentage
    points below the baseline row; ``null`` without a teacher);
  - ``latency_ms`` at batch 1 and ``batch_latency_ms`` at ``batch``: ``p50``, ``p90``, ``p99``,
    ``mean``, ``std`` in milliseconds of wall-clock time around one inference call made from Python,
    each the median over rounds of the per-round statistic; ``runtime_latency_ms``: the same at
    batch 1 by the runtime's own timer (OpenVINO's ``InferRequest.latency``, what its benchmark_app
    reports; ``null`` for other runtimes);
    ``rounds_p50_ms`` (each round's batch-1 p50); ``timed_runs`` (fewest timed calls in a round: a slow
    engine gets fewer); ``throughput`` (samples/s at ``batch``, from its p50);
  - ``load_s`` (session creation / model compilation), ``peak_mem_mb`` (peak RSS of the worker over
    load and runs minus its RSS before the load);
  - ``speedup_vs_teacher`` and ``batch_speedup_vs_teacher`` (baseline p50 / row p50), and
    ``speedup_vs_teacher_pytorch``;
  - artifact rows and the bench's exports (teacher ONNX fp32, teacher int8, student fp32):
    ``within_budget``, ``budget_bytes``; artifact rows: ``passed``; device rows: ``fingerprint_id``.
- ``not_benchmarked``: artifacts of the manifest that failed their export gates (``id``, ``format``,
  ``precision``, ``failures``); they have no files and no row.
- ``int8``: per int8 artifact, ``artifact``, ``counterpart`` (the fp32 row of its format),
  ``speedup``, ``batch_speedup``, ``faster``, ``verdict``, ``causes`` (list of sentences, filled when
  int8 is not faster) and ``executed_graph`` (int8 / float compute layers, conversion nodes).
- ``recommendation``: ``{"id", "reason"}`` of the fastest student file (a passed artifact or a student
  fp32 export) within the size budget and the accuracy gate, or null.
- ``versus_teacher``: does the recommended student beat the teacher's fastest artifact (ONNX fp32 or
  its own int8)? ``teacher_artifact``, ``student_artifact``, ``speedup``, ``batch_speedup``,
  ``size_ratio``, ``beats_on_speed``, ``beats_on_size``, ``teacher_int8`` (``id``, ``bytes``,
  ``within_budget``), ``verdict``; null without a teacher or a recommendation.
- ``gates``: per gate that was set, ``name``, ``limit``, ``value``, ``artifact``, ``passed``, ``message``.
- ``devices``: per merged device fingerprint id: ``fingerprint``, ``settings``, ``created``, ``skipped``.
"""

from __future__ import annotations

import html
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prokt_deploy.budget import compact, format_size
from prokt_deploy.errors import RunError
from prokt_deploy.harness import measure
from prokt_deploy.rundir.reader import Manifest
from prokt_deploy.rundir.records import BenchReport
from prokt_deploy.rundir.workspace import write_json_atomic, write_text_atomic
from prokt_deploy.train import methods

SCHEMA_VERSION = 1
REPORT_JSON, REPORT_MD, REPORT_HTML = "report.json", "report.md", "report.html"
CPU_DEVICES = ("cpu", "CPU", "CPUExecutionProvider")  # not repeated in the tables' runtime column


def new_report(
    run: Path,
    manifest: Manifest,
    *,
    fingerprint: dict,
    settings: dict,
    rows: list[dict],
    int8: list[dict],
    recommendation: dict | None,
    gates: list[dict],
    not_benchmarked: list[dict],
) -> dict:
    student, teacher = manifest.student, manifest.teacher
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "bench",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run": str(run),
        "recipe": manifest.recipe,
        "method": manifest.method,
        "student": {
            "arch": student.arch,
            "params": student.params,
            "macs": student.macs,
            "ram_bytes": student.ram_bytes,
            "precision": manifest.precision,
        },
        "ram_budget_bytes": (manifest.plan or {}).get("ram_budget_bytes"),
        "teacher": {"arch": teacher.factory or teacher.arch, "params": teacher.params},
        "fingerprint": fingerprint,
        "settings": settings,
        "rows": rows,
        "not_benchmarked": not_benchmarked,
        "int8": int8,
        "recommendation": recommendation,
        "gates": gates,
        "devices": {},
        "compare": manifest.comparison(),
        "data": {
            "labelled": (manifest.data or {}).get("train"),
            "labels_kept": (manifest.data or {}).get("labels_kept"),
            "unlabelled": (manifest.data or {}).get("unlabelled", 0),
            "unlabelled_from": (manifest.data or {}).get("unlabelled_from", {}),
            "samples_seen": manifest.metrics.get("samples_seen"),
        },
        "input": dict(manifest.input or {}),
        "training": {
            k: manifest.metrics.get(k)
            for k in ("best_epoch", "epochs", "student_test_accuracy", "teacher_test_accuracy", "teacher_given_test_accuracy")
        },
        "learning_curves": manifest.metrics.get("history"),
        "budget_bytes": manifest.budget_bytes,
        "per_class": None,  # filled by prokt_deploy.benchmarking.bench.per_class_accuracy
    }


def read_report(run: Path) -> dict:
    path = run / REPORT_JSON
    if not path.is_file():
        raise RunError(f"{run} has no {REPORT_JSON}; run 'prokt-deploy bench {run}' first, then merge")
    try:
        rep = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RunError(f"cannot read {path}: {exc}") from None
    if rep.get("schema_version") != SCHEMA_VERSION:
        raise RunError(
            f"{path} has schema_version {rep.get('schema_version')!r}, this version reads {SCHEMA_VERSION}; run 'prokt-deploy bench' again"
        )
    return rep


def write_reports(run: Path, rep: dict | BenchReport) -> None:
    """Write report.json, report.md and report.html into ``run`` (each replaced atomically)."""
    rep = rep.to_dict() if isinstance(rep, BenchReport) else rep
    write_json_atomic(run / REPORT_JSON, rep)
    write_text_atomic(run / REPORT_MD, render_markdown(rep))
    write_text_atomic(run / REPORT_HTML, render_html(rep))


# --- shared formatting ------------------------------------------------------------------------------


def _num(value: float | None, fmt: str = ".4f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{fmt}}{suffix}"


def table_rows(rep: dict) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the results table (used by the Markdown report and the terminal)."""
    batch = rep["settings"]["batch"]
    header = [
        "row",
        "runtime",
        "accuracy",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        f"b{batch} p50 ms",
        "samples/s",
        "size",
        "fits",
        "load s",
        "peak MB",
        # the speed-up's reference is named: the teacher's ONNX fp32 file (the report's baseline), not its fastest file,
        # which the headline's Speed line and --min-speedup-vs-teacher use
        f"x vs {rep['settings'].get('baseline') or 'teacher'}",
    ]
    cells = []
    for r in rep["rows"]:
        lat, blat = r["latency_ms"], r["batch_latency_ms"]
        mark = " *" if rep.get("recommendation") and rep["recommendation"]["id"] == r["id"] else ""
        cells.append(
            [
                r["id"] + mark,
                r["runtime"] + ("" if r["device"] in CPU_DEVICES else f" ({r['device']})"),
                _num(r["test_accuracy"]),
                _num(lat["p50"]),
                _num(lat["p90"]),
                _num(lat["p99"]),
                _num(blat["p50"]),
                _num(r.get("throughput"), ".0f"),
                format_size(r["bytes"]) if r.get("bytes") is not None else "-",
                {True: "yes", False: "no"}.get(r.get("within_budget"), "-"),
                _num(r.get("load_s"), ".3f"),
                _num(r.get("peak_mem_mb"), ".1f"),
                _num(r.get("speedup_vs_teacher"), ".2f", "x"),
            ]
        )
    return header, cells


def headline(rep: dict) -> dict | None:
    """The four answers a user looks for first, from a report: which file to ship (path, bytes, runtime) and the
    input it expects, how much accuracy it lost (against the teacher as the method left it, and as the user brought
    it when the method changed it), how much faster it is than the teacher's fastest file, and whether distillation
    helped (the gain over scratch when ``--compare`` ran); plus warnings (the best epoch is the last one). None
    without a recommended file."""
    rec = rep.get("recommendation")
    row = next((r for r in rep["rows"] if rec and r["id"] == rec["id"]), None)
    if row is None:
        return None
    run = Path(rep["run"])
    files = [str(run / f) for f in row.get("files") or []]
    teacher_row = next((r for r in rep["rows"] if r["id"] == "teacher/pytorch/fp32"), None)
    training = rep.get("training") or {}
    acc = row.get("test_accuracy")
    out: dict = {
        "ship": {"artifact": row["id"], "files": files, "bytes": row.get("bytes"), "runtime": row.get("runtime"), "test_accuracy": acc},
        "input": _input_text(rep.get("input") or {}, files),
        "accuracy": [],
        "speed": None,
        "distillation": None,
        "warnings": [],
    }
    after = teacher_row["test_accuracy"] if teacher_row else training.get("teacher_test_accuracy")
    given_row = next((r for r in rep["rows"] if r["id"] == "teacher-given/pytorch/fp32"), None)
    given = given_row["test_accuracy"] if given_row else training.get("teacher_given_test_accuracy")
    if acc is not None and given is not None:
        out["accuracy"].append({"against": "the teacher as you brought it", "teacher": given, "points": round(100 * (given - acc), 2)})
    if acc is not None and after is not None:
        who = f"the teacher as {rep['method']} left it" if given is not None else "the teacher"
        out["accuracy"].append({"against": who, "teacher": after, "points": round(100 * (after - acc), 2)})
    v = rep.get("versus_teacher")
    if v:
        out["speed"] = {
            "speedup": v["speedup"],
            "batch_speedup": v["batch_speedup"],
            "teacher_artifact": v["teacher_artifact"],
            "size_ratio": v["size_ratio"],
        }
    comp = rep.get("compare") or {}
    gains = [r for r in comp.get("rows", []) if r.get("gain_over_scratch_points") is not None]
    # this run's own gain; a scratch run compared with other methods: the best of theirs
    own = next((r for r in gains if r.get("run") == "."), None) or max(gains, key=lambda r: r["gain_over_scratch_points"], default=None)
    if own is not None:
        out["distillation"] = {
            "method": own["method"],
            "gain_points": own["gain_over_scratch_points"],
            "standard_error_points": own["gain_standard_error_points"],
            "within_noise": own["within_noise"],
            "time_vs_scratch": own.get("train_time_vs_scratch"),
        }
    best, epochs = training.get("best_epoch"), training.get("epochs")
    if best is not None and epochs and best == epochs and epochs > 1:
        out["warnings"].append(
            f"the best validation epoch was the last ({best} of {epochs}): the student may not have converged; train longer (--epochs)"
        )
    return out


def _input_text(spec: dict, files: list[str]) -> str:
    """What a device feeds the file: shape, dtype and preprocessing; the int8 I/O parameters of a LiteRT file."""
    if spec.get("kind") == "text":
        return f"input_ids and attention_mask (B, L <= {spec.get('max_length')}) int64, from the tokenizer shipped beside the file (right padding)"
    shape = "x".join("N" if d is None else str(d) for d in spec.get("shape", []))
    text = f"{spec.get('dtype', 'float32')} {spec.get('layout', 'NCHW')} {shape}"
    if "mean" in spec:
        mean = ", ".join(f"{m:.4g}" for m in spec["mean"])
        std = ", ".join(f"{v:.4g}" for v in spec["std"])
        text += f", x = (raw / {spec.get('scale', 1):g} - mean) / std with mean [{mean}], std [{std}] per channel"
    quant = next((Path(f) for f in files if f.endswith(".quant.json")), None)
    if quant is not None and quant.is_file():
        try:
            q = json.loads(quant.read_text())["inputs"][0]
            text += f"; then int8: q = round(x / {q['scale']:.6g}) + {q['zero_point']} (model.quant.json)"
        except (OSError, ValueError, KeyError, IndexError):
            pass
    return text


def headline_lines(h: dict | None, method: str) -> list[str]:
    """The headline as plain sentences, the order a user asks in (the terminal, Markdown and HTML render these)."""
    if h is None:
        return ["No file to ship: no student file passed its gates within the accuracy limit (see the gates below)."]
    ship = h["ship"]
    lines = [f"Ship: {', '.join(ship['files']) or ship['artifact']} ({ship['bytes']:,} bytes, {ship['runtime']}; {ship['artifact']})"]
    lines.append(f"Input: {h['input']}")
    if h["accuracy"]:
        versus = "; ".join(
            f"{abs(a['points']):.2f} points {'below' if a['points'] > 0 else 'above'} {a['against']} ({100 * a['teacher']:.2f}%)"
            for a in h["accuracy"]
        )
        lines.append(f"Accuracy: {100 * ship['test_accuracy']:.2f}% on the test split, {versus}")
    if h["speed"]:
        s = h["speed"]
        lines.append(
            f"Speed: {s['speedup']:.2f}x the teacher's fastest file ({s['teacher_artifact']}) at batch 1, {s['batch_speedup']:.2f}x batched; "
            f"{s['size_ratio']:.1f}x smaller"
        )
    d = h["distillation"]
    if d is None and method == "scratch":
        lines.append("Distillation: not used (this run trains the student on labels alone); add --compare prokt,kd to see what a teacher adds")
    elif d is None:
        lines.append(f"Distillation: not measured in this run; add --compare scratch to train the same student on labels alone beside {method}")
    else:
        noise = "within noise: not shown to beat scratch" if d["within_noise"] else "beyond noise"
        cost = f", at {d['time_vs_scratch']:.1f}x scratch's training time" if d.get("time_vs_scratch") else ""
        lines.append(f"Distillation: {d['method']} {d['gain_points']:+.2f} points over scratch (± {d['standard_error_points']:.2f}, {noise}){cost}")
    lines += [f"Warning: {w}" for w in h["warnings"]]
    return lines


def versus_line(v: dict) -> str:
    """One sentence: does the student beat the teacher's fastest artifact on speed, on size, on both?"""
    wins = [w for w, ok in (("speed", v["beats_on_speed"]), ("size", v["beats_on_size"])) if ok]
    head = f"the student beats the teacher on {' and '.join(wins)}" if wins else "the student does NOT beat the teacher on speed or size"
    return f"{head}: {v['verdict']}"


def _machine_line(fp: dict) -> str:
    cpu = fp["cpu"]
    return (
        f"{cpu['model']} ({cpu['arch']}), {cpu['usable_cores']} usable of {cpu['logical_cores']} logical cores; "
        f"ISA: {', '.join(cpu['flags']) or 'none recorded'}; int8 dot product: {cpu['int8_dot_product'] or 'none'}; "
        f"{fp['os']['platform']}, Python {fp['python']}"
    )


def _versions_line(fp: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in fp["versions"].items() if v)


# --- cells shared by the reports and the terminal ---------------------------------------------------


def compare_cells(comp: dict | None) -> tuple[list[str], list[list[str]], list[str]]:
    """The method comparison (``run --compare``) as table header, rows and notes (each starting 'Warning:' or 'Note:')."""
    if not comp:
        return [], [], []
    header = ["method", "student", "best epoch", "fp32 test", f"{comp['format']} {comp['precision']} test", "gain over scratch", "training"]
    transfer = bool(comp.get("unlabelled"))
    if transfer:
        header.append("samples drawn (labelled + unlabelled)")
    cells, notes = [], []
    blind = ", ".join(r["method"] for r in comp["rows"] if uses_unlabelled(r["method"], r.get("samples_seen")) is False)
    if transfer and blind:
        notes.append(
            f"Note: {blind} cannot learn from the {comp['unlabelled']:,} unlabelled samples: trained on the {comp.get('labelled') or 0:,} labelled "
            "ones alone, for as many optimizer steps as the methods that use them"
        )
    for r in comp["rows"]:
        ratio = r.get("train_time_vs_scratch")
        if ratio is not None and ratio >= 1.5:
            notes.append(
                f"Note: {r['method']} trained {ratio:.1f}x as long as scratch (the same optimizer steps); given the same time, scratch could run "
                f"about {ratio:.1f}x the epochs, which this table does not measure"
            )
        gain = r.get("gain_over_scratch_points")
        gain_text = "-" if gain is None else f"{gain:+.2f} pt (± {r['gain_standard_error_points']:.2f})"
        if r.get("within_noise"):
            gain_text += " within noise"
            notes.append(
                f"Warning: {r['method']}'s gain over scratch ({gain:+.2f} points) is within twice its paired standard error over the "
                "test samples: on this data it is not shown to beat training the student on labels alone"
            )
        deployed = r.get("deployed_test_accuracy")
        cells.append(
            [
                r["method"],
                r["student_arch"],
                f"{r.get('best_epoch')}/{r.get('epochs')}",
                f"{r['student_test_accuracy'] * 100:.2f}%",
                "-" if deployed is None else f"{deployed * 100:.2f}%",
                gain_text,
                _train_time_text(r),
                *([_seen_text(r.get("samples_seen"))] if transfer else []),
            ]
        )
    return header, cells, notes


def _seen_text(seen: dict | None) -> str:
    """'6.4k + 19.2k': labelled and unlabelled samples a method's phase drew (each counted every time it was drawn)."""
    if not seen:
        return "-"
    return f"{compact(seen.get('labelled', 0))} + {compact(seen.get('unlabelled', 0))}"


def _train_time_text(row: dict) -> str:
    """'563 s (9.8x scratch)': the student phase's wall time on this machine, and its multiple of scratch's."""
    if row.get("train_s") is None:
        return "-"
    ratio = row.get("train_time_vs_scratch")
    return f"{row['train_s']:.0f} s" + ("" if ratio is None or row["method"] == "scratch" else f" ({ratio:.1f}x scratch)")


# --- the report's content, once for Markdown and HTML --------------------------------------------------
#
# ``report_sections(rep)`` says what the report shows, section by section, as a small renderer-neutral
# structure; ``render_markdown`` and ``render_html`` only turn that structure into text. A section is a
# title and blocks (``Para``, ``Lines``, ``Items``, ``Table``, ``Figures``); text is a string or a list of
# strings and inline pieces (``Code``, ``Bold``, ``Dash``, ``Verdict``). Where the two formats say
# different things today, ``Alt(md=..., html=...)`` holds both side by side (``None``: not shown in that
# format); it may stand for a section, a block, an item, a heading level or a piece of text.


@dataclass(frozen=True)
class Alt:
    """What Markdown shows and what HTML shows in one place; ``None`` leaves it out of that format."""

    md: Any
    html: Any


@dataclass(frozen=True)
class Code:
    """Inline code: `x` / <code>x</code>."""

    text: str


@dataclass(frozen=True)
class Bold:
    """Strong text: **x** / <b>x</b>."""

    text: Any


@dataclass(frozen=True)
class Dash:
    """A dash between a statement and its reason: -- / &mdash;."""


@dataclass(frozen=True)
class Verdict:
    """A gate's result word: pass / FAIL, coloured in HTML."""

    passed: bool


@dataclass(frozen=True)
class Para:
    """A paragraph; ``css`` is the HTML class (e.g. "fail")."""

    text: Any
    css: str | None = None


@dataclass(frozen=True)
class Lines:
    """Short statements: one Markdown paragraph with a line each, one HTML paragraph each."""

    paras: list


@dataclass(frozen=True)
class Item:
    """One statement of ``Items`` and its sub-points (plain text each)."""

    text: Any
    sub: list = field(default_factory=list)


@dataclass(frozen=True)
class Items:
    """Statements with optional sub-points: Markdown bullets (sub-points nested), HTML paragraphs each
    followed by a bullet list of its sub-points."""

    items: list


@dataclass(frozen=True)
class Table:
    """``align``: one letter per column, "l" or "r" (Markdown); ``marked``: the row HTML highlights."""

    header: list[str]
    rows: list[list]
    align: str
    css: str | None = None
    marked: int | None = None


@dataclass(frozen=True)
class Figures:
    """Inline SVG plots, HTML only; ``make`` returns them (called by the HTML renderer alone)."""

    make: Callable[[], list[str]]


@dataclass(frozen=True)
class Section:
    title: Any  # None: no heading
    blocks: list
    level: Any = 2


def _left_then_right(n_left: int, n: int) -> str:
    return "l" * n_left + "r" * (n - n_left)


def _summary_section(rep: dict) -> Section:
    rec, v = rep.get("recommendation"), rep.get("versus_teacher")
    st, te = rep["student"], rep["teacher"]
    blocks = [
        Para(
            [
                "Recipe ",
                Code(str(rep["recipe"])),
                f" ({rep['method']}): student ",
                Code(st["arch"]),
                f" ({st['params']:,} params) vs teacher ",
                Code(str(te["arch"])),
                f" ({te['params']:,} params). Written {rep['created']}.",
            ]
        ),
        Para([Bold(["Recommended artifact: ", Code(rec["id"])]), " ", Dash(), f" {rec['reason']}."])
        if rec
        else Para([Bold("No artifact to recommend"), ": the run has no passed artifact within the accuracy gate."]),
    ]
    if v:
        blocks.append(Para([Bold("Versus the teacher's own artifacts"), f": {versus_line(v)}."]))
    if st.get("ram_bytes") is not None:
        ram, limit = st["ram_bytes"], rep.get("ram_budget_bytes")
        within = "" if limit is None else f" against the RAM budget {format_size(limit)}: {'within' if ram <= limit else 'over'}"
        blocks.append(
            Para(
                [
                    Bold("Memory"),
                    f": peak activation RAM {format_size(ram)} at batch 1 ({st.get('precision') or 'int8'}; weights not counted){within}.",
                ]
            )
        )
    data_line = data_text(rep.get("data") or {}, rep["method"])
    if data_line:
        blocks.append(Para([Bold("Data"), f": {data_line}."]))
    return Section(f"Benchmark: {Path(rep['run']).name}", blocks, level=1)


def data_text(data: dict, method: str) -> str | None:
    """The few-label setting in one sentence (None for a run on all its labels without unlabelled data)."""
    n_u, n_l = data.get("unlabelled") or 0, data.get("labelled")
    if not n_u and not data.get("labels_kept"):
        return None
    kept = " (data.labels: the same number per class)" if data.get("labels_kept") else ""
    text = f"{n_l:,} labelled training samples{kept}"
    if not n_u:
        return text + ", no unlabelled data"
    sources = ", ".join(f"{n:,} from {src}" for src, n in (data.get("unlabelled_from") or {}).items())
    text += f" and {n_u:,} unlabelled ({sources})"
    seen = data.get("samples_seen") or {}
    if seen.get("unlabelled"):
        text += f"; {method} learned from both ({seen['labelled']:,} labelled + {seen['unlabelled']:,} unlabelled samples drawn)"
    elif uses_unlabelled(method, seen) is False:
        text += f"; {method} cannot learn from unlabelled samples: it trained on the labelled ones alone, for as many optimizer steps"
    else:
        text += f"; {method} learns from both (the samples it drew are not recorded in this run's manifest)"
    return text


def uses_unlabelled(method: str, seen: dict | None) -> bool | None:
    """Whether ``method`` trained on the unlabelled pool: from its recorded ``samples_seen`` where there is one, else
    from the method registry (an older manifest without the counter); None for a method this install does not know."""
    if seen and "unlabelled" in seen:
        return bool(seen["unlabelled"])
    variant = methods.variants().get(method)
    spec = methods.find(variant.base if variant else method)
    return None if spec is None else bool(spec.unlabeled)


def _plots_section(rep: dict) -> Section:
    def make() -> list[str]:
        s, rows = rep["settings"], rep["rows"]
        base = next((r for r in rows if r["id"] == s["baseline"]), None)
        budget = rep.get("budget_bytes")
        svgs = [
            svg_scatter(rows),
            svg_bars(
                rows,
                [r["latency_ms"]["p50"] for r in rows],
                base["latency_ms"]["p50"] if base else None,
                title="p50 latency at batch 1 (dashed: teacher ONNX)",
                label=lambda v: f"{v:.4f} ms",
            ),
            svg_bars(
                rows,
                [float(r["bytes"]) for r in rows],
                float(base["bytes"]) if base else None,
                title="Size on disk (dashed: teacher ONNX; solid: the budget)" if budget else "Size on disk (dashed: teacher ONNX)",
                label=format_size,
                limit=float(budget) if budget else None,
                limit_label=f"budget {format_size(budget)}" if budget else "",
            ),
        ]
        series = curve_series(rep)
        if series:
            svgs.append(svg_curves(series))
        return svgs

    return Section(None, [Figures(make)])


def _results_section(rep: dict) -> Section:
    s, rec = rep["settings"], rep.get("recommendation")
    header, cells = table_rows(rep)
    marked = next((i for i, r in enumerate(rep["rows"]) if rec and rec["id"] == r["id"]), None)
    notes = [
        Alt(
            md=Para(
                [
                    Code("*"),
                    " recommended. Speed-ups are relative to ",
                    Code(s["baseline"]),
                    f". Each latency statistic is the median over {s['repeats']} interleaved rounds of {s['runs']} timed calls after "
                    f"{s['warmup']} warm-up calls ({measure.MIN_WARMUP_LATER} from the second round; fewer timed calls for an engine "
                    f"slower than {measure.ROUND_SECONDS:g} s per round at batch 1, half that at batch {s['batch']} and for the PyTorch "
                    "rows: its ",
                    Code("timed_runs"),
                    " in report.json); every engine ran in its own process.",
                ]
            ),
            html=None,
        )
    ]
    notes += [Para(f"Note: {note}.") for note in s.get("fallbacks", [])]
    notes += [
        Para(["Not benchmarked: ", Code(a["id"]), f" failed its export gates ({'; '.join(a['failures']) or 'no reason recorded'})."])
        for a in rep.get("not_benchmarked", [])
    ]
    return Section(
        Alt(
            md=f"Results (latency at batch 1, throughput at batch {s['batch']}; {s['threads']} thread(s), device {s['device']})",
            html="Results",
        ),
        [
            Alt(
                md=None,
                html=Para(
                    [
                        f"Latency at batch 1, throughput at batch {s['batch']}; {s['threads']} thread(s); device {s['device']}; "
                        f"median over {s['repeats']} interleaved rounds of {s['runs']} timed calls after {s['warmup']} warm-up calls, "
                        "one process per engine. Speed-ups relative to ",
                        Code(s["baseline"]),
                        ".",
                    ]
                ),
            ),
            Table(header, cells, _left_then_right(2, len(header)), marked=marked),
            Lines(notes),
        ],
    )


def _int8_section(rep: dict) -> Section:
    if not rep["int8"]:
        return Section("int8 vs fp32", [Para("No int8 artifact with an fp32 counterpart in this run.")])
    items = [Item([Code(f["artifact"]), " vs ", Code(f["counterpart"]), f": {f['verdict']}."], list(f["causes"])) for f in rep["int8"]]
    return Section("int8 vs fp32", [Items(items)])


def _compare_section(comp: dict | None) -> Section | None:
    """The method comparison (``run --compare``): did distillation help?"""
    header, cells, notes = compare_cells(comp)
    if not header:
        return None
    return Section(
        Alt(md="Did distillation help? (same split, student, epochs and seed)", html="Did distillation help?"),
        [
            Alt(md=None, html=Para("Same split, student, epochs and seed; ± is the paired standard error over the test samples.")),
            Table(header, cells, _left_then_right(2, len(header))),
            Lines(
                [
                    Alt(
                        md=Para(
                            "± is the paired standard error of the difference over the test samples; seed-to-seed spread is not measured in one run."
                        ),
                        html=None,
                    )
                ]
                + [Para(f"{n}.", css="fail" if n.startswith("Warning") else None) for n in notes]
            ),
        ],
    )


def _per_class_section(pc: dict | None) -> Section | None:
    header, cells = per_class_cells(pc)
    if not header:
        return None
    return Section(
        Alt(md="Per-class test accuracy", html="Where do the points go? Per-class test accuracy"),
        [
            Alt(
                md=Para(f"The recommended artifact vs the teacher ({pc['teacher_source']})."),
                html=Para(
                    [
                        "The recommended artifact ",
                        Code(pc["artifact"]),
                        " in its runtime against the teacher (",
                        Code(pc["teacher_source"]),
                        f") on the same {sum(pc['support']):,} test samples.",
                    ]
                ),
            ),
            Table(header, cells, _left_then_right(1, len(header)), css="per-class"),
        ],
    )


def _gates_section(rep: dict) -> Section | None:
    if not rep["gates"]:
        return None
    rows = [[g["name"], f"{g['limit']:g}", _num(g["value"]), [Verdict(g["passed"]), Alt(md=": ", html=" "), g["message"]]] for g in rep["gates"]]
    return Section("Gates", [Table(["gate", "limit", "value", "result"], rows, "lrrl")])


def _machine_items(fp: dict) -> list:
    return [Item(_machine_line(fp)), Item([Alt(md="versions: ", html=""), _versions_line(fp)])]


def _machine_sections(rep: dict) -> list[Section]:
    fp = rep["fingerprint"]
    out = [Section("Machine", [Items(_machine_items(fp) + [Item(["fingerprint id", Alt(md=": ", html=" "), Code(fp["id"])])])])]
    for dev_id, dev in rep.get("devices", {}).items():
        measured = f"measured {dev['created']}, threads {dev['settings'].get('threads')}, batch {dev['settings'].get('batch')}"
        skipped = [f"skipped {s}" for s in dev.get("skipped", [])]
        items = _machine_items(dev["fingerprint"]) + [Alt(md=Item(t), html=None) for t in [measured, *skipped]]
        out.append(Section(["Device ", Code(dev_id)], [Items(items)], level=Alt(md=2, html=3)))
    return out


def _headline_section(rep: dict) -> Section:
    """The answers first: what to ship, what it expects, what was lost, how fast, did distillation help."""
    paras = []
    for line in headline_lines(rep["headline"] if "headline" in rep else headline(rep), rep["method"]):
        key, _, rest = line.partition(": ")
        paras.append(Para([Bold(key), f": {rest}"], css="fail" if key == "Warning" else None) if rest else Para(line))
    return Section(f"{Path(rep['run']).name}: what to ship", [Lines(paras)], level=1)


def report_sections(rep: dict) -> list:
    """The report's sections in order (``Section``, or ``Alt`` of sections; ``None`` entries are skipped)."""
    per_class = _per_class_section(rep.get("per_class"))
    return [
        _headline_section(rep),
        _summary_section(rep),
        _plots_section(rep),  # HTML only: Markdown has no figures
        Alt(md=None, html=per_class),  # HTML: beside the plots
        _results_section(rep),
        _int8_section(rep),
        _compare_section(rep.get("compare")),
        Alt(md=per_class, html=None),  # Markdown: after the comparison
        _gates_section(rep),
        *_machine_sections(rep),
    ]


def _pick(x: Any, fmt: str) -> Any:
    while isinstance(x, Alt):
        x = getattr(x, fmt)
    return x


# --- Markdown ---------------------------------------------------------------------------------------


def _md_text(t: Any) -> str:
    t = _pick(t, "md")
    if t is None:
        return ""
    if isinstance(t, str):
        return t
    if isinstance(t, list):
        return "".join(_md_text(p) for p in t)
    if isinstance(t, Code):
        return f"`{t.text}`"
    if isinstance(t, Bold):
        return f"**{_md_text(t.text)}**"
    if isinstance(t, Dash):
        return "--"
    if isinstance(t, Verdict):
        return "pass" if t.passed else "FAIL"
    raise TypeError(f"not report text: {t!r}")


def _md_block(b: Any) -> list[str]:
    b = _pick(b, "md")
    if b is None or isinstance(b, Figures):
        return []
    if isinstance(b, Para):
        return [_md_text(b.text)]
    if isinstance(b, Lines):
        return [_md_text(p.text) for p in (_pick(p, "md") for p in b.paras) if p is not None]
    if isinstance(b, Items):
        out = []
        for item in (_pick(i, "md") for i in b.items):
            if item is not None:
                out += [f"- {_md_text(item.text)}"] + [f"  - {_md_text(s)}" for s in item.sub]
        return out
    if isinstance(b, Table):
        return [
            "| " + " | ".join(b.header) + " |",
            "|" + "|".join("---" if a == "l" else "---:" for a in b.align) + "|",
            *("| " + " | ".join(_md_text(c) for c in row) + " |" for row in b.rows),
        ]
    raise TypeError(f"not a report block: {b!r}")


def _md_section(section: Any) -> list[str]:
    """A section as Markdown lines: its heading and each block, each followed by an empty line."""
    section = _pick(section, "md")
    if section is None:
        return []
    out = [] if section.title is None else ["#" * _pick(section.level, "md") + " " + _md_text(section.title), ""]
    for block in section.blocks:
        lines = _md_block(block)
        out += lines + [""] if lines else []
    return out


def compare_markdown(comp: dict | None) -> list[str]:
    return _md_section(_compare_section(comp))


def render_markdown(rep: dict) -> str:
    return "\n".join(line for section in report_sections(rep) for line in _md_section(section))


# --- HTML with inline SVG -----------------------------------------------------------------------------

_COLORS = {"teacher": "#c0392b", "teacher-given": "#e59866", "student": "#2471a3", "device": "#7d3c98"}
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#222;max-width:1100px}
table{border-collapse:collapse;font-size:.85rem;margin:1rem 0}th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:right}
th:first-child,td:first-child,td:nth-child(2){text-align:left}tr.rec{background:#eafaf1;font-weight:600}
.plots{display:flex;flex-wrap:wrap;gap:1rem}svg{background:#fafafa;border:1px solid #ddd}
code{background:#f3f3f3;padding:0 .2rem}.fail{color:#c0392b;font-weight:600}.pass{color:#1e8449}
"""


def _color(row: dict) -> str:
    return _COLORS["device"] if row["kind"] == "device" else _COLORS[row["model"]]


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    step = 10 ** math.floor(math.log10((hi - lo) / n))
    for m in (1, 2, 5, 10):
        if (hi - lo) / (step * m) <= n:
            step *= m
            break
    first = math.ceil(lo / step) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step) + 1)]


def _log_ticks(lo: float, hi: float) -> list[float]:
    ticks = []
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            t = m * 10.0**e
            if lo <= t <= hi:
                ticks.append(t)
    return ticks or [lo, hi]


_CHAR_W = 5.6  # approximate width of a 9-10 px sans-serif character, for layout


def _place_labels(points: list[tuple[float, float, str]], box: tuple[float, float, float, float]) -> list[tuple[float, float, str]]:
    """Greedy label placement: for each point the first spot around it (right, left, above, below,
    then further out) whose text box overlaps no other label and stays inside ``box`` (x0, y0, x1, y1)."""
    placed: list[tuple[float, float, float, float]] = []
    out = []
    for x, y, text in points:
        w, h = _CHAR_W * len(text), 10.0
        candidates = [(dx, dy) for dy in (-6, 12, -18, 24, -30, 36) for dx in (7, -7 - w)]
        for dx, dy in candidates + [(7, -6)]:
            x0, y0 = x + dx, y + dy - h + 2
            inside = box[0] <= x0 and x0 + w <= box[2] and box[1] <= y0 and y0 + h <= box[3]
            if inside and not any(x0 < b[2] and b[0] < x0 + w and y0 < b[3] and b[1] < y0 + h for b in placed):
                break
        placed.append((x0, y0, x0 + w, y0 + h))
        out.append((x + dx, y + dy, text))
    return out


def _frame(
    width: int,
    height: int,
    aria: str,
    title: str,
    title_x: float,
    y_ticks: list[float],
    py,
    x0: float,
    x1: float,
    css_class: str = "",
) -> list[str]:
    """An SVG's opening tag, its title and the horizontal grid lines with their y labels (``py``: value -> pixel)."""
    cls = f' class="{css_class}"' if css_class else ""
    parts = [
        f'<svg{cls} width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{aria}">',
        f'<text x="{title_x}" y="18" text-anchor="middle" font-size="13" font-weight="600">{title}</text>',
    ]
    for t in y_ticks:
        parts.append(
            f'<line x1="{x0}" x2="{x1}" y1="{py(t):.1f}" y2="{py(t):.1f}" stroke="#e3e3e3"/>'
            f'<text x="{x0 - 6}" y="{py(t) + 3:.1f}" text-anchor="end" font-size="10">{t:g}</text>'
        )
    return parts


def svg_scatter(rows: list[dict], *, width: int = 600, height: int = 360) -> str:
    """Accuracy (%) against batch-1 p50 latency (ms, log scale), one labelled point per row."""
    ml, mr, mt, mb = 56, 16, 28, 44
    xs = [r["latency_ms"]["p50"] for r in rows]
    ys = [100 * r["test_accuracy"] for r in rows]
    x_lo, x_hi = min(xs) / 1.5, max(xs) * 1.5
    y_lo, y_hi = max(0.0, min(ys) - 5), min(100.0, max(ys) + 5)
    if y_hi - y_lo < 1:
        y_lo, y_hi = y_lo - 1, y_hi + 1

    def px(v: float) -> float:
        return ml + (math.log10(v) - math.log10(x_lo)) / (math.log10(x_hi) - math.log10(x_lo)) * (width - ml - mr)

    def py(v: float) -> float:
        return height - mb - (v - y_lo) / (y_hi - y_lo) * (height - mt - mb)

    parts = _frame(width, height, "accuracy vs latency", "Accuracy vs latency (batch 1)", width / 2, _nice_ticks(y_lo, y_hi), py, ml, width - mr)
    for t in _log_ticks(x_lo, x_hi):
        parts.append(
            f'<line x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{mt}" y2="{height - mb}" stroke="#e3e3e3"/>'
            f'<text x="{px(t):.1f}" y="{height - mb + 14}" text-anchor="middle" font-size="10">{t:g}</text>'
        )
    parts.append(
        f'<text x="{(ml + width - mr) / 2}" y="{height - 8}" text-anchor="middle" font-size="11">p50 latency, ms (log scale)</text>'
        f'<text x="14" y="{(mt + height - mb) / 2}" text-anchor="middle" font-size="11" transform="rotate(-90 14 {(mt + height - mb) / 2})">test accuracy, %</text>'
    )
    for r, x, y in zip(rows, xs, ys):
        dash = "3,2" if r["kind"] == "device" else "none"
        parts.append(
            f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="5" fill="{_color(r)}" fill-opacity=".8" stroke="#333" stroke-dasharray="{dash}">'
            f"<title>{html.escape(r['id'])}: {y:.2f}% at {x:.4f} ms</title></circle>"
        )
    points = sorted(((px(x), py(y), r["id"]) for r, x, y in zip(rows, xs, ys)), key=lambda p: (p[1], p[0]))
    for lx, ly, text in _place_labels(points, (ml, mt, width - mr, height - mb)):
        parts.append(f'<text x="{lx:.1f}" y="{ly:.1f}" font-size="9">{html.escape(text)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def svg_bars(
    rows: list[dict],
    values: list[float],
    reference: float | None,
    *,
    title: str,
    label,
    bar_area: int = 220,
    limit: float | None = None,
    limit_label: str = "budget",
) -> str:
    """Horizontal bars, one per row, labelled with the value and its ratio to the teacher's value
    (``reference``, also drawn as a dashed line); ``limit`` (e.g. the size budget) is a solid labelled line."""
    texts = [label(v) + (f" ({v / reference:.2f}x teacher)" if reference else "") for v in values]
    ml = 12 + _CHAR_W * max(len(r["id"]) for r in rows)
    mt, bar, gap = 30, 14, 6
    width = int(ml + bar_area + 8 + _CHAR_W * max(len(t) for t in texts))
    height = mt + len(rows) * (bar + gap) + 10 + (14 if limit else 0)
    top = max(values + ([reference] if reference else []) + ([limit] if limit else [])) or 1.0
    scale = bar_area / top
    parts = [
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">',
        f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="13" font-weight="600">{html.escape(title)}</text>',
    ]
    for i, (r, v, text) in enumerate(zip(rows, values, texts)):
        y = mt + i * (bar + gap)
        parts.append(
            f'<text x="{ml - 6:.1f}" y="{y + bar - 3}" text-anchor="end" font-size="10">{html.escape(r["id"])}</text>'
            f'<rect x="{ml:.1f}" y="{y}" width="{max(v * scale, 1):.1f}" height="{bar}" fill="{_color(r)}" fill-opacity=".8"/>'
            f'<text x="{ml + v * scale + 4:.1f}" y="{y + bar - 3}" font-size="10">{html.escape(text)}</text>'
        )
    if reference:
        x = ml + reference * scale
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{mt - 4}" y2="{height - 6}" stroke="#c0392b" stroke-dasharray="4,3"/>')
    if limit:
        x = ml + limit * scale
        parts.append(
            f'<line class="budget" x1="{x:.1f}" x2="{x:.1f}" y1="{mt - 4}" y2="{height - 16}" stroke="#1a7f37" stroke-width="2"/>'
            f'<text x="{x:.1f}" y="{height - 4}" text-anchor="middle" font-size="10" fill="#1a7f37">{html.escape(limit_label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


_LINE_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")


def curve_series(rep: dict) -> list[tuple[str, list[float]]]:
    """Validation accuracy per epoch: the teacher's pre-training, this run's student (and its teacher,
    which a method like ProKT trains too) and every ``--compare`` baseline; (name, values in [0, 1])."""
    hist = rep.get("learning_curves") or {}
    method = rep.get("method") or "student"
    series = []
    pre = [e.get("val_student_accuracy") for e in hist.get("teacher", [])]
    if pre and all(v is not None for v in pre):
        series.append(("teacher (CE pre-training)", pre))
    student = hist.get("student", [])
    vals = [e.get("val_student_accuracy") for e in student]
    if vals and all(v is not None for v in vals):
        series.append((f"student ({method})", vals))
    teacher = [e.get("val_teacher_accuracy") for e in student]
    spec = methods.find(method)
    if spec is not None and spec.trains_teacher and teacher and all(v is not None for v in teacher):
        series.append((f"teacher (during {spec.label})", teacher))
    for row in (rep.get("compare") or {}).get("rows", []):
        curve = row.get("val_curve") or []
        if row.get("run") != "." and curve and all(v is not None for v in curve):
            series.append((f"student ({row['method']}, baseline)", curve))
    return series


def svg_curves(series: list[tuple[str, list[float]]], *, width: int = 600, height: int = 320) -> str:
    """Validation accuracy (%) per epoch, one line per series, with a legend beside the plot (no label
    sits on the lines, so none overlap)."""
    legend_w = int(24 + _CHAR_W * max(len(name) for name, _ in series))
    ml, mr, mt, mb = 48, legend_w + 12, 28, 40
    n = max(len(v) for _, v in series)
    ys = [100 * x for _, v in series for x in v]
    y_lo, y_hi = max(0.0, min(ys) - 2), min(100.0, max(ys) + 2)
    if y_hi - y_lo < 1:
        y_lo, y_hi = y_lo - 1, y_hi + 1
    total_w = width + legend_w

    def px(epoch: int) -> float:
        return ml + (epoch - 1) / max(n - 1, 1) * (total_w - ml - mr)

    def py(v: float) -> float:
        return height - mb - (v - y_lo) / (y_hi - y_lo) * (height - mt - mb)

    parts = _frame(
        total_w,
        height,
        "learning curves",
        "Validation accuracy per epoch",
        (ml + total_w - mr) / 2,
        _nice_ticks(y_lo, y_hi),
        py,
        ml,
        total_w - mr,
        css_class="curves",
    )
    step = max(1, math.ceil(n / 10))
    for e in range(1, n + 1, step):
        parts.append(f'<text x="{px(e):.1f}" y="{height - mb + 14}" text-anchor="middle" font-size="10">{e}</text>')
    parts.append(f'<text x="{(ml + total_w - mr) / 2}" y="{height - 8}" text-anchor="middle" font-size="11">epoch</text>')
    for i, (name, values) in enumerate(series):
        color = _LINE_COLORS[i % len(_LINE_COLORS)]
        pts = " ".join(f"{px(e + 1):.1f},{py(100 * v):.1f}" for e, v in enumerate(values))
        parts.append(
            f'<polyline class="curve" points="{pts}" fill="none" stroke="{color}" stroke-width="2"><title>{html.escape(name)}</title></polyline>'
        )
        parts += [
            f'<circle cx="{px(e + 1):.1f}" cy="{py(100 * v):.1f}" r="2.5" fill="{color}"><title>{html.escape(name)}, epoch {e + 1}: '
            f"{100 * v:.2f}%</title></circle>"
            for e, v in enumerate(values)
        ]
        ly = mt + 8 + 16 * i
        parts.append(
            f'<line x1="{total_w - legend_w}" x2="{total_w - legend_w + 16}" y1="{ly - 3}" y2="{ly - 3}" stroke="{color}" stroke-width="2"/>'
            f'<text x="{total_w - legend_w + 20}" y="{ly}" font-size="10">{html.escape(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def per_class_cells(pc: dict | None) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the per-class table (deployed artifact vs teacher)."""
    if not pc:
        return [], []
    header = ["class", "test samples", "teacher %", f"{pc['artifact']} %", "difference"]
    cells = []
    for name, n, t, a in zip(pc["classes"], pc["support"], pc["teacher"], pc["artifact_accuracy"]):
        cells.append(
            [
                str(name),
                str(n),
                "-" if t is None else f"{100 * t:.1f}",
                "-" if a is None else f"{100 * a:.1f}",
                "-" if t is None or a is None else f"{100 * (a - t):+.1f}",
            ]
        )
    return header, cells


def _html_text(t: Any) -> str:
    t = _pick(t, "html")
    if t is None:
        return ""
    if isinstance(t, str):
        return html.escape(t)
    if isinstance(t, list):
        return "".join(_html_text(p) for p in t)
    if isinstance(t, Code):
        return f"<code>{html.escape(t.text)}</code>"
    if isinstance(t, Bold):
        return f"<b>{_html_text(t.text)}</b>"
    if isinstance(t, Dash):
        return "&mdash;"
    if isinstance(t, Verdict):
        return '<span class="pass">pass</span>' if t.passed else '<span class="fail">FAIL</span>'
    raise TypeError(f"not report text: {t!r}")


def _html_para(p: Para) -> str:
    cls = f' class="{p.css}"' if p.css else ""
    return f"<p{cls}>{_html_text(p.text)}</p>"


def _html_block(b: Any) -> list[str]:
    b = _pick(b, "html")
    if b is None:
        return []
    if isinstance(b, Para):
        return [_html_para(b)]
    if isinstance(b, Lines):
        return [_html_para(p) for p in (_pick(p, "html") for p in b.paras) if p is not None]
    if isinstance(b, Items):
        out = []
        for item in (_pick(i, "html") for i in b.items):
            if item is not None:
                out.append(f"<p>{_html_text(item.text)}</p>")
                if item.sub:
                    out.append("<ul>" + "".join(f"<li>{_html_text(s)}</li>" for s in item.sub) + "</ul>")
        return out
    if isinstance(b, Table):
        cls = f' class="{b.css}"' if b.css else ""
        out = [f"<table{cls}><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in b.header) + "</tr>"]
        for i, row in enumerate(b.rows):
            rec = ' class="rec"' if i == b.marked else ""
            out.append(f"<tr{rec}>" + "".join(f"<td>{_html_text(c)}</td>" for c in row) + "</tr>")
        return out + ["</table>"]
    if isinstance(b, Figures):
        return ['<div class="plots">', *b.make(), "</div>"]
    raise TypeError(f"not a report block: {b!r}")


def _html_section(section: Any) -> list[str]:
    """A section as HTML lines: its heading, then each block."""
    section = _pick(section, "html")
    if section is None:
        return []
    level = _pick(section.level, "html")
    out = [] if section.title is None else [f"<h{level}>{_html_text(section.title)}</h{level}>"]
    for block in section.blocks:
        out += _html_block(block)
    return out


def render_html(rep: dict) -> str:
    """The report as one HTML page: inline CSS and SVG, no scripts and no external resources."""
    body = [line for section in report_sections(rep) for line in _html_section(section)]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Benchmark {html.escape(Path(rep['run']).name)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
