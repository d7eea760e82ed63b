"""The docs' measured numbers, from the result files: one source for every number marked in README.md and docs/*.md.

A number in the docs is written between two invisible markers, ``<!--n:NAME-->91.76 ± 0.10<!--/n-->``; NAME says
which result file and which value (:func:`value`). ``--check`` (what tests/test_docs_numbers.py runs) exits 1 listing
every marked number that no longer equals what its source gives, and every unknown NAME; ``--write`` rewrites them
from the sources. It also checks that every relative link in the docs points at a file in the repository.

    python scripts/docs_numbers.py --check
    python scripts/docs_numbers.py --write      # after a result file changed

Names:
- ``teacher.shipped``: the shipped teacher's test accuracy, % (benchmarks/results/teacher-vgg-w32-manifest.json)
- ``grid.BUDGET.METHOD[.val|.int8|.drop]``: a converged-grid cell over its seeds, mean ± sample std: fp32 test
  accuracy %, validation %, int8 ONNX test %, or the int8 drop in points (benchmarks/results/quality.json, grid records)
- ``paired.BUDGET.A-B``: the paired difference A - B by seed, mean ± sample std, points (same file)
- ``cell.STEM.BUDGET.METHOD[.val|.int8|.drop|.teacher]``: the same as ``grid.``, from another grid file (STEM.json
  in benchmarks/results, e.g. quality-mobile-scratch); ``.teacher``: the test accuracy of the converged teacher each
  seed's cell was distilled from (or, for scratch, recorded beside); ``.prokt_teacher``: ProKT's own teacher, trained
  jointly in the cell, at its end
- ``cross.BUDGET.STEM~METHOD.STEM~METHOD[.int8]``: the paired difference by seed between cells of two grid files
  (first - second; fp32 test, or int8 ONNX test), e.g. one student family against another on the same seeds
- ``manifest.STEM.student`` / ``.teacher`` / ``.int8.FORMAT``: a run manifest kept in benchmarks/results (STEM.json):
  the student's or teacher's test accuracy, or an int8 artifact's, %
- ``runtimes.ROW.FIELD``: a row of benchmarks/results/runtimes.json (ROW its id with '/' written '.', e.g.
  student.onnx.int8); FIELD bytes, acc (%), p50, p90 (ms, 4 decimals) or b32 (ms, 3 decimals)
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MARKER = re.compile(r"<!--n:([A-Za-z0-9_.+~-]+)-->(.*?)<!--/n-->")
LINK = re.compile(r"\]\(([^)\s]+)\)")


@cache
def _json(name: str):
    return json.loads((RESULTS / name).read_text())


def _grid(budget: str, method: str, key: str = "test", stem: str = "quality") -> dict[int, float]:
    """Per seed, in %: the fp32 test accuracy (``test``), validation (``val``), int8 ONNX test (``int8``), the int8
    drop in points (``drop``: fp32 - int8), or a teacher's test accuracy (``teacher``, ``prokt_teacher``), of the grid
    file ``stem``.json."""
    cells = [r for r in _json(f"{stem}.json") if r.get("phase", "grid") == "grid" and r["budget"] == budget and r["method"] == method]
    pick = {
        "test": lambda r: 100 * r["student_test_accuracy"],
        "val": lambda r: 100 * r["student_val_accuracy"],
        "int8": lambda r: 100 * r["int8_test_accuracy"],
        "drop": lambda r: 100 * (r["student_test_accuracy"] - r["int8_test_accuracy"]),
        "teacher": lambda r: 100 * r["converged_teacher_test_accuracy"],
        "prokt_teacher": lambda r: 100 * r["prokt_teacher_test_accuracy"],
    }[key]
    return {r["seed"]: pick(r) for r in cells}


def _mean_std(xs: list[float], signed: bool = False) -> str:
    if len(xs) < 2:
        raise KeyError("fewer than 2 seeds")
    sign = "+" if signed else ""
    return f"{statistics.mean(xs):{sign}.2f} ± {statistics.stdev(xs):.2f}"


def value(name: str) -> str:
    """The text of the number called ``name`` (KeyError: no such number)."""
    parts = name.split(".")
    if name == "teacher.shipped":
        return f"{100 * _json('teacher-vgg-w32-manifest.json')['metrics']['teacher_test_accuracy']:.2f}"
    if parts[0] == "grid":  # the converged grid's file: cell.quality.*
        parts = ["cell", "quality", *parts[1:]]
    if parts[0] == "paired" and len(parts) == 3:  # within the converged grid's file: cross.BUDGET.quality~A.quality~B
        a, _, b = parts[2].partition("-")
        parts = ["cross", parts[1], f"quality~{a}", f"quality~{b}"]
    if parts[0] == "cell" and len(parts) in (4, 5):
        key = parts[4] if len(parts) == 5 else "test"
        return _mean_std(list(_grid(parts[2], parts[3], key, stem=parts[1]).values()), signed=key == "drop")
    if parts[0] == "cross" and len(parts) in (4, 5):
        key = parts[4] if len(parts) == 5 else "test"
        (stem_a, method_a), (stem_b, method_b) = (p.split("~") for p in parts[2:4])
        first, second = _grid(parts[1], method_a, key, stem_a), _grid(parts[1], method_b, key, stem_b)
        return _mean_std([first[s] - second[s] for s in first if s in second], signed=True)
    if parts[0] == "runtimes" and len(parts) == 5:
        row_id, field = "/".join(parts[1:4]), parts[4]
        row = next(r for r in _json("runtimes.json")["rows"] if r["id"] == row_id)
        formats = {
            "bytes": lambda r: f"{r['bytes']:,}",
            "acc": lambda r: f"{100 * r['test_accuracy']:.2f}",
            "p50": lambda r: f"{r['p50_ms']:.4f}",
            "p90": lambda r: f"{r['p90_ms']:.4f}",
            "b32": lambda r: f"{r['batch32_p50_ms']:.3f}",
        }
        return formats[field](row)
    if parts[0] == "manifest" and len(parts) in (3, 4):
        m = _json(f"{parts[1]}.json")
        if parts[2] in ("student", "teacher"):
            return f"{100 * m['metrics'][f'{parts[2]}_test_accuracy']:.2f}"
        if parts[2] == "int8" and len(parts) == 4:
            return f"{100 * next(a['test_accuracy'] for a in m['artifacts'] if (a['format'], a['precision']) == (parts[3], 'int8')):.2f}"
    raise KeyError(name)


def doc_files(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def check(root: Path = ROOT) -> list[str]:
    """Every problem: a marked number that differs from its source, an unknown name, a relative link to nothing."""
    problems = []
    for doc in doc_files(root):
        text = doc.read_text()
        for m in MARKER.finditer(text):
            try:
                want = value(m.group(1))
            except (KeyError, ValueError, StopIteration, FileNotFoundError) as exc:
                problems.append(f"{doc.relative_to(root)}: unknown number {m.group(1)!r} ({exc})")
                continue
            if m.group(2) != want:
                problems.append(f"{doc.relative_to(root)}: {m.group(1)} is {m.group(2)!r} in the text but {want!r} in its source")
        for m in LINK.finditer(text):
            target = m.group(1).split("#")[0]
            if target and not target.startswith(("http://", "https://", "mailto:")) and not (doc.parent / target).exists():
                problems.append(f"{doc.relative_to(root)}: link to {m.group(1)!r}, which is not in the repository")
    return problems


def _or_as_is(m: re.Match) -> str:
    """The source's number for a marker, or its text as it is when the name is unknown (--check reports it)."""
    try:
        return value(m.group(1))
    except (KeyError, ValueError, StopIteration, FileNotFoundError):
        return m.group(2)


def write(root: Path = ROOT) -> int:
    changed = 0
    for doc in doc_files(root):
        text = doc.read_text()
        new = MARKER.sub(lambda m: f"<!--n:{m.group(1)}-->{_or_as_is(m)}<!--/n-->", text)
        if new != text:
            doc.write_text(new)
            changed += 1
    return changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="rewrite the marked numbers from their sources")
    ap.add_argument("--check", action="store_true", help="exit 1 when a marked number differs from its source (the default)")
    args = ap.parse_args(argv)
    if args.write:
        print(f"rewrote the numbers of {write()} file(s)")
    problems = check()
    for p in problems:
        print(p, file=sys.stderr)
    n = sum(len(MARKER.findall(d.read_text())) for d in doc_files())
    print(f"{n} marked numbers, {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
