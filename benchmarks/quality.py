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
import atexit
import contextlib
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from prokt_deploy.budget import parse_size
from prokt_deploy.data import LABELS_DRAW, load_recipe_data
from prokt_deploy.recipe import apply_overrides, load_recipe
from prokt_deploy.rundir.workspace import CHECKPOINT, is_locked, load_checkpoint, partial_path
from prokt_deploy.train import methods
from prokt_deploy.train.build import build_teacher
from prokt_deploy.train.distill import distill, train_teacher

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None, defaults: dict | None = None, description: str | None = None) -> argparse.Namespace:
    """The grid's options; ``defaults`` replaces some of them (text_quality.py: the text recipe and its grid)."""
    ap = argparse.ArgumentParser(description=description or __doc__.splitlines()[0])
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "fashion-mnist.yaml"))
    ap.add_argument("--budgets", default="50KB,200KB", help="comma-separated int8 ONNX budgets")
    ap.add_argument("--methods", default="scratch,kd,prokt")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=None, help="student epochs (default: the recipe's)")
    ap.add_argument("--teacher-epochs", type=int, default=None, help="epochs of the converged KD teacher (default: --epochs)")
    ap.add_argument("--max-train-samples", type=int, default=None)
    ap.add_argument("--prokt-teacher", choices=["scratch", "checkpoint-reset-head", "checkpoint"], default="scratch")
    ap.add_argument(
        "--teacher-checkpoint",
        default=None,
        metavar="PATH|shipped:NAME",
        help="one converged teacher for every seed (e.g. the recipe's shipped one): KD uses it as it is, ProKT as --prokt-teacher says "
        "(checkpoint-reset-head when --prokt-teacher is scratch); no per-seed teacher is trained",
    )
    ap.add_argument(
        "--tune",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="first choose each method's settings on validation (seed --tune-seed, first budget, the same number of runs per "
        "method: TUNING), then run the grid with the chosen settings; tuning runs are kept as phase 'tune' records",
    )
    ap.add_argument("--tune-seed", type=int, default=0)
    ap.add_argument(
        "--tune-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="recipe override for the tuning runs only, the same for every method (e.g. data.max_train_samples=6000 to tune on a "
        "subset when the grid's runs are long); KD's tuning teacher is trained on the same data",
    )
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra recipe override, e.g. prokt.lam=0.5 (YAML value)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--teacher-dir", default=None, help="keep converged teachers here (teacher-seed<N>/) and reuse them across invocations")
    ap.add_argument("--resume", action="store_true", help="keep the cells already in --out and run only the missing ones")
    ap.add_argument(
        "--work-dir",
        default=None,
        help="run each cell in DIR/<method>-<budget>-seed<N>-<phase> and keep its per-epoch checkpoint there: a cell cut off "
        "(session end, kill) continues from its last epoch at the next invocation with the same settings (default: a "
        "temporary directory, removed at exit, so an interrupted cell starts over)",
    )
    ap.add_argument("--combine", nargs="+", default=None, metavar="JSON", help="only merge earlier outputs (e.g. one per method) into --out")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "quality.json"))
    ap.set_defaults(**(defaults or {}))
    return ap.parse_args(argv)


def extra_overrides(pairs: list[str]) -> dict:
    import yaml

    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        out[key] = yaml.safe_load(value)
    return out


def int8_accuracy(run: Path) -> float | None:
    from prokt_deploy.deploy.export import export_run

    records = export_run(run, ["onnx"], "int8", max_accuracy_drop=100.0)
    return records[0]["test_accuracy"] if records else None


