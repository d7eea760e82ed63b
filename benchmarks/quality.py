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
    ap.add_argument("--teacher-dir", default=None, help="keep converged teachers here (teacher-seed<N>/) and reuse them across invocations")
    ap.add_argument("--resume", action="store_true", help="keep the cells already in --out and run only the missing ones")
    ap.add_argument("--combine", nargs="+", default=None, metavar="JSON", help="only merge earlier outputs (e.g. one per method) into --out")
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


def run_grid(args: argparse.Namespace, label: str = "quality", teachers: dict | None = None) -> list[dict]:
    """Run every (seed, budget, method) cell. ``teachers`` caches converged teachers across calls
    (keyed by seed and the settings that shape them), so ablation variants share one per seed."""
    if args.threads:
        torch.set_num_threads(args.threads)
    teachers = {} if teachers is None else teachers
    base = load_recipe(args.recipe)
    common = {"train.epochs": args.epochs, "data.max_train_samples": args.max_train_samples, "budget.formats": ["onnx"], "budget.precision": "int8"}
    common.update(extra_overrides(args.set))
    records: list[dict] = []
    # --resume: cells already in --out (same budget, method, seed and settings) are kept, not re-run;
    # every finished cell is written at once, so a long grid can stop and continue.
    done = json.loads(Path(args.out).read_text()) if getattr(args, "resume", False) and Path(args.out).is_file() else []
    work = Path(tempfile.mkdtemp(prefix=f"prokt-{label}-"))
    for seed in [int(s) for s in args.seeds.split(",")]:
        r_seed = apply_overrides(base, {**common, "seed": seed})
        r_teacher = apply_overrides(r_seed, {"teacher.epochs": args.teacher_epochs or r_seed.train.epochs})
        key = (seed, r_teacher.teacher.arch, r_teacher.teacher.epochs, r_teacher.data.model_dump_json(), r_teacher.train.teacher_optimizer.model_dump_json())
        kept = Path(args.teacher_dir) / f"teacher-seed{seed}" if getattr(args, "teacher_dir", None) else None
        while kept is not None and not kept.exists() and any(kept.parent.glob(f".{kept.name}.partial-*")):
            time.sleep(10)  # another invocation (e.g. another method's grid) is training this teacher
        if key not in teachers and kept is not None and (kept / "manifest.json").is_file():
            m = json.loads((kept / "manifest.json").read_text())
            same = m["teacher"]["arch"] == r_teacher.teacher.arch and len(m["metrics"]["history"]) == r_teacher.teacher.epochs
            if same:
                teachers[key] = (kept, m["metrics"]["teacher_test_accuracy"], m["metrics"].get("teacher_val_accuracy"))
                print(f"seed {seed}: reusing converged teacher {kept} (test {teachers[key][1]:.4f})", flush=True)
        if key not in teachers:
            teacher_dir = kept if kept is not None and not kept.exists() else work / f"teacher-seed{seed}"
            t0 = time.perf_counter()
            teacher = api.train_teacher(r_teacher, out=teacher_dir)
            teacher_s = time.perf_counter() - t0
            teachers[key] = (teacher_dir, teacher.manifest["metrics"]["teacher_test_accuracy"], teacher.manifest["metrics"].get("teacher_val_accuracy"))
            print(f"seed {seed}: converged teacher {r_seed.teacher.arch} test {teachers[key][1]:.4f} ({teacher_s:.0f}s)", flush=True)
        teacher_dir, teacher_acc, _ = teachers[key]
        for budget in args.budgets.split(","):
            for method in args.methods.split(","):
                over = {"method": method, "budget.size": budget}
                if method == "kd":
                    over.update({"teacher.init": "checkpoint", "teacher.checkpoint": str(teacher_dir / "teacher.safetensors")})
                elif method == "prokt" and args.prokt_teacher != "scratch":
                    over.update({"teacher.init": args.prokt_teacher, "teacher.checkpoint": str(teacher_dir / "teacher.safetensors")})
                elif method == "prokt":
                    over["teacher.init"] = "scratch"  # jointly from scratch, whatever the recipe's default
                recipe = apply_overrides(r_seed, over)
                settings = {k: v for k, v in {**common, **over}.items() if v is not None}
                previous = [r for r in done if (r["budget"], r["method"], r["seed"]) == (budget, method, seed)
                            and {k: v for k, v in r["settings"].items() if k != "teacher.checkpoint"} == {k: v for k, v in settings.items() if k != "teacher.checkpoint"}]
                if previous:
                    records.append(previous[0])
                    print(f"  {budget:>6} {method:<8} seed {seed}: kept from {args.out}", flush=True)
                    continue
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
                    "settings": settings,
                    # per-epoch validation path: student/teacher accuracy and teacher-student KL
                    "history": [{k: v for k, v in h.items() if k.startswith(("val_", "epoch", "train_", "beta"))}
                                for h in m["metrics"]["history"].get("student", [])],
                }
                records.append(rec)
                if getattr(args, "incremental", True):
                    _write_records(Path(args.out), [r for r in done if r not in records] + records)
                print(f"  {budget:>6} {method:<8} {rec['student']:<14} fp32 {rec['student_test_accuracy']:.4f} int8 {rec['int8_test_accuracy']:.4f} ({seconds:.0f}s)", flush=True)
    return records


