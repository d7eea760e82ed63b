"""The one reader of a finished run: every later stage (export, compare, bench, bundle) reopens a run here.

``open_run(path)`` checks the directory holds a finished run of the expected kind and returns a
:class:`FinishedRun`: its manifest as a typed :class:`Manifest` (the schema in docs/manifest.md),
its saved recipe, its data (reloaded with the run's recipe and seed, and checked to be the data the
run was trained on, so the test split is still held out) and its models (through the teacher's
factory when the recipe named one, else the model registry).

The manifest is only *read* here; the stages that add to it (export's artifact records, compare's
table) change it under the run's lock with :func:`prokt_deploy.rundir.workspace.update_manifest`, and a
reader opened before such a change sees it after :meth:`FinishedRun.reload`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prokt_deploy.errors import DataError, RecipeError, RunError
from prokt_deploy.rundir.records import GateRecord
from prokt_deploy.rundir.workspace import DEFAULT_RUNS_ROOT, MANIFEST, read_manifest, resolve_run, write_json_atomic

if TYPE_CHECKING:  # torch and the data loaders are imported when a model or the data is asked for
    from torch import nn

    from prokt_deploy.data import DataBundle
    from prokt_deploy.recipe import Recipe

#: the defaults of the int8 export (prokt_deploy.deploy.export), here so the reader needs no torch
DEFAULT_CALIBRATION_SAMPLES = 300
DEFAULT_MAX_ACCURACY_DROP = 1.0  # percentage points


#: the manifest's schema: 1 until issue 34; 2 adds ``main_file`` to each artifact record (the file a runtime
#: opens) and leaves unset keys of the model entries out. A version-1 manifest is read as it is (its records
#: have no ``main_file``: readers ask the format for it); a newer one is refused with what to do.
SCHEMA_VERSION = 2
OLDEST_READ = 1


@dataclass
class ModelEntry:
    """``manifest['teacher']`` / ``manifest['student']``: what the model is and where its weights are."""

    arch: str | None
    params: int | None = None
    weights: str | None = None  # relative to the run; None: the method keeps no such model (scratch's teacher)
    factory: str | None = None  # 'module:function' (teachers only)
    macs: int | None = None
    estimated_bytes: int | None = None
    bytes_by_format: dict | None = None  # the planner's measured bytes of the student per format (students only)
    ram_bytes: int | None = None  # peak activation memory at batch 1 and the deploy precision (students only)
    init: str | None = None  # teacher.init of the recipe (distill runs' teachers)
    checkpoint: str | None = None  # teacher.checkpoint of the recipe

    #: written even when None: ``arch`` and ``weights`` (null weights: the method keeps no such model)
    ALWAYS = ("arch", "weights")

    @classmethod
    def from_dict(cls, d: dict) -> ModelEntry:
        return cls(**{f.name: d.get(f.name) for f in fields(cls)})

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None or f.name in self.ALWAYS}


@dataclass
class Manifest:
    """A run's ``manifest.json``, typed (the schema in docs/manifest.md). Built by the stage that writes the run
    and written by :func:`write_manifest` only; read back by :meth:`from_dict`, which checks the schema version.
    ``raw`` is the JSON as read (for keys added by a later stage that are not named here, e.g. ``compare``)."""

    kind: str
    method: str | None
    recipe: str | None
    teacher: ModelEntry
    student: ModelEntry | None
    classes: list[str]
    input: dict
    metrics: dict
    budget_bytes: int | None = None
    precision: str | None = None
    formats: list[str] = field(default_factory=list)
    artifacts: list[GateRecord] = field(default_factory=list)
    data: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    run: str | None = None
    created: str | None = None
    seed: int | None = None
    device: str | None = None
    budget: str | None = None
    plan: dict | None = None
    versions: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    distributed: dict | None = None
    resumed: bool | None = None
    raw: dict = field(default_factory=dict, repr=False)

    #: the order of the JSON's keys (the model entries are written by ModelEntry.to_dict)
    _ORDER = (
        "schema_version", "kind", "run", "created", "recipe", "method", "seed", "device", "budget", "budget_bytes", "precision",
        "formats", "plan", "student", "teacher", "data", "input", "classes", "metrics", "versions", "timings", "artifacts",
        "distributed", "resumed",
    )  # fmt: skip

    def to_dict(self) -> dict:
        """The JSON of ``manifest.json`` (keys of a distill run in its order; unset optional keys left out)."""
        out: dict = {}
        for key in self._ORDER:
            value = getattr(self, key)
            if key in ("student", "teacher"):
                if value is not None:
                    out[key] = value.to_dict()
            elif key == "artifacts":
                out[key] = [a.to_dict() for a in value]
            elif value is not None and not (self.kind != "distill" and key in ("formats", "artifacts", "data") and not value):
                out[key] = value
        for key, value in self.raw.items():  # keys a later stage added (compare, ...) are kept
            out.setdefault(key, value)
        return out

    @classmethod
    def from_dict(cls, d: Any, where: Path) -> Manifest:
        """Check the version and the fields every reader relies on (RunError naming the file when one is
        missing, of the wrong type, or of a schema this version cannot read)."""
        if not isinstance(d, dict):
            raise _corrupted(where, "not a JSON object")
        version = d.get("schema_version", OLDEST_READ)
        if not isinstance(version, int) or isinstance(version, bool):
            raise _corrupted(where, f"schema_version {version!r} is not a number")
        if version > SCHEMA_VERSION:
            raise RunError(
                f"{where / MANIFEST} has manifest schema {version}, written by a newer prokt-deploy; this version reads "
                f"schemas {OLDEST_READ} to {SCHEMA_VERSION}: upgrade prokt-deploy to use this run"
            )
        if version < OLDEST_READ:
            raise RunError(f"{where / MANIFEST} has manifest schema {version}, older than any this version reads; re-run 'prokt-deploy distill'")
        try:
            kind = str(d.get("kind") or "distill")
            student = ModelEntry.from_dict(d["student"]) if kind == "distill" else None
            if student is not None and not student.arch:
                raise KeyError("student.arch")
            budget = d.get("budget_bytes")
            artifacts = d.get("artifacts", [])
            formats = d.get("formats") or []
            if not isinstance(artifacts, list) or not all(isinstance(a, dict) for a in artifacts):
                raise _corrupted(where, "'artifacts' is not a list of records")
            if not isinstance(formats, list):
                raise _corrupted(where, "'formats' is not a list")
            m = cls(
                kind=kind,
                method=d.get("method"),
                recipe=d.get("recipe"),
                teacher=ModelEntry.from_dict(d.get("teacher") or {}),
                student=student,
                classes=list(d.get("classes") or []),
                input=dict(d.get("input") or {}),
                metrics=dict(d.get("metrics") or {}),
                budget_bytes=None if budget is None else int(budget),
                precision=None if d.get("precision") is None else str(d["precision"]),
                formats=[str(f) for f in formats],
                artifacts=[GateRecord.from_dict(a) for a in artifacts],
                data=dict(d.get("data") or {}),
                schema_version=version,
                run=d.get("run"),
                created=d.get("created"),
                seed=d.get("seed"),
                device=d.get("device"),
                budget=d.get("budget"),
                plan=d.get("plan"),
                versions=dict(d.get("versions") or {}),
                timings=dict(d.get("timings") or {}),
                distributed=d.get("distributed"),
                resumed=d.get("resumed"),
                raw=d,
            )
        except KeyError as e:
            raise _corrupted(where, f"no {e.args[0]!r}") from None
        except (TypeError, ValueError, AttributeError):
            raise _corrupted(where, "student, budget_bytes, precision or an artifact record has the wrong type") from None
        if kind == "distill" and (m.budget_bytes is None or m.precision is None):
            raise _corrupted(where, f"no {'budget_bytes' if m.budget_bytes is None else 'precision'!r}")
        return m

    def __getitem__(self, key: str) -> Any:
        """Read-only access by the JSON's keys, for callers written against the dict manifest of earlier versions."""
        return self.to_dict()[key]

    def model(self, which: str) -> ModelEntry:
        entry = self.teacher if which == "teacher" else self.student
        if entry is None:
            raise RunError(f"a {self.kind} run has no {which}")
        return entry

    def passed_artifacts(self) -> list[GateRecord]:
        return [a for a in self.artifacts if a.passed]

    def deployed_accuracy(self, fmt: str) -> float | None:
        """Test accuracy of the student's artifact in ``fmt`` at the run's deploy precision, if exported."""
        return next((a.test_accuracy for a in self.artifacts if a.format == fmt and a.precision == self.precision), None)

    def int8_settings(self) -> tuple[int, float]:
        """Calibration samples and accuracy gate (points) of the student's int8 export, else the export
        defaults: the teacher's int8 is made exactly as the student's was."""
        records = [a for a in self.artifacts if a.precision == "int8"]
        calibration = next((int(a.calibration_samples) for a in records if a.calibration_samples), DEFAULT_CALIBRATION_SAMPLES)
        drop = next((float(a.max_accuracy_drop) for a in records if a.max_accuracy_drop is not None), DEFAULT_MAX_ACCURACY_DROP)
        return calibration, drop

    def comparison(self) -> dict | None:
        """``run --compare``'s table, with the run's own deployed accuracy filled in (the run is exported after compare)."""
        comp = self.raw.get("compare")
        if not comp:
            return None
        rows = [dict(r) for r in comp["rows"]]
        for r in rows:
            if r["run"] == "." and r.get("deployed_test_accuracy") is None:
                r["deployed_test_accuracy"] = self.deployed_accuracy(comp["format"])
        return {**comp, "rows": rows}


