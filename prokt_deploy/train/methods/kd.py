"""Knowledge distillation (Hinton et al. 2015): the student matches a frozen, converged teacher's softened
outputs, alpha * T^2 * KL at temperature T plus (1 - alpha) * CE on the labels. Without a teacher checkpoint the
run trains the teacher with cross-entropy first. With unlabelled data (Hinton's transfer set) the KL covers every
sample and the CE the labelled ones."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from prokt_deploy.recipe import OptimizerConfig, Section
from prokt_deploy.train.methods.registry import MethodSpec, StepSetup, register

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch
    from torch import nn

    from prokt_deploy.train.engine import Method


class KDConfig(Section):
    alpha: float = Field(0.9, ge=0, le=1)
    temperature: float = Field(4.0, gt=0)


def kd_method(
    student: nn.Module,
    teacher: nn.Module,
    opt_cfg: OptimizerConfig,
    cfg: KDConfig,
    total_steps: int,
    grad_clip: float | None,
    teacher_outputs: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Method:
    import torch

    from prokt_deploy.train.engine import Method, check_finite, clip_and_step, labelled_accuracy, make_optimizer, make_scheduler
    from prokt_deploy.train.losses import kd_loss

    opt = make_optimizer(student.parameters(), opt_cfg)
    sched = make_scheduler(opt, opt_cfg, total_steps)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)  # KD: the converged teacher is frozen

    outputs = teacher_outputs or teacher  # engine.FrozenOutputs: each unaugmented sample's logits computed once

    def step(x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        with torch.no_grad():
            t_logits = outputs(x)
        student.train()
        logits = student(x)
        loss = kd_loss(logits, t_logits, y, cfg.alpha, cfg.temperature)
        check_finite(loss, "KD")
        clip_and_step(student, opt, sched, loss, grad_clip)
        return {"loss": loss.item(), "acc": labelled_accuracy(logits, y)}

    return Method("kd", step, student, teacher, optimizers={"student": (opt, sched)})


def _step(s: StepSetup) -> Method:
    return kd_method(s.student, s.teacher, s.recipe.train.student_optimizer, s.config, s.total_steps, s.recipe.train.grad_clip, s.teacher_outputs)


register(
    MethodSpec(
        name="kd",
        step=_step,
        teacher="frozen",
        label="KD",
        description="The kd baseline (run --compare kd, or method: kd).",
        section="kd",
        config=KDConfig,
        shown=("alpha", "temperature"),
        unlabeled=True,  # the transfer set: KL on every sample, CE on the labelled ones
    )
)