#: The tuning budget, the same for every method: 3 runs on validation. Stage 1 runs the method's
#: default setting with the student's head zeroed and with the family's default head (PROKT.md zeroes
#: both heads for ProKT; here every method gets both starts); stage 2 runs one alternative of the
#: method's own main knob with the head start stage 1 preferred. The best of the 3 is kept.
TUNING: dict[str, dict] = {
    "scratch": {"alternative": {"train.student_optimizer.lr": 0.01}},
    "kd": {"alternative": {"kd.alpha": 0.5, "kd.temperature": 2.0}},
    # the paper's beta sweep on CIFAR-100 ran 1-8 (8 its default there, 0.5 on ImageNet). With 2 classes NCKD is 0
    # and beta does nothing (a beta run repeats the default to the last digit: the few-label text grid's first DKD
    # tuning did), so there the alternative is DKD's temperature, as KD's alternative moves its own
    "dkd": {"alternative": {"dkd.beta": 2.0}, "binary_alternative": {"dkd.temperature": 2.0}},
    "prokt": {"alternative": {"train.teacher_optimizer.lr": 0.0001}},
    "prokt+label": {"alternative": {"prokt.student_label_weight": 0.5}},
}
#: Named variants: a method name in --methods that is a base method plus fixed settings; the method registry's
#: (prokt_deploy/train/methods/prokt.py: prokt+label is prokt.student_label_weight 0.3, prokt+batch-stats
#: prokt.teacher_targets batch-stats), which run --compare takes too.
VARIANTS: dict[str, tuple[str, dict]] = {name: (v.base, v.overrides()) for name, v in methods.variants().items()}


def tuning_alternative(name: str, num_classes) -> dict:
    """The settings of a method's third tuning run (TUNING). ``num_classes`` (a callable: the data's class count,
    read only when asked) picks a method's ``binary_alternative`` on 2-class data, where its main knob is inert."""
    spec = TUNING.get(name, TUNING.get(method_settings(name)[0], {}))
    if "binary_alternative" in spec and num_classes() == 2:
        return dict(spec["binary_alternative"])
    return dict(spec.get("alternative", {}))


def method_settings(name: str) -> tuple[str, dict]:
    """'prokt+label' -> ('prokt', {'prokt.student_label_weight': 0.3}); a plain method has no extra settings."""
    return VARIANTS.get(name, (name, {}))


def run_grid(args: argparse.Namespace, label: str = "quality", teachers: dict | None = None) -> list[dict]:
    """Run every (seed, budget, method) cell. ``teachers`` caches converged teachers across calls
    (keyed by seed and the settings that shape them), so ablation variants share one per seed.
    With --tune, each method's settings are first chosen on validation (TUNING) and then used in every cell."""
    if args.threads:
        torch.set_num_threads(args.threads)
    teachers = {} if teachers is None else teachers
    base = load_recipe(args.recipe)
    common = {
        "train.epochs": args.epochs,
        "data.max_train_samples": args.max_train_samples,
        "budget.formats": ["onnx"],
        "budget.precision": "int8",
        "train.min_steps": 0,
    }  # --epochs is the schedule compared; --set train.min_steps=N brings the floor back
    common.update(extra_overrides(args.set))
    # --resume: cells already in --out (same budget, method, seed, phase and settings) are kept, not re-run;
    # every finished cell is written at once, so a long grid can stop and continue.
    done = json.loads(Path(args.out).read_text()) if getattr(args, "resume", False) and Path(args.out).is_file() else []
    grid = Grid(args, label, base, common, teachers, done)
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    chosen: dict[str, dict] = {}
    if getattr(args, "tune", False):
        budget = args.budgets.split(",")[0]
        for name in methods:
            stage1 = [grid.cell(args.tune_seed, budget, name, {"student.zero_init_head": zero}, "tune") for zero in (True, False)]
            best1 = max(stage1, key=lambda r: r["student_val_accuracy"])
            alternative = {**best1["tuned"], **tuning_alternative(name, lambda: grid.num_classes(args.tune_seed))}
            stage2 = grid.cell(args.tune_seed, budget, name, alternative, "tune")
            best = max([*stage1, stage2], key=lambda r: r["student_val_accuracy"])  # ties: the earlier (default) run
            chosen[name] = best["tuned"]
            print(f"  tuned {name}: {chosen[name]} (val {best['student_val_accuracy']:.4f})", flush=True)
    for seed in seeds:
        for budget in args.budgets.split(","):
            for name in methods:
                grid.cell(seed, budget, name, chosen.get(name, {}), "grid")
    # the cells of --out this invocation did not ask for (other seeds, methods or budgets) stay in it: a grid run one
    # seed per process (scripts/converged_grid.sh) once lost its earlier seeds' rows here
    return grid.all_records()


