"""``distill`` and ``train_teacher``: train a run's models and write its directory.

``distill`` reads top to bottom: :func:`_prepare` (a new or resumed run: recipe, data, teacher, plan,
student; every check before anything is written), :func:`_train_phases` (the teacher's CE phase when the
method needs one, then the method), :func:`_write_run` (scores, weights, manifest), :func:`_finish` (the
directory moved into place). :func:`_keeping_the_checkpoint` is what happens on every way it can stop.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from torch import nn

from prokt_deploy.data import DataBundle, labels_record, load_recipe_data
from prokt_deploy.errors import InterruptedRun, RecipeError, RunError, TrainingError
from prokt_deploy.models import count_params, create_model, zero_init_head
from prokt_deploy.planner import Plan, plan
from prokt_deploy.recipe import Recipe, dump_recipe, load_recipe
from prokt_deploy.rundir.checkpoint import save_weights
from prokt_deploy.rundir.reader import Manifest, ModelEntry, write_manifest
from prokt_deploy.rundir.workspace import (
    CHECKPOINT,
    DEFAULT_RUNS_ROOT,
    RunWorkspace,
    check_out_dir,
    default_run_path,
    final_path,
    find_resumable,
    load_checkpoint,
    mark_latest,
    save_checkpoint,
    staged_run_dir,
    write_text_atomic,
)
from prokt_deploy.train import distributed, engine, methods
from prokt_deploy.train.build import build_teacher, student_zero_head

log = logging.getLogger("prokt_deploy")


@dataclass
class RunResult:
    """A finished run: its directory and its manifest as written."""

    path: Path
    manifest: Manifest


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("prokt-deploy", "torch", "numpy", "onnx", "onnxruntime", "openvino", "nncf"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


#: the device result file a run was planned from (``distill --latencies``), kept in the run for --resume
PLAN_LATENCIES = "plan-latencies.json"


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
    """The method's phase. With an unlabelled pool, a method that learns from it runs its epochs over the labelled and
    unlabelled samples together; one that cannot (scratch) runs on the labelled ones for at least as many optimizer
    steps (its epochs raised), so every method of a comparison gets the same number of updates."""
    t = recipe.train
    n_labelled, n_unlabelled = len(data.train), data.n_unlabeled
    if not n_unlabelled:
        return engine.schedule(t.epochs, n_labelled, t.batch_size, t.min_steps)
    if methods.get(recipe.method).unlabeled:
        return {**engine.schedule(t.epochs, n_labelled + n_unlabelled, t.batch_size, t.min_steps), "transfer_set": True}
    transfer_steps = t.epochs * engine.steps_per_epoch(n_labelled + n_unlabelled, t.batch_size)
    sched = engine.schedule(t.epochs, n_labelled, t.batch_size, max(t.min_steps, transfer_steps))
    if sched["epochs"] != t.epochs:
        sched["reason"] = (
            f"{recipe.method} cannot learn from the {n_unlabelled} unlabelled samples: {sched['epochs']} epochs over the {n_labelled} "
            f"labelled ones, at least the {transfer_steps} optimizer steps of {t.epochs} epochs over labelled + unlabelled"
        )
    return {**sched, "transfer_set": False}


def _log_schedule(phase: str, sched: dict) -> None:
    if "reason" in sched:
        log.info("%s schedule: %s", phase, sched["reason"])


def _teacher_method(recipe: Recipe, teacher: nn.Module, data: DataBundle) -> engine.Method:
    total = _teacher_schedule(recipe, data)["steps"]
    method = engine.scratch_method(teacher, recipe.train.teacher_optimizer, total, recipe.train.grad_clip)
    method.name = "teacher"
    return method


def _student_method(recipe: Recipe, student: nn.Module, teacher: nn.Module, data: DataBundle) -> engine.Method:
    spec = methods.get(recipe.method)
    total = _student_schedule(recipe, data)["steps"]
    outputs = None
    if spec.teacher == "frozen":
        # a frozen teacher sees each sample unchanged every epoch unless the batches are augmented: its logits
        # are then computed once per sample (engine.FrozenOutputs), the same up to float rounding
        outputs = engine.FrozenOutputs(teacher, cache=_fit_options(recipe, data)["augment"] is None)
    return spec.step(methods.StepSetup(recipe, student, teacher if spec.needs_teacher else None, total, spec.settings(recipe), outputs))


def _resume_point(ckpt: dict | None, phase: str) -> engine.Resume | None:
    if not ckpt or ckpt["current"]["phase"] != phase:
        return None
    cur = ckpt["current"]
    return engine.Resume(cur["epoch"], cur["step"], cur["sums"], cur["count"], cur["history"], cur["method"], cur["torch_rng"], cur.get("best"))


def _fit_options(recipe: Recipe, data: DataBundle) -> dict:
    """What every training phase of a run shares: augmentation of the training split, best-epoch keeping."""
    from prokt_deploy.train.augment import from_recipe

    augment = None if data.is_text else from_recipe(recipe.data.augment, data.input)
    return {"augment": augment, "keep_best": recipe.train.keep_best}


def distill(
    recipe: Recipe | None,
    *,
    out: str | Path | None = None,
    runs_root: str | Path = DEFAULT_RUNS_ROOT,
    progress: engine.Progress | None = None,
    resume: str | Path | None = None,
    latest: bool = True,
    latencies: str | Path | None = None,
    keep: dict[str, str] | None = None,
) -> RunResult:
    """Plan a student for the budget, train it with the recipe's method, write a run directory.

    Every check that can fail on bad input (data, teacher, budget) runs before the run
    directory is created. The run is written in a hidden ``.NAME.partial`` directory with a
    checkpoint after every epoch (and at the current step on Ctrl-C), renamed to NAME when
    complete. ``resume`` continues an unfinished run from its checkpoint, with the recipe it was
    started with (pass ``recipe=None``); the result equals an uninterrupted run on the same
    machine. ``latest=False`` leaves ``runs/latest`` where it is. ``latencies``: plan from a plan
    bundle's device result file (see :func:`prokt_deploy.planner.plan`); the file is kept in the
    run as ``plan-latencies.json`` and a resume plans from it again. ``keep``: files (name -> text) written into
    the run directory before the first checkpoint, there through a resume (``run`` keeps its request in it).
    """
    if recipe is None and resume is None:
        raise ValueError("distill needs a recipe, or resume= to continue an unfinished run")
    run = _prepare(recipe, out=out, runs_root=Path(runs_root), resume=resume, latencies=latencies)
    ws = _open_workspace(run)
    with _logging_to(ws.path, run.main), _keeping_the_checkpoint(ws, run):
        _start_log(run, ws, keep or {})
        history, best_epochs = _train_phases(run, ws, progress)
        manifest = _write_run(run, ws, history, best_epochs)
    _finish(run, ws, latest=latest, runs_root=Path(runs_root))
    return RunResult(run.final, manifest)


@dataclass
class _Run:
    """What :func:`_prepare` set up for one distill run: everything checked, nothing written yet."""

    recipe: Recipe
    final: Path  # the run directory once complete
    resumed: bool
    ckpt: dict | None  # the checkpoint a resume continues from (None: from step 0)
    latencies: Path | str | None
    device: torch.device
    main: bool  # rank 0 (the only writer) or a single process
    data: DataBundle
    teacher: nn.Module
    plan: Plan
    student_arch: str
    student: nn.Module
    timings: dict[str, float]
    t0: float
    schedules: dict[str, dict] = field(default_factory=dict)  # per phase, set by _train_phases


def _prepare(recipe: Recipe | None, *, out, runs_root: Path, resume, latencies) -> _Run:
    """A new run (its directory checked to be creatable) or a resumed one (its saved recipe, checkpoint and
    plan latencies); then the data, the teacher, the plan and the student, built as the recipe asks."""
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
        final = Path(out) if out is not None else default_run_path(runs_root, recipe.name, recipe.method)
        check_out_dir(final)
    timings: dict[str, float] = dict(ckpt["timings"]) if ckpt else {}
    engine.set_seed(recipe.seed)
    device = distributed.init(engine.torch_device(recipe.device))
    data = load_recipe_data(recipe)
    timings.setdefault("load_data_s", time.perf_counter() - t0)

    teacher = build_teacher(recipe, data)
    t = time.perf_counter()
    # the choice only (planner docstring); a resumed run keeps its checkpoint's student, which a lazy plan may not have measured
    the_plan = plan(recipe, data, teacher, latencies=latencies, lazy_latency=ckpt is None)
    timings.setdefault("plan_s", time.perf_counter() - t)
    engine.set_seed(recipe.seed)  # the plan built models: reseed so training init depends only on the seed
    student_arch = ckpt["student_arch"] if ckpt else the_plan.chosen.arch
    student = create_model(student_arch, num_classes=data.num_classes, **data.model_kwargs)
    if recipe.student.init_embeddings == "teacher-pca" and ckpt is None:
        from prokt_deploy.models.text import init_embeddings_from_teacher

        if not (data.is_text and init_embeddings_from_teacher(student, teacher, data.model_kwargs["vocab_size"])):
            raise RecipeError(
                f"student.init_embeddings: teacher-pca needs text models whose token embeddings share the vocabulary "
                f"and a student no wider than the teacher ({student_arch} from {recipe.teacher.arch})"
            )
    if student_zero_head(recipe):
        zero_init_head(student)
    teacher.to(device)
    student.to(device)
    return _Run(
        recipe=recipe,
        final=final,
        resumed=resume is not None,
        ckpt=ckpt,
        latencies=latencies,
        device=device,
        main=distributed.is_main(),
        data=data,
        teacher=teacher,
        plan=the_plan,
        student_arch=student_arch,
        student=student,
        timings=timings,
        t0=t0,
    )


def _open_workspace(run: _Run) -> RunWorkspace:
    """The run's ``.NAME.partial`` directory, opened by rank 0 (every rank learns whether it could)."""
    ws = RunWorkspace(run.final)
    opened = True
    if run.main:
        try:
            ws.open(resume=run.resumed)
        except BaseException:
            opened = False
            if not distributed.active():
                raise
    if not distributed.all_ok(opened):
        raise RunError(f"rank 0 could not open the run directory {run.final}")
    return ws


