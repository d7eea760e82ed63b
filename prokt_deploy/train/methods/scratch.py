"""Scratch: the student trained alone with cross-entropy on the labels, no teacher (the baseline every
distillation method has to beat)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prokt_deploy.train.methods.registry import MethodSpec, StepSetup, register

if TYPE_CHECKING:
    from prokt_deploy.train.engine import Method


def _step(s: StepSetup) -> Method:
    from prokt_deploy.train.engine import scratch_method

    return scratch_method(s.student, s.recipe.train.student_optimizer, s.total_steps, s.recipe.train.grad_clip)


register(MethodSpec(name="scratch", step=_step, teacher="none", label="scratch", description="Cross-entropy on the labels, no teacher."))