def mean_std(vals: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (0 for one value; None, None for none)."""
    if not vals:
        return (None, None)
    return (statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)


def _write_records(out: Path, records: list[dict]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(records, indent=2) + "\n")
    tmp.replace(out)


ORDER = ["scratch", "kd", "prokt", "prokt+batch-stats"]


def label(r: dict) -> str:
    """The method, plus a named ProKT variant when the record used one (so it gets its own row)."""
    if r["method"] == "prokt" and r.get("settings", {}).get("prokt.teacher_targets") == "batch-stats":
        return "prokt+batch-stats"
    return r["method"]


def summarise(records: list[dict]) -> list[dict]:
    cells: dict[tuple, list[dict]] = {}
    for r in records:
        cells.setdefault((r["budget_bytes"], r["budget"], label(r)), []).append(r)
    rows = []
    for (_, budget, method), rs in sorted(cells.items(), key=lambda kv: (kv[0][0], ORDER.index(kv[0][2]) if kv[0][2] in ORDER else 9)):
        def ms(key):
            return mean_std([r[key] for r in rs if r[key] is not None])

        drops = [r["student_test_accuracy"] - r["int8_test_accuracy"] for r in rs if r["int8_test_accuracy"] is not None]
        rows.append({"budget": budget, "method": method, "student": rs[0]["student"], "n": len(rs),
                     "val": ms("student_val_accuracy"), "fp32": ms("student_test_accuracy"), "int8": ms("int8_test_accuracy"),
                     "int8_drop": mean_std(drops),
                     "teacher": ms("teacher_test_accuracy"), "seconds": ms("seconds")})
    return rows


def paired(records: list[dict], a: str, b: str) -> list[dict]:
    """Per budget: method ``a`` minus method ``b`` in fp32 test accuracy, paired by seed (same data
    split, same converged teacher), mean and std over the seeds both have."""
    out = []
    for budget_bytes, budget in sorted({(r["budget_bytes"], r["budget"]) for r in records}):
        by = {m: {r["seed"]: r["student_test_accuracy"] for r in records if r["budget"] == budget and label(r) == m} for m in (a, b)}
        seeds = sorted(set(by[a]) & set(by[b]))
        if seeds:
            d = [by[a][s] - by[b][s] for s in seeds]
            mean, std = mean_std(d)
            out.append({"budget": budget, "a": a, "b": b, "seeds": len(seeds), "mean": mean, "std": std, "wins": sum(x > 0 for x in d)})
    return out


def markdown(rows: list[dict]) -> str:
    def pct(ms):
        return "-" if ms[0] is None else f"{100 * ms[0]:.2f} ± {100 * ms[1]:.2f}"

    def pts(ms):
        return "-" if ms[0] is None else f"{100 * ms[0]:+.2f} ± {100 * ms[1]:.2f}"

    lines = ["| budget | method | student | seeds | student val % | student fp32 test % | int8 ONNX test % | int8 drop (points) | teacher test % | seconds/run |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['budget']} | {r['method']} | {r['student']} | {r['n']} | {pct(r['val'])} | {pct(r['fp32'])} | {pct(r['int8'])} | {pts(r['int8_drop'])} "
                     f"| {pct(r['teacher'])} | {r['seconds'][0]:.0f} |")
    return "\n".join(lines) + "\n"


def markdown_paired(diffs: list[dict]) -> str:
    lines = ["| budget | comparison | seeds | fp32 test difference (points, mean ± std) | seeds where the first is better |", "|---|---|---|---|---|"]
    for d in diffs:
        lines.append(f"| {d['budget']} | {d['a']} - {d['b']} | {d['seeds']} | {100 * d['mean']:+.2f} ± {100 * d['std']:.2f} | {d['wins']}/{d['seeds']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.combine:
        records = [r for f in args.combine for r in json.loads(Path(f).read_text())]
    else:
        records = run_grid(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=2) + "\n")
    table = markdown(summarise(records))
    pairs = [("prokt", "kd"), ("prokt", "scratch"), ("kd", "scratch"),
             ("prokt+batch-stats", "prokt"), ("prokt+batch-stats", "kd"), ("prokt+batch-stats", "scratch")]
    diffs = [d for a, b in pairs for d in paired(records, a, b)]
    if diffs:
        table += "\nPaired by seed:\n\n" + markdown_paired(diffs)
    out.with_suffix(".md").write_text(table)
    print(table)
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
