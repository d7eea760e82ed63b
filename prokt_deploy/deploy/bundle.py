"""On-device bundles: everything needed to measure a run's artifacts on a board with numpy and a runtime.

``write_bundle(run, out)`` writes ``out/`` (a new or empty directory)::

    bench_bundle.py        the measurement script: prokt_deploy/harness/measure.py, copied (numpy + runtime only)
    runners.py             prokt_deploy/harness/runners.py, copied: how each runtime opens and times a file
    fingerprint.py         prokt_deploy/harness/fingerprint.py, copied (standard library only)
    format_runners/        the source of a format's own runner class (``<format>.py``), for a format whose
                           ``Exporter.runner`` is not a built-in one
    bundle.json            input spec, classes, the artifacts (with the file the runtime opens and the runner
                           that times it, from the format registry) and their host accuracy, default settings
    samples.npz            x: the first N test samples, preprocessed float32 (N,C,H,W) or, for text, packed
                           int64 (N,2,L) token ids and attention masks; y: their labels
    tokenizer/             text runs: the tokenizer files (tokenizer.json, vocab.txt, ...)
    artifacts/<model>-<format>-<precision>/   the files of every passed artifact, the student's fp32
                           file of each format that has only int8 (without VNNI-class int8 dot products
                           the fp32 file can be the fastest on the board), and unless ``teacher=False``
                           the teacher's ONNX fp32 baseline and its own int8 artifacts that passed their
                           gate (what the student must beat; see prokt_deploy.benchmarking.bench)
    README.txt             how to run it and merge the result

On the board: ``python bench_bundle.py`` writes ``device-results.json``; back on the host:
``prokt-deploy bench RUN --merge device-results.json`` adds its rows to the run's report.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from prokt_deploy.errors import RunError, UsageError
from prokt_deploy.harness import fingerprint, measure, runners
from prokt_deploy.rundir.reader import open_run
from prokt_deploy.rundir.workspace import check_out_dir, staged_run_dir

SCHEMA_VERSION = 1
DEFAULT_SAMPLES = 500

_README = """\
On-device benchmark bundle for run {run} (written {created} by prokt-deploy).

Needs Python 3.10+, numpy and {runtimes}; not torch, not prokt-deploy.
Artifacts whose runtime is not installed are skipped.

    python bench_bundle.py                    # writes device-results.json here
    python bench_bundle.py --threads 4 --device GPU --out /tmp/results.json
    python bench_bundle.py --help

Then, on the host:

    prokt-deploy bench {run_path} --merge device-results.json
