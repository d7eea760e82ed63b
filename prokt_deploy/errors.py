"""Typed errors. Library code raises these; only the CLI boundary prints them and exits.

Each kind of failure has its own exit code, documented in docs/cli.md ("Exit codes").
"""

from __future__ import annotations


class ProktError(Exception):
    """Base class: a failure the user can act on. The message says what to do next."""

    exit_code = 1


class UsageError(ProktError):
    """A command-line value is malformed (e.g. a budget string that is not a size)."""

    exit_code = 2


class RecipeError(ProktError):
    """The recipe file is missing, not valid YAML, or does not match the schema."""

    exit_code = 3


class DataError(ProktError):
    """The dataset is missing, unreadable, or has the wrong shape/dtype."""

    exit_code = 4


class BudgetError(ProktError):
    """No student of the family fits the size budget."""

    exit_code = 5


class ModelError(ProktError):
    """Unknown architecture, or a checkpoint that cannot be loaded safely."""

    exit_code = 6


class RunError(ProktError):
    """A run directory is missing, incomplete, or would be overwritten."""

    exit_code = 7


class TrainingError(ProktError):
    """Training diverged (NaN/inf loss)."""

    exit_code = 8


class ExportFailed(ProktError):
    """Exporting or quantizing an artifact failed, or its runtime is not installed.

    ``results``: when raised by ``export_run`` after every requested format was tried, the record of each
    (``prokt_deploy.rundir.records``: the passed and failed artifacts, skipped and failed formats); else empty."""

    exit_code = 9

    def __init__(self, message: str, *, results: list | None = None) -> None:
        super().__init__(message)
        self.results: list = list(results or [])


class GateFailed(ProktError):
    """An artifact was exported but missed a validation gate (parity, accuracy drop, budget).

    ``results``: as for :class:`ExportFailed`, the record of every requested format."""

    exit_code = 10

    def __init__(self, message: str, *, results: list | None = None) -> None:
        super().__init__(message)
        self.results: list = list(results or [])


class BenchGateFailed(ProktError):
    """A benchmark gate (latency, accuracy drop, speed-up) was missed; the report was written."""

    exit_code = 11


EXIT_INTERRUPTED = 130
EXIT_FILESYSTEM = 13  # an OSError from the file system: disk full, permission denied, read-only


class InterruptedRun(ProktError):
    """Ctrl-C during training: the progress was saved and the run can be resumed."""

    exit_code = 130


class BenchError(ProktError):
    """Benchmarking failed: an engine could not be loaded or run in its worker process, or a
    device result file to merge is not valid."""

    exit_code = 12