@contextmanager
def _logging_to(run_dir: Path, main: bool) -> Iterator[None]:
    """The run's ``log.txt`` (rank 0 only) while the body runs."""
    handler = _attach_log(run_dir) if main else logging.NullHandler()
    try:
        yield
    finally:
        log.removeHandler(handler)
        handler.close()


@contextmanager
def _keeping_the_checkpoint(ws: RunWorkspace, run: _Run) -> Iterator[None]:
    """On any failure the partial directory is abandoned with its last checkpoint kept (when one was
    written), and the error says how to continue: Ctrl-C, a training error (NaN loss ...), a full disk."""
    final, main = run.final, run.main
    try:
        yield
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
        raise OSError(
            e.errno,
            f"{e.strerror or e}; the last checkpoint is kept in {ws.path}: free space, then 'prokt-deploy distill --resume {final}'",
            e.filename,
        ) from None
    except BaseException:
        kept = ws.abandon() if main else False
        if kept:
            log.info("stopped; checkpoint kept in %s", ws.path)
        raise


def _start_log(run: _Run, ws: RunWorkspace, keep: dict[str, str]) -> None:
    """Before the first checkpoint, the resolved recipe (whole or absent: --resume reads it), the plan
    latencies and the ``keep`` files are written; the log says whether the run starts, starts again or resumes."""
    if not run.main:
        return
    if run.ckpt is None:
        for name, text in keep.items():
            if not (ws.path / name).is_file():  # a resumed run keeps what it was started with
                write_text_atomic(ws.path / name, text)
        write_text_atomic(ws.path / "recipe.yaml", dump_recipe(run.recipe))
        if run.latencies is not None:
            write_text_atomic(ws.path / PLAN_LATENCIES, Path(run.latencies).read_text())
        log.info("plan: %s -> %s (%s bytes)", run.plan.note, run.student_arch, run.plan.chosen.estimated_bytes)
        if run.resumed:
            log.info("resumed a run stopped before its first checkpoint: starting again from step 0")
    else:
        cur = run.ckpt["current"]
        log.info("resuming %s phase at epoch %d step %d", cur["phase"], cur["epoch"] + 1, cur["step"])


