"""The deploy formats of the exporter registry (``exporters.FORMATS``) joined to the timing harness.

Everything a stage needs to know about a format comes from its one file, ``exporters/<fmt>.py`` (an
:class:`exporters.Exporter`): its precisions, its artifact's main file and size, the runner that times it
(:mod:`prokt_deploy.harness.runners`), whether int8 diagnosis and accuracy-aware int8 apply. This module answers, for
the planner, bench, bundle and the reference exports, the questions that join a format to the harness: the worker
spec of an artifact, what ``--device`` means for the runtimes of the registered formats, the fingerprint that names
those runtimes. Nothing here names a format.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import exporters
from prokt_deploy.harness import fingerprint as _fingerprint
from prokt_deploy.harness import measure, runners

__all__ = ["artifact_engine", "fingerprint", "formats_with", "runner", "runner_ref", "runners_of", "runtime_name", "runtime_targets"]


def runner_ref(fmt: str) -> str:
    """The harness runner reference of ``fmt`` (:meth:`exporters.Exporter.runner_ref`)."""
    return exporters.get_exporter(fmt).runner_ref()


def runner(fmt: str) -> type:
    """The runner class that times ``fmt``'s artifacts."""
    return runners.resolve(runner_ref(fmt))


def runtime_name(fmt: str) -> str:
    """The runtime that runs ``fmt``'s artifacts (the key of :func:`runtime_targets`), e.g. ``onnxruntime``."""
    return runner(fmt).name


def runners_of(formats: Iterable[str] | None = None) -> list[type]:
    """The runner classes of ``formats`` (default: every registered format), one per runtime."""
    out: dict[str, type] = {}
    for fmt in exporters.FORMATS if formats is None else formats:
        cls = runner(fmt)
        out.setdefault(cls.name, cls)
    return list(out.values())


def runtime_targets(device: str, formats: Iterable[str] | None = None) -> dict:
    """What ``device`` means for each runtime of the registered formats (:func:`prokt_deploy.harness.measure.runtime_targets`);
    raises :class:`prokt_deploy.harness.measure.DeviceUnavailable`."""
    return measure.runtime_targets(device, runners_of(formats))


def artifact_engine(fmt: str, files: Sequence[str | os.PathLike[str]], targets: dict) -> dict:
    """The harness worker spec of a ``fmt`` artifact (its ``files``; the format says which one the runtime opens)."""
    return measure.artifact_engine(runner_ref(fmt), exporters.main_file(fmt, [Path(f) for f in files]), targets)


def fingerprint(*, runtimes: bool = True) -> dict:
    """This machine's fingerprint, naming the runtimes of every registered format."""
    return _fingerprint.fingerprint(runtimes=runtimes, runners=runners_of())


def formats_with(precision: str) -> tuple[str, ...]:
    """The registered formats that can be written at ``precision`` (e.g. the teacher's own int8 is made in each of
    those with ``int8`` that the student has)."""
    return exporters.formats_with(precision)
