"""Training throughput of scratch, kd and prokt, measured side by side in one process.

For each method the real engine step (prokt_deploy.train.engine) runs on the same batches of the
recipe's data with the planned student and the recipe's teacher. Methods are interleaved in
rounds (scratch, kd, prokt, scratch, ...) so machine noise hits all of them alike; the median
over rounds is reported.

PROKT.md's pass count: per step ProKT runs teacher forward+backward, teacher forward (eval),
student forward (eval) and student forward+backward; KD runs teacher forward (eval) and
student forward+backward. The unit costs of those four passes are timed separately, which
predicts the ProKT/KD time ratio; a measured ratio near the prediction means ProKT does no pass
beyond the ones it needs.

    python benchmarks/distill_throughput.py                       # fashion-mnist recipe
    python benchmarks/distill_throughput.py --recipe recipes/digits.yaml --rounds 3 --steps 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from prokt_deploy.data import load_recipe_data
from prokt_deploy.models import create_model, zero_init_head
from prokt_deploy.recipe import apply_overrides, load_recipe
from prokt_deploy.train import engine, planner
from prokt_deploy.train.build import build_teacher
from prokt_deploy.train.distill import library_versions

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "fashion-mnist.yaml"))
    ap.add_argument("--budget", default=None, help="override the recipe budget")
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps per method per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "distill_throughput.json"))
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    recipe = apply_overrides(load_recipe(args.recipe), {"budget.size": args.budget, "data.max_train_samples": 20_000})
    data = load_recipe_data(recipe)
    teacher = build_teacher(recipe, data)
    plan = planner.plan(recipe, data, teacher)
    student_arch = plan.chosen.arch
    bs = recipe.train.batch_size
    batches = [(data.train.x[i : i + bs], data.train.y[i : i + bs]) for i in range(0, args.steps * bs, bs)]
    total = args.steps * args.rounds * 10

    def fresh(method: str) -> engine.Method:
        torch.manual_seed(0)
        student = create_model(student_arch, num_classes=data.num_classes, **data.model_kwargs)
        t = create_model(recipe.teacher.arch, num_classes=data.num_classes, **data.model_kwargs)
        if method == "prokt":
            zero_init_head(student)
            zero_init_head(t)
            return engine.prokt_method(student, t, recipe.train.teacher_optimizer, recipe.train.student_optimizer, recipe.prokt, total, 1.0)
        if method == "kd":
            return engine.kd_method(student, t, recipe.train.student_optimizer, recipe.kd, total, 1.0)
        return engine.scratch_method(student, recipe.train.student_optimizer, total, 1.0)

    methods = {name: fresh(name) for name in ("scratch", "kd", "prokt")}
    for m in methods.values():  # warm-up
        for x, y in batches[:2]:
            m.step(x, y)
    rates: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.rounds):
        for name, m in methods.items():
            start = time.perf_counter()
            for x, y in batches:
                m.step(x, y)
            rates[name].append(len(batches) * bs / (time.perf_counter() - start))

    # Unit costs of the four passes PROKT.md needs (per batch, seconds), interleaved too.
    s_model, t_model = methods["prokt"].student, methods["prokt"].teacher
    opt_t = torch.optim.AdamW(t_model.parameters(), lr=1e-6)
    opt_s = torch.optim.AdamW(s_model.parameters(), lr=1e-6)

    def fwd_bwd(model, opt, x, y):
        model.train()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    @torch.no_grad()
    def fwd(model, x):
        model.eval()
        model(x)

    unit: dict[str, list[float]] = {"teacher_fwd_bwd": [], "teacher_fwd": [], "student_fwd": [], "student_fwd_bwd": []}
    for _ in range(args.rounds):
        for key, fn in (
            ("teacher_fwd_bwd", lambda x, y: fwd_bwd(t_model, opt_t, x, y)),
            ("teacher_fwd", lambda x, y: fwd(t_model, x)),
            ("student_fwd", lambda x, y: fwd(s_model, x)),
            ("student_fwd_bwd", lambda x, y: fwd_bwd(s_model, opt_s, x, y)),
        ):
            start = time.perf_counter()
            for x, y in batches:
                fn(x, y)
            unit[key].append((time.perf_counter() - start) / len(batches))

    med = {k: statistics.median(v) for k, v in rates.items()}
    u = {k: statistics.median(v) for k, v in unit.items()}
    predicted = (u["teacher_fwd_bwd"] + u["teacher_fwd"] + u["student_fwd"] + u["student_fwd_bwd"]) / (u["teacher_fwd"] + u["student_fwd_bwd"])
    measured = med["kd"] / med["prokt"]
    result = {
        "recipe": recipe.name,
        "teacher": recipe.teacher.arch,
        "student": student_arch,
        "batch_size": bs,
        "threads": args.threads,
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "samples_per_s": {k: {"median": round(v, 1), "all": [round(r, 1) for r in rates[k]]} for k, v in med.items()},
        "unit_seconds_per_batch": {k: round(v, 5) for k, v in u.items()},
        "prokt_over_kd_time": {
            "measured": round(measured, 3),
            "predicted_from_passes": round(predicted, 3),
            "excess": round(measured / predicted - 1, 3),
        },
        "prokt_over_scratch_time": round(med["scratch"] / med["prokt"], 3),
        "versions": library_versions(),
    }
    print(f"{'method':<10}{'samples/s (median)':>20}{'min':>10}{'max':>10}")
    for k in ("scratch", "kd", "prokt"):
        print(f"{k:<10}{med[k]:>20.1f}{min(rates[k]):>10.1f}{max(rates[k]):>10.1f}")
    print(f"ProKT/KD time: measured {measured:.2f}x, predicted from PROKT.md's passes {predicted:.2f}x (excess {measured / predicted - 1:+.1%})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