@contextlib.contextmanager
def _claim(kept: Path | None):
    """Hold an exclusive flock on ``.<kept>.claim`` beside a kept teacher's directory while it is looked up and
    trained: two grids started together (kd and dkd) train it once, the second blocking until the first has
    written it. The lock dies with its process, so a stopped grid leaves nothing to wait for."""
    if kept is None:
        yield
        return
    import fcntl

    kept.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(kept.parent / f".{kept.name}.claim", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class Grid:
    """The cells of one quality grid: the converged teacher per seed, one distill + int8 export per cell."""

    def __init__(self, args, label, base, common, teachers, done) -> None:
        self.args, self.base, self.common, self.teachers, self.done = args, base, common, teachers, done
        self.records: list[dict] = []
        self._classes: int | None = None  # num_classes(), read once when a tuning rule asks
        self.keep = getattr(args, "work_dir", None) is not None
        if self.keep:
            self.work = Path(args.work_dir)
            self.work.mkdir(parents=True, exist_ok=True)
        else:
            self.work = Path(tempfile.mkdtemp(prefix=f"prokt-{label}-"))
            atexit.register(shutil.rmtree, self.work, True)

    def all_records(self) -> list[dict]:
        """What --out holds: the earlier records this invocation did not revisit, then this invocation's cells."""
        return [r for r in self.done if r not in self.records] + self.records

    def num_classes(self, seed: int) -> int:
        """The class count of the grid's data (loaded once, with the tuning runs' overrides)."""
        if self._classes is None:
            extra = extra_overrides(getattr(self.args, "tune_set", []))
            self._classes = load_recipe_data(apply_overrides(self.base, {**self.common, **extra, "seed": seed})).num_classes
        return self._classes

    def teacher(self, seed: int, extra: dict | None = None) -> tuple[str, float]:
        """(checkpoint reference, its test accuracy) of the converged teacher seed ``seed`` uses;
        ``extra``: the tuning runs' overrides (--tune-set), so a tuning teacher sees the tuning data."""
        args = self.args
        r_seed = apply_overrides(self.base, {**self.common, **(extra or {}), "seed": seed})
        r_teacher = apply_overrides(r_seed, {"teacher.epochs": args.teacher_epochs or r_seed.train.epochs})
        shared = getattr(args, "teacher_checkpoint", None)
        if shared:
            key = ("shared", shared)
            if key not in self.teachers:
                self.teachers[key] = (shared, _teacher_accuracy(r_teacher, shared))
            return self.teachers[key]
        key = (
            seed,
            r_teacher.teacher.arch,
            r_teacher.teacher.epochs,
            r_teacher.data.model_dump_json(),
            r_teacher.train.teacher_optimizer.model_dump_json(),
        )
        name = f"teacher-seed{seed}" + ("-tune" if extra else "")
        kept = Path(args.teacher_dir) / name if getattr(args, "teacher_dir", None) else (self.work / name if self.keep else None)
        with _claim(kept):  # one invocation trains a kept teacher; another one (another method's grid) waits, then reuses it
            if key not in self.teachers and kept is not None and (kept / "manifest.json").is_file():
                m = json.loads((kept / "manifest.json").read_text())
                if _kept_matches(kept, r_teacher):
                    self.teachers[key] = (str(kept / "teacher.safetensors"), m["metrics"]["teacher_test_accuracy"])
                    print(f"seed {seed}: reusing converged teacher {kept} (test {self.teachers[key][1]:.4f})", flush=True)
            if key not in self.teachers:
                teacher_dir = kept if kept is not None and not kept.exists() else self.work / name
                if teacher_dir.exists():  # a kept teacher of other settings (--work-dir): never overwritten
                    teacher_dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.work)) / "teacher"
                t0 = time.perf_counter()
                teacher = train_teacher(r_teacher, out=teacher_dir)
                self.teachers[key] = (str(teacher_dir / "teacher.safetensors"), teacher.manifest["metrics"]["teacher_test_accuracy"])
                print(
                    f"seed {seed}: converged teacher {r_seed.teacher.arch} test {self.teachers[key][1]:.4f} ({time.perf_counter() - t0:.0f}s)",
                    flush=True,
                )
        return self.teachers[key]

    def _known_teacher_accuracy(self, seed: int, phase: str, settings: dict) -> float | None:
        data = {k: v for k, v in settings.items() if k.startswith("data.")}
        for r in self.done + self.records:
            same_data = {k: v for k, v in r["settings"].items() if k.startswith("data.")} == data
            if r["seed"] == seed and r.get("phase", "grid") == phase and same_data and r.get("converged_teacher_test_accuracy") is not None:
                return r["converged_teacher_test_accuracy"]
        return None

    def cell(self, seed: int, budget: str, name: str, tuned: dict, phase: str) -> dict:
        args = self.args
        r_seed = apply_overrides(self.base, {**self.common, "seed": seed})
        method, variant = method_settings(name)
        extra = extra_overrides(getattr(args, "tune_set", [])) if phase == "tune" else {}
        over = {"method": method, "budget.size": budget, **extra, **variant, **tuned}
        prokt_init = args.prokt_teacher
        if prokt_init == "scratch" and getattr(args, "teacher_checkpoint", None):
            prokt_init = "checkpoint-reset-head"  # a shared converged teacher: the reference's start
        frozen = methods.get(method).teacher == "frozen"  # kd, dkd: the converged teacher, trained once per seed
        needs_checkpoint = frozen or (method == "prokt" and prokt_init != "scratch")
        if frozen:
            over.update({"teacher.init": "checkpoint", "teacher.checkpoint": None})  # the checkpoint is filled in below
        elif method == "prokt" and prokt_init != "scratch":
            over.update({"teacher.init": prokt_init, "teacher.checkpoint": None})
        elif method == "prokt":
            over["teacher.init"] = "scratch"  # jointly from scratch, whatever the recipe's default
        settings = {k: v for k, v in {**self.common, **over}.items() if v is not None}

        def same(r: dict) -> bool:
            return (r["budget"], label(r), r["seed"], r.get("phase", "grid")) == (budget, name, seed, phase) and comparable(
                r["settings"]
            ) == comparable(settings)

        previous = [r for r in self.done + self.records if same(r)]
        if not previous and phase == "grid":  # the tuning run with the chosen settings is this cell: the same run, not run twice
            tuned_run = [r for r in self.done + self.records if r.get("phase") == "tune" and same({**r, "phase": "grid"})]
            if tuned_run:
                previous = [{**tuned_run[0], "phase": "grid"}]
                self.records.append(previous[0])
                _write_records(Path(args.out), self.all_records(), merge=bool(getattr(args, "resume", False)))
        if previous:  # kept: no teacher is trained for it
            if previous[0] not in self.records:
                self.records.append(previous[0])
            print(f"  {budget:>6} {name:<12} seed {seed} ({phase}): kept from {args.out}", flush=True)
            return previous[0]
        # the converged teacher: trained (or reused) when the method needs its checkpoint; a cell that only records
        # its accuracy takes it from an earlier cell of the same seed, phase and data when there is one
        known = None if needs_checkpoint else self._known_teacher_accuracy(seed, phase, settings)
        if known is not None:
            ckpt, teacher_acc = None, known
        else:
            ckpt, teacher_acc = self.teacher(seed, extra)  # scratch records carry it too: the accuracy to keep
        if needs_checkpoint:
            over["teacher.checkpoint"] = ckpt
        recipe = apply_overrides(r_seed, over)
        settings = {k: v for k, v in {**self.common, **over}.items() if v is not None}
        out = self.work / (f"{name}-{budget}-seed{seed}-{phase}" if self.keep else f"{name}-{budget}-seed{seed}-{phase}-{len(self.records)}")
        t0 = time.perf_counter()
        m, resumed_at = run_cell(recipe, out, runs_root=self.work / "runs")
        seconds = time.perf_counter() - t0 if resumed_at is None else None  # a resumed cell's earlier epochs ran elsewhere
        int8 = int8_accuracy(out)
        rec = {
            "phase": phase,
            "budget": budget,
            "budget_bytes": parse_size(budget),
            "method": name,
            "seed": seed,
            "student": m["student"]["arch"],
            "student_params": m["student"]["params"],
            "teacher": m["teacher"]["arch"],
            "teacher_params": m["teacher"]["params"],
            "epochs": recipe.train.epochs,
            "train_samples": m["data"]["train"],
            # few labels (data.labels, data.unlabeled_rest): the labelled samples kept, the unlabelled pool beside them,
            # and what the method drew from each (scratch draws no unlabelled sample)
            "labelled": m["data"]["train"],
            "unlabelled": m["data"].get("unlabelled", 0),
            "samples_seen": m["metrics"].get("samples_seen"),
            "best_epoch": m["metrics"].get("best_epoch"),
            "student_test_accuracy": m["metrics"]["student_test_accuracy"],
            "student_val_accuracy": m["metrics"]["student_val_accuracy"],
            "int8_test_accuracy": int8,
            "student_int8_test_accuracy": int8,
            # the teacher a user brings (converged); ProKT's own jointly fine-tuned teacher is recorded apart
            "teacher_test_accuracy": teacher_acc if method != "prokt" or teacher_acc is not None else m["metrics"]["teacher_test_accuracy"],
            "prokt_teacher_test_accuracy": m["metrics"]["teacher_test_accuracy"] if method == "prokt" else None,
            "converged_teacher_test_accuracy": teacher_acc,
            "tuned": tuned,
            "seconds": round(seconds, 1) if seconds is not None else None,  # None: resumed or read back (not one invocation's time)
            "resumed_from_epoch": resumed_at,  # the epoch a cut-off cell continued from; == epochs: finished earlier, read back
            "settings": settings,
            # per-epoch validation path: student/teacher accuracy and teacher-student KL
            "history": [
                {k: v for k, v in h.items() if k.startswith(("val_", "epoch", "train_", "beta"))} for h in m["metrics"]["history"].get("student", [])
            ],
        }
        self.records.append(rec)
        if getattr(args, "incremental", True):
            _write_records(Path(args.out), self.all_records(), merge=bool(getattr(args, "resume", False)))
        shutil.rmtree(out, ignore_errors=True)  # recorded: the run directory (its exports) is not needed any more
        print(
            f"  {budget:>6} {name:<12} {rec['student']:<14} ({phase}) val {rec['student_val_accuracy']:.4f} fp32 {rec['student_test_accuracy']:.4f} "
            f"int8 {rec['int8_test_accuracy']:.4f} best epoch {rec['best_epoch']} ({time.perf_counter() - t0:.0f}s)",
            flush=True,
        )
        return rec


