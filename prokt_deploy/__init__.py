"""prokt-deploy: distill a teacher into a size-budgeted student with ProKT, then deploy it.

Library use (the CLI is a thin layer over these)::

    from prokt_deploy import load_recipe, apply_overrides, distill, export_run
    recipe = apply_overrides(load_recipe("recipes/digits.yaml"), {"budget.size": "20KB"})
    result = distill(recipe, out="runs/digits-20kb")
    artifacts = export_run(result.path, ["onnx"], "int8")  # gated int8 ONNX under runs/digits-20kb/artifacts/
    report = bench(result.path)  # teacher vs student vs artifacts: report.json, .md, .html in the run
    run = open_run(result.path)  # a finished run read back: run.manifest (typed), run.data(), run.model("student")

Importing this package does not import onnxruntime or OpenVINO.
"""

from __future__ import annotations

__version__ = "0.1.0"

from prokt_deploy.benchmarking.bench import bench  # noqa: E402
from prokt_deploy.budget import format_size, parse_size  # noqa: E402
from prokt_deploy.compare import compare  # noqa: E402
from prokt_deploy.deploy.bundle import write_bundle  # noqa: E402
from prokt_deploy.deploy.export import export_run  # noqa: E402
from prokt_deploy.errors import ProktError  # noqa: E402
from prokt_deploy.recipe import apply_overrides, load_recipe  # noqa: E402
from prokt_deploy.run.reader import open_run  # noqa: E402
from prokt_deploy.train.distill import distill, train_teacher  # noqa: E402
from prokt_deploy.train.planner import plan  # noqa: E402

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
    "train_teacher",
    "write_bundle",
    "ProktError",
]
