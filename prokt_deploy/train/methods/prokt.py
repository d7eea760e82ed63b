"""ProKT (shared PROKT.md): the teacher and the student trained jointly, the teacher held close to the student.

Per minibatch, (a) the teacher takes one optimizer step on (1 - lam) * CE + lam * KL(q || p_theta) with q from
the current student in eval mode, then (b) the student takes one step on KL(p' || q_phi) with p' from the
*updated* teacher in eval mode. Two optimizers, two schedules, gradient clipping at ``grad_clip``. Both heads
start at zero (``prokt.zero_init_heads``); a teacher pre-trained in the run gets its head zeroed before ProKT.

Unlabelled samples (a transfer set, label -1; a deviation, PROKT.md has labels everywhere): the teacher's CE term
averages over the labelled samples of the batch and its KL(q || p_theta) over all of them, so where there is no
label the teacher is only held close to the student; the student's step needs no label and uses every sample.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from prokt_deploy.recipe import OptimizerConfig, Section
from prokt_deploy.train.methods.registry import MethodSpec, StepSetup, Variant, register, register_variant

if TYPE_CHECKING:
    from torch import nn

    from prokt_deploy.train.engine import Method


class ProktConfig(Section):
    lam: float = Field(0.3, ge=0, le=1)
    zero_init_heads: bool = True
    constrained: bool = False
    eps: float = Field(1.0, ge=0)
    eta_beta: float = Field(1e-3, ge=0)
    beta0: float = Field(1.0, ge=0)
    # How the teacher's targets p' for the student normalise batch-norm layers. "eval": eval mode,
    # running statistics (PROKT.md: the method). "batch-stats": a named variant, not the reference:
    # the batch's own statistics, running statistics left untouched, dropout still off; for BN teachers
    # whose running statistics lag their own fast-moving weights (benchmarks/prokt_dynamics.py). The
    # student's q for the teacher step stays in eval mode. No effect on models without batch norm.
    teacher_targets: Literal["eval", "batch-stats"] = "eval"
    # A named variant, not the reference: w > 0 adds a label term to the student's loss,
    # L_S = (1 - w) * KL(p' || q_phi) + w * CE(y, q_phi). 0 is PROKT.md's method (no label term).
    student_label_weight: float = Field(0.0, ge=0, le=1)


def prokt_method(
    student: nn.Module,
    teacher: nn.Module,
    teacher_opt_cfg: OptimizerConfig,
    student_opt_cfg: OptimizerConfig,
    cfg: ProktConfig,
    total_steps: int,
    grad_clip: float | None,
) -> Method:
    import torch

    from prokt_deploy.train.engine import Method, check_finite, clip_and_step, labelled_accuracy, make_optimizer, make_scheduler, soft_targets
    from prokt_deploy.train.losses import prokt_constrained_teacher_loss, prokt_student_loss, prokt_teacher_loss

    opt_t = make_optimizer(teacher.parameters(), teacher_opt_cfg)
    sched_t = make_scheduler(opt_t, teacher_opt_cfg, total_steps)
    opt_s = make_optimizer(student.parameters(), student_opt_cfg)
    sched_s = make_scheduler(opt_s, student_opt_cfg, total_steps)
    state = {"beta": cfg.beta0} if cfg.constrained else {}

    def step(x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        # (a) teacher step toward the local intermediate target, held close to the current student.
        q = soft_targets(student, x)  # (B, K), student phi_t
        teacher.train()
        t_logits = teacher(x)
        if cfg.constrained:
            loss_t, kl = prokt_constrained_teacher_loss(t_logits, y, q, state["beta"], cfg.eps)
        else:
            loss_t, kl = prokt_teacher_loss(t_logits, y, q, cfg.lam)
        check_finite(loss_t, "ProKT teacher")
        clip_and_step(teacher, opt_t, sched_t, loss_t, grad_clip)
        if cfg.constrained:  # dual ascent on beta after the step
            state["beta"] = max(0.0, state["beta"] + cfg.eta_beta * (kl.item() - cfg.eps))

        # (b) student step: project the UPDATED teacher theta_{t+1} onto the student family.
        p = soft_targets(teacher, x, batch_stats=cfg.teacher_targets == "batch-stats")  # (B, K)
        student.train()
        s_logits = student(x)
        loss_s = prokt_student_loss(s_logits, p, y, cfg.student_label_weight)  # temperature 1; no label term at w = 0
        check_finite(loss_s, "ProKT student")
        clip_and_step(student, opt_s, sched_s, loss_s, grad_clip)
        return {
            "loss": loss_s.item(),
            "teacher_loss": loss_t.item(),
            "kl_q_p": kl.item(),
            "acc": labelled_accuracy(s_logits, y),
            "teacher_acc": labelled_accuracy(t_logits, y),
        }

    return Method("prokt", step, student, teacher, state, optimizers={"teacher": (opt_t, sched_t), "student": (opt_s, sched_s)}, trains_teacher=True)


def _step(s: StepSetup) -> Method:
    t = s.recipe.train
    return prokt_method(s.student, s.teacher, t.teacher_optimizer, t.student_optimizer, s.config, s.total_steps, t.grad_clip)


register(
    MethodSpec(
        name="prokt",
        step=_step,
        teacher="joint",
        label="ProKT",
        description="ProKT (PROKT.md): lam weighs the teacher's KL to the student.",
        section="prokt",
        config=ProktConfig,
        shown=("lam", "zero_init_heads"),
        zero_heads=lambda recipe: recipe.prokt.zero_init_heads,
        # the reference's start (PROKT.md): a trained backbone, the head reset to zero, fine-tuned jointly
        reset_pretrained_teacher_head=True,
        # a transfer set: the teacher's CE on the labelled samples, both KL terms on all (docs/prokt.md, "Unlabelled data")
        unlabeled=True,
    )
)
register_variant(Variant("prokt+label", "prokt", {"student_label_weight": 0.3}, "ProKT with a label term in the student's loss"))
register_variant(Variant("prokt+batch-stats", "prokt", {"teacher_targets": "batch-stats"}, "ProKT with batch-statistics teacher targets"))