def _pretrains_teacher(recipe: Recipe) -> bool:
    """Whether the method trains the teacher with CE first (KD without a converged teacher checkpoint, ProKT with
    ``teacher.init: pretrain``: :meth:`prokt_deploy.train.methods.MethodSpec.pretrains_teacher`)."""
    return methods.get(recipe.method).pretrains_teacher(recipe)


def _train_phases(run: _Run, ws: RunWorkspace, progress: engine.Progress | None) -> tuple[dict[str, list[dict]], dict[str, int | None]]:
    """The teacher's cross-entropy phase (when the method needs a converged teacher it does not have),
    then the method's phase; each resumes from the checkpoint when it is the one that was stopped.
    Returns the per-epoch history and the best epoch of each phase."""
    recipe, data, ckpt, device = run.recipe, run.data, run.ckpt, run.device
    history: dict[str, list[dict]] = dict(ckpt["completed"]) if ckpt else {}
    best_epochs: dict[str, int | None] = dict(ckpt.get("best_epochs", {})) if ckpt else {}

    def saver(done: dict[str, list[dict]], best_done: dict | None = None):
        def save(state: dict) -> None:
            save_checkpoint(
                ws.checkpoint,
                {"student_arch": run.student_arch, "completed": done, "current": state, "timings": run.timings, "best_epochs": dict(best_done or {})},
            )

        return save

    fit = dict(seed=recipe.seed, device=device, progress=progress, batch_size=recipe.train.batch_size, **_fit_options(recipe, data))
    spec = methods.get(recipe.method)
    pretrain = _pretrains_teacher(recipe)
    run.schedules = {"teacher": _teacher_schedule(recipe, data)} if pretrain else {}
    run.schedules["student"] = _student_schedule(recipe, data)
    if run.main:
        for phase, sched in run.schedules.items():
            _log_schedule(phase, sched)
    if pretrain and "teacher" not in history:
        t = time.perf_counter()
        method = _teacher_method(recipe, distributed.wrap(run.teacher, device), data)
        history["teacher"] = engine.fit(
            method,
            data,
            epochs=run.schedules["teacher"]["epochs"],
            phase="teacher (CE)",
            save=saver({}),
            resume=_resume_point(ckpt, "teacher (CE)"),
            **fit,
        )
        best_epochs["teacher"] = method.best_epoch
        run.timings["teacher_train_s"] = run.timings.get("teacher_train_s", 0.0) + time.perf_counter() - t
        if spec.reset_pretrained_teacher_head:
            # ProKT: the reference's start (PROKT.md): a trained backbone, the head reset to zero, fine-tuned jointly.
            # Only here, right after pretraining: a resumed ProKT phase loads the teacher from its checkpoint.
            zero_init_head(run.teacher)
    trained_teacher = distributed.wrap(run.teacher, device) if spec.trains_teacher else run.teacher  # kd's teacher is frozen
    method = _student_method(recipe, distributed.wrap(run.student, device), trained_teacher, data)
    t = time.perf_counter()
    history["student"] = engine.fit(
        method,
        data,
        epochs=run.schedules["student"]["epochs"],
        phase=recipe.method,
        save=saver(dict(history), best_epochs),
        resume=_resume_point(ckpt, recipe.method),
        unlabeled=data.unlabeled if spec.unlabeled else None,  # the transfer set, for the methods that learn from it
        labeled_share=recipe.train.labeled_share,
        **fit,
    )
    best_epochs["student"] = method.best_epoch
    run.timings["train_s"] = run.timings.get("train_s", 0.0) + time.perf_counter() - t
    return history, best_epochs