def write_manifest(directory: Path, manifest: Manifest) -> dict:
    """Write ``manifest.json`` into ``directory`` atomically (the one writer of a run's manifest); returns its JSON."""
    doc = manifest.to_dict()
    write_json_atomic(directory / MANIFEST, doc)
    return doc


def _corrupted(run: Path, what: str) -> RunError:
    return RunError(f"{run / MANIFEST} is corrupted ({what}); re-run 'prokt-deploy distill' or restore the file")


class FinishedRun:
    """A finished run directory, opened by :func:`open_run`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.manifest = Manifest.from_dict(read_manifest(path), path)
        self._recipe: Recipe | None = None
        self._data: DataBundle | None = None

    def reload(self) -> FinishedRun:
        """Read the manifest again (after a stage added to it)."""
        self.manifest = Manifest.from_dict(read_manifest(self.path), self.path)
        return self

    def recipe(self) -> Recipe:
        """The recipe the run was trained with (``recipe.yaml``, resolved)."""
        from prokt_deploy.recipe import load_recipe

        if self._recipe is None:
            try:
                self._recipe = load_recipe(self.path / "recipe.yaml")
            except RecipeError as e:
                raise RunError(f"the run's recipe.yaml cannot be used ({e}); re-run 'prokt-deploy distill'") from None
        return self._recipe

    def data(self) -> DataBundle:
        """The run's data, reloaded with its recipe and seed, and checked to be the data it was trained on:
        same input shape, normalisation and test-split size, so the test split is the run's held-out one."""
        if self._data is not None:
            return self._data
        import numpy as np

        from prokt_deploy.data import load_recipe_data

        data = load_recipe_data(self.recipe())
        spec = self.manifest.input
        expected_shape = list(spec.get("shape") or [None, *data.input_shape])[1:]
        same = expected_shape == list(data.input_shape)
        for key in ("mean", "std"):
            if key in spec:
                same = same and np.allclose(spec[key], data.input[key], rtol=1e-5, atol=1e-7)
        n_test = self.manifest.data.get("test")
        same = same and (n_test is None or n_test == len(data.test))
        if not same:
            raise DataError(
                f"the data loaded with the run's recipe ({data.name}, input {list(data.input_shape)}, {len(data.test)} test "
                f"samples) is not the data the run was trained on (input {expected_shape}, {n_test} test samples, or other "
                "normalisation): the test split would not be held out. Restore the dataset the run used."
            )
        self._data = data
        return data

    def model(self, which: str) -> nn.Module:
        """The run's ``"teacher"`` or ``"student"`` in eval mode with its weights; a teacher named by a
        factory is built by it (a recipe that names code was consented to when the run was made).
        ``"teacher-given"``: the teacher as the user brought it (its checkpoint with its own head, before a
        method such as ProKT fine-tuned it), when the run scored it (``metrics.teacher_given_test_accuracy``)."""
        from prokt_deploy.data import model_kwargs
        from prokt_deploy.models import create_model
        from prokt_deploy.rundir.checkpoint import build_from_factory, load_weights

        entry = self.manifest.model("teacher" if which == "teacher-given" else which)
        weights = self.given_teacher_file() if which == "teacher-given" else (self.path / entry.weights if entry.weights else None)
        if weights is None:
            raise RunError(f"{self.path} has no {which} weights (method {self.manifest.method!r} does not keep a {which})")
        kwargs = {"num_classes": len(self.manifest.classes), **model_kwargs(self.manifest.input)}
        model = build_from_factory(entry.factory, **kwargs) if entry.factory else create_model(entry.arch, **kwargs)
        load_weights(model, weights)
        return model.eval()

    def given_teacher_file(self) -> Path | None:
        """The checkpoint of the teacher as the user brought it, when the run scored it and it is still there."""
        from prokt_deploy.errors import ModelError
        from prokt_deploy.rundir.checkpoint import resolve_checkpoint

        ckpt = self.manifest.teacher.checkpoint if self.manifest.teacher else None
        if ckpt is None or self.manifest.metrics.get("teacher_given_test_accuracy") is None:
            return None
        try:
            path = resolve_checkpoint(ckpt)
        except ModelError:
            return None
        return path if path.is_file() else None


def open_run(run: str | Path | None, *, kind: str | None = "distill", runs_root: Path = DEFAULT_RUNS_ROOT) -> FinishedRun:
    """Open a finished run (None: ``runs/latest``); ``kind``: refuse a run of another kind (None: any)."""
    opened = FinishedRun(resolve_run(run, runs_root))
    if kind is not None and opened.manifest.kind != kind:
        if opened.manifest.kind == "teacher":
            raise RunError(f"{str(opened.path)!r} holds a teacher (train-teacher); use a run written by 'prokt-deploy distill' or 'run'")
        raise RunError(f"{opened.path} is not a {kind} run (kind {opened.manifest.kind!r})")
    return opened


def load_model(run: str | Path, which: str) -> nn.Module:
    """``open_run(run, kind=None).model(which)``: the loader bench's PyTorch rows name (see bench.measure)."""
    return open_run(run, kind=None).model(which)
