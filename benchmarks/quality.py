"""Distillation quality: ProKT vs KD vs scratch at the same budget, student, data and epochs.

For every seed a converged teacher is trained once (cross-entropy) for KD; ProKT trains its
teacher jointly from scratch (PROKT.md's image setting) unless --prokt-teacher says otherwise.
For every budget the planner picks the student once (same student for every method). Each run
is then exported to int8 ONNX and its test accuracy measured in onnxruntime. Writes a list of
per-run records to benchmarks/results/quality.json and a Markdown table next to it.

    python benchmarks/quality.py                                  # the full grid (about 2 hours here)
    python benchmarks/quality.py --recipe recipes/digits.yaml --budgets 20KB --seeds 0 --epochs 1 \\
        --out /tmp/q.json                                         # a smoke run (seconds)
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
from prokt_deploy.budget import parse_size
from prokt_deploy.recipe import apply_overrides, load_recipe

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "fashion-mnist.yaml"))
    ap.add_argument("--budgets", default="50KB,200KB", help="comma-separated int8 ONNX budgets")
    ap.add_argument("--methods", default="scratch,kd,prokt")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=None, help="student epochs (default: the recipe's)")
    ap.add_argument("--teacher-epochs", type=int, default=None, help="epochs of the converged KD teacher (default: --epochs)")
    ap.add_argument("--max-train-samples", type=int, default=None)
    ap.add_argument("--prokt-teacher", choices=["scratch", "checkpoint-reset-head", "checkpoint"], default="scratch")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra recipe override, e.g. prokt.lam=0.5 (YAML value)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "quality.json"))
    return ap.parse_args(argv)


def extra_overrides(pairs: list[str]) -> dict:
    import yaml

    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        out[key] = yaml.safe_load(value)
    return out


def int8_accuracy(run: Path) -> float | None:
    from prokt_deploy.deploy import export_run

    records = export_run(run, ["onnx"], "int8", max_accuracy_drop=100.0)
    return records[0]["test_accuracy"] if records else None


def run_grid(args: argparse.Namespace, label: str = "quality") -> list[dict]:
    if args.threads:
        torch.set_num_threads(args.threads)
    base = load_recipe(args.recipe)
    common = {"train.epochs": args.epochs, "data.max_train_samples": args.max_train_samples, "budget.formats": ["onnx"], "budget.precision": "int8"}
    common.update(extra_overrides(args.set))
    records: list[dict] = []
    work = Path(tempfile.mkdtemp(prefix=f"prokt-{label}-"))
    for seed in [int(s) for s in args.seeds.split(",")]:
        r_seed = apply_overrides(base, {**common, "seed": seed})
        teacher_dir = work / f"teacher-seed{seed}"
        t0 = time.perf_counter()
        teacher = api.train_teacher(apply_overrides(r_seed, {"teacher.epochs": args.teacher_epochs or r_seed.train.epochs}), out=teacher_dir)
        teacher_s = time.perf_counter() - t0
        teacher_acc = teacher.manifest["metrics"]["teacher_test_accuracy"]
        print(f"seed {seed}: converged teacher {r_seed.teacher.arch} test {teacher_acc:.4f} ({teacher_s:.0f}s)", flush=True)
        for budget in args.budgets.split(","):
            for method in args.methods.split(","):
                over = {"method": method, "budget.size": budget}
                if method == "kd":
                    over.update({"teacher.init": "checkpoint", "teacher.checkpoint": str(teacher_dir / "teacher.safetensors")})
                elif method == "prokt" and args.prokt_teacher != "scratch":
                    over.update({"teacher.init": args.prokt_teacher, "teacher.checkpoint": str(teacher_dir / "teacher.safetensors")})
                recipe = apply_overrides(r_seed, over)
                out = work / f"{method}-{budget}-seed{seed}"
                t0 = time.perf_counter()
                res = api.distill(recipe, out=out, runs_root=work / "runs")
                seconds = time.perf_counter() - t0
                m = res.manifest
                rec = {
                    "budget": budget,
                    "budget_bytes": parse_size(budget),
                    "method": method,
                    "seed": seed,
                    "student": m["student"]["arch"],
                    "student_params": m["student"]["params"],
                    "teacher": m["teacher"]["arch"],
                    "epochs": recipe.train.epochs,
                    "student_test_accuracy": m["metrics"]["student_test_accuracy"],
                    "student_val_accuracy": m["metrics"]["student_val_accuracy"],
                    "int8_test_accuracy": int8_accuracy(out),
                    "teacher_test_accuracy": teacher_acc if method != "prokt" else m["metrics"]["teacher_test_accuracy"],
                    "converged_teacher_test_accuracy": teacher_acc,
                    "seconds": round(seconds, 1),
                    "settings": {k: v for k, v in {**common, **over}.items() if v is not None},
                }
                records.append(rec)
                print(f"  {budget:>6} {method:<8} {rec['student']:<14} fp32 {rec['student_test_accuracy']:.4f} int8 {rec['int8_test_accuracy']:.4f} ({seconds:.0f}s)", flush=True)
    return records


def summarise(records: list[dict]) -> list[dict]:
    cells: dict[tuple, list[dict]] = {}
    for r in records:
        cells.setdefault((r["budget_bytes"], r["budget"], r["method"]), []).append(r)
    rows = []
    for (_, budget, method), rs in sorted(cells.items(), key=lambda kv: (kv[0][0], ["scratch", "kd", "prokt"].index(kv[0][2]) if kv[0][2] in ("scratch", "kd", "prokt") else 9)):
        def ms(key):
            vals = [r[key] for r in rs if r[key] is not None]
            return (statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0) if vals else (None, None)

        rows.append({"budget": budget, "method": method, "student": rs[0]["student"], "n": len(rs),
                     "fp32": ms("student_test_accuracy"), "int8": ms("int8_test_accuracy"), "teacher": ms("teacher_test_accuracy"), "seconds": ms("seconds")})
    return rows


def markdown(rows: list[dict]) -> str:
    def pct(ms):
        return "-" if ms[0] is None else f"{100 * ms[0]:.2f} ± {100 * ms[1]:.2f}"

    lines = ["| budget | method | student | seeds | student fp32 test % | int8 ONNX test % | teacher test % | seconds/run |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['budget']} | {r['method']} | {r['student']} | {r['n']} | {pct(r['fp32'])} | {pct(r['int8'])} | {pct(r['teacher'])} | {r['seconds'][0]:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    records = run_grid(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=2) + "\n")
    table = markdown(summarise(records))
    out.with_suffix(".md").write_text(table)
    print(table)
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
