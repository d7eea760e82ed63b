"""Run directories: created under a temporary name, moved into place only when complete.

A run directory holds ``student.safetensors``, ``teacher.safetensors``, ``recipe.yaml`` (the
resolved recipe), ``log.txt`` and ``manifest.json`` (schema in the README). ``runs/latest`` is
a symlink to the most recent completed run.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from prokt_deploy.errors import RunError

MANIFEST = "manifest.json"
DEFAULT_RUNS_ROOT = Path("runs")


def write_json_atomic(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def default_run_path(runs_root: Path, recipe_name: str, method: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = runs_root / f"{stamp}-{recipe_name}-{method}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path


def check_out_dir(path: Path) -> None:
    """Refuse to write into an existing non-empty directory (never overwrite a run)."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise RunError(f"output {str(path)!r} already exists and is not empty; choose another --out")


@contextmanager
def staged_run_dir(final: Path) -> Iterator[Path]:
    """Yield a hidden staging directory beside ``final``; rename it to ``final`` on success,
    delete it on any failure (so no half-written run directory is ever left)."""
    check_out_dir(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.partial-"))
    os.chmod(staging, 0o755)  # mkdtemp makes 0700 directories
    try:
        yield staging
        if final.exists():
            final.rmdir()  # empty (checked above); os.rename needs it gone
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def mark_latest(runs_root: Path, run: Path) -> None:
    """Point ``runs_root/latest`` at ``run`` (atomically replaced symlink)."""
    try:
        runs_root.mkdir(parents=True, exist_ok=True)
        tmp = runs_root / f".latest.{os.getpid()}"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        tmp.symlink_to(run.resolve())
        os.replace(tmp, runs_root / "latest")
    except OSError:
        pass  # a missing pointer only means `export` needs an explicit RUN


def resolve_run(run: str | Path | None, runs_root: Path = DEFAULT_RUNS_ROOT) -> Path:
    """The run directory to use: ``run`` if given, else the latest completed run."""
    if run is None:
        latest = runs_root / "latest"
        if not latest.exists():
            raise RunError(f"no run found under {str(runs_root)!r}; run 'prokt-deploy distill' first or pass RUN")
        path = latest.resolve()
    else:
        path = Path(run)
    if not (path / MANIFEST).is_file():
        raise RunError(f"{str(path)!r} is not a run directory (no {MANIFEST}); pass a directory written by 'prokt-deploy distill'")
    return path


def read_manifest(run: Path) -> dict:
    try:
        return json.loads((run / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise RunError(f"cannot read {run / MANIFEST}: {e}") from None
