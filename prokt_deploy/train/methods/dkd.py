"""Decoupled Knowledge Distillation (DKD; Zhao, Cui, Song, Qiu, Liang, CVPR 2022, arXiv 2203.08679): KD's loss split
into a target-class term (TCKD: the binary "target vs the rest" distribution) and a non-target term (NCKD: the
distribution over the other classes), weighted apart so the non-target "dark knowledge" is no longer suppressed by
a confident teacher. The student matches a frozen, converged teacher (trained with cross-entropy first without a
teacher checkpoint, as for KD):

    L = ce_weight * CE(y, q_S) + min(progress / warmup, 1) * (alpha * TCKD + beta * NCKD)     (losses.dkd_loss)

Defaults are the paper's CIFAR-100 settings (its Table 7 and the authors' mdistiller configs): alpha 1, beta 8,
T 4, CE weight 1, the distillation terms ramped in linearly over the first 20 of 240 epochs. Deviation: the
warm-up is a fraction of the phase's optimizer steps (``warmup_fraction`` 20/240 = 0.083) instead of 20 epochs,
because a 15-epoch schedule would never leave a 20-epoch warm-up.

Unlabelled samples of a transfer set (label -1): their CE term is skipped and the teacher's top class stands in as
the target class that TCKD and NCKD decouple around (docs/prokt.md, "Unlabelled data").

With 2 classes the non-target distribution has one class, so NCKD is 0 whatever beta, and TCKD is KD's whole KL:
DKD is then CE + alpha x KD (at T, with the warm-up). The step logs a warning once when that happens (the text grid's
tweets are 2-class: a beta tuning run there repeated the default run exactly, so benchmarks/quality.py tunes DKD's
temperature on 2-class data).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pydantic import Field

from prokt_deploy.recipe import Section
from prokt_deploy.train.methods.registry import MethodSpec, StepSetup, register

if TYPE_CHECKING:
    from prokt_deploy.train.engine import Method


log = logging.getLogger("prokt_deploy")


class DKDConfig(Section):
    alpha: float = Field(1.0, ge=0)  # TCKD weight
    beta: float = Field(8.0, ge=0)  # NCKD weight
    temperature: float = Field(4.0, gt=0)
    ce_weight: float = Field(1.0, ge=0)
    warmup_fraction: float = Field(20 / 240, ge=0, le=1)


def _step(s: StepSetup) -> Method:
    import torch

    from prokt_deploy.train.engine import Method, check_finite, clip_and_step, labelled_accuracy, make_optimizer, make_scheduler
    from prokt_deploy.train.losses import dkd_loss, labelled_ce

    student, teacher, cfg = s.student, s.teacher, s.config
    opt_cfg, grad_clip = s.recipe.train.student_optimizer, s.recipe.train.grad_clip
    opt = make_optimizer(student.parameters(), opt_cfg)
    sched = make_scheduler(opt, opt_cfg, s.total_steps)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)  # like KD: the converged teacher is frozen
    warmup_steps = cfg.warmup_fraction * s.total_steps
    outputs = s.teacher_outputs or teacher  # engine.FrozenOutputs: each unaugmented sample's logits computed once

    first = True

    def step(x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        nonlocal first
        with torch.no_grad():
            t_logits = outputs(x)
        if first and t_logits.shape[1] == 2 and cfg.beta != 0:  # the class count is the first batch's
            log.warning(
                "dkd: with 2 classes there is one non-target class, so NCKD is 0 and dkd.beta (%g) changes nothing; "
                "DKD is CE plus alpha x KD over the 2 classes here (tune dkd.alpha or dkd.temperature instead)",
                cfg.beta,
            )
        first = False
        student.train()
        logits = student(x)
        target = torch.where(y >= 0, y, t_logits.argmax(1))  # unlabelled: the teacher's class
        ramp = min(sched.last_epoch / warmup_steps, 1.0) if warmup_steps > 0 else 1.0  # the scheduler counts steps
        kd = dkd_loss(logits, t_logits, target, cfg.alpha, cfg.beta, cfg.temperature)
        loss = cfg.ce_weight * labelled_ce(logits, y) + ramp * kd
        check_finite(loss, "DKD")
        clip_and_step(student, opt, sched, loss, grad_clip)
        return {"loss": loss.item(), "dkd": kd.item(), "acc": labelled_accuracy(logits, y)}

    return Method("dkd", step, student, teacher, optimizers={"student": (opt, sched)})


register(
    MethodSpec(
        name="dkd",
        step=_step,
        teacher="frozen",
        label="DKD",
        description="Decoupled KD (Zhao et al. 2022): alpha weighs the target-class term, beta the non-target one (run --compare dkd).",
        section="dkd",
        config=DKDConfig,
        shown=("alpha", "beta", "temperature"),
        unlabeled=True,
    )
)
