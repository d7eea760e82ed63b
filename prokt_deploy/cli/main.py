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


#: Help panels (at 80 columns each panel is its own table, so no flag name is cut): the options of every command
#: grouped by what they set; the rest stay under "Options".
PANELS = {
    "Budget and student": ("--budget", "--formats", "--family", "--student", "--target", "--ram-budget", "--latency-budget", "--exact", "--bundle"),
    "Data": ("--data", "--data-source", "--max-train-samples", "--labels", "--unlabeled-rest", "--unlabeled", "--max-val-samples"),
    "Training": (
        "--method",
        "--epochs",
        "--seed",
        "--device",
        "--min-steps",
        "--teacher-checkpoint",
        "--teacher-init",
        "--teacher-factory",
        "--compare",
    ),
    "Deploy": ("--format", "--precision", "--runtime-device", "--calibration-samples", "--max-int8-drop", "--tolerance"),
    "int8 fallbacks": ("--accuracy-aware", "--qat"),
    "Benchmark and gates": (
        "--threads",
        "--batch",
        "--runs",
        "--warmup",
        "--repeats",
        "--max-latency-ms",
        "--max-drop-vs-teacher",
        "--min-speedup-vs-teacher",
    ),
}
#: The value placeholder of each option in the help (flags show none; anything else: N, X, PATH or TEXT by its type).
METAVARS = {
    **dict.fromkeys(("--budget", "--ram-budget"), "SIZE"),
    "--latency-budget": "TIME",
    "--formats": "FMT,...",
    "--family": "FAMILY,...",
    "--student": "ARCH",
    "--target": "RUNTIME",
    **dict.fromkeys(("--latencies", "--merge", "--teacher-checkpoint"), "FILE"),
    **dict.fromkeys(("--bundle", "--out", "--resume", "--runs-dir"), "DIR"),
    **dict.fromkeys(("--data", "--unlabeled"), "PATH"),
    "--data-source": "SOURCE",
    "--method": "METHOD",
    "--compare": "METHOD,...",
    **dict.fromkeys(("--device", "--runtime-device"), "DEVICE"),
    "--teacher-init": "INIT",
    "--teacher-factory": "MOD:FN",
    "--format": "FMT",
    "--precision": "PREC",
    **dict.fromkeys(("--max-int8-drop", "--max-drop-vs-teacher"), "POINTS"),
    "--max-latency-ms": "MS",
    "--recipe": "RECIPE",
}
#: Examples under each command's help.
EXAMPLES = {
    "run": [
        ("prokt-deploy run", "the default recipe: 15 epochs of ProKT (~45 min on 2 cores), export, bench"),
        ("prokt-deploy run digits --budget 20KB --compare scratch,kd", "a small recipe in about a minute"),
        ("prokt-deploy run --data my.npz --labels 1000 --unlabeled-rest --compare scratch,kd,dkd", "few labels"),
        ("prokt-deploy run --resume runs/NAME", "continue a stopped run"),
    ],
    "distill": [
        ("prokt-deploy distill --budget 64KB", "plan the student, then ProKT from the shipped teacher"),
        ("prokt-deploy distill my.yaml --method kd --epochs 5", "your recipe, another method"),
        ("prokt-deploy distill --resume runs/NAME", "continue after Ctrl-C"),
    ],
    "plan": [
        ("prokt-deploy plan --budget 64KB", "which student fits (exact file bytes per format)"),
        ("prokt-deploy plan --family auto --ram-budget 32KB", "every family, a microcontroller's RAM"),
        ("prokt-deploy plan --budget 64KB --bundle board/", "artifacts to time on the device"),
    ],
    "export": [
        ("prokt-deploy export --format all", "int8 files of the latest run, each gated"),
        ("prokt-deploy export runs/NAME --format litert --qat", "LiteRT, quantization-aware"),
    ],
    "bench": [
        ("prokt-deploy bench", "the latest run: every file against the teacher's"),
        ("prokt-deploy bench runs/NAME --max-drop-vs-teacher 2 --min-speedup-vs-teacher 3", "CI gates (exit 11)"),
    ],
}


def build_command():  # click.Command
    """The Typer app as a Click command (Typer's own vendored Click) with the help's panels, placeholders and examples."""
    root = typer.main.get_command(app)
    panel_of = {flag: panel for panel, flags in PANELS.items() for flag in flags}

    def walk(cmd, name: str) -> None:
        for sub_name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, sub_name)
        for p in cmd.params:
            if p.param_type_name == "argument":  # its name is its placeholder (RUN, FILES...); no type column
                if p.metavar is None:
                    p.metavar = p.name.upper()
                p.display_type_rich = lambda ctx: None
                continue
            if p.param_type_name != "option":
                continue
            flag = next((o for o in p.opts if o.startswith("--")), p.opts[0])
            if flag in panel_of:
                p.rich_help_panel = panel_of[flag]
            if p.is_flag:
                p.metavar = ""
            elif flag in METAVARS:
                p.metavar = METAVARS[flag]
            elif p.metavar is None:
                bare = p.bare_type()  # Typer's name of the annotation: int, float, Path, str, list[str] ...
                p.metavar = {"int": "N", "float": "X", "Path": "PATH", "list[Path]": "PATH"}.get(bare, "TEXT")
        help_option = cmd.get_help_option

        def plain_help(ctx, _get=help_option):
            option = _get(ctx)
            if option is not None:
                option.metavar = ""  # a flag: no placeholder
            return option

        cmd.get_help_option = plain_help
        if name in EXAMPLES and cmd.epilog is None:
            cmd.epilog = "Examples:\n\n" + "\n\n".join(f"  {line}  ({what})" for line, what in EXAMPLES[name])

    walk(root, "")
    return root


def _renamed_flags(args: list[str], root=None) -> list[str]:
    """``args`` with deprecated flag names (:data:`RENAMED`) replaced by their new ones, each replacement said on stderr.

    Only a token in an option's place is a flag: not the value of an option that takes one (``--out --min-speedup``
    names a directory), and nothing after ``--``."""
    root = root if root is not None else typer.main.get_command(app)
    command = next((a for a in args if not a.startswith("-")), None)
    sub = getattr(root, "commands", {}).get(command)
    takes_value = {o for p in (sub.params if sub is not None else []) if p.param_type_name == "option" and not p.is_flag for o in p.opts}
    out, value_next, ended = [], False, False
    for a in args:
        name, eq, value = a.partition("=")
        new = None if (ended or value_next) else RENAMED.get((command, name))
        if new is not None:
            sys.stderr.write(f"warning: {command} {name} is deprecated, use {new[0]} ({new[1]}); the old name goes in the next release\n")
            a, name = new[0] + eq + value, new[0]
        ended = ended or a == "--"
        value_next = not value_next and not ended and not eq and name in takes_value
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
    root = build_command()
    args = _renamed_flags(args, root)
    try:
        code = root.main(args=args, prog_name="prokt-deploy", standalone_mode=False)
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
