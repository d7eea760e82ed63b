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
from pathlib import Path

from prokt_deploy.budget import format_size
from prokt_deploy.errors import RunError
from prokt_deploy.harness import measure
from prokt_deploy.run.reader import Manifest
from prokt_deploy.run.workspace import write_json_atomic, write_text_atomic

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
        "student": {"arch": student.arch, "params": student.params, "macs": student.macs},
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


def write_reports(run: Path, rep: dict) -> None:
    """Write report.json, report.md and report.html into ``run`` (each replaced atomically)."""
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
        "vs teacher",
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


# --- Markdown ---------------------------------------------------------------------------------------


def compare_cells(comp: dict | None) -> tuple[list[str], list[list[str]], list[str]]:
    """The method comparison (``run --compare``) as table header, rows and notes (each starting 'Warning:' or 'Note:')."""
    if not comp:
        return [], [], []
    header = ["method", "student", "best epoch", "fp32 test", f"{comp['format']} {comp['precision']} test", "gain over scratch", "training"]
    cells, notes = [], []
    for r in comp["rows"]:
        ratio = r.get("train_time_vs_scratch")
        if ratio is not None and ratio >= 1.5:
            notes.append(
                f"Note: {r['method']} trained {ratio:.1f}x as long as scratch (the same epochs); given the same time, scratch could run "
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
            ]
        )
    return header, cells, notes


def _train_time_text(row: dict) -> str:
    """'563 s (9.8x scratch)': the student phase's wall time on this machine, and its multiple of scratch's."""
    if row.get("train_s") is None:
        return "-"
    ratio = row.get("train_time_vs_scratch")
    return f"{row['train_s']:.0f} s" + ("" if ratio is None or row["method"] == "scratch" else f" ({ratio:.1f}x scratch)")


def compare_markdown(comp: dict | None) -> list[str]:
    header, cells, notes = compare_cells(comp)
    if not header:
        return []
    out = [
        "## Did distillation help? (same split, student, epochs and seed)",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|",
    ]
    out += ["| " + " | ".join(c) + " |" for c in cells]
    out += ["", "± is the paired standard error of the difference over the test samples; seed-to-seed spread is not measured in one run."]
    out += [f"{n}." for n in notes]
    return out + [""]


def render_markdown(rep: dict) -> str:
    s = rep["settings"]
    out = [f"# Benchmark: {Path(rep['run']).name}", ""]
    out.append(
        f"Recipe `{rep['recipe']}` ({rep['method']}): student `{rep['student']['arch']}` ({rep['student']['params']:,} params) "
        f"vs teacher `{rep['teacher']['arch']}` ({rep['teacher']['params']:,} params). Written {rep['created']}."
    )
    out.append("")
    rec = rep.get("recommendation")
    out.append(
        f"**Recommended artifact: `{rec['id']}`** -- {rec['reason']}."
        if rec
        else "**No artifact to recommend**: the run has no passed artifact within the accuracy gate."
    )
    out.append("")
    if rep.get("versus_teacher"):
        out.append(f"**Versus the teacher's own artifacts**: {versus_line(rep['versus_teacher'])}.")
        out.append("")
    out.append(f"## Results (latency at batch 1, throughput at batch {s['batch']}; {s['threads']} thread(s), device {s['device']})")
    out.append("")
    header, cells = table_rows(rep)
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|")
    out += ["| " + " | ".join(c) + " |" for c in cells]
    out.append("")
    out.append(
        f"`*` recommended. Speed-ups are relative to `{s['baseline']}`. Each latency statistic is the median over "
        f"{s['repeats']} interleaved rounds of {s['runs']} timed calls after {s['warmup']} warm-up calls ({measure.MIN_WARMUP_LATER} from the "
        f"second round; fewer timed calls for an engine slower than {measure.ROUND_SECONDS:g} s per round at batch 1, half that at batch "
        f"{s['batch']} and for the PyTorch rows: its `timed_runs` in report.json); every engine ran in its own process."
    )
    for note in s.get("fallbacks", []):
        out.append(f"Note: {note}.")
    for a in rep.get("not_benchmarked", []):
        out.append(f"Not benchmarked: `{a['id']}` failed its export gates ({'; '.join(a['failures']) or 'no reason recorded'}).")
    out.append("")
    out.append("## int8 vs fp32")
    out.append("")
    if not rep["int8"]:
        out.append("No int8 artifact with an fp32 counterpart in this run.")
    for f in rep["int8"]:
        out.append(f"- `{f['artifact']}` vs `{f['counterpart']}`: {f['verdict']}.")
        out += [f"  - {c}" for c in f["causes"]]
    out.append("")
    out += compare_markdown(rep.get("compare"))
    pc_header, pc_cells = per_class_cells(rep.get("per_class"))
    if pc_header:
        out += [
            "## Per-class test accuracy",
            "",
            f"The recommended artifact vs the teacher ({rep['per_class']['teacher_source']}).",
            "",
            "| " + " | ".join(pc_header) + " |",
            "|---|" + "---:|" * (len(pc_header) - 1),
        ]
        out += ["| " + " | ".join(c) + " |" for c in pc_cells]
        out.append("")
    if rep["gates"]:
        out += ["## Gates", "", "| gate | limit | value | result |", "|---|---:|---:|---|"]
        out += [f"| {g['name']} | {g['limit']:g} | {_num(g['value'])} | {'pass' if g['passed'] else 'FAIL'}: {g['message']} |" for g in rep["gates"]]
        out.append("")
    out += [
        "## Machine",
        "",
        f"- {_machine_line(rep['fingerprint'])}",
        f"- versions: {_versions_line(rep['fingerprint'])}",
        f"- fingerprint id: `{rep['fingerprint']['id']}`",
    ]
    for dev_id, dev in rep.get("devices", {}).items():
        out += [
            "",
            f"## Device `{dev_id}`",
            "",
            f"- {_machine_line(dev['fingerprint'])}",
            f"- versions: {_versions_line(dev['fingerprint'])}",
            f"- measured {dev['created']}, threads {dev['settings'].get('threads')}, batch {dev['settings'].get('batch')}",
        ]
        out += [f"- skipped {s}" for s in dev.get("skipped", [])]
    out.append("")
    return "\n".join(out)


