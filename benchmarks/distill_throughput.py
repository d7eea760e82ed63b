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

Image models are timed in both memory layouts, NCHW and channels-last (NHWC: what ``engine.fit``
trains in on the CPU, see ``engine.use_channels_last``), interleaved in the same rounds, so the
layout speed-up is a ratio measured side by side.

    python benchmarks/distill_throughput.py --student pool-w16-d3   # fashion-mnist recipe, its default student
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

from prokt_deploy import planner
from prokt_deploy.data import load_recipe_data
from prokt_deploy.harness.fingerprint import fingerprint
from prokt_deploy.models import create_model, zero_init_head
from prokt_deploy.recipe import apply_overrides, load_recipe
from prokt_deploy.train import engine
from prokt_deploy.train.build import build_teacher
from prokt_deploy.train.distill import library_versions
from prokt_deploy.train.methods.kd import kd_method
from prokt_deploy.train.methods.prokt import prokt_method

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "fashion-mnist.yaml"))
    ap.add_argument("--budget", default=None, help="override the recipe budget")
    ap.add_argument("--student", default=None, help="the student architecture (default: the planner's choice, which may time candidates)")
    ap.add_argument("--layouts", default="nchw,nhwc", help="memory layouts to time side by side (image data only)")
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps per method per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "distill_throughput.json"))
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    recipe = apply_overrides(load_recipe(args.recipe), {"budget.size": args.budget, "data.max_train_samples": 20_000})
    data = load_recipe_data(recipe)
    teacher = build_teacher(recipe, data)
    student_arch = args.student or planner.plan(recipe, data, teacher).chosen.arch
    bs = recipe.train.batch_size
    image = data.train.x.dim() == 4 and data.train.x.is_floating_point()
    layouts = [name for name in args.layouts.split(",") if name] if image else ["nchw"]
    if not set(layouts) <= {"nchw", "nhwc"}:
        ap.error(f"--layouts: nchw and/or nhwc, got {args.layouts!r}")
    batches = {
        layout: [
            (
                data.train.x[i : i + bs].contiguous(memory_format=torch.channels_last if layout == "nhwc" else torch.contiguous_format),
                data.train.y[i : i + bs],
            )
            for i in range(0, args.steps * bs, bs)
        ]
        for layout in layouts
    }
    total = args.steps * args.rounds * 10

    def fresh(method: str, layout: str) -> engine.Method:
        torch.manual_seed(0)
        student = create_model(student_arch, num_classes=data.num_classes, **data.model_kwargs)
        t = create_model(recipe.teacher.arch, num_classes=data.num_classes, **data.model_kwargs)
        if layout == "nhwc":
            student.to(memory_format=torch.channels_last)
            t.to(memory_format=torch.channels_last)
        if method == "prokt":
            zero_init_head(student)
            zero_init_head(t)
            return prokt_method(student, t, recipe.train.teacher_optimizer, recipe.train.student_optimizer, recipe.prokt, total, 1.0)
        if method == "kd":
            return kd_method(student, t, recipe.train.student_optimizer, recipe.kd, total, 1.0)
        return engine.scratch_method(student, recipe.train.student_optimizer, total, 1.0)

    methods = {(name, layout): fresh(name, layout) for name in ("scratch", "kd", "prokt") for layout in layouts}
    for (_, layout), m in methods.items():  # warm-up
        for x, y in batches[layout][:2]:
            m.step(x, y)
    rates: dict[tuple[str, str], list[float]] = {key: [] for key in methods}
    for _ in range(args.rounds):
        for (name, layout), m in methods.items():
            start = time.perf_counter()
            for x, y in batches[layout]:
                m.step(x, y)
            rates[name, layout].append(len(batches[layout]) * bs / (time.perf_counter() - start))

    # Unit costs of the four passes PROKT.md needs (per batch, seconds), interleaved too, in the first layout.
    s_model, t_model = methods["prokt", layouts[0]].student, methods["prokt", layouts[0]].teacher
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
            for x, y in batches[layouts[0]]:
                fn(x, y)
            unit[key].append((time.perf_counter() - start) / len(batches[layouts[0]]))

    med = {k: statistics.median(v) for k, v in rates.items()}
    u = {k: statistics.median(v) for k, v in unit.items()}
    predicted = (u["teacher_fwd_bwd"] + u["teacher_fwd"] + u["student_fwd"] + u["student_fwd_bwd"]) / (u["teacher_fwd"] + u["student_fwd_bwd"])
    first = layouts[0]
    measured = med["kd", first] / med["prokt", first]
    result = {
        "recipe": recipe.name,
        "teacher": recipe.teacher.arch,
        "student": student_arch,
        "batch_size": bs,
        "threads": args.threads,
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "machine": {k: fingerprint(runtimes=False)["cpu"][k] for k in ("model", "flags", "int8_dot_product", "usable_cores")},
        "layouts": layouts,
        # samples_per_s[layout][method]
        "samples_per_s": {
            layout: {k: {"median": round(med[k, layout], 1), "all": [round(r, 1) for r in rates[k, layout]]} for k in ("scratch", "kd", "prokt")}
            for layout in layouts
        },
        "nhwc_speedup": {k: round(med[k, "nhwc"] / med[k, "nchw"], 3) for k in ("scratch", "kd", "prokt")} if len(layouts) == 2 else None,
        "unit_seconds_per_batch": {k: round(v, 5) for k, v in u.items()},
        "unit_layout": first,
        "prokt_over_kd_time": {
            "layout": first,
            "measured": round(measured, 3),
            "predicted_from_passes": round(predicted, 3),
            "excess": round(measured / predicted - 1, 3),
        },
        "prokt_over_scratch_time": round(med["scratch", first] / med["prokt", first], 3),
        "versions": library_versions(),
    }
    print(f"{'method':<10}{'layout':<8}{'samples/s (median)':>20}{'min':>10}{'max':>10}")
    for k in ("scratch", "kd", "prokt"):
        for layout in layouts:
            r = rates[k, layout]
            print(f"{k:<10}{layout:<8}{med[k, layout]:>20.1f}{min(r):>10.1f}{max(r):>10.1f}")
    if result["nhwc_speedup"]:
        print("channels-last (nhwc) over nchw, samples/s: " + ", ".join(f"{k} {v:.2f}x" for k, v in result["nhwc_speedup"].items()))
    print(
        f"ProKT/KD time ({first}): measured {measured:.2f}x, predicted from PROKT.md's passes {predicted:.2f}x (excess {measured / predicted - 1:+.1%})"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
