"""Text: ProKT vs KD vs scratch for the same <= 5 MB student, its int8 artifacts, and its latency.

For each seed: a converged teacher (all-MiniLM-L6-v2 fine-tuned with cross-entropy) is trained once
for KD; ProKT fine-tunes its own teacher jointly from the pretrained backbone (PROKT.md). Every
method trains the same planned student on the same data for the same epochs; each student is
exported to int8 ONNX and OpenVINO IR (gated against PyTorch) and its test accuracy is measured in
the runtimes. The ProKT run is then benchmarked (``prokt-deploy bench``: teacher and student, batch
1, at the median test length) for the latency target. Writes benchmarks/results/text_quality.json
and a Markdown table next to it.

Targets (issue 6): the int8 student within 3 points of the jointly fine-tuned teacher on the test
split; student p50 latency at least 10x lower than the teacher's at batch 1.

    python benchmarks/text_quality.py                                    # the default (about an hour here)
    python benchmarks/text_quality.py --max-train-samples 64 --methods scratch,prokt --out /tmp/t.json \\
        --set teacher.arch=bert-h32-l1 --set data.tokenizer=all-minilm-l6-v2   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from prokt_deploy import api
from prokt_deploy.benchmark import bench
from prokt_deploy.deploy import export_run
from prokt_deploy.recipe import apply_overrides, load_recipe
from quality import extra_overrides  # noqa: E402  (benchmarks/, the script's own directory)

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "tweets-minilm.yaml"))
    ap.add_argument("--budget", default="5MB")
    ap.add_argument("--methods", default="scratch,kd,prokt")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--epochs", type=int, default=None, help="student epochs (default: the recipe's)")
    ap.add_argument("--teacher-epochs", type=int, default=None, help="epochs of KD's converged teacher (default: --epochs)")
    ap.add_argument("--max-train-samples", type=int, default=None)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override (YAML value)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--bench-runs", type=int, default=100)
    ap.add_argument("--bench-repeats", type=int, default=3)
    ap.add_argument("--prokt-run", default=None, help="use this finished 'prokt-deploy run' directory (same recipe and seed) as the prokt cell instead of training it again")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "text_quality.json"))
    return ap.parse_args(argv)


def latency_from_report(rep: dict) -> dict:
    """Batch-1 p50 of the teacher and of the student's artifacts from a bench report; the speed-up
    target counts only artifacts that passed the export gates (within the budget): the fp32 reference
    rows of an int8 plan are larger than the budget."""
    rows = {r["id"]: r for r in rep["rows"]}
    p50 = {k: v["latency_ms"]["p50"] for k, v in rows.items() if v.get("latency_ms")}
    students = {k: v for k, v in rows.items() if k.startswith("student/") and v.get("kind") == "artifact" and k in p50}
    reference = {k: p50[k] for k, v in rows.items() if k.startswith("student/") and v.get("kind") == "reference" and k in p50}
    best_id = min(students, key=p50.get) if students else None
    return {
        "seq_len": rep["settings"].get("seq_len"),
        "threads": rep["settings"]["threads"],
        "teacher_onnx_fp32_p50_ms": p50.get("teacher/onnx/fp32"),
        "teacher_pytorch_p50_ms": p50.get("teacher/pytorch/fp32"),
        "students_p50_ms": {k: p50[k] for k in students},
        "over_budget_reference_p50_ms": reference,
        "students_accuracy": {k: v.get("test_accuracy") for k, v in students.items()},
        "fastest_student": best_id,
        "speedup_vs_teacher_onnx": round(p50["teacher/onnx/fp32"] / p50[best_id], 2) if best_id and p50.get("teacher/onnx/fp32") else None,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    base = load_recipe(args.recipe)
    common = {"train.epochs": args.epochs, "data.max_train_samples": args.max_train_samples, "budget.size": args.budget, **extra_overrides(args.set)}
    work = Path(tempfile.mkdtemp(prefix="prokt-text-quality-"))
    records: list[dict] = []
    latency: dict | None = None
    for seed in [int(s) for s in args.seeds.split(",")]:
        r_seed = apply_overrides(base, {**common, "seed": seed})
        teacher_dir, teacher_acc, teacher_s = None, None, None
        if "kd" in args.methods.split(","):
            teacher_dir = work / f"teacher-seed{seed}"
            t0 = time.perf_counter()
            res = api.train_teacher(apply_overrides(r_seed, {"teacher.epochs": args.teacher_epochs or r_seed.train.epochs}), out=teacher_dir)
            teacher_s = time.perf_counter() - t0
            teacher_acc = res.manifest["metrics"]["teacher_test_accuracy"]
            print(f"seed {seed}: converged (CE fine-tuned) teacher test {teacher_acc:.4f} ({teacher_s:.0f}s)", flush=True)
        for method in args.methods.split(","):
            over = {"method": method}
            if method == "kd":
                over.update({"teacher.init": "checkpoint", "teacher.checkpoint": str(teacher_dir / "teacher.safetensors")})
            recipe = apply_overrides(r_seed, over)
            out = work / f"{method}-seed{seed}"
            t0 = time.perf_counter()
            if method == "prokt" and args.prokt_run:
                out = Path(args.prokt_run)
                m = json.loads((out / "manifest.json").read_text())
                if (m["method"], m["seed"], m["data"]["train"]) != ("prokt", seed, recipe.data.max_train_samples or m["data"]["train"]):
                    raise SystemExit(f"--prokt-run {out} is not a prokt run of seed {seed} on the same data")
                seconds = m["timings"]["total_s"]
                arts = {a["format"]: a for a in m["artifacts"] if a["precision"] == "int8"}
            else:
                m = api.distill(recipe, out=out, runs_root=work / "runs").manifest
                seconds = time.perf_counter() - t0
                arts = {a["format"]: a for a in export_run(out, list(recipe.budget.formats), "int8", max_accuracy_drop=100.0)}
            rec = {
                "budget": args.budget,
                "budget_bytes": m["budget_bytes"],
                "method": method,
                "seed": seed,
                "student": m["student"]["arch"],
                "student_params": m["student"]["params"],
                "teacher": m["teacher"]["arch"],
                "epochs": recipe.train.epochs,
                "train_samples": m["data"]["train"],
                "student_test_accuracy": m["metrics"]["student_test_accuracy"],
                "student_val_accuracy": m["metrics"]["student_val_accuracy"],
                "int8_test_accuracy": arts.get("onnx", {}).get("test_accuracy"),
                "int8_bytes": {f: a.get("bytes") for f, a in arts.items()},
                "int8_test_accuracy_by_format": {f: a.get("test_accuracy") for f, a in arts.items()},
                "int8_passed": {f: a.get("passed") for f, a in arts.items()},
                "teacher_test_accuracy": m["metrics"]["teacher_test_accuracy"] if method == "prokt" else teacher_acc,
                "converged_teacher_test_accuracy": teacher_acc,
                "seconds": round(seconds, 1),
            }
            records.append(rec)
            print(f"  {method:<8} {rec['student']:<14} fp32 {rec['student_test_accuracy']:.4f} int8 {rec['int8_test_accuracy']} "
                  f"teacher {rec['teacher_test_accuracy']} ({seconds:.0f}s)", flush=True)
            if method == "prokt" and latency is None:
                report_file = out / "report.json"
                rep = json.loads(report_file.read_text()) if args.prokt_run and report_file.is_file() else \
                    bench(out, runs=args.bench_runs, warmup=20, repeats=args.bench_repeats, batch=8)
                latency = latency_from_report(rep)
                best_id = latency["fastest_student"]
                print(f"  latency at {latency['seq_len']} tokens: teacher ONNX fp32 {latency['teacher_onnx_fp32_p50_ms']} ms, "
                      f"fastest artifact {best_id} {latency['students_p50_ms'].get(best_id)} ms ({latency['speedup_vs_teacher_onnx']}x)", flush=True)

    prokt = [r for r in records if r["method"] == "prokt"]
    targets = {}
    if prokt:
        gap = statistics.mean(100 * (r["teacher_test_accuracy"] - (r["int8_test_accuracy"] or 0)) for r in prokt)
        targets["int8_student_within_3_points_of_teacher"] = {"gap_points": round(gap, 2), "met": gap <= 3.0}
    if latency and latency.get("speedup_vs_teacher_onnx"):
        targets["student_p50_10x_lower_than_teacher"] = {"speedup": latency["speedup_vs_teacher_onnx"], "met": latency["speedup_vs_teacher_onnx"] >= 10}
    result = {"records": records, "latency": latency, "targets": targets,
              "settings": {k: v for k, v in {**common, "seeds": args.seeds, "methods": args.methods}.items() if v is not None}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| method | student | seeds | student fp32 test % | int8 ONNX test % | int8 OpenVINO test % | teacher test % | seconds/run |",
             "|---|---|---|---|---|---|---|---|"]
    for method in args.methods.split(","):
        rs = [r for r in records if r["method"] == method]

        def ms(vals: list) -> str:
            vals = [v for v in vals if v is not None]
            if not vals:
                return "-"
            return f"{100 * statistics.mean(vals):.2f}" + (f" ± {100 * statistics.stdev(vals):.2f}" if len(vals) > 1 else "")

        lines.append(f"| {method} | {rs[0]['student']} | {len(rs)} | {ms([r['student_test_accuracy'] for r in rs])} | "
                     f"{ms([r['int8_test_accuracy'] for r in rs])} | {ms([r['int8_test_accuracy_by_format'].get('openvino') for r in rs])} | "
                     f"{ms([r['teacher_test_accuracy'] for r in rs])} | {statistics.mean(r['seconds'] for r in rs):.0f} |")
    table = "\n".join(lines) + "\n"
    if latency:
        table += (f"\nBatch-1 p50 at {latency['seq_len']} tokens, {latency['threads']} thread(s): teacher ONNX fp32 "
                  f"{latency['teacher_onnx_fp32_p50_ms']} ms; artifacts: " + ", ".join(f"{k} {v} ms" for k, v in latency["students_p50_ms"].items())
                  + f"; speed-up of the fastest artifact {latency['speedup_vs_teacher_onnx']}x; over-budget fp32 references: "
                  + ", ".join(f"{k} {v} ms" for k, v in latency["over_budget_reference_p50_ms"].items()) + "\n")
    out.with_suffix(".md").write_text(table)
    print(table)
    print(json.dumps(targets))
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
