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

from prokt_deploy import distributed, engine
from prokt_deploy.budget import parse_size
from prokt_deploy.checkpoint import build_from_factory, load_weights, save_weights
from prokt_deploy.data import DataBundle, load_data
from prokt_deploy.errors import InterruptedRun, ModelError, RecipeError, RunError, TrainingError
from prokt_deploy.models import count_params, create_model, zero_init_head
from prokt_deploy.models.external import check_teacher_output, is_external
from prokt_deploy.planner import Plan, plan_student
from prokt_deploy.recipe import Recipe, dump_recipe, load_recipe
from prokt_deploy.runs import (
    CHECKPOINT,
    DEFAULT_RUNS_ROOT,
    MANIFEST,
    RunWorkspace,
    check_out_dir,
    default_run_path,
    final_path,
    find_resumable,
    load_checkpoint,
    mark_latest,
    save_checkpoint,
    staged_run_dir,
    write_json_atomic,
    write_text_atomic,
)

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
        seed=recipe.seed if d.split_seed is None else d.split_seed,
        val_fraction=d.val_fraction,
        test_fraction=d.test_fraction,
        max_train_samples=d.max_train_samples,
        image_size=d.image_size,
        channels=d.channels,
        text=text_options(recipe),
    )


def text_options(recipe: Recipe) -> dict | None:
    """Tokenizer and columns for text data; the tokenizer defaults to the hf: teacher's own."""
    d = recipe.data
    if recipe.task != "text-classification":
        return None
    tokenizer = d.tokenizer or (recipe.teacher.arch[3:] if recipe.teacher.arch.startswith("hf:") else None)
    return {"tokenizer": tokenizer, "max_length": d.max_length, "text_column": d.text_column, "label_column": d.label_column}


def build_teacher(recipe: Recipe, data: DataBundle) -> nn.Module:
    """The teacher as the recipe asks: registered arch or factory; from scratch or a checkpoint."""
    t = recipe.teacher
    num_classes = data.num_classes
    if t.factory:
        teacher = build_from_factory(t.factory, num_classes=num_classes, **data.model_kwargs)
    else:
        teacher = create_model(t.arch, num_classes=num_classes, **data.model_kwargs)
        if not data.is_text and is_external(t.arch):
            check_teacher_output(teacher, data.example(2), num_classes, t.arch)
    if t.init in ("checkpoint", "checkpoint-reset-head"):
        if not t.checkpoint:
            raise RecipeError(f"teacher.init is {t.init!r} but no teacher.checkpoint is set; pass --teacher-checkpoint PATH")
        load_weights(teacher, t.checkpoint)
    zero_head = t.init == "checkpoint-reset-head" or (recipe.method == "prokt" and recipe.prokt.zero_init_heads and t.init == "scratch")
    if zero_head:
        zero_init_head(teacher)
    return teacher


#: the device result file a run was planned from (``distill --latencies``), kept in the run for --resume
PLAN_LATENCIES = "plan-latencies.json"


def plan_families(recipe: Recipe, data: DataBundle) -> list[str]:
    """The student families the recipe's ``student.family`` names for this data (RecipeError if it cannot)."""
    from prokt_deploy.models import student_families

    try:
        return student_families(recipe.student.family, "text" if data.is_text else "image")
    except ModelError as exc:
        raise RecipeError(f"student.family: {exc}") from None