"""


def write_bundle(
    run: str | Path | None,
    out: str | Path,
    *,
    samples: int = DEFAULT_SAMPLES,
    teacher: bool = True,
    settings: dict | None = None,
) -> Path:
    """Write the on-device bundle of ``run`` (default: the latest run) into ``out``; return its path.

    ``samples`` test samples are included (all if the test split is smaller). ``settings`` overrides the
    bundle's default measurement settings (keys of :data:`prokt_deploy.harness.measure.DEFAULTS`).
    """
    from prokt_deploy.deploy.references import ensure_fp32_export, teacher_int8_gates

    if samples < 1:
        raise UsageError(f"--samples must be at least 1, got {samples}")
    unknown = set(settings or {}) - set(measure.DEFAULTS)
    if unknown:
        raise UsageError(f"unknown bundle settings {sorted(unknown)}; known: {', '.join(measure.DEFAULTS)}")
    out = Path(out)
    check_out_dir(out)  # every refusal comes before the teacher's export is written into the run
    fr = open_run(run)
    run, manifest = fr.path, fr.manifest
    artifacts = manifest.passed_artifacts()
    if not artifacts:
        raise RunError(f"{run} has no passed artifacts to bundle; run 'prokt-deploy export {run}' first")
    missing = [f for a in artifacts for f in a.files if not (run / f).is_file()]
    if missing:
        raise RunError(f"artifact file {missing[0]!r} listed in {run / 'manifest.json'} is missing; export again")
    data = fr.data()
    x = data.test.x.numpy()[:samples]  # (N, C, H, W) float32, preprocessed as in training
    y = data.test.y.numpy()[:samples]  # (N,)

    entries = [("student", a.format, a.precision, [run / f for f in a.files], a.test_accuracy) for a in artifacts]
    tokenizer = sorted((run / "tokenizer").iterdir()) if (run / "tokenizer").is_dir() else []
    have_fp32 = {a.format for a in artifacts if a.precision == "fp32"}
    for fmt in sorted({a.format for a in artifacts if a.precision == "int8"} - have_fp32):
        entries.append(("student", fmt, "fp32", ensure_fp32_export(fr, "student", fmt, x), None))
    if teacher and manifest.teacher.weights:
        gates = teacher_int8_gates(fr, {a.format for a in artifacts}, data, progress=lambda text: None)
        for fmt, gate in sorted(gates.items(), reverse=True):
            if gate.passed:
                entries.insert(0, ("teacher", fmt, "int8", [run / f for f in gate.files], gate.test_accuracy))
        files = ensure_fp32_export(fr, "teacher", "onnx", x)
        entries.insert(0, ("teacher", "onnx", "fp32", files, manifest.metrics.get("teacher_test_accuracy")))

    spec = _spec("bundle", run.name, manifest.input, manifest.classes, len(y), settings)
    readme = _README.format(run=run.name, created=spec["created"], run_path=run, runtimes=_runtimes(entries))
    return _stage(out, entries, spec, _sample_arrays(data, x, y), readme, tokenizer)


def _runtimes(entries: list[tuple]) -> str:
    """The runtimes a bundle's artifacts need (their formats' runners), for its README."""
    from prokt_deploy import formats

    return " and/or ".join(dict.fromkeys(formats.runtime_name(fmt) for _, fmt, *_ in entries))


def _spec(kind: str, run: str, input_spec: dict, classes: list, samples: int, settings: dict | None) -> dict:
    """bundle.json without its artifact list: what the board needs to know about the inputs and settings."""
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "run": run,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "input": {k: v for k, v in input_spec.items() if k not in ("tokenizer", "source_file")},
        "classes": classes,
        "samples": int(samples),
        "settings": {**measure.DEFAULTS, **(settings or {})},
    }


def _sample_arrays(data, x: np.ndarray, y: np.ndarray) -> dict:
    """samples.npz: x, y and, for text, ``x_time``: the inputs timed at the median test length, as on the host."""
    if not data.is_text:
        return {"x": x, "y": y}
    return {"x": x, "y": y, "x_time": x[:, :, : int(np.median(data.test.x[:, 1].sum(1).numpy()))]}


def _stage(out: Path, entries: list[tuple], spec: dict, arrays: dict, readme: str, tokenizer: list[Path]) -> Path:
    """Write a bundle directory atomically: ``entries`` (model, format, precision, files, host accuracy) under
    artifacts/, ``arrays`` as samples.npz, ``spec`` + the artifact list as bundle.json, the scripts, README.txt.
    Each format's runner (the format registry's) is recorded per artifact; a format's own runner class is shipped
    as its source under format_runners/ (:func:`prokt_deploy.harness.runners.class_source`)."""
    import exporters
    from prokt_deploy import formats

    with staged_run_dir(out) as staging:
        listed, shipped = [], {}
        for model, fmt, precision, files, accuracy in entries:
            folder = Path("artifacts") / f"{model}-{fmt}-{precision}"
            (staging / folder).mkdir(parents=True)
            for f in files:
                shutil.copy2(f, staging / folder / f.name)
            if fmt not in shipped:
                shipped[fmt] = _ship_runner(staging, fmt, formats.runner_ref(fmt))
            listed.append(
                {
                    "id": f"{model}/{fmt}/{precision}",
                    "model": model,
                    "format": fmt,
                    "precision": precision,
                    "files": [str(folder / f.name) for f in files],
                    "main_file": str(folder / exporters.main_file(fmt, files).name),
                    "runner": shipped[fmt],
                    "bytes": sum(f.stat().st_size for f in files),
                    "host_test_accuracy": accuracy,
                }
            )
        if tokenizer:  # text: the device tokenizes with the teacher's tokenizer (bundle.json input spec)
            (staging / "tokenizer").mkdir()
            for f in tokenizer:
                shutil.copy2(f, staging / "tokenizer" / f.name)
        np.savez(staging / measure.BUNDLE_SAMPLES, **arrays)
        (staging / measure.BUNDLE_SPEC).write_text(json.dumps({**spec, "artifacts": listed}, indent=2) + "\n")
        shutil.copy2(measure.__file__, staging / "bench_bundle.py")
        shutil.copy2(runners.__file__, staging / "runners.py")
        shutil.copy2(fingerprint.__file__, staging / "fingerprint.py")
        (staging / "README.txt").write_text(readme)
    return out


def _ship_runner(staging: Path, fmt: str, ref: str) -> str:
    """The runner reference a bundle records for ``fmt``: a built-in runner's name as is; a format's own runner class
    (``<file>.py:<Class>``) copied as its source alone into ``format_runners/<fmt>.py``, named relative to the bundle."""
    where, _, name = ref.rpartition(":")
    if ref in runners.RUNNERS or not where.endswith(".py"):
        return ref
    target = Path(measure.BUNDLE_RUNNERS) / f"{fmt}.py"
    (staging / target.parent).mkdir(exist_ok=True)
    header = f'"""The runner of format {fmt!r}: class {name} of {Path(where).name}, copied by prokt-deploy bundle (run by bench_bundle.py)."""\n\n'
    (staging / target).write_text(header + runners.class_source(where, name))
    return f"{target}:{name}"


_PLAN_README = """\
Plan bundle for recipe {recipe} at {budget} (written {created} by prokt-deploy plan --bundle).