def run_cell(recipe, out: Path, runs_root: Path) -> tuple[dict, int | None]:
    """Distil one cell into ``out``: (its manifest, the epoch it continued from; None for a fresh run).

    An unfinished run there with the same recipe (left by a cut-off invocation) continues from its last
    checkpoint (from step 0 if it had none yet); a finished one that was not yet recorded is read back
    (epochs returned). One with another recipe is set aside (renamed ``*.stale-N``), never mixed in. A run
    another process is writing (its lock held) is neither touched nor joined: that is an error."""
    partial = partial_path(out)
    if partial.is_dir() and is_locked(partial):
        raise SystemExit(f"another process is running the cell {out.name} in {out.parent}; give each invocation its own --work-dir")
    for there in (out, partial):
        if not there.is_dir():
            continue
        same = (there / "recipe.yaml").is_file() and load_recipe(there / "recipe.yaml").model_dump() == recipe.model_dump()
        if same and there == out and (out / "manifest.json").is_file():
            print(f"    {out.name}: finished earlier, read back", flush=True)
            return json.loads((out / "manifest.json").read_text()), recipe.train.epochs
        if same and there == partial:
            epoch = load_checkpoint(partial / CHECKPOINT)["current"]["epoch"] if (partial / CHECKPOINT).is_file() else 0
            print(f"    {out.name}: continuing from its checkpoint (epoch {epoch})", flush=True)
            return _as_written(distill(None, resume=out, runs_root=runs_root, latest=False).path), epoch
        n = 0
        while there.with_name(f"{there.name}.stale-{n}").exists():
            n += 1
        there.rename(there.with_name(f"{there.name}.stale-{n}"))
        print(f"    {there.name}: not resumable with these settings, set aside as {there.name}.stale-{n}", flush=True)
    return _as_written(distill(recipe, out=out, runs_root=runs_root, latest=False).path), None


