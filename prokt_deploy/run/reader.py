"""The one reader of a finished run: every later stage (export, compare, bench, bundle) reopens a run here.

``open_run(path)`` checks the directory holds a finished run of the expected kind and returns a
:class:`FinishedRun`: its manifest as a typed :class:`Manifest` (the schema in docs/manifest.md),
its saved recipe, its data (reloaded with the run's recipe and seed, and checked to be the data the
run was trained on, so the test split is still held out) and its models (through the teacher's
factory when the recipe named one, else the model registry).

The manifest is only *read* here; the stages that add to it (export's artifact records, compare's
table) change it under the run's lock with :func:`prokt_deploy.run.workspace.update_manifest`, and a
reader opened before such a change sees it after :meth:`FinishedRun.reload`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prokt_deploy.errors import DataError, RecipeError, RunError
from prokt_deploy.run.workspace import DEFAULT_RUNS_ROOT, MANIFEST, read_manifest, resolve_run

if TYPE_CHECKING:  # torch and the data loaders are imported when a model or the data is asked for
    from torch import nn

    from prokt_deploy.data import DataBundle
    from prokt_deploy.recipe import Recipe

#: the defaults of the int8 export (prokt_deploy.deploy.export), here so the reader needs no torch
DEFAULT_CALIBRATION_SAMPLES = 300
DEFAULT_MAX_ACCURACY_DROP = 1.0  # percentage points


@dataclass(frozen=True)
class ModelEntry:
    """``manifest['teacher']`` / ``manifest['student']``: what the model is and where its weights are."""

    arch: str | None
    params: int | None = None
    weights: str | None = None  # relative to the run; None: the method keeps no such model (scratch's teacher)
    factory: str | None = None  # 'module:function' (teachers only)
    macs: int | None = None
    estimated_bytes: int | None = None

    @classmethod
    def from_dict(cls, d: dict) -> ModelEntry:
        return cls(
            arch=d.get("arch"),
            params=d.get("params"),
            weights=d.get("weights"),
            factory=d.get("factory"),
            macs=d.get("macs"),
            estimated_bytes=d.get("estimated_bytes"),
        )


@dataclass(frozen=True)
class Manifest:
    """A run's ``manifest.json``, typed. ``raw`` is the whole dict (for the fields not named here and
    for writers of reports that copy it)."""

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
    artifacts: list[dict] = field(default_factory=list)
    data: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, d: Any, where: Path) -> Manifest:
        """Check the fields every reader relies on (RunError naming the file when one is missing or of the wrong type)."""
        if not isinstance(d, dict):
            raise _corrupted(where, "not a JSON object")
        try:
            kind = str(d.get("kind") or "distill")
            student = ModelEntry.from_dict(d["student"]) if kind == "distill" else None
            if student is not None and not student.arch:
                raise KeyError("student.arch")
            budget = d.get("budget_bytes")
            artifacts = d.get("artifacts", [])
            formats = d.get("formats") or []
            if not isinstance(artifacts, list):
                raise _corrupted(where, "'artifacts' is not a list")
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
                artifacts=artifacts,
                data=dict(d.get("data") or {}),
                raw=d,
            )
        except KeyError as e:
            raise _corrupted(where, f"no {e.args[0]!r}") from None
        except (TypeError, ValueError, AttributeError):
            raise _corrupted(where, "student, budget_bytes or precision has the wrong type") from None
        if kind == "distill" and (m.budget_bytes is None or m.precision is None):
            raise _corrupted(where, f"no {'budget_bytes' if m.budget_bytes is None else 'precision'!r}")
        return m

    def model(self, which: str) -> ModelEntry:
        entry = self.teacher if which == "teacher" else self.student
        if entry is None:
            raise RunError(f"a {self.kind} run has no {which}")
        return entry

    def passed_artifacts(self) -> list[dict]:
        return [a for a in self.artifacts if isinstance(a, dict) and a.get("passed")]

    def deployed_accuracy(self, fmt: str) -> float | None:
        """Test accuracy of the student's artifact in ``fmt`` at the run's deploy precision, if exported."""
        return next((a.get("test_accuracy") for a in self.artifacts if a.get("format") == fmt and a.get("precision") == self.precision), None)

    def int8_settings(self) -> tuple[int, float]:
        """Calibration samples and accuracy gate (points) of the student's int8 export, else the export
        defaults: the teacher's int8 is made exactly as the student's was."""
        records = [a for a in self.artifacts if a.get("precision") == "int8"]
        calibration = next((int(a["calibration_samples"]) for a in records if a.get("calibration_samples")), DEFAULT_CALIBRATION_SAMPLES)
        drop = next((float(a["max_accuracy_drop"]) for a in records if a.get("max_accuracy_drop") is not None), DEFAULT_MAX_ACCURACY_DROP)
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
        factory is built by it (a recipe that names code was consented to when the run was made)."""
        from prokt_deploy.data import model_kwargs
        from prokt_deploy.models import create_model
        from prokt_deploy.run.checkpoint import build_from_factory, load_weights

        entry = self.manifest.model(which)
        if not entry.weights:
            raise RunError(f"{self.path} has no {which} weights (method {self.manifest.method!r} does not keep a {which})")
        kwargs = {"num_classes": len(self.manifest.classes), **model_kwargs(self.manifest.input)}
        model = build_from_factory(entry.factory, **kwargs) if entry.factory else create_model(entry.arch, **kwargs)
        load_weights(model, self.path / entry.weights)
        return model.eval()


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
