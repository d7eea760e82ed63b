"""The planner: the most capable student whose deployed artifact fits a size budget (and, timed, is never slower
than the teacher's fastest artifact).

The budget is the size on disk of every file of the deployed artifact at the deploy precision, for every deploy
format (ONNX, OpenVINO IR). The package, one concern a module:

- :mod:`~prokt_deploy.planner.candidates`: the candidates (every student family named, one pool), built untrained
  and ranked by one capacity rule: parameters (for text, parameters outside the embedding tables), then MACs. At a
  byte budget nearly all bytes are weights, so parameters are what the budget buys whatever the family; MACs only
  break ties. The rule says nothing about which family trains better at equal parameters (that is measured, not
  assumed: benchmarks/student_speed.py and the quality grid); with latency the choice moves to a less capable but
  faster candidate, which is what searching several families is for.
- :mod:`~prokt_deploy.planner.sizing`: exact artifact bytes (the untrained candidate exported and counted: bytes do
  not depend on the weights' values), cached on disk.
- :mod:`~prokt_deploy.planner.latency`: batch-1 p50s in the target runtime with ``bench``'s harness, cached per
  machine; or read from a plan bundle's device result file.
- :mod:`~prokt_deploy.planner.rules`: the choice rules as pure functions over measured candidates (size, capacity,
  fallbacks, latency), and the messages that say why nothing fits.
- :mod:`~prokt_deploy.planner.search`: what to measure, in which order (:func:`plan_student`); and
  :mod:`~prokt_deploy.planner.for_recipe`: a recipe's plan (:func:`plan`).

To stay fast, a candidate is only exported when its lower bound (weight elements times bytes per element) fits;
the walk goes from the most capable candidate down and stops at the first that fits. ``exact=True`` measures every
candidate (for ``plan --exact``).

Latency (``target`` given, e.g. ``onnx`` or ``openvino:CPU``; implied as ``onnx`` by a latency budget; for a
recipe, ``budget.target`` or, when it sets none, the first of ``budget.formats``, ``none`` to plan by size alone): a
smaller student is not always a faster one (a ResNet with 10 small convs, adds and pooling can be slower at batch 1
than a teacher made of a few big convs), so the planner also times, in the target runtime, the artifact of every
candidate that fits the size budget at the deploy precision (an untrained copy with generic weights has the real
graph) and the teacher's fp32 and int8 artifacts. The choice rule (:func:`~prokt_deploy.planner.rules.choose_by_latency`):

1. with ``latency_budget_ms``: the most capable candidate that fits the size budget and whose p50 is
   within the latency budget; none: :class:`~prokt_deploy.errors.BudgetError` naming the fastest;
2. without one: the most capable fitting candidate that is faster than the teacher's fastest
   artifact (its own int8 included); when no fitting candidate is, the most capable fitting one,
   and the plan's note says plainly that no student beats the teacher on speed here.

``plan`` (the command) sizes and times every fitting candidate, to show the whole table. ``distill``
(and so ``run``) plans with ``lazy_latency``: it sizes the candidates from the most capable down to the
first that fits, times that one with the teacher's artifacts, and stops there when it already satisfies
the rule (it is then the rule's choice whatever the others measure, since the rule takes the most capable
qualifying candidate). Only when it does not are the remaining candidates sized and timed as above. The
same choice, in a fraction of the time (the default recipe on a fresh machine: 1 of 13 fitting candidates
sized and timed instead of all); the plan in memory then has sizes and latencies for the candidates that
were measured only. A resumed run plans in full (its checkpoint's student must be among the measured).
"""

from __future__ import annotations

from prokt_deploy.budget import parse_latency, parse_target
from prokt_deploy.planner.candidates import BYTES_PER_ELEMENT, Candidate, Entry, capacity, weight_elements
from prokt_deploy.planner.for_recipe import plan, plan_families, timing_target
from prokt_deploy.planner.latency import (
    LATENCY_SETTINGS,
    LATENCY_VERSION,
    PLAN_BUNDLE_PREFIX,
    TEACHER_LABEL,
    LatencyCache,
    generic_artifact,
    generic_calibration,
    lookup_device_latencies,
    measure_latencies,
    model_name,
    read_device_latencies,
)
from prokt_deploy.planner.rules import choose_by_latency, qualifies
from prokt_deploy.planner.search import BundleWriter, Plan, PlanOptions, Task, plan_student, search
from prokt_deploy.planner.sizing import MEASUREMENT_VERSION, SizeCache, measure_artifact_bytes

__all__ = [
    "BYTES_PER_ELEMENT",
    "LATENCY_SETTINGS",
    "LATENCY_VERSION",
    "MEASUREMENT_VERSION",
    "PLAN_BUNDLE_PREFIX",
    "TEACHER_LABEL",
    "BundleWriter",
    "Candidate",
    "Entry",
    "LatencyCache",
    "Plan",
    "PlanOptions",
    "SizeCache",
    "Task",
    "capacity",
    "choose_by_latency",
    "generic_artifact",
    "generic_calibration",
    "lookup_device_latencies",
    "measure_artifact_bytes",
    "measure_latencies",
    "model_name",
    "parse_latency",
    "parse_target",
    "plan",
    "plan_families",
    "plan_student",
    "qualifies",
    "read_device_latencies",
    "search",
    "timing_target",
    "weight_elements",
]