def plan(recipe: Recipe, data: DataBundle | None = None, teacher: nn.Module | None = None, *, exact: bool = False,
         target: str | None = None, latency_budget_ms: float | None = None, latencies: str | Path | None = None,
         bundle_dir: str | Path | None = None, recipe_path: str | None = None) -> Plan:
    """Plan the student for the recipe's budget (raises BudgetError when none fits); ``target`` /
    ``latency_budget_ms``: also time the fitting candidates (see :mod:`prokt_deploy.planner`).

    ``latencies``: take the candidates' latencies from a plan bundle's device result file instead of
    timing them here (BenchError, exit 12, for a bad file). ``bundle_dir``: write every fitting candidate's
    untrained artifact and the teacher's into an on-device bundle there (nothing is timed here);
    ``recipe_path`` is named in its README. ``target`` / ``latency_budget_ms`` default to the recipe's
    ``budget.target`` / ``budget.latency``."""
    from prokt_deploy.budget import parse_latency
    from prokt_deploy.planner import read_device_latencies

    target = target or recipe.budget.target
    if latency_budget_ms is None and recipe.budget.latency is not None:
        latency_budget_ms = parse_latency(recipe.budget.latency)
    device_latencies = read_device_latencies(latencies) if latencies is not None else None  # a bad file fails before any work
    if bundle_dir is not None:
        check_out_dir(Path(bundle_dir))
    data = data or load_recipe_data(recipe)
    fams = plan_families(recipe, data)
    writer = None
    if bundle_dir is not None:
        from prokt_deploy.bundle import write_plan_bundle

        def writer(models: dict, kept) -> None:
            write_plan_bundle(bundle_dir, models, kept, formats=recipe.budget.formats, example=data.example(2), data=data,
                              recipe_name=recipe.name, recipe_path=recipe_path or "RECIPE", budget=recipe.budget.size)
    teacher = teacher if teacher is not None else build_teacher(recipe.model_copy(update={"method": "kd"}), data)
    return plan_student(
        parse_size(recipe.budget.size),
        family=fams,
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        model_kwargs=data.model_kwargs,
        example=data.example(2),
        teacher=teacher,
        teacher_arch=recipe.teacher.factory or recipe.teacher.arch,
        precision=recipe.budget.precision,
        formats=recipe.budget.formats,
        max_teacher_fraction=recipe.budget.max_teacher_fraction,
        student_arch=recipe.student.arch,
        exact=exact,
        target=target,
        latency_budget_ms=latency_budget_ms,
        device_latencies=device_latencies,
        bundle=writer,
    )


def _attach_log(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "log.txt")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def _teacher_epochs(recipe: Recipe) -> int:
    return recipe.teacher.epochs or recipe.train.epochs


def _teacher_schedule(recipe: Recipe, data: DataBundle) -> dict:
    return engine.schedule(_teacher_epochs(recipe), len(data.train), recipe.train.batch_size, recipe.train.min_steps)


def _student_schedule(recipe: Recipe, data: DataBundle) -> dict:
    return engine.schedule(recipe.train.epochs, len(data.train), recipe.train.batch_size, recipe.train.min_steps)


def _log_schedule(phase: str, sched: dict) -> None:
    if "reason" in sched:
        log.info("%s schedule: %s", phase, sched["reason"])


def _teacher_method(recipe: Recipe, teacher: nn.Module, data: DataBundle) -> engine.Method:
    total = _teacher_schedule(recipe, data)["steps"]
    method = engine.scratch_method(teacher, recipe.train.teacher_optimizer, total, recipe.train.grad_clip)
    method.name = "teacher"
    return method


def _student_method(recipe: Recipe, student: nn.Module, teacher: nn.Module, data: DataBundle) -> engine.Method:
    total = _student_schedule(recipe, data)["steps"]
    t = recipe.train
    if recipe.method == "prokt":
        return engine.prokt_method(student, teacher, t.teacher_optimizer, t.student_optimizer, recipe.prokt, total, t.grad_clip)
    if recipe.method == "kd":
        return engine.kd_method(student, teacher, t.student_optimizer, recipe.kd, total, t.grad_clip)
    return engine.scratch_method(student, t.student_optimizer, total, t.grad_clip)


def _resume_point(ckpt: dict | None, phase: str) -> engine.Resume | None:
    if not ckpt or ckpt["current"]["phase"] != phase:
        return None
    cur = ckpt["current"]
    return engine.Resume(cur["epoch"], cur["step"], cur["sums"], cur["count"], cur["history"], cur["method"], cur["torch_rng"], cur.get("best"))


def _fit_options(recipe: Recipe, data: DataBundle) -> dict:
    """What every training phase of a run shares: augmentation of the training split, best-epoch keeping."""
    from prokt_deploy.augment import from_recipe

    augment = None if data.is_text else from_recipe(recipe.data.augment, data.input)
    return {"augment": augment, "keep_best": recipe.train.keep_best}


