"""The boundaries of the code, checked on the source (imports read with ast, nothing executed) and on a fresh
interpreter: the stages only import downwards, no import circle, the standalone parts stay standalone.

Stages, lowest first (the map is in the README, "Where the code lives"): the harness < the foundation (errors,
budget, recipe, data, models, formats) < rundir (workspace, checkpoint, reader, records) < train (and planner, recipe_writer) <
deploy < benchmarking < compare < pipeline (the library's run()) < cli. The harness package (measure, runners,
fingerprint) is the standalone timing harness shipped in bundles: any stage may import it, and it imports nothing
of the project.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "prokt_deploy"
RANK = {
    "harness": -1,
    "errors": 0,
    "formats": 0,
    "budget": 0,
    "recipe": 0,
    "data": 0,
    "models": 0,
    "rundir": 1,
    "planner": 2,  # the planner builds the teacher (train.build) and train.distill plans: the train stage
    "train": 2,
    "recipe_writer": 2,
    "deploy": 3,
    "benchmarking": 4,
    "compare": 5,
    "pipeline": 6,
    "cli": 7,
    "__main__": 8,
}


def _modules(root: Path, package: str) -> dict[str, Path]:
    out = {}
    for f in root.rglob("*.py"):
        name = ".".join((package, *f.relative_to(root).with_suffix("").parts))
        out[name.removesuffix(".__init__")] = f
    return out


MODULES = _modules(PKG, "prokt_deploy")
STANDALONE = tuple(m for m in MODULES if m.startswith("prokt_deploy.harness"))


def _imports(path: Path, *, module_level_only: bool = False) -> set[str]:
    """Absolute module names ``path`` imports (function-level imports too, unless ``module_level_only``):
    ``from a.b import c`` is ``a.b.c`` when that is a module of the project, else ``a.b``."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module for a in node.names}
    return found


GRAPH = {m: {i for i in _imports(f) if i in MODULES and i not in (m, "prokt_deploy")} for m, f in MODULES.items()}


def _rank(module: str) -> int:
    return RANK[module.split(".")[1]]


def test_every_module_has_a_stage():
    assert all(m == "prokt_deploy" or m.split(".")[1] in RANK for m in MODULES), sorted(
        m for m in MODULES if m != "prokt_deploy" and m.split(".")[1] not in RANK
    )


def test_stages_import_only_downwards():
    upward = [(m, i) for m, deps in GRAPH.items() if m != "prokt_deploy" for i in deps if i not in STANDALONE and _rank(i) > _rank(m)]
    assert upward == [], f"a stage imports a later one: {upward}"


def test_no_import_circle():
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for dep in sorted(GRAPH[m]):
            if state.get(dep) == 1:
                return [*path, m, dep]
            if dep not in state and (cycle := visit(dep, [*path, m])):
                return cycle
        state[m] = 2
        return None

    for m in sorted(GRAPH):
        if m not in state:
            assert (cycle := visit(m, [])) is None, " -> ".join(cycle)


def test_the_standalone_harness_imports_nothing_of_the_project_and_no_torch_at_module_level():
    for name in STANDALONE:
        path = MODULES[name]
        assert not {i for i in _imports(path) if i.split(".")[0] == "prokt_deploy"}, f"{name} imports prokt_deploy"
        top = {i.split(".")[0] for i in _imports(path, module_level_only=True)}
        assert top <= set(sys.stdlib_module_names) | {"numpy", "__future__"}, f"{name} imports {sorted(top)} at module level"
        relative = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ImportFrom) and n.level > 1]
        assert not relative, f"{name} imports from above the harness package"
    assert {m.rsplit(".", 1)[-1] for m in STANDALONE} >= {"harness", "measure", "runners", "fingerprint"}


def test_exporters_never_import_prokt_deploy():
    for path in (ROOT / "exporters").rglob("*.py"):
        assert not {i for i in _imports(path) if i.split(".")[0] == "prokt_deploy"}, f"{path} imports prokt_deploy"


def test_importing_the_package_loads_no_runtime():
    """Nor torch: `prokt-deploy --help`, `--version` and argument errors answer without it (the library API and each
    command import what they need on first use); the API names still resolve."""
    heavy = "('torch', 'onnxruntime', 'openvino', 'nncf', 'transformers')"
    code = f"import sys, prokt_deploy, prokt_deploy.cli.main; print([m for m in {heavy} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "[]"
    # after the CLI (which imports submodules, e.g. prokt_deploy.compare) every API name is still the function, not a module
    code = (
        "import types, prokt_deploy.cli.main, prokt_deploy as p; print(sorted(n for n in p.__all__ if isinstance(getattr(p, n), types.ModuleType)))"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout.strip() == "[]"


def test_the_cli_lists_the_same_options_as_before_the_regrouping():
    """tests/data/cli_options.json: every command's options as they were before the overrides moved into one table."""
    import typer

    from prokt_deploy.cli.main import app

    def walk(cmd, prefix: list[str]) -> dict[str, list[str]]:  # click command
        if hasattr(cmd, "commands"):
            return {k: v for name, sub in sorted(cmd.commands.items()) for k, v in walk(sub, [*prefix, name]).items()}
        return {
            " ".join(prefix): sorted(
                o for p in cmd.params for o in ([*p.opts, *p.secondary_opts] if p.param_type_name == "option" else ["ARG:" + p.name])
            )
        }

    expected = json.loads((ROOT / "tests" / "data" / "cli_options.json").read_text())
    assert walk(typer.main.get_command(app), []) == expected


def test_the_code_is_linted_and_formatted():
    """``ruff check`` and ``ruff format --check`` (configuration in pyproject.toml) pass on the repository."""
    ruff = Path(sys.executable).with_name("ruff")
    for args in (["check", "--no-cache", "."], ["format", "--check", "--no-cache", "."]):
        p = subprocess.run([str(ruff), *args], capture_output=True, text=True, cwd=ROOT)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