def _write_run(run: _Run, ws: RunWorkspace, history: dict[str, list[dict]], best_epochs: dict[str, int | None]) -> Manifest:
    """Score the trained models once on validation and test (the test split's only use), and write the
    weights, the tokenizer (text) and the manifest into the partial directory (rank 0)."""
    recipe, data, device, student, teacher = run.recipe, run.data, run.device, run.student, run.teacher
    teacher_used = methods.get(recipe.method).needs_teacher
    metrics = {
        # the teacher as the user brought it (its checkpoint with its own head), when the method changed it: the
        # report shows what the student lost against it as well as against the teacher the method left
        "teacher_given_test_accuracy": _given_teacher_accuracy(recipe, data, device) if methods.get(recipe.method).trains_teacher else None,
        "student_test_accuracy": engine.accuracy(student, data.test, device),
        "student_val_accuracy": engine.accuracy(student, data.val, device),
        "teacher_test_accuracy": engine.accuracy(teacher, data.test, device) if teacher_used else None,
        "teacher_val_accuracy": engine.accuracy(teacher, data.val, device) if teacher_used else None,
        "history": history,
        "best_epoch": best_epochs.get("student"),
        "teacher_best_epoch": best_epochs.get("teacher"),
        "epochs": run.schedules["student"]["epochs"],  # run, after train.min_steps (see schedule)
        "schedule": run.schedules,
        "samples_seen": samples_seen(history.get("student", [])),
    }
    run.timings["total_s"] = run.timings.get("total_s", 0.0) + time.perf_counter() - run.t0
    manifest = _manifest(recipe, run.plan, run.student_arch, data, student, teacher, teacher_used, metrics, device, run.timings, run.final)
    manifest.distributed = {"world_size": distributed.world_size(), "backend": distributed.backend()}
    if run.ckpt is not None:
        manifest.resumed = True
    if run.main:
        save_weights(student, ws.path / "student.safetensors")
        if data.is_text:
            manifest.input["tokenizer_files"] = copy_tokenizer(data.input["tokenizer"], ws.path / "tokenizer")
        if teacher_used:
            save_weights(teacher, ws.path / "teacher.safetensors")
        write_manifest(ws.path, manifest)
        log.info("student test accuracy %.4f", metrics["student_test_accuracy"])
    return manifest