def student_zero_head(recipe: Recipe) -> bool:
    """Whether the student's head starts at zero: student.zero_init_head, else ProKT's zero_init_heads for prokt."""
    if recipe.student.zero_init_head is not None:
        return recipe.student.zero_init_head
    return recipe.method == "prokt" and recipe.prokt.zero_init_heads


def distill(
    recipe: Recipe | None,
    *,
    out: str | Path | None = None,
    runs_root: str | Path = DEFAULT_RUNS_ROOT,
    progress: engine.Progress | None = None,
    resume: str | Path | None = None,
    latest: bool = True,
    latencies: str | Path | None = None,
) -> RunResult:
    """Plan a student for the budget, train it with the recipe's method, write a run directory.

    Every check that can fail on bad input (data, teacher, budget) runs before the run
    directory is created. The run is written in a hidden ``.NAME.partial`` directory with a
    checkpoint after every epoch (and at the current step on Ctrl-C), renamed to NAME when
    complete. ``resume`` continues an unfinished run from its checkpoint, with the recipe it was
    started with (pass ``recipe=None``); the result equals an uninterrupted run on the same
    machine. ``latest=False`` leaves ``runs/latest`` where it is. ``latencies``: plan from a plan
    bundle's device result file (see :func:`plan`); the file is kept in the run as
    ``plan-latencies.json`` and a resume plans from it again.
    """
    if recipe is None and resume is None:
        raise ValueError("distill needs a recipe, or resume= to continue an unfinished run")
    t0 = time.perf_counter()
    ckpt = None
    if resume is not None:
        partial = find_resumable(resume)
        final = final_path(partial)
        recipe = load_recipe(partial / "recipe.yaml")
        # killed before its first checkpoint: start again from step 0 with the saved recipe
        ckpt = load_checkpoint(partial / CHECKPOINT) if (partial / CHECKPOINT).is_file() else None
        if (partial / PLAN_LATENCIES).is_file():
            latencies = partial / PLAN_LATENCIES
    else:
        final = Path(out) if out is not None else default_run_path(Path(runs_root), recipe.name, recipe.method)
        check_out_dir(final)
    timings: dict[str, float] = dict(ckpt["timings"]) if ckpt else {}
    engine.set_seed(recipe.seed)
    device = distributed.init(engine.resolve_device(recipe.device))
    main = distributed.is_main()  # only rank 0 writes
    data = load_recipe_data(recipe)
    timings.setdefault("load_data_s", time.perf_counter() - t0)

    teacher = build_teacher(recipe, data)
    t = time.perf_counter()
    the_plan = plan(recipe, data, teacher, latencies=latencies)
    timings.setdefault("plan_s", time.perf_counter() - t)
    engine.set_seed(recipe.seed)  # the plan built models: reseed so training init depends only on the seed
    student_arch = ckpt["student_arch"] if ckpt else the_plan.chosen.arch
    student = create_model(student_arch, num_classes=data.num_classes, **data.model_kwargs)
    if recipe.student.init_embeddings == "teacher-pca" and ckpt is None:
        from prokt_deploy.models.text import init_embeddings_from_teacher

        if not (data.is_text and init_embeddings_from_teacher(student, teacher, data.model_kwargs["vocab_size"])):
            raise RecipeError(f"student.init_embeddings: teacher-pca needs text models whose token embeddings share the vocabulary "
                              f"and a student no wider than the teacher ({student_arch} from {recipe.teacher.arch})")
    if student_zero_head(recipe):
        zero_init_head(student)
    teacher.to(device)
    student.to(device)

    ws = RunWorkspace(final)
    opened = True
    if main:
        try:
            ws.open(resume=resume is not None)
        except BaseException:
            opened = False
            if not distributed.active():
                raise
    if not distributed.all_ok(opened):
        raise RunError(f"rank 0 could not open the run directory {final}")
    handler = _attach_log(ws.path) if main else logging.NullHandler()
    history: dict[str, list[dict]] = dict(ckpt["completed"]) if ckpt else {}
    try:
        if main and ckpt is None:
            write_text_atomic(ws.path / "recipe.yaml", dump_recipe(recipe))  # whole or absent: --resume reads it
            if latencies is not None:
                write_text_atomic(ws.path / PLAN_LATENCIES, Path(latencies).read_text())
            log.info("plan: %s -> %s (%s bytes)", the_plan.note, student_arch, the_plan.chosen.estimated_bytes)
        if main and ckpt is None and resume is not None:
            log.info("resumed a run stopped before its first checkpoint: starting again from step 0")
        elif main and ckpt is not None:
            log.info("resuming %s phase at epoch %d step %d", ckpt["current"]["phase"], ckpt["current"]["epoch"] + 1, ckpt["current"]["step"])

        def saver(done: dict[str, list[dict]], best_done: dict | None = None):
            def save(state: dict) -> None:
                save_checkpoint(ws.checkpoint, {"student_arch": student_arch, "completed": done, "current": state, "timings": timings,
                                                "best_epochs": dict(best_done or {})})

            return save

        fit = dict(seed=recipe.seed, device=device, progress=progress, batch_size=recipe.train.batch_size, **_fit_options(recipe, data))
        best_epochs: dict[str, int | None] = dict(ckpt.get("best_epochs", {})) if ckpt else {}
        teacher_used = recipe.method != "scratch"
        pretrain = (recipe.method == "kd" and recipe.teacher.init != "checkpoint") or (recipe.method == "prokt" and recipe.teacher.init == "pretrain")
        schedules = {"teacher": _teacher_schedule(recipe, data)} if pretrain else {}
        schedules["student"] = _student_schedule(recipe, data)
        if main:
            for phase, sched in schedules.items():
                _log_schedule(phase, sched)
        if pretrain and "teacher" not in history:
            t = time.perf_counter()
            method = _teacher_method(recipe, distributed.wrap(teacher, device), data)
            history["teacher"] = engine.fit(method, data, epochs=schedules["teacher"]["epochs"], phase="teacher (CE)", save=saver({}), resume=_resume_point(ckpt, "teacher (CE)"), **fit)
            best_epochs["teacher"] = method.best_epoch
            timings["teacher_train_s"] = timings.get("teacher_train_s", 0.0) + time.perf_counter() - t
            if recipe.method == "prokt":
                # the reference's start (PROKT.md): a trained backbone, the head reset to zero, fine-tuned jointly.
                # Only here, right after pretraining: a resumed ProKT phase loads the teacher from its checkpoint.
                zero_init_head(teacher)
        trained_teacher = distributed.wrap(teacher, device) if recipe.method == "prokt" else teacher  # kd's teacher is frozen
        method = _student_method(recipe, distributed.wrap(student, device), trained_teacher, data)
        t = time.perf_counter()
        history["student"] = engine.fit(method, data, epochs=schedules["student"]["epochs"], phase=recipe.method, save=saver(dict(history), best_epochs), resume=_resume_point(ckpt, recipe.method), **fit)
        best_epochs["student"] = method.best_epoch
        timings["train_s"] = timings.get("train_s", 0.0) + time.perf_counter() - t

        metrics = {
            "student_test_accuracy": engine.accuracy(student, data.test, device),
            "student_val_accuracy": engine.accuracy(student, data.val, device),
            "teacher_test_accuracy": engine.accuracy(teacher, data.test, device) if teacher_used else None,
            "teacher_val_accuracy": engine.accuracy(teacher, data.val, device) if teacher_used else None,
            "history": history,
            "best_epoch": best_epochs.get("student"),
            "teacher_best_epoch": best_epochs.get("teacher"),
            "epochs": schedules["student"]["epochs"],  # run, after train.min_steps (see schedule)
            "schedule": schedules,
        }
        timings["total_s"] = timings.get("total_s", 0.0) + time.perf_counter() - t0
        manifest = _manifest(recipe, the_plan, student_arch, data, student, teacher, teacher_used, metrics, device, timings, final)
        manifest["distributed"] = {"world_size": distributed.world_size(), "backend": distributed.backend()}
        if ckpt is not None:
            manifest["resumed"] = True
        if main:
            save_weights(student, ws.path / "student.safetensors")
            if data.is_text:
                manifest["input"]["tokenizer_files"] = copy_tokenizer(data.input["tokenizer"], ws.path / "tokenizer")
            if teacher_used:
                save_weights(teacher, ws.path / "teacher.safetensors")
            write_json_atomic(ws.path / MANIFEST, manifest)
            log.info("student test accuracy %.4f", metrics["student_test_accuracy"])
    except engine.Interrupted:
        if main:
            ws.abandon()
        raise InterruptedRun(f"interrupted; progress saved in {ws.path}: continue with 'prokt-deploy distill --resume {final}'") from None
    except TrainingError as e:
        kept = ws.abandon() if main else False
        where = f"; the last good checkpoint is kept in {ws.path}" if kept else ""
        raise TrainingError(f"{e}{where}") from None
    except OSError as e:  # disk full, file too large, ...: exit 13; a checkpoint already written stays resumable
        kept = ws.abandon() if main else False
        if not kept:
            raise
        raise OSError(e.errno, f"{e.strerror or e}; the last checkpoint is kept in {ws.path}: free space, then "
                               f"'prokt-deploy distill --resume {final}'", e.filename) from None
    except BaseException:
        kept = ws.abandon() if main else False
        if kept:
            log.info("stopped; checkpoint kept in %s", ws.path)
        raise
    finally:
        log.removeHandler(handler)
        handler.close()
    if main:
        ws.commit()
        if latest:  # compare's baseline runs live inside a run and do not move runs/latest
            mark_latest(Path(runs_root), final)
    if not distributed.all_ok(True):  # wait until rank 0 has moved the run into place
        raise RunError("a rank failed at the end of the run")
    return RunResult(final, manifest)


