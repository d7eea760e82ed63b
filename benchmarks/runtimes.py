"""Every runtime side by side: a run's student and teacher in each deploy format (ONNX Runtime, OpenVINO, LiteRT,
ExecuTorch; whatever the exporter registry holds and this machine can run), at fp32 and int8, batch 1 and batch
32, 1 thread, measured in one interleaved run of the timing harness: p50/p90 latency, bytes, test accuracy.

    python benchmarks/runtimes.py RUN                 # a finished run (e.g. `prokt-deploy run --epochs 3`'s)
    python benchmarks/runtimes.py --create            # makes the default recipe's quick run first (1 epoch)

The run is never changed: a copy of it is exported (the student at fp32 and int8 through ``export_run``'s gates;
the teacher's fp32 files and its own int8 gated as the student's, through the references bench uses). Rows whose
export or gate failed are listed with the reason. Targets (issue 35): every int8 file within 0.5 points of the
student's PyTorch accuracy (``int8_within_half_point``); the fastest student file across the runtimes at least as
fast at batch 1 as the fastest of ONNX Runtime and OpenVINO (``recommended_vs_onnx_openvino``).

Writes benchmarks/results/runtimes.json (``--out``) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

import exporters
from prokt_deploy import apply_overrides, distill, export_run, load_recipe, open_run
from prokt_deploy.deploy.references import ensure_fp32_export, ensure_int8_export
from prokt_deploy.errors import ExportFailed, GateFailed
from prokt_deploy.formats import artifact_engine, fingerprint, runtime_targets
from prokt_deploy.harness import measure
from prokt_deploy.rundir.records import FailedExport, GateRecord

ROOT = Path(__file__).resolve().parent.parent
QUICK = {"train.epochs": 1, "train.min_steps": 0}
CLASSIC = ("onnx", "openvino")


def create_run(root: Path) -> Path:
    recipe = apply_overrides(load_recipe(ROOT / "recipes" / "fashion-mnist.yaml"), QUICK)
    out = root / "run"
    distill(recipe, out=out, latest=False)
    return out


def artifacts(run: Path, formats: list[str]) -> tuple[list[dict], list[dict]]:
    """(model, format, precision, files, accuracy) of every file to time, and the ones that could not be made."""
    fr = open_run(run)
    data = fr.data()
    x = data.train.x[:2].numpy()
    made, failed = [], []
    for precision in ("fp32", "int8"):
        try:
            records = export_run(run, formats, precision)
        except (GateFailed, ExportFailed) as exc:
            records = exc.results
        for r in records:
            if isinstance(r, GateRecord) and r.passed:
                made.append({"model": "student", "format": r.format, "precision": precision, "files": [run / f for f in r.files]})
            else:
                why = "; ".join(r.failures) if isinstance(r, GateRecord) else r.error if isinstance(r, FailedExport) else r.skipped
                failed.append({"id": f"student/{r.format}/{precision}", "why": why})
    fr.reload()
    calibration, max_drop = fr.manifest.int8_settings()
    cache: dict = {}
    for fmt in formats:
        try:
            made.append({"model": "teacher", "format": fmt, "precision": "fp32", "files": ensure_fp32_export(fr, "teacher", fmt, x)})
        except ExportFailed as exc:
            failed.append({"id": f"teacher/{fmt}/fp32", "why": str(exc)})
        if "int8" in exporters.PRECISIONS[fmt]:
            gate = ensure_int8_export(
                fr,
                "teacher",
                fmt,
                data,
                calibration_samples=calibration,
                max_accuracy_drop=max_drop,
                budget_bytes=fr.manifest.budget_bytes,
                progress=lambda text: print(f"  {text}", flush=True),
                cache=cache,
                reference_accuracy=fr.manifest.metrics.get("teacher_test_accuracy"),
            )
            if gate.passed:
                made.append({"model": "teacher", "format": fmt, "precision": "int8", "files": [run / f for f in gate.files]})
            else:
                failed.append({"id": f"teacher/{fmt}/int8", "why": "; ".join(gate.failures)})
    return made, failed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", nargs="?", type=Path, help="a finished run (not changed: a copy is exported)")
    p.add_argument("--create", action="store_true", help="make the default recipe's quick run first")
    p.add_argument("--formats", default=",".join(exporters.FORMATS), help="formats to compare (default: every registered one)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "runtimes.json")
    args = p.parse_args()
    if args.run is None and not args.create:
        p.error("give a RUN or --create")
    formats = [f for f in args.formats.split(",") if f]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="prokt-runtimes-") as tmp:
        source = create_run(Path(tmp)) if args.create else args.run
        run = Path(shutil.copytree(source, Path(tmp) / "copy", ignore=shutil.ignore_patterns("report.*")))
        shutil.rmtree(run / "artifacts", ignore_errors=True)  # every file made here, by this code
        made, failed = artifacts(run, formats)
        fr = open_run(run)
        data = fr.data()
        test = Path(tmp) / "test.npz"
        np.savez(test, x=data.test.x.numpy(), y=data.test.y.numpy())
        targets = runtime_targets("CPU")
        engines = [{"id": f"{a['model']}/{a['format']}/{a['precision']}", **artifact_engine(a["format"], a["files"], targets)} for a in made]
        results = measure.measure(
            engines, test, threads=args.threads, batch=args.batch, runs=args.runs, warmup=50, repeats=args.repeats, progress=print
        )
        rows = []
        for a, engine, res in zip(made, engines, results):
            rows.append(
                {
                    "id": engine["id"],
                    "model": a["model"],
                    "format": a["format"],
                    "precision": a["precision"],
                    "runtime": res.get("runtime"),
                    "bytes": sum(f.stat().st_size for f in a["files"]),
                    "test_accuracy": res.get("test_accuracy"),
                    "p50_ms": res["latency_ms"]["p50"],
                    "p90_ms": res["latency_ms"]["p90"],
                    f"batch{args.batch}_p50_ms": res["batch_latency_ms"]["p50"],
                    f"batch{args.batch}_p90_ms": res["batch_latency_ms"]["p90"],
                }
            )
        pytorch = fr.manifest.metrics["student_test_accuracy"]
    students = [r for r in rows if r["model"] == "student"]
    int8 = [r for r in students if r["precision"] == "int8"]
    fastest = min(students, key=lambda r: r["p50_ms"]) if students else None
    classic = [r for r in students if r["format"] in CLASSIC]
    fastest_classic = min(classic, key=lambda r: r["p50_ms"]) if classic else None
    out = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python benchmarks/runtimes.py " + ("--create" if args.create else "RUN"),
        "run": str(source),
        "fingerprint": fingerprint(),
        "settings": {"threads": args.threads, "batch": args.batch, "runs": args.runs, "repeats": args.repeats},
        "student_pytorch_accuracy": pytorch,
        "rows": rows,
        "not_made": failed,
        "int8_within_half_point": {r["id"]: abs(100 * (r["test_accuracy"] - pytorch)) <= 0.5 for r in int8},
        "fastest_student": fastest["id"] if fastest else None,
        "fastest_onnx_openvino_student": fastest_classic["id"] if fastest_classic else None,
        "recommended_vs_onnx_openvino": round(fastest_classic["p50_ms"] / fastest["p50_ms"], 3) if fastest and fastest_classic else None,
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    head = f"{'row':28s} {'runtime':22s} {'bytes':>9s} {'acc':>7s} {'p50 ms':>8s} {'p90 ms':>8s} {'b' + str(args.batch) + ' p50':>9s}"
    print(head)
    for r in rows:
        print(
            f"{r['id']:28s} {str(r['runtime'])[:22]:22s} {r['bytes']:9d} {r['test_accuracy']:7.4f} {r['p50_ms']:8.4f} {r['p90_ms']:8.4f} "
            f"{r[f'batch{args.batch}_p50_ms']:9.4f}"
        )
    for f in failed:
        print(f"not made: {f['id']}: {f['why']}")
    print(f"fastest student file: {out['fastest_student']} ({out['recommended_vs_onnx_openvino']}x the fastest ONNX/OpenVINO one); wrote {args.out}")


if __name__ == "__main__":
    main()
