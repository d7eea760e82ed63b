"""Run directories: created under a temporary name, moved into place only when complete.

A run directory holds ``student.safetensors``, ``teacher.safetensors``, ``recipe.yaml`` (the
resolved recipe), ``log.txt`` and ``manifest.json`` (schema in docs/manifest.md). ``runs/latest`` is
a symlink to the most recent completed run.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from prokt_deploy.errors import RunError

MANIFEST = "manifest.json"
DEFAULT_RUNS_ROOT = Path("runs")


def write_bytes_atomic(path: Path, data: bytes | memoryview) -> None:
    """Write ``data`` to a temporary file beside ``path``, flush it to disk, then rename it over
    ``path``: a crash or a full disk at any point leaves the previous file whole. The bytes go through
    Python's own file I/O, so a write that fails raises the file system's OSError (ENOSPC, EFBIG, ...)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except OSError as e:
        if e.filename is None:  # name the file that could not be written in the one-line error
            e.filename = str(path)
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``."""
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


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


class Staged:
    """A hidden staging directory beside ``final`` (``.<name>.partial-*``), from :func:`staged_dir`."""

    def __init__(self, final: Path) -> None:
        self.final = final
        final.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.partial-"))
        os.chmod(self.path, 0o755)  # mkdtemp makes 0700 directories
        self.committed = False

    def commit(self) -> Path:
        """Move the staged directory into place as ``final``, replacing what was there (the old one is moved
        aside first and removed after, so ``final`` is at every moment either the old or the new whole)."""
        old = None
        if self.final.exists():
            old = Path(tempfile.mkdtemp(dir=self.final.parent, prefix=f".{self.final.name}.old-"))
            os.rename(self.final, old / self.final.name)
        os.rename(self.path, self.final)
        self.committed = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.final


@contextmanager
def staged_dir(final: Path) -> Iterator[Staged]:
    """Stage a directory's contents beside ``final`` and put them in place only by ``Staged.commit()``: whatever
    happens before that (an error, a failed gate, Ctrl-C), ``final`` is left as it was and the staging directory
    is removed. The one "stage, check, move into place" of the project: runs, artifacts, reference exports."""
    staged = Staged(final)
    try:
        yield staged
    finally:
        if not staged.committed:
            shutil.rmtree(staged.path, ignore_errors=True)


@contextmanager
def staged_run_dir(final: Path) -> Iterator[Path]:
    """Yield a hidden staging directory beside ``final``; rename it to ``final`` on success,
    delete it on any failure (so no half-written run directory is ever left)."""
    check_out_dir(final)
    with staged_dir(final) as staged:
        yield staged.path
        staged.commit()


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


@contextmanager
def run_lock(run: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the run directory itself while a command updates its files.

    Every read-modify-write of ``manifest.json`` or ``report.json`` happens inside it, so two
    commands on one run (two exports, a bench and a merge) never lose each other's update. The lock
    is taken on the directory, not on a lock file, so nothing is added to a finished run; it waits
    for the other command (the critical sections are short) and is released if a process dies.
    """
    import fcntl

    fd = os.open(run, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:  # a file system without flock (some network mounts): go on unlocked
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF):
                raise
        yield
    finally:
        os.close(fd)  # releases the lock


def update_manifest(run: Path, change: Callable[[dict], None]) -> dict:
    """Re-read ``manifest.json`` under the run's lock, apply ``change`` to it, write it atomically."""
    with run_lock(run):
        manifest = read_manifest(run)
        change(manifest)
        write_json_atomic(run / MANIFEST, manifest)
    return manifest