def _given_teacher_accuracy(recipe: Recipe, data: DataBundle, device: torch.device) -> float | None:
    """Test accuracy of the teacher checkpoint as given (its own head), for a method that fine-tunes the teacher;
    None when the teacher was not given as a checkpoint, or its head does not fit this data's classes."""
    if recipe.teacher.init not in ("checkpoint", "checkpoint-reset-head") or not recipe.teacher.checkpoint:
        return None
    given = recipe.model_copy(update={"teacher": recipe.teacher.model_copy(update={"init": "checkpoint"})})
    try:
        teacher = build_teacher(given, data, zero_head=False).to(device)
    except Exception as exc:  # noqa: BLE001 - a head of other classes, another input: no such number, not a failed run
        log.info("the teacher as given is not scored on this data: %s", str(exc).splitlines()[0][:200])
        return None
    return engine.accuracy(teacher, data.test, device)


def _finish(run: _Run, ws: RunWorkspace, *, latest: bool, runs_root: Path) -> None:
    """Rank 0 renames the partial directory into place (and points runs/latest at it); the other ranks wait for it."""
    if run.main:
        ws.commit()
        if latest:  # compare's baseline runs live inside a run and do not move runs/latest
            mark_latest(runs_root, run.final)
    if not distributed.all_ok(True):
        raise RunError("a rank failed at the end of the run")


