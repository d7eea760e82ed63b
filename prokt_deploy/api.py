"""The library's public functions: ``plan``, ``distill``, ``train_teacher``.

The CLI only parses arguments and calls these.
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from torch import nn

from prokt_deploy import engine
from prokt_deploy.budget import parse_size
from prokt_deploy.checkpoint import build_from_factory, load_weights, save_weights
from prokt_deploy.data import DataBundle, load_data
from prokt_deploy.errors import RecipeError
from prokt_deploy.models import count_params, create_model, zero_init_head
from prokt_deploy.planner import Plan, plan_student
from prokt_deploy.recipe import Recipe, dump_recipe
from prokt_deploy.runs import DEFAULT_RUNS_ROOT, MANIFEST, default_run_path, mark_latest, staged_run_dir, write_json_atomic

log = logging.getLogger("prokt_deploy")
MANIFEST_SCHEMA_VERSION = 1


@dataclass
class RunResult:
    path: Path
    manifest: dict


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("prokt-deploy", "torch", "numpy", "onnx", "onnxruntime", "openvino", "nncf"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def load_recipe_data(recipe: Recipe) -> DataBundle:
    d = recipe.data
    return load_data(
        d.source,
        path=d.path,
        seed=recipe.seed,
        val_fraction=d.val_fraction,
        test_fraction=d.test_fraction,
        max_train_samples=d.max_train_samples,
        image_size=d.image_size,
        channels=d.channels,
    )


def build_teacher(recipe: Recipe, data: DataBundle) -> nn.Module:
    """The teacher as the recipe asks: registered arch or factory; from scratch or a checkpoint."""
    t = recipe.teacher
    in_channels, num_classes = data.input_shape[0], data.num_classes
    if t.factory:
        teacher = build_from_factory(t.factory, num_classes=num_classes, in_channels=in_channels)
    else:
        teacher = create_model(t.arch, num_classes=num_classes, in_channels=in_channels)
    if t.init != "scratch":
        if not t.checkpoint:
            raise RecipeError(f"teacher.init is {t.init!r} but no teacher.checkpoint is set; pass --teacher-checkpoint PATH")
        load_weights(teacher, t.checkpoint)
    zero_head = t.init == "checkpoint-reset-head" or (recipe.method == "prokt" and recipe.prokt.zero_init_heads and t.init == "scratch")
    if zero_head:
        zero_init_head(teacher)
    return teacher


def plan(recipe: Recipe, data: DataBundle | None = None, teacher: nn.Module | None = None, *, exact: bool = False) -> Plan:
    """Plan the student for the recipe's budget (raises BudgetError when none fits)."""
    data = data or load_recipe_data(recipe)
    teacher = teacher if teacher is not None else build_teacher(recipe.model_copy(update={"method": "kd"}), data)
    return plan_student(
        parse_size(recipe.budget.size),
        family=recipe.student.family,
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        teacher=teacher,
        teacher_arch=recipe.teacher.factory or recipe.teacher.arch,
        precision=recipe.budget.precision,
        formats=recipe.budget.formats,
        max_teacher_fraction=recipe.budget.max_teacher_fraction,
        student_arch=recipe.student.arch,
        exact=exact,
    )


def _attach_log(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "log.txt")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def _train_converged_teacher(recipe: Recipe, teacher: nn.Module, data: DataBundle, device: torch.device, progress) -> list[dict]:
    epochs = recipe.teacher.epochs or recipe.train.epochs
    total = epochs * engine.steps_per_epoch(len(data.train), recipe.train.batch_size)
    method = engine.scratch_method(teacher, recipe.train.teacher_optimizer, total, recipe.train.grad_clip)
    method.name = "teacher"
    return engine.fit(method, data, epochs=epochs, batch_size=recipe.train.batch_size, seed=recipe.seed, device=device, progress=progress, phase="teacher (CE)")


