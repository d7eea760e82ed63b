"""ProKT ablations for image students; every choice is made on VALIDATION accuracy, never test.

Variants (each a ProKT run at the same budget, student, data and epochs as benchmarks/quality.py):
lambda 0.1/0.3/0.5/0.7, teacher from scratch vs a converged checkpoint with its head reset vs
kept, zero-initialised heads or not, student learning rate x0.5/x2, and the constrained variant.
Writes benchmarks/results/ablation.json (records like quality.json plus ``variant``) and a table
sorted by validation accuracy.

    python benchmarks/ablation.py --budgets 50KB --seeds 0
    python benchmarks/ablation.py --recipe recipes/digits.yaml --budgets 20KB --seeds 0 --epochs 1 \\
        --variants lam=0.1,lam=0.7 --out /tmp/a.json                           # smoke run
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402  (same directory)

VARIANTS: dict[str, dict] = {
    "lam=0.1": {"set": ["prokt.lam=0.1"]},
    "lam=0.3": {"set": ["prokt.lam=0.3"]},
    "lam=0.5": {"set": ["prokt.lam=0.5"]},
    "lam=0.7": {"set": ["prokt.lam=0.7"]},
    "teacher=checkpoint-reset-head": {"prokt_teacher": "checkpoint-reset-head"},
    "teacher=checkpoint": {"prokt_teacher": "checkpoint"},
    "zero_init_heads=false": {"set": ["prokt.zero_init_heads=false"]},
    "student_lr=x0.5": {"lr_scale": 0.5},
    "student_lr=x2": {"lr_scale": 2.0},
    "constrained": {"set": ["prokt.constrained=true"]},
}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = list(VARIANTS)
    if "--variants" in argv:
        i = argv.index("--variants")
        names = argv[i + 1].split(",")
        del argv[i : i + 2]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    out_default = str(quality.ROOT / "benchmarks" / "results" / "ablation.json")
    base = quality.parse_args([*argv, "--methods", "prokt"] + ([] if "--out" in argv else ["--out", out_default]))
    records = []
    teachers: dict = {}  # one converged teacher per seed, shared by the variants
    for name in names:
        v = VARIANTS[name]
        args = quality.parse_args([*argv, "--methods", "prokt"])
        args.out = base.out
        args.incremental = False  # ablation.py writes its own records (with the variant) at the end
        args.set = list(base.set) + v.get("set", [])
        args.prokt_teacher = v.get("prokt_teacher", base.prokt_teacher)
        if "lr_scale" in v:
            lr = quality.load_recipe(args.recipe).train.student_optimizer.lr
            args.set.append(f"train.student_optimizer.lr={lr * v['lr_scale']}")
        print(f"variant {name}", flush=True)
        for rec in quality.run_grid(args, label="ablation", teachers=teachers):
            rec["variant"] = name
            records.append(rec)
    out = Path(base.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=2) + "\n")
    rows = []
    for name in names:
        rs = [r for r in records if r["variant"] == name]
        for budget in sorted({r["budget"] for r in rs}):
            b = [r for r in rs if r["budget"] == budget]
            val = [r["student_val_accuracy"] for r in b]
            test = [r["student_test_accuracy"] for r in b]
            rows.append((budget, name, statistics.mean(val), statistics.mean(test), len(b)))
    rows.sort(key=lambda r: (r[0], -r[2]))
    lines = ["| budget | variant | val % (chooses) | test % | seeds |", "|---|---|---|---|---|"]
    lines += [f"| {b} | {n} | {100 * v:.2f} | {100 * t:.2f} | {k} |" for b, n, v, t, k in rows]
    table = "\n".join(lines) + "\n"
    out.with_suffix(".md").write_text(table)
    print(table)
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
