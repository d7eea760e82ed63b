"""Planned vs real artifact bytes: the planner's estimate against real exports of trained students.

For each student family on its recipe's data (cnn: digits 8x8; resnet: Fashion-MNIST 28x28) at several
budgets, the planner picks the student (with a fresh size cache, so every estimate is measured, never
read from an old cache). The chosen student is trained for a few steps on the real data (so BatchNorm
statistics and biases hold real values, not the untrained ones the planner exports), exported to every
format x precision with real calibration samples, and its bytes (every file) are compared with the
planner's estimate for the same format x precision. int8/fp32 is the ratio of real int8 to real fp32
bytes per format. ``--all-candidates`` also compares every candidate of each family at the deploy
combinations (onnx int8, onnx fp32, openvino int8).

    python benchmarks/export_sizes.py                    # ~6 min on 2 cores
    python benchmarks/export_sizes.py --all-candidates   # + the whole families, ~25 min

Writes benchmarks/results/export_sizes.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

import exporters
from prokt_deploy import planner
from prokt_deploy.budget import parse_size
from prokt_deploy.data import load_recipe_data
from prokt_deploy.models import count_params, create_model, families
from prokt_deploy.planner import measure_artifact_bytes
from prokt_deploy.recipe import apply_overrides, load_recipe
from prokt_deploy.train.build import build_teacher
from prokt_deploy.train.distill import library_versions

ROOT = Path(__file__).resolve().parent.parent
BOTH = ["onnx", "openvino"]
SETUPS = {
    "cnn": ("digits.yaml", [("20KB", ["onnx"]), ("40KB", BOTH), ("100KB", BOTH)]),
    # budgets below the teacher's own int8 artifact bind (resnet-w16-d1: 147 kB; a budget above it picks a
    # student of at most 25% of the teacher's parameters instead of the largest that fits)
    "resnet": ("fashion-mnist.yaml", [("75KB", BOTH), ("100KB", BOTH), ("120KB", BOTH)]),
}
COMBOS = [(fmt, p) for fmt, precisions in exporters.PRECISIONS.items() for p in precisions]
DEPLOY_COMBOS = [("onnx", "int8"), ("onnx", "fp32"), ("openvino", "int8")]
CALIBRATION_SAMPLES = 300  # prokt-deploy export's default


def trained(arch: str, data, steps: int) -> torch.nn.Module:  # DataBundle
    """``arch`` after ``steps`` Adam steps on real batches: real BatchNorm statistics and biases."""
    torch.manual_seed(0)
    model = create_model(arch, num_classes=data.num_classes, **data.model_kwargs)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for i in range(steps):
        lo = (i * 64) % (len(data.train) - 64)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(data.train.x[lo : lo + 64]), data.train.y[lo : lo + 64]).backward()
        opt.step()
    return model.eval()


def compare(arch: str, data, combos, steps: int) -> list[dict]:  # DataBundle
    """Planner estimate (untrained ``arch``) vs real export (trained ``arch``) for each combination."""
    untrained = create_model(arch, num_classes=data.num_classes, **data.model_kwargs)
    model = trained(arch, data, steps)
    calibration = data.train.x[:CALIBRATION_SAMPLES].numpy()
    rows = []
    for fmt, precision in combos:
        planned = measure_artifact_bytes(untrained, arch, fmt, precision, data.input_shape, data.num_classes)
        with tempfile.TemporaryDirectory() as tmp:
            real = exporters.export(
                model, fmt, precision, Path(tmp), example_input=data.train.x[:2], calibration=calibration if precision == "int8" else None
            ).bytes
        rows.append(
            {
                "arch": arch,
                "params": count_params(model),
                "format": fmt,
                "precision": precision,
                "planned_bytes": planned,
                "real_bytes": real,
                "diff_bytes": real - planned,
            }
        )
        print(f"  {arch:<14} {fmt:<9} {precision:<5} planned {planned:>10,}  real {real:>10,}  diff {real - planned:+,}", flush=True)
    return rows


def ratios(rows: list[dict]) -> dict[str, float]:
    real = {(r["format"], r["precision"]): r["real_bytes"] for r in rows}
    return {fmt: round(real[(fmt, "int8")] / real[(fmt, "fp32")], 4) for fmt in exporters.PRECISIONS if (fmt, "fp32") in real}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    ap.add_argument("--all-candidates", action="store_true", help="also compare every candidate of each family")
    ap.add_argument("--train-steps", type=int, default=30)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "export_sizes.json"))
    args = ap.parse_args()

    torch.set_num_threads(1)  # tiny models: one thread is fastest on this 2-core machine
    os.environ["PROKT_DEPLOY_CACHE"] = tempfile.mkdtemp(prefix="export-sizes-cache-")  # measure, never reuse
    t0 = time.perf_counter()
    budgets, candidates = [], []
    for family in args.families:
        recipe_file, plans = SETUPS[family]
        recipe = load_recipe(ROOT / "recipes" / recipe_file)
        data = load_recipe_data(recipe)
        teacher = build_teacher(recipe.model_copy(update={"method": "kd"}), data)
        compared: dict[str, list[dict]] = {}
        for budget, formats in plans:
            r = apply_overrides(recipe, {"budget.size": budget, "budget.formats": formats, "student.family": family})
            plan = planner.plan(r, data, teacher)
            arch = plan.chosen.arch
            print(f"{family} at {budget} ({', '.join(formats)}): {arch}", flush=True)
            rows = compared.get(arch) or compare(arch, data, COMBOS, args.train_steps)
            compared[arch] = rows
            real_int8 = {x["format"]: x["real_bytes"] for x in rows if x["precision"] == plan.precision}
            budgets.append(
                {
                    "family": family,
                    "data": data.name,
                    "input_shape": list(data.input_shape),
                    "budget": budget,
                    "budget_bytes": parse_size(budget),
                    "formats": formats,
                    "teacher": recipe.teacher.arch,
                    "teacher_int8_bytes": plan.teacher_bytes,
                    "binding": plan.binding,
                    "arch": arch,
                    "params": plan.chosen.params,
                    "planned_int8_bytes": plan.chosen.bytes,
                    "real_int8_bytes": real_int8,
                    "real_within_budget": all(real_int8[f] <= parse_size(budget) for f in formats),
                    "int8_over_fp32": ratios(rows),
                    "artifacts": rows,
                }
            )
        if args.all_candidates:
            print(f"{family}: every candidate", flush=True)
            for arch in families()[family].candidates():
                candidates.extend({"family": family, **row} for row in compare(arch, data, DEPLOY_COMBOS, args.train_steps))

    print(
        f"\n{'family':<7} {'budget':>6} {'formats':<14} {'student':<14} {'format':<9} {'prec':<5} {'planned':>10} {'real':>10} {'diff':>5} {'int8/fp32':>9}"
    )
    for b in budgets:
        for row in b["artifacts"]:
            ratio = b["int8_over_fp32"].get(row["format"]) if row["precision"] == "int8" else None
            print(
                f"{b['family']:<7} {b['budget']:>6} {'+'.join(b['formats']):<14} {b['arch']:<14} {row['format']:<9} "
                f"{row['precision']:<5} {row['planned_bytes']:>10,} {row['real_bytes']:>10,} {row['diff_bytes']:>+5} "
                f"{'' if ratio is None else f'{ratio:.3f}':>9}"
            )
    rows = [r for b in budgets for r in b["artifacts"]] + candidates
    worst = max(rows, key=lambda r: abs(r["diff_bytes"]) / r["real_bytes"])
    summary = {
        "comparisons": len(rows),
        "exact": sum(r["diff_bytes"] == 0 for r in rows),
        "max_abs_diff_bytes": max(abs(r["diff_bytes"]) for r in rows),
        "max_rel_diff": round(abs(worst["diff_bytes"]) / worst["real_bytes"], 6),
        "every_planned_student_within_budget": all(b["real_within_budget"] for b in budgets),
    }
    print(
        f"\n{summary['exact']} of {summary['comparisons']} planned sizes equal the real export to the byte; "
        f"largest difference {summary['max_abs_diff_bytes']} B ({100 * summary['max_rel_diff']:.3f}%); "
        f"every planned student within budget: {summary['every_planned_student_within_budget']}"
    )
    out = {
        "benchmark": "export_sizes",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(time.perf_counter() - t0, 1),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "versions": library_versions(),
        "calibration_samples": CALIBRATION_SAMPLES,
        "train_steps": args.train_steps,
        "summary": summary,
        "budgets": budgets,
        "all_candidates": candidates,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
