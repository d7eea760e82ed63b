"""prokt-deploy: distill a teacher into a size-budgeted student with ProKT, then deploy it.

Library use (the CLI is a thin layer over these)::

    from prokt_deploy import load_recipe, apply_overrides, distill, export_run
    recipe = apply_overrides(load_recipe("recipes/digits.yaml"), {"budget.size": "20KB"})
    result = distill(recipe, out="runs/digits-20kb")
    artifacts = export_run(result.path, ["onnx"], "int8")  # gated int8 ONNX under runs/digits-20kb/artifacts/
    report = bench(result.path)  # teacher vs student vs artifacts: report.json, .md, .html in the run
    run = open_run(result.path)  # a finished run read back: run.manifest (typed), run.data(), run.model("student")
    result = prokt_deploy.run(recipe, out="runs/digits", compare="scratch,kd")  # all of the above, as `prokt-deploy run`

Importing this package does not import torch, onnxruntime or OpenVINO: the API loads on first use.
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import TYPE_CHECKING

#: The library API, imported on first use (PEP 562): ``import prokt_deploy`` stays cheap (no torch), so the CLI's
#: ``--help`` and ``--version`` and ``recipe check`` answer at once; ``prokt_deploy.distill`` imports what it needs.
_API = {
    "bench": "prokt_deploy.benchmarking.bench",
    "format_size": "prokt_deploy.budget",
    "parse_size": "prokt_deploy.budget",
    "write_bundle": "prokt_deploy.deploy.bundle",
    "export_run": "prokt_deploy.deploy.export",
    "ProktError": "prokt_deploy.errors",
    "apply_overrides": "prokt_deploy.recipe",
    "load_recipe": "prokt_deploy.recipe",
    "open_run": "prokt_deploy.rundir.reader",
    "distill": "prokt_deploy.train.distill",
    "train_teacher": "prokt_deploy.train.distill",
    "plan": "prokt_deploy.planner",
    "run": "prokt_deploy.pipeline",
}

if TYPE_CHECKING:
    from prokt_deploy.benchmarking.bench import bench
    from prokt_deploy.budget import format_size, parse_size
    from prokt_deploy.deploy.bundle import write_bundle
    from prokt_deploy.deploy.export import export_run
    from prokt_deploy.errors import ProktError
    from prokt_deploy.pipeline import run
    from prokt_deploy.planner import plan
    from prokt_deploy.recipe import apply_overrides, load_recipe
    from prokt_deploy.rundir.reader import open_run
    from prokt_deploy.train.distill import distill, train_teacher


# The built-in methods (prokt_deploy/train/methods/) register themselves with the recipe schema here, at the top of the
# package, so a recipe read through any module knows them (the recipe, a lower stage, cannot import them). Torch-free.
import prokt_deploy.train.methods  # noqa: E402, F401

# Eager, because a submodule of the same name shadows a lazy attribute: once anything imports the module
# prokt_deploy.compare (the CLI does), Python binds the package attribute "compare" to it. compare.py is torch-free.
from prokt_deploy.compare import compare  # noqa: E402


def __getattr__(name: str):  # the API object
    if name not in _API:
        raise AttributeError(f"module 'prokt_deploy' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))


__all__ = [
    "__version__",
    "apply_overrides",
    "bench",
    "compare",
    "distill",
    "export_run",
    "format_size",
    "load_recipe",
    "open_run",
    "parse_size",
    "plan",
    "run",
    "train_teacher",
    "write_bundle",
    "ProktError",
]