def _as_written(run: Path) -> dict:
    """The run's manifest.json as on disk: a cell reads the same record whether it was trained now or read back."""
    return json.loads((run / "manifest.json").read_text())


def _kept_matches(run: Path, recipe) -> bool:
    """Whether a kept (finished) teacher was trained as ``recipe`` would train it: its architecture, epochs, step
    floor (``train.min_steps``: a teacher fine-tuned on 1,000 labels runs 63 epochs, not the 5 asked), batch size,
    optimizer and data. (The number of epochs in its history is not the test: min_steps raises it.) With
    data.labels, also how the labels were drawn (``LABELS_DRAW``): a teacher kept from before the draw changed
    was fine-tuned on other labels than these settings now keep."""
    if not (run / "recipe.yaml").is_file():
        return False
    kept = load_recipe(run / "recipe.yaml")
    if recipe.data.labels is not None:
        manifest = json.loads((run / "manifest.json").read_text()) if (run / "manifest.json").is_file() else {}
        if (manifest.get("data") or {}).get("labels_draw") != LABELS_DRAW:
            return False
    return (
        kept.teacher.arch == recipe.teacher.arch
        and kept.teacher.epochs == recipe.teacher.epochs
        and (kept.train.min_steps, kept.train.batch_size) == (recipe.train.min_steps, recipe.train.batch_size)
        and kept.train.teacher_optimizer == recipe.train.teacher_optimizer
        and kept.data == recipe.data
    )