# --- HTML with inline SVG -----------------------------------------------------------------------------

_COLORS = {"teacher": "#c0392b", "student": "#2471a3", "device": "#7d3c98"}
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
    x1: float,  # noqa: ANN001
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
    which ProKT trains too) and every ``--compare`` baseline; (name, values in [0, 1])."""
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
    if method == "prokt" and teacher and all(v is not None for v in teacher):
        series.append(("teacher (during ProKT)", teacher))
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


def render_html(rep: dict) -> str:
    """The report as one HTML page: inline CSS and SVG, no scripts and no external resources."""
    s, rows = rep["settings"], rep["rows"]
    base = next((r for r in rows if r["id"] == s["baseline"]), None)
    esc = html.escape
    header, cells = table_rows(rep)
    rec = rep.get("recommendation")
    body = [
        f"<h1>Benchmark: {esc(Path(rep['run']).name)}</h1>",
        f"<p>Recipe <code>{esc(str(rep['recipe']))}</code> ({esc(str(rep['method']))}): student <code>{esc(rep['student']['arch'])}</code> "
        f"({rep['student']['params']:,} params) vs teacher <code>{esc(str(rep['teacher']['arch']))}</code> ({rep['teacher']['params']:,} params). "
        f"Written {esc(rep['created'])}.</p>",
        f"<p><b>Recommended artifact: <code>{esc(rec['id'])}</code></b> &mdash; {esc(rec['reason'])}.</p>"
        if rec
        else "<p><b>No artifact to recommend</b>: the run has no passed artifact within the accuracy gate.</p>",
    ]
    if rep.get("versus_teacher"):
        body.append(f"<p><b>Versus the teacher's own artifacts</b>: {esc(versus_line(rep['versus_teacher']))}.</p>")
    body.append('<div class="plots">')
    body.append(svg_scatter(rows))
    body.append(
        svg_bars(
            rows,
            [r["latency_ms"]["p50"] for r in rows],
            base["latency_ms"]["p50"] if base else None,
            title="p50 latency at batch 1 (dashed: teacher ONNX)",
            label=lambda v: f"{v:.4f} ms",
        )
    )
    budget = rep.get("budget_bytes")
    body.append(
        svg_bars(
            rows,
            [float(r["bytes"]) for r in rows],
            float(base["bytes"]) if base else None,
            title="Size on disk (dashed: teacher ONNX; solid: the budget)" if budget else "Size on disk (dashed: teacher ONNX)",
            label=format_size,
            limit=float(budget) if budget else None,
            limit_label=f"budget {format_size(budget)}" if budget else "",
        )
    )
    series = curve_series(rep)
    if series:
        body.append(svg_curves(series))
    body.append("</div>")
    pc_header, pc_cells = per_class_cells(rep.get("per_class"))
    if pc_header:
        body.append(
            "<h2>Where do the points go? Per-class test accuracy</h2>"
            f"<p>The recommended artifact <code>{esc(rep['per_class']['artifact'])}</code> in its runtime against the teacher "
            f"(<code>{esc(rep['per_class']['teacher_source'])}</code>) on the same {sum(rep['per_class']['support']):,} test samples.</p>"
        )
        body.append(
            '<table class="per-class"><tr>'
            + "".join(f"<th>{esc(h)}</th>" for h in pc_header)
            + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in c) + "</tr>" for c in pc_cells)
            + "</table>"
        )
    body.append(
        f"<h2>Results</h2><p>Latency at batch 1, throughput at batch {s['batch']}; {s['threads']} thread(s); device {esc(s['device'])}; "
        f"median over {s['repeats']} interleaved rounds of {s['runs']} timed calls after {s['warmup']} warm-up calls, one process per engine. "
        f"Speed-ups relative to <code>{esc(s['baseline'])}</code>.</p>"
    )
    body.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
    for r, c in zip(rows, cells):
        cls = ' class="rec"' if rec and rec["id"] == r["id"] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{esc(v)}</td>" for v in c) + "</tr>")
    body.append("</table>")
    body += [f"<p>Note: {esc(n)}.</p>" for n in s.get("fallbacks", [])]
    body += [
        f"<p>Not benchmarked: <code>{esc(a['id'])}</code> failed its export gates ({esc('; '.join(a['failures']) or 'no reason recorded')}).</p>"
        for a in rep.get("not_benchmarked", [])
    ]
    body.append("<h2>int8 vs fp32</h2>")
    if not rep["int8"]:
        body.append("<p>No int8 artifact with an fp32 counterpart in this run.</p>")
    for f in rep["int8"]:
        body.append(f"<p><code>{esc(f['artifact'])}</code> vs <code>{esc(f['counterpart'])}</code>: {esc(f['verdict'])}.</p>")
        if f["causes"]:
            body.append("<ul>" + "".join(f"<li>{esc(c)}</li>" for c in f["causes"]) + "</ul>")
    header, cells, notes = compare_cells(rep.get("compare"))
    if header:
        body.append(
            "<h2>Did distillation help?</h2><p>Same split, student, epochs and seed; ± is the paired standard error over the test samples.</p>"
        )
        body.append(
            "<table><tr>"
            + "".join(f"<th>{esc(h)}</th>" for h in header)
            + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in c) + "</tr>" for c in cells)
            + "</table>"
        )
        body += [('<p class="fail">' if n.startswith("Warning") else "<p>") + f"{esc(n)}.</p>" for n in notes]
    if rep["gates"]:
        body.append("<h2>Gates</h2><table><tr><th>gate</th><th>limit</th><th>value</th><th>result</th></tr>")
        for g in rep["gates"]:
            verdict = '<span class="pass">pass</span>' if g["passed"] else '<span class="fail">FAIL</span>'
            body.append(
                f"<tr><td>{esc(g['name'])}</td><td>{g['limit']:g}</td><td>{esc(_num(g['value']))}</td><td>{verdict} {esc(g['message'])}</td></tr>"
            )
        body.append("</table>")
    body.append(
        f"<h2>Machine</h2><p>{esc(_machine_line(rep['fingerprint']))}</p><p>{esc(_versions_line(rep['fingerprint']))}</p>"
        f"<p>fingerprint id <code>{esc(rep['fingerprint']['id'])}</code></p>"
    )
    for dev_id, dev in rep.get("devices", {}).items():
        body.append(
            f"<h3>Device <code>{esc(dev_id)}</code></h3><p>{esc(_machine_line(dev['fingerprint']))}</p><p>{esc(_versions_line(dev['fingerprint']))}</p>"
        )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Benchmark {esc(Path(rep['run']).name)}</title><style>{_CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
