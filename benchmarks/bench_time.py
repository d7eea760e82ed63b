"""How long does ``bench`` keep the user waiting? Wall time of a first bench of a finished run, per step.

A user's first ``prokt-deploy bench`` after ``export`` also builds the references (the teacher's ONNX fp32
file, its int8 files with their gates, the student's fp32 files), so each run is benched from a copy with
those removed, as a user would find it. The user's run is never touched. Per run: total wall seconds, the
seconds of each step (from bench's progress callback; the slowest steps are printed), the report's own
``measure_s`` (the timing workers) and the issue-13 target (image run <= 60 s, text run <= 180 s, 2 cores).

    python benchmarks/bench_time.py --create            # makes the two quick runs first (~6 min), then benches them
    python benchmarks/bench_time.py RUN [RUN ...]        # finished, exported runs of your own

``--create`` makes, in a temporary directory, the issue's two quick runs: the default image recipe and
``recipes/tweets-minilm.yaml --budget 5MB``, each 1 epoch on 256 training samples (``train.min_steps`` 0),
exported to int8 ONNX and OpenVINO. Their accuracy is meaningless; the bench's work is the same as for a
converged run of the same models (the test split and the artifacts are the same size).

Writes benchmarks/results/bench_time.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from prokt_deploy import apply_overrides, bench, distill, export_run, load_recipe, open_run
from prokt_deploy.harness.fingerprint import fingerprint

ROOT = Path(__file__).resolve().parent.parent
TARGET_S = {"image": 60.0, "text": 180.0}
QUICK = {"train.epochs": 1, "data.max_train_samples": 256, "train.min_steps": 0}


def create_runs(root: Path) -> list[Path]:
    runs = []
    for name, recipe_path, extra in (
        ("image", ROOT / "recipes" / "fashion-mnist.yaml", {}),
        ("text", ROOT / "recipes" / "tweets-minilm.yaml", {"budget.size": "5MB"}),
    ):
        t0 = time.perf_counter()
        recipe = apply_overrides(load_recipe(recipe_path), {**QUICK, **extra})
        out = root / name
        distill(recipe, out=out, latest=False)
        export_run(out, list(recipe.budget.formats), "int8")
        print(f"created the {name} run in {time.perf_counter() - t0:.0f} s: {out}", flush=True)
        runs.append(out)
    return runs


def fresh_copy(run: Path, dest: Path) -> Path:
    """The run as a user finds it after ``export``: no report, no reference artifacts."""

    def ignore(directory: str, names: list[str]) -> set[str]:
        if Path(directory).name == "artifacts":
            return {n for n in names if n.startswith("teacher-") or (n.startswith("student-") and n.endswith("-fp32"))}
        return {n for n in names if n.startswith("report.")} if Path(directory) == run else set()

    return Path(shutil.copytree(run, dest, ignore=ignore))


def time_bench(run: Path, work: Path, settings: dict) -> dict:
    copy = fresh_copy(run, work / run.name)
    steps: list[list] = []
    t0 = time.perf_counter()

    def progress(text: str) -> None:
        now = time.perf_counter() - t0
        if steps:
            steps[-1][1] = round(now - steps[-1][2], 2)
        steps.append([text, None, now])

    report = bench(copy, progress=progress, **settings)
    total = time.perf_counter() - t0
    if steps:
        steps[-1][1] = round(total - steps[-1][2], 2)
    fr = open_run(copy)
    kind = "text" if fr.manifest.input.get("kind") == "text" else "image"
    shutil.rmtree(copy, ignore_errors=True)
    return {
        "run": str(run),
        "kind": kind,
        "student": fr.manifest.student.arch,
        "teacher": fr.manifest.teacher.arch,
        "test_samples": report["rows"][0]["accuracy_samples"],
        "rows": len(report["rows"]),
        "settings": {k: report["settings"][k] for k in ("threads", "batch", "runs", "warmup", "repeats")},
        "bench_s": round(total, 1),
        "measure_s": report["settings"].get("measure_s"),
        "target_s": TARGET_S[kind],
        "within_target": total <= TARGET_S[kind],
        "steps": [{"step": s, "seconds": sec} for s, sec, _ in steps],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dirs", nargs="*", type=Path, metavar="RUN", help="finished, exported run directories")
    ap.add_argument("--create", action="store_true", help="make the issue's quick image and text runs first")
    ap.add_argument("--runs", type=int, default=None, help="bench's --runs (default: bench's own)")
    ap.add_argument("--repeats", type=int, default=None, help="bench's --repeats (default: bench's own)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_time.json"))
    args = ap.parse_args()
    if not args.run_dirs and not args.create:
        ap.error("give run directories or --create")
    with tempfile.TemporaryDirectory(prefix="bench-time-") as tmp:
        tmp_path = Path(tmp)
        runs = list(args.run_dirs) + (create_runs(tmp_path / "runs") if args.create else [])
        (tmp_path / "bench").mkdir()
        records = []
        for run in runs:
            rec = time_bench(run, tmp_path / "bench", {k: v for k, v in (("runs", args.runs), ("repeats", args.repeats)) if v is not None})
            records.append(rec)
            slow = sorted(rec["steps"], key=lambda s: -(s["seconds"] or 0))[:4]
            print(
                f"\n{rec['kind']:5} {rec['student']} from {rec['teacher']}: bench {rec['bench_s']:.1f} s (target {rec['target_s']:.0f} s: {'met' if rec['within_target'] else 'MISSED'}), timing workers {rec['measure_s']} s, {rec['rows']} rows"
            )
            for s in slow:
                print(f"    {s['seconds']:7.1f} s  {s['step'][:100]}")
    fp = fingerprint()
    out = {
        "fingerprint": fp,
        "command": "python benchmarks/bench_time.py " + ("--create" if args.create else " ".join(map(str, args.run_dirs))),
        "records": records,
    }
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nCPU: {fp['cpu']['model']} ({fp['cpu']['int8_dot_product']}), {fp['cpu']['usable_cores']} usable cores; wrote {args.out}")


if __name__ == "__main__":
    main()