def distill(
    recipe: Recipe,
    *,
    out: str | Path | None = None,
    runs_root: str | Path = DEFAULT_RUNS_ROOT,
    progress: engine.Progress | None = None,
) -> RunResult:
    """Plan a student for the budget, train it with the recipe's method, write a run directory.

    Every check that can fail on bad input (data, teacher, budget) runs before the run
    directory is created; any failure after that removes the staging directory.
    """
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    engine.set_seed(recipe.seed)
    device = engine.resolve_device(recipe.device)
    data = load_recipe_data(recipe)
    timings["load_data_s"] = time.perf_counter() - t0

    teacher = build_teacher(recipe, data)
    t = time.perf_counter()
    the_plan = plan(recipe, data, teacher)
    timings["plan_s"] = time.perf_counter() - t
    engine.set_seed(recipe.seed)  # the plan built models: reseed so training init depends only on the seed
    student = create_model(the_plan.chosen.arch, num_classes=data.num_classes, in_channels=data.input_shape[0])
    if recipe.method == "prokt" and recipe.prokt.zero_init_heads:
        zero_init_head(student)
    teacher.to(device)
    student.to(device)

    runs_root = Path(runs_root)
    final = Path(out) if out is not None else default_run_path(runs_root, recipe.name, recipe.method)
    with staged_run_dir(final) as run_dir:
        handler = _attach_log(run_dir)
        try:
            log.info("plan: %s -> %s (%s bytes)", the_plan.note, the_plan.chosen.arch, the_plan.chosen.estimated_bytes)
            history: dict[str, list[dict]] = {}
            epochs, bs = recipe.train.epochs, recipe.train.batch_size
            total = epochs * engine.steps_per_epoch(len(data.train), bs)
            teacher_used = recipe.method != "scratch"
            if recipe.method == "kd" and recipe.teacher.init != "checkpoint":
                t = time.perf_counter()
                history["teacher"] = _train_converged_teacher(recipe, teacher, data, device, progress)
                timings["teacher_train_s"] = time.perf_counter() - t
            if recipe.method == "prokt":
                method = engine.prokt_method(student, teacher, recipe.train.teacher_optimizer, recipe.train.student_optimizer, recipe.prokt, total, recipe.train.grad_clip)
            elif recipe.method == "kd":
                method = engine.kd_method(student, teacher, recipe.train.student_optimizer, recipe.kd, total, recipe.train.grad_clip)
            else:
                method = engine.scratch_method(student, recipe.train.student_optimizer, total, recipe.train.grad_clip)
            t = time.perf_counter()
            history["student"] = engine.fit(method, data, epochs=epochs, batch_size=bs, seed=recipe.seed, device=device, progress=progress, phase=recipe.method)
            timings["train_s"] = time.perf_counter() - t
            for record in history["student"]:
                log.info("epoch %s", record)

            metrics = {
                "student_test_accuracy": engine.accuracy(student, data.test, device),
                "student_val_accuracy": engine.accuracy(student, data.val, device),
                "teacher_test_accuracy": engine.accuracy(teacher, data.test, device) if teacher_used else None,
                "teacher_val_accuracy": engine.accuracy(teacher, data.val, device) if teacher_used else None,
                "history": history,
            }
            save_weights(student, run_dir / "student.safetensors")
            if teacher_used:
                save_weights(teacher, run_dir / "teacher.safetensors")
            (run_dir / "recipe.yaml").write_text(dump_recipe(recipe))
            timings["total_s"] = time.perf_counter() - t0
            manifest = _manifest(recipe, the_plan, data, student, teacher, teacher_used, metrics, device, timings, final)
            write_json_atomic(run_dir / MANIFEST, manifest)
            log.info("student test accuracy %.4f", metrics["student_test_accuracy"])
        finally:
            log.removeHandler(handler)
            handler.close()
    mark_latest(runs_root, final)
    return RunResult(final, manifest)


def _manifest(recipe, the_plan: Plan, data, student, teacher, teacher_used, metrics, device, timings, final) -> dict:
    c = the_plan.chosen
    return {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "kind": "distill",
        "run": final.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "recipe": recipe.name,
        "method": recipe.method,
        "seed": recipe.seed,
        "device": str(device),
        "budget": recipe.budget.size,
        "budget_bytes": the_plan.budget_bytes,
        "precision": the_plan.precision,
        "formats": the_plan.formats,
        "plan": {"binding": the_plan.binding, "note": the_plan.note, "teacher_bytes": the_plan.teacher_bytes},
        "student": {"arch": c.arch, "params": c.params, "macs": c.macs, "estimated_bytes": c.estimated_bytes, "bytes_by_format": c.bytes, "weights": "student.safetensors"},
        "teacher": {
            "arch": recipe.teacher.arch,
            "factory": recipe.teacher.factory,
            "params": count_params(teacher),
            "init": recipe.teacher.init,
            "checkpoint": recipe.teacher.checkpoint,
            "weights": "teacher.safetensors" if teacher_used else None,
        },
        "data": {"source": data.name, "train": len(data.train), "val": len(data.val), "test": len(data.test)},
        "input": {**data.input},
        "classes": data.classes,
        "metrics": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()},
        "versions": library_versions(),
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "artifacts": [],
    }


def train_teacher(recipe: Recipe, *, out: str | Path, progress: engine.Progress | None = None) -> RunResult:
    """Train a converged teacher with cross-entropy and save it (for ``kd`` or as a ProKT warm start)."""
    engine.set_seed(recipe.seed)
    device = engine.resolve_device(recipe.device)
    data = load_recipe_data(recipe)
    teacher = build_teacher(recipe.model_copy(update={"method": "kd"}), data).to(device)
    final = Path(out)
    with staged_run_dir(final) as run_dir:
        t = time.perf_counter()
        history = _train_converged_teacher(recipe, teacher, data, device, progress)
        save_weights(teacher, run_dir / "teacher.safetensors")
        (run_dir / "recipe.yaml").write_text(dump_recipe(recipe))
        manifest = {
            "schema_version": MANIFEST_SCHEMA_VERSION,
            "kind": "teacher",
            "recipe": recipe.name,
            "seed": recipe.seed,
            "teacher": {"arch": recipe.teacher.arch, "factory": recipe.teacher.factory, "params": count_params(teacher), "weights": "teacher.safetensors"},
            "input": data.input,
            "classes": data.classes,
            "metrics": {
                "teacher_test_accuracy": round(engine.accuracy(teacher, data.test, device), 6),
                "teacher_val_accuracy": round(engine.accuracy(teacher, data.val, device), 6),
                "history": history,
            },
            "versions": library_versions(),
            "timings": {"train_s": round(time.perf_counter() - t, 3)},
        }
        write_json_atomic(run_dir / MANIFEST, manifest)
    return RunResult(final, manifest)
