"""Why does ProKT's student trail? Per-step validation paths of the student (and teacher) on one
data subset, for methods that differ in one thing at a time:

- ``scratch``: the student on labels (cross-entropy).
- ``soft-targets``: the student on a frozen, converged teacher's temperature-1 probabilities only
  (KD with alpha 1 and T 1: ProKT's student loss with a teacher that does not move). Needs
  ``--teacher-checkpoint``.
- ``prokt``: the engine's ProKT (PROKT.md), teacher as the recipe or ``--prokt-teacher`` says.
- ``prokt-batch-stats``: the same with ``prokt.teacher_targets: batch-stats``: the teacher's targets
  for the student use batch-norm *batch* statistics (running statistics untouched) instead of the
  running statistics of eval mode. A named variant, not PROKT.md's method: the reference's models
  use LayerNorm, where eval mode only turns dropout off.

Every variant uses the engine's own step functions (``prokt_deploy.train.engine``); only the loop and the
periodic validation are here. Validation accuracy is on the first ``--val-samples`` validation
images, in eval mode, every ``--every`` steps. Prints a table and writes JSON.

    python benchmarks/prokt_dynamics.py --teacher-checkpoint T/teacher.safetensors --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from quality import extra_overrides, mean_std  # noqa: E402  (benchmarks/, the script's own directory)
from torch import nn

from prokt_deploy.data import load_recipe_data
from prokt_deploy.models import create_model, zero_init_head
from prokt_deploy.recipe import apply_overrides, load_recipe
from prokt_deploy.train import engine
from prokt_deploy.train.build import build_teacher
from prokt_deploy.train.methods.kd import KDConfig, kd_method
from prokt_deploy.train.methods.prokt import prokt_method

VARIANTS = ("scratch", "soft-targets", "prokt", "prokt-batch-stats")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="recipes/fashion-mnist.yaml")
    p.add_argument("--student", default="resnet-w8-d1")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--seeds", default="0")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--max-train-samples", type=int, default=10000)
    p.add_argument("--val-samples", type=int, default=2000)
    p.add_argument("--every", type=int, default=26, help="validate every N steps")
    p.add_argument("--teacher-checkpoint", default=None, help="converged teacher (safetensors) for soft-targets")
    p.add_argument("--prokt-teacher", choices=["scratch", "checkpoint-reset-head", "checkpoint"], default="scratch")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override, e.g. prokt.lam=0.3")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/prokt_dynamics.json")
    return p.parse_args(argv)


def val_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return (engine.predict_logits(model, x, torch.device("cpu")).argmax(1) == y).float().mean().item()


def run_variant(variant: str, recipe, data, args: argparse.Namespace, seed: int) -> dict:
    engine.set_seed(seed)
    student = create_model(args.student, num_classes=data.num_classes, **data.model_kwargs)
    t = recipe.train
    total = args.epochs * engine.steps_per_epoch(len(data.train), t.batch_size)
    teacher = None
    if variant == "scratch":
        method = engine.scratch_method(student, t.student_optimizer, total, t.grad_clip)
    elif variant == "soft-targets":
        r = apply_overrides(recipe, {"method": "kd", "teacher.init": "checkpoint", "teacher.checkpoint": args.teacher_checkpoint})
        teacher = build_teacher(r, data)
        method = kd_method(student, teacher, t.student_optimizer, KDConfig(alpha=1.0, temperature=1.0), total, t.grad_clip)
    else:
        over = {
            "method": "prokt",
            "teacher.init": args.prokt_teacher,
            "prokt.teacher_targets": "batch-stats" if variant == "prokt-batch-stats" else "eval",
        }
        if args.prokt_teacher != "scratch":
            over["teacher.checkpoint"] = args.teacher_checkpoint
        r = apply_overrides(recipe, over)
        teacher = build_teacher(r, data)
        if r.prokt.zero_init_heads:
            zero_init_head(student)
        method = prokt_method(student, teacher, t.teacher_optimizer, t.student_optimizer, r.prokt, total, t.grad_clip)
    vx, vy = data.val.x[: args.val_samples], data.val.y[: args.val_samples]
    gen = torch.Generator().manual_seed(seed)
    path, step, t0 = [], 0, time.perf_counter()
    for _ in range(args.epochs):
        order = torch.randperm(len(data.train), generator=gen)
        for i in range(0, len(order) - t.batch_size + 1, t.batch_size):
            idx = order[i : i + t.batch_size]
            metrics = method.step(data.train.x[idx], data.train.y[idx])
            step += 1
            if step % args.every == 0 or step == total:
                point = {"step": step, "student_val": round(val_accuracy(student, vx, vy), 4)}
                if teacher is not None:
                    point["teacher_val"] = round(val_accuracy(teacher, vx, vy), 4)
                if "kl_q_p" in metrics:
                    point["kl_q_p"] = round(metrics["kl_q_p"], 4)
                path.append(point)
    final = path[-1]
    return {
        "variant": variant,
        "seed": seed,
        "student": args.student,
        "steps": step,
        "seconds": round(time.perf_counter() - t0, 1),
        "student_val_accuracy": final["student_val"],
        "teacher_val_accuracy": final.get("teacher_val"),
        "path": path,
    }


def summarise(records: list[dict]) -> list[dict]:
    rows = []
    for v in dict.fromkeys(r["variant"] for r in records):
        rs = [r for r in records if r["variant"] == v]
        half = [next(p["student_val"] for p in r["path"] if p["step"] >= r["steps"] // 2) for r in rs]
        rows.append(
            {
                "variant": v,
                "seeds": len(rs),
                "student_val": mean_std([r["student_val_accuracy"] for r in rs]),
                "teacher_val": mean_std([r["teacher_val_accuracy"] for r in rs if r["teacher_val_accuracy"] is not None]),
                "student_val_halfway": mean_std(half),
                "seconds": statistics.mean(r["seconds"] for r in rs),
            }
        )
    return rows


def markdown(rows: list[dict]) -> str:
    def pct(ms):
        return "-" if ms[0] is None else f"{100 * ms[0]:.2f} ± {100 * ms[1]:.2f}"

    lines = [
        "| variant | seeds | student val % halfway | student val % at the end | teacher val % at the end | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['seeds']} | {pct(r['student_val_halfway'])} | {pct(r['student_val'])} | {pct(r['teacher_val'])} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    needs_ckpt = "soft-targets" in variants or args.prokt_teacher != "scratch"
    if needs_ckpt and not args.teacher_checkpoint:
        raise SystemExit("soft-targets and a warm ProKT teacher need --teacher-checkpoint")
    recipe = apply_overrides(load_recipe(args.recipe), {"data.max_train_samples": args.max_train_samples, **extra_overrides(args.set)})
    data = load_recipe_data(recipe)
    records = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for v in variants:
            rec = run_variant(v, recipe, data, args, seed)
            records.append(rec)
            print(
                f"seed {seed} {v:<18} student val {rec['student_val_accuracy']:.4f} teacher val {rec['teacher_val_accuracy']} ({rec['seconds']:.0f}s)",
                flush=True,
            )
    rows = summarise(records)
    table = markdown(rows)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(args, k) for k in ("recipe", "student", "epochs", "max_train_samples", "val_samples", "every", "prokt_teacher", "set")}
    out.write_text(json.dumps({"settings": settings, "records": records}, indent=1) + "\n")
    out.with_suffix(".md").write_text(table + "\n")


if __name__ == "__main__":
    main()