Every student candidate that fits the size budget, untrained (generic weights: the real graph, so the
real latency), and the teacher's fp32 and int8 artifacts. Accuracies measured here are meaningless
(untrained models); only the latencies matter. Needs Python 3.10+, numpy and {runtimes}.

    python bench_bundle.py                    # writes device-results.json here
    python bench_bundle.py --threads 4 --device GPU

Then, on the host, plan (or distill) from the device's latencies:

    prokt-deploy plan --recipe {recipe_path} --budget {budget} --latencies device-results.json
    prokt-deploy distill --recipe {recipe_path} --budget {budget} --latencies device-results.json
"""


def write_plan_bundle(
    out: str | Path,
    models: dict,
    kept,
    *,
    formats: list[str],
    example,
    data,
    recipe_name: str,
    recipe_path: str,
    budget: str,
    samples: int = 64,
    settings: dict | None = None,
) -> Path:
    """Write the planner's ``models`` (label -> (module, precision), see
    :func:`prokt_deploy.planner.plan_student`'s ``bundle``) into an on-device bundle at ``out``: for each
    deploy format the artifact of every candidate at the deploy precision and the teacher's fp32 and int8,
    all with generic weights, plus ``samples`` test samples to time on. ``kept(label, fmt)``: a directory
    that may already hold the size measurement's export of that candidate."""
    import tempfile

    from prokt_deploy.planner import PLAN_BUNDLE_PREFIX, generic_artifact, generic_calibration, model_name

    out = Path(out)
    ex = example[:1]
    calibration = generic_calibration(ex)
    x = data.test.x.numpy()[:samples]
    y = data.test.y.numpy()[:samples]
    with tempfile.TemporaryDirectory(prefix="prokt-plan-bundle-") as tmp:
        entries = []
        for fmt in formats:
            for i, (label, (model, precision)) in enumerate(models.items()):
                files = generic_artifact(model, label, fmt, precision, ex, calibration, Path(tmp) / f"{fmt}-{i}", kept(label, fmt))
                entries.append((model_name(label), fmt, precision, files, None))
        spec = _spec("plan-bundle", f"{PLAN_BUNDLE_PREFIX}{recipe_name}@{budget}", data.input, list(data.classes), len(y), settings)
        readme = _PLAN_README.format(recipe=recipe_name, recipe_path=recipe_path, budget=budget, created=spec["created"], runtimes=_runtimes(entries))
        return _stage(out, entries, spec, _sample_arrays(data, x, y), readme, [])


def plan_bundle_writer(out: str | Path, recipe, data, *, recipe_path: str | None = None):  # Recipe, DataBundle -> planner.BundleWriter
    """The ``bundle`` writer of :func:`prokt_deploy.planner.plan` that writes a plan bundle into ``out``
    (``plan --bundle DIR``); ``recipe_path`` is named in its README. ``out`` is checked to be a new or empty
    directory now, before anything is planned."""
    check_out_dir(Path(out))

    def write(models: dict, kept) -> None:
        write_plan_bundle(
            out,
            models,
            kept,
            formats=recipe.budget.formats,
            example=data.example(2),
            data=data,
            recipe_name=recipe.name,
            recipe_path=recipe_path or "RECIPE",
            budget=recipe.budget.size,
        )

    return write