def _manifest(recipe, the_plan: Plan, student_arch, data, student, teacher, teacher_used, metrics, device, timings, final) -> Manifest:
    c = next((c for c in the_plan.candidates if c.arch == student_arch), the_plan.chosen)
    return Manifest(
        kind="distill",
        run=final.name,
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        recipe=recipe.name,
        method=recipe.method,
        seed=recipe.seed,
        device=str(device),
        budget=recipe.budget.size,
        budget_bytes=the_plan.budget_bytes,
        precision=the_plan.precision,
        formats=the_plan.formats,
        plan={
            "binding": the_plan.binding,
            "note": the_plan.note,
            "teacher_bytes": the_plan.teacher_bytes,
            "families": the_plan.families,
            "target": the_plan.target,
            "latency_source": the_plan.latency_source,
            "latency_ms": c.latency_ms,
            "teacher_latency_ms": the_plan.teacher_latency_ms,
            "ram_budget_bytes": the_plan.ram_budget_bytes,
        },
        student=ModelEntry(
            arch=student_arch,
            params=count_params(student),
            macs=c.macs,
            estimated_bytes=c.estimated_bytes,
            bytes_by_format=c.bytes,
            ram_bytes=c.ram_bytes,
            weights="student.safetensors",
        ),
        teacher=ModelEntry(
            arch=recipe.teacher.arch,
            factory=recipe.teacher.factory,
            params=count_params(teacher),
            init=recipe.teacher.init,
            checkpoint=recipe.teacher.checkpoint,
            weights="teacher.safetensors" if teacher_used else None,
        ),
        data={
            "source": data.name,
            "train": len(data.train),
            "val": len(data.val),
            "test": len(data.test),
            "unlabelled": data.n_unlabeled,
            "unlabelled_from": dict(data.unlabeled_from),
            **labels_record(recipe),
        },
        input={**data.input},
        classes=data.classes,
        metrics={k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()},
        versions=library_versions(),
        timings={k: round(v, 3) for k, v in timings.items()},
        artifacts=[],
    )


def samples_seen(history: list[dict]) -> dict[str, int]:
    """Labelled and unlabelled samples a phase trained on (each counted every time it was drawn), from its history."""
    unlabelled = sum(int(e.get("train_unlabelled_samples", 0)) for e in history)
    return {"labelled": sum(int(e.get("train_samples", 0)) for e in history) - unlabelled, "unlabelled": unlabelled}


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
    device = engine.torch_device(recipe.device)
    data = load_recipe_data(recipe)
    teacher = build_teacher(recipe, data, zero_head=False).to(device)
    with staged_run_dir(final) as run_dir:
        t = time.perf_counter()
        method = _teacher_method(recipe, teacher, data)
        sched = _teacher_schedule(recipe, data)
        _log_schedule("teacher", sched)
        history = engine.fit(
            method,
            data,
            epochs=sched["epochs"],
            batch_size=recipe.train.batch_size,
            seed=recipe.seed,
            device=device,
            progress=progress,
            phase="teacher (CE)",
            **_fit_options(recipe, data),
        )
        save_weights(teacher, run_dir / "teacher.safetensors")
        (run_dir / "recipe.yaml").write_text(dump_recipe(recipe))
        manifest = Manifest(
            kind="teacher",
            method=None,
            recipe=recipe.name,
            seed=recipe.seed,
            teacher=ModelEntry(arch=recipe.teacher.arch, factory=recipe.teacher.factory, params=count_params(teacher), weights="teacher.safetensors"),
            student=None,
            data={
                "source": data.name,
                "train": len(data.train),
                **labels_record(recipe),
            },
            input=data.input,
            classes=data.classes,
            metrics={
                "teacher_test_accuracy": round(engine.accuracy(teacher, data.test, device), 6),
                "teacher_val_accuracy": round(engine.accuracy(teacher, data.val, device), 6),
                "best_epoch": method.best_epoch,
                "epochs": sched["epochs"],
                "schedule": {"teacher": sched},
                "history": history,
            },
            versions=library_versions(),
            timings={"train_s": round(time.perf_counter() - t, 3)},
        )
        write_manifest(run_dir, manifest)
    return RunResult(final, manifest)