def _manifest(recipe, the_plan: Plan, student_arch, data, student, teacher, teacher_used, metrics, device, timings, final) -> dict:
    c = next((c for c in the_plan.candidates if c.arch == student_arch), the_plan.chosen)
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
        "plan": {"binding": the_plan.binding, "note": the_plan.note, "teacher_bytes": the_plan.teacher_bytes, "families": the_plan.families,
                 "target": the_plan.target, "latency_source": the_plan.latency_source, "latency_ms": c.latency_ms,
                 "teacher_latency_ms": the_plan.teacher_latency_ms},
        "student": {"arch": student_arch, "params": count_params(student), "macs": c.macs, "estimated_bytes": c.estimated_bytes, "bytes_by_format": c.bytes, "weights": "student.safetensors"},
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


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def copy_tokenizer(source: str | Path, dest: Path) -> list[str]:
    """Copy the tokenizer files the device needs next to the run's models; returns their names."""
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in TOKENIZER_FILES:
        if (Path(source) / name).is_file():
            shutil.copyfile(Path(source) / name, dest / name)
            copied.append(f"tokenizer/{name}")
    return copied


def train_teacher(recipe: Recipe, *, out: str | Path, progress: engine.Progress | None = None) -> RunResult:
    """Train a converged teacher with cross-entropy and save it (for ``kd`` or as a ProKT warm start)."""
    final = Path(out)
    check_out_dir(final)  # before the data is loaded and the teacher built: nothing wasted on a refusal
    engine.set_seed(recipe.seed)
    device = engine.resolve_device(recipe.device)
    data = load_recipe_data(recipe)
    teacher = build_teacher(recipe.model_copy(update={"method": "kd"}), data).to(device)
    with staged_run_dir(final) as run_dir:
        t = time.perf_counter()
        method = _teacher_method(recipe, teacher, data)
        sched = _teacher_schedule(recipe, data)
        _log_schedule("teacher", sched)
        history = engine.fit(method, data, epochs=sched["epochs"], batch_size=recipe.train.batch_size, seed=recipe.seed, device=device,
                             progress=progress, phase="teacher (CE)", **_fit_options(recipe, data))
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
                "best_epoch": method.best_epoch,
                "epochs": sched["epochs"],
                "schedule": {"teacher": sched},
                "history": history,
            },
            "versions": library_versions(),
            "timings": {"train_s": round(time.perf_counter() - t, 3)},
        }
        write_json_atomic(run_dir / MANIFEST, manifest)
    return RunResult(final, manifest)