def _teacher_accuracy(recipe, checkpoint: str) -> float:
    """Test accuracy of a given converged teacher on the recipe's data."""
    r = apply_overrides(recipe, {"method": "kd", "teacher.init": "checkpoint", "teacher.checkpoint": checkpoint})
    data = load_recipe_data(r)
    from prokt_deploy.train.engine import accuracy

    return accuracy(build_teacher(r, data), data.test, torch.device("cpu"))


def mean_std(vals: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (0 for one value; None, None for none)."""
    if not vals:
        return (None, None)
    return (statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)


def _write_records(out: Path, records: list[dict], merge: bool = False) -> list[dict]:
    """Write ``records`` to ``out`` atomically; returns what the file now holds. ``merge`` (--resume): the cells
    another process wrote to ``out`` since this one read it are kept beside this one's (two grids on one --out, e.g.
    seeds 1,2 beside seed 0 after the tuning runs: each writes its cells, neither loses the other's), under an
    flock on the folder so that read-merge-write is one step."""
    import fcntl

    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if merge and out.is_file():
            mine = {_cell_key(r) for r in records}
            records = [r for r in json.loads(out.read_text()) if _cell_key(r) not in mine] + records
        tmp = out.with_suffix(f".json.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(records, indent=2) + "\n")
        tmp.replace(out)
    finally:
        os.close(fd)
    return records


ORDER = ["scratch", "kd", "dkd", "prokt", "prokt+label", "prokt+batch-stats"]


def comparable(settings: dict) -> dict:
    """A cell's settings as --resume and --combine compare them: the checkpoint's path may differ between
    machines; min_steps 0 is the same as none (records made before it existed)."""
    return {k: v for k, v in settings.items() if k != "teacher.checkpoint" and (k, v) != ("train.min_steps", 0)}


def combine(paths: list[str]) -> list[dict]:
    """The records of several outputs, each cell once: a file copied to run more seeds beside the first
    (scripts/converged_grid.sh) repeats the tuning runs and any cells it started with. A cell is its phase,
    budget, method, seed and settings as --resume compares them (:func:`comparable`); the first file's record is kept."""
    records, seen = [], set()
    for path in paths:
        for r in json.loads(Path(path).read_text()):
            key = _cell_key(r)
            if key not in seen:
                seen.add(key)
                records.append(r)
    return records


def _cell_key(r: dict) -> str:
    """What makes a record one cell: its phase, budget, method, seed and settings as --resume compares them."""
    return json.dumps([r.get("phase", "grid"), r["budget"], label(r), r["seed"], comparable(r.get("settings", {}))], sort_keys=True)


def label(r: dict) -> str:
    """The method, plus a named ProKT variant when the record used one (so it gets its own row)."""
    if r["method"] == "prokt" and r.get("settings", {}).get("prokt.teacher_targets") == "batch-stats":
        return "prokt+batch-stats"
    return r["method"]


def grid_records(records: list[dict]) -> list[dict]:
    """The records of the grid itself (tuning runs are kept in the file but not summarised)."""
    return [r for r in records if r.get("phase", "grid") == "grid"]


def summarise(records: list[dict]) -> list[dict]:
    cells: dict[tuple, list[dict]] = {}
    for r in records:
        cells.setdefault((r["budget_bytes"], r["budget"], label(r)), []).append(r)
    rows = []
    for (_, budget, method), rs in sorted(cells.items(), key=lambda kv: (kv[0][0], ORDER.index(kv[0][2]) if kv[0][2] in ORDER else 9)):

        def ms(key, rs=rs):  # a resumed cell's seconds are one part of its run: not a run's time
            return mean_std([r[key] for r in rs if r[key] is not None and not (key == "seconds" and r.get("resumed_from_epoch") is not None)])

        drops = [r["student_test_accuracy"] - r["int8_test_accuracy"] for r in rs if r["int8_test_accuracy"] is not None]
        rows.append(
            {
                "budget": budget,
                "method": method,
                "student": rs[0]["student"],
                "n": len(rs),
                "val": ms("student_val_accuracy"),
                "fp32": ms("student_test_accuracy"),
                "int8": ms("int8_test_accuracy"),
                "int8_drop": mean_std(drops),
                "teacher": ms("teacher_test_accuracy"),
                "seconds": ms("seconds"),
            }
        )
    return rows


def paired(records: list[dict], a: str, b: str) -> list[dict]:
    """Per budget: method ``a`` minus method ``b`` in fp32 test accuracy, paired by seed (same data
    split, same converged teacher), mean and std over the seeds both have."""
    out = []
    for _, budget in sorted({(r["budget_bytes"], r["budget"]) for r in records}):
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

    lines = [
        "| budget | method | student | seeds | student val % | student fp32 test % | int8 ONNX test % | int8 drop (points) | teacher test % | seconds/run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['budget']} | {r['method']} | {r['student']} | {r['n']} | {pct(r['val'])} | {pct(r['fp32'])} | {pct(r['int8'])} | {pts(r['int8_drop'])} "
            f"| {pct(r['teacher'])} | {'-' if r['seconds'][0] is None else format(r['seconds'][0], '.0f')} |"
        )
    return "\n".join(lines) + "\n"


def markdown_paired(diffs: list[dict]) -> str:
    lines = ["| budget | comparison | seeds | fp32 test difference (points, mean ± std) | seeds where the first is better |", "|---|---|---|---|---|"]
    for d in diffs:
        lines.append(
            f"| {d['budget']} | {d['a']} - {d['b']} | {d['seeds']} | {100 * d['mean']:+.2f} ± {100 * d['std']:.2f} | {d['wins']}/{d['seeds']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None, defaults: dict | None = None, description: str | None = None) -> None:
    args = parse_args(argv, defaults, description)
    if args.combine:
        records = combine(args.combine)
    else:
        records = run_grid(args)
    out = Path(args.out)
    records = _write_records(out, records, merge=bool(getattr(args, "resume", False)) and not args.combine)
    table = markdown(summarise(grid_records(records)))
    pairs = [
        ("prokt", "kd"),
        ("prokt", "dkd"),
        ("prokt", "scratch"),
        ("kd", "scratch"),
        ("dkd", "scratch"),
        ("dkd", "kd"),
        ("prokt+label", "dkd"),
        ("prokt+label", "prokt"),
        ("prokt+label", "kd"),
        ("prokt+label", "scratch"),
        ("prokt+batch-stats", "prokt"),
        ("prokt+batch-stats", "kd"),
        ("prokt+batch-stats", "scratch"),
    ]
    diffs = [d for a, b in pairs for d in paired(grid_records(records), a, b)]
    tuned = [r for r in records if r.get("phase") == "tune"]
    if tuned:
        table += "\nTuning runs (validation, seed " + str(tuned[0]["seed"]) + ", " + tuned[0]["budget"] + "; 3 per method):\n\n"
        table += "| method | settings tried | student val % |\n|---|---|---|\n"
        table += "".join(f"| {r['method']} | {json.dumps(r['tuned'])} | {100 * r['student_val_accuracy']:.2f} |\n" for r in tuned)
    if diffs:
        table += "\nPaired by seed:\n\n" + markdown_paired(diffs)
    out.with_suffix(".md").write_text(table)
    print(table)
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