def read_manifest(run: Path) -> dict:
    try:
        return json.loads((run / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise RunError(f"cannot read {run / MANIFEST}: {e}") from None


CHECKPOINT = "checkpoint.pt"


def partial_path(final: Path) -> Path:
    """The hidden directory a run is written in until it completes: ``.NAME.partial`` beside it."""
    return final.parent / f".{final.name}.partial"


def final_path(partial: Path) -> Path:
    name = partial.name
    if not (name.startswith(".") and name.endswith(".partial")):
        raise RunError(f"{str(partial)!r} is not an unfinished run directory")
    return partial.parent / name[1 : -len(".partial")]


def find_resumable(run: str | Path) -> Path:
    """The unfinished run directory for ``run`` (its final path or the hidden partial one).

    A partial directory with a checkpoint resumes from it. One killed before its first checkpoint
    still holds the resolved ``recipe.yaml``: it is returned too, and ``distill`` restarts it from
    step 0 with that recipe. Anything else is a RunError that says what is there.
    """
    run = Path(run)
    partial = run if run.name.endswith(".partial") else partial_path(run)
    if (partial / CHECKPOINT).is_file() or (partial / "recipe.yaml").is_file():
        return partial
    if (run / MANIFEST).is_file():
        raise RunError(f"run {str(run)!r} already finished; nothing to resume")
    if partial.is_dir():
        raise RunError(
            f"the unfinished run {str(partial)!r} was stopped before it saved its recipe or a checkpoint; "
            f"nothing to resume: delete it and start the run again"
        )
    raise RunError(f"no unfinished run at {str(run)!r} (no {partial.name}/ beside it); pass the --out directory of the interrupted run")


def is_locked(partial: Path) -> bool:
    """Whether a live process holds the lock of the run being written in ``partial`` (RunWorkspace's flock)."""
    import fcntl

    if not (partial / ".lock").is_file():
        return False
    fd = os.open(partial / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


class RunWorkspace:
    """A run being written: the hidden partial directory, locked against a second writer.

    ``open()`` creates it (fresh run) or reopens it (resume); ``commit()`` renames it into place;
    ``abandon()`` deletes it unless it holds a checkpoint worth resuming from.
    """

    def __init__(self, final: Path) -> None:
        self.final = final
        self.path = partial_path(final)
        self._lock_fd: int | None = None

    def open(self, *, resume: bool) -> RunWorkspace:
        if resume:
            if not self.path.is_dir():
                raise RunError(f"no unfinished run at {str(self.path)!r}")
        else:
            check_out_dir(self.final)
            if self.path.exists():
                raise RunError(f"an unfinished run exists at {str(self.path)!r}: resume it with --resume {self.final} or delete it")
            self.final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.mkdir(self.path)  # atomic: of two runs started together, one gets it
            except FileExistsError:
                raise RunError(f"another run is writing {str(self.final)!r}; choose another --out") from None
        self._lock()
        return self

    def _lock(self) -> None:
        import fcntl

        fd = os.open(self.path / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RunError(f"another process is writing {str(self.final)!r}; wait for it or choose another --out") from None
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    def commit(self) -> Path:
        self.checkpoint.unlink(missing_ok=True)
        (self.path / ".lock").unlink(missing_ok=True)
        for stale in self.path.glob(".*.tmp"):  # a write cut short by a kill (the file it replaced is whole)
            stale.unlink(missing_ok=True)
        self._unlock()
        check_out_dir(self.final)
        if self.final.exists():
            self.final.rmdir()
        os.rename(self.path, self.final)
        return self.final

    def abandon(self) -> bool:
        """Release the lock; delete the directory unless it has a checkpoint. True if kept."""
        self._unlock()
        if self.checkpoint.is_file():
            return True
        shutil.rmtree(self.path, ignore_errors=True)
        return False


def save_checkpoint(path: Path, state: dict) -> None:
    """Serialise with torch.save in memory, then write atomically (:func:`write_bytes_atomic`): a
    crash mid-write keeps the previous checkpoint. Not torch.save to the file: its zip writer turns
    a full disk into ``RuntimeError: [enforce fail at inline_container.cc] unexpected pos``."""
    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    write_bytes_atomic(path, buf.getbuffer())


def load_checkpoint(path: Path) -> dict:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign checkpoint: a RunError that names it
        raise RunError(f"checkpoint {str(path)!r} is unreadable ({type(e).__name__}); the run cannot be resumed") from None


# What a failed native write (torch's zip writer, OpenVINO's serializer) says instead of an OSError.
_NATIVE_WRITE_FAILURES = (
    "inline_container.cc",
    "unexpected pos",
    "iostream error",
    "basic_ios",
    "No space left",
    "File too large",
    "Disk quota exceeded",
    "Read-only file system",
)


def filesystem_cause(exc: BaseException, directory: Path | None = None) -> OSError | None:
    """The file-system error behind ``exc``, or None if it is not one.

    An OSError in the exception's chain is returned as it is. Native writers (torch's zip writer,
    OpenVINO's serializer) report a full disk as a RuntimeError without the OS message. When
    ``directory`` (where the failed write went) is given, a 1 MiB probe file written there and
    deleted recovers the message ("No space left on device", "File too large"); without it, a native
    write failure becomes an EIO that quotes the native message.
    """
    seen, e, native = set(), exc, False
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno is not None:
            return e
        native = native or any(m in str(e) for m in _NATIVE_WRITE_FAILURES)
        e = e.__cause__ or e.__context__
    if directory is None or not directory.is_dir():
        return OSError(errno.EIO, f"a write failed ({_first_line(exc)}); the disk may be full") if native else None
    probe_dir = directory
    try:
        with tempfile.TemporaryFile(dir=probe_dir) as f:
            for _ in range(16):
                f.write(b"\0" * 65536)
            f.flush()
            os.fsync(f.fileno())
    except OSError as probe:
        probe.filename = probe.filename or str(probe_dir)
        return probe
    if native:
        return OSError(errno.EIO, f"a write failed ({_first_line(exc)}); the disk may be full", str(probe_dir))
    return None


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__
