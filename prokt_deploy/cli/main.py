"""Entry point: the Typer app and the one place where errors become exit codes."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from prokt_deploy import __version__
from prokt_deploy.cli import bench as bench_cmd
from prokt_deploy.cli import export as export_cmd
from prokt_deploy.cli import plan as plan_cmd
from prokt_deploy.cli import recipe as recipe_cmd
from prokt_deploy.cli import run as run_cmd
from prokt_deploy.cli import train as train_cmd
from prokt_deploy.errors import EXIT_FILESYSTEM, EXIT_INTERRUPTED, ProktError
from prokt_deploy.rundir.workspace import filesystem_cause

app = typer.Typer(
    name="prokt-deploy",
    help="Distill a teacher into a student that fits a size budget (ProKT), export it to int8 ONNX/OpenVINO and benchmark it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("distill")(train_cmd.distill)
app.command("train-teacher")(train_cmd.train_teacher)
app.command("plan")(plan_cmd.plan)
app.command("export")(export_cmd.export)
app.add_typer(recipe_cmd.app, name="recipe")
app.command("bench")(bench_cmd.bench)
app.command("bundle")(bench_cmd.bundle)
app.command("run")(run_cmd.run)

_debug = False

#: Flags renamed so that each name means one thing across commands: (command, old flag) -> (new flag, why). The old
#: names keep working for one release, with one line on stderr (:func:`_renamed_flags`).
RENAMED = {
    ("export", "--max-accuracy-drop"): ("--max-int8-drop", "export's limit is the int8 file against the student's fp32 model"),
    ("bench", "--max-accuracy-drop"): ("--max-drop-vs-teacher", "bench's limit is the student's file against the teacher"),
    ("run", "--max-accuracy-drop"): ("--max-drop-vs-teacher", "run's limit is the student's file against the teacher"),
    ("bench", "--min-speedup"): ("--min-speedup-vs-teacher", "now against the teacher's fastest file, as the report's verdict, not its ONNX fp32"),
    ("run", "--min-speedup"): ("--min-speedup-vs-teacher", "now against the teacher's fastest file, as the report's verdict, not its ONNX fp32"),
    ("bench", "--device"): ("--runtime-device", "--device is the training device of distill and run"),
    ("export", "--device"): ("--runtime-device", "--device is the training device of distill and run"),
    ("run", "--bench-device"): ("--runtime-device", "the same name as bench's and export's"),
}


def _renamed_flags(args: list[str]) -> list[str]:
    """``args`` with deprecated flag names (:data:`RENAMED`) replaced by their new ones, each replacement said on stderr."""
    command = next((a for a in args if not a.startswith("-")), None)
    out = []
    for a in args:
        name, eq, value = a.partition("=")
        new = RENAMED.get((command, name))
        if new is not None:
            sys.stderr.write(f"warning: {command} {name} is deprecated, use {new[0]} ({new[1]}); the old name goes in the next release\n")
            a = new[0] + eq + value
        out.append(a)
    return out


def _version(value: bool) -> None:
    if value:
        typer.echo(f"prokt-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors (also PROKT_DEPLOY_DEBUG=1).")] = False,
) -> None:
    global _debug
    _debug = debug or _debug


def _fail(message: str, code: int) -> None:
    line = " ".join(str(message).split())  # always one line
    sys.stderr.write(f"Error: {line}\n")
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI. Errors print one line on stderr and exit with the code documented in docs/cli.md (Exit codes)."""
    global _debug
    _debug = os.environ.get("PROKT_DEPLOY_DEBUG") == "1" or "--debug" in (argv if argv is not None else sys.argv[1:])
    args = list(argv if argv is not None else sys.argv[1:])
    if not [a for a in args if a != "--debug"]:
        args = ["--help"]  # bare prokt-deploy: the help, exit 0 (not a usage error)
    args = _renamed_flags(args)
    try:
        code = app(args=args, prog_name="prokt-deploy", standalone_mode=False)
    except ProktError as e:
        if _debug:
            raise
        _fail(str(e), e.exit_code)
    except typer.Abort:
        _fail("aborted", EXIT_INTERRUPTED)
    except KeyboardInterrupt:
        _fail("interrupted; nothing was written", EXIT_INTERRUPTED)
    except OSError as e:  # disk full, permission denied, read-only file system, ...
        if _debug:
            raise
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        _fail(f"file system error: {e.strerror or e}{where}", EXIT_FILESYSTEM)
    except Exception as e:  # the Click usage errors typer vendors, then anything unexpected
        if getattr(e, "exit_code", None) is not None and hasattr(e, "format_message"):
            ctx = getattr(e, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            _fail(e.format_message() + hint, e.exit_code)
        if _debug:
            raise
        cause = filesystem_cause(e)  # torch's zip writer and OpenVINO report a full disk as a RuntimeError
        if cause is not None:
            _fail(f"file system error: {cause.strerror or cause}", EXIT_FILESYSTEM)
        _fail(f"internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", 1)
    sys.exit(code if isinstance(code, int) else 0)
