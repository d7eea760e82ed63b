"""int8 with and without quantization-aware distillation, on finished runs: the test accuracy drop of the post-training
file and of the QAT file against each run's PyTorch student, side by side.

Each run is copied (the run itself is never changed) and its student exported to int8 in each ``--formats`` twice:
post-training (``qat=off``, accuracy-aware off: the plain file) and quantization-aware (``qat=on``: the student
fine-tuned with simulated int8 against the run's teacher first, ``prokt_deploy/train/qat.py``). The gate is opened
(``max_accuracy_drop=100``) so both are always measured; the drop is in points on the run's test split.

    python benchmarks/qat.py runs/mobile-grid/prokt-64KB-seed0 runs/converged-grid/prokt-64KB-seed0 ...
    python benchmarks/qat.py --glob 'runs/mobile-grid/*-64KB-seed*'        # every finished cell of a grid

Writes benchmarks/results/qat.json (``--out``) and prints the table.
"""

from __future__ import annotations

import argparse
import glob
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from prokt_deploy import export_run, open_run
from prokt_deploy.errors import GateFailed
from prokt_deploy.formats import fingerprint

ROOT = Path(__file__).resolve().parent.parent


def measure(run: Path, formats: list[str], work: Path) -> list[dict]:
    """One row per format: the run's student arch, the post-training and the QAT int8 test drops."""
    copy = Path(shutil.copytree(run, work / run.name))
    manifest = open_run(copy).manifest
    rows = []
    for fmt in formats:
        row: dict = {"run": str(run), "arch": manifest.student.arch, "method": manifest.method, "format": fmt}
        for path, settings in (("ptq", {"accuracy_aware": "off", "qat": "off"}), ("qat", {"accuracy_aware": "off", "qat": "on"})):
            t = time.perf_counter()
            try:
                (record,) = export_run(copy, [fmt], "int8", max_accuracy_drop=100.0, **settings)
            except GateFailed as exc:  # over the size budget: still measured
                (record,) = exc.results
            row[path] = {
                "test_accuracy": record.test_accuracy,
                "accuracy_drop": record.accuracy_drop,
                "bytes": record.bytes,
                "seconds": round(time.perf_counter() - t, 1),
                **({"qat": record.qat} if record.qat else {}),
            }
        row["reference_accuracy"] = record.reference_accuracy
        rows.append(row)
    shutil.rmtree(copy, ignore_errors=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="*", help="finished run directories")
    ap.add_argument("--glob", default=None, help="also every run directory matching this pattern (with a manifest.json)")
    ap.add_argument("--formats", nargs="+", default=["onnx"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "qat.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    runs = [Path(r) for r in args.runs] + sorted(Path(p) for p in glob.glob(args.glob or "") if (Path(p) / "manifest.json").is_file())
    if not runs:
        ap.error("no run given (RUN ... or --glob)")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="qat-bench-") as tmp:
        for run in runs:
            print(f"{run}", flush=True)
            rows += measure(run, args.formats, Path(tmp))
    print(f"{'run':40} {'arch':18} {'fmt':10} {'ref':>7} {'ptq drop':>9} {'qat drop':>9}")
    for r in rows:
        print(
            f"{Path(r['run']).name[:40]:40} {r['arch']:18} {r['format']:10} {100 * r['reference_accuracy']:7.2f} "
            f"{r['ptq']['accuracy_drop']:+9.2f} {r['qat']['accuracy_drop']:+9.2f}"
        )
    summary = {}
    for fmt in args.formats:
        mine = [r for r in rows if r["format"] == fmt]
        summary[fmt] = {p: statistics.fmean(r[p]["accuracy_drop"] for r in mine) for p in ("ptq", "qat")}
    result = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "fingerprint": fingerprint(), "rows": rows, "mean_drop": summary}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"mean drop (points): {json.dumps(summary)}; wrote {args.out}")


if __name__ == "__main__":
    main()
