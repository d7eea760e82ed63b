"""Distillation losses. All KL terms are KL(target || model) = sum_c t_c (log t_c - log p_c),
averaged over the batch, with ``target`` a detached probability vector.

References: ProKT, Shi et al. 2021 (arXiv 2107.09305), see shared PROKT.md; KD, Hinton et
al. 2015 (arXiv 1503.02531).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kl_to_target(target_probs: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(target || softmax(logits)), mean over the batch. target_probs: (B, K), logits: (B, K)."""
    log_p = F.log_softmax(logits, dim=-1)
    # xlogy gives 0 * log 0 = 0 for classes the target rules out.
    return (torch.special.xlogy(target_probs, target_probs) - target_probs * log_p).sum(dim=-1).mean()


def prokt_teacher_loss(
    teacher_logits: torch.Tensor, labels: torch.Tensor, student_probs: torch.Tensor, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """ProKT step (a): L_T = (1 - lam) * CE(y, p_theta) + lam * KL(q || p_theta).

    ``student_probs`` is q = softmax(student(x)) from the current student in eval mode,
    detached. Returns (loss, kl) so callers can log the teacher-student gap.
    """
    kl = kl_to_target(student_probs, teacher_logits)
    return (1.0 - lam) * F.cross_entropy(teacher_logits, labels) + lam * kl, kl.detach()


def prokt_constrained_teacher_loss(
    teacher_logits: torch.Tensor, labels: torch.Tensor, student_probs: torch.Tensor, beta: float, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Constrained ProKT teacher loss: L_T = CE + beta * (KL(q || p_theta) - eps). Returns (loss, kl)."""
    kl = kl_to_target(student_probs, teacher_logits)
    return F.cross_entropy(teacher_logits, labels) + beta * (kl - eps), kl.detach()


def prokt_student_loss(
    student_logits: torch.Tensor, teacher_probs: torch.Tensor, labels: torch.Tensor | None = None, label_weight: float = 0.0
) -> torch.Tensor:
    """ProKT step (b): L_S = KL(p' || q_phi), p' from the UPDATED teacher; no label term, temperature 1.

    ``label_weight`` w > 0 is a named variant (prokt.student_label_weight), not the reference:
    L_S = (1 - w) * KL(p' || q_phi) + w * CE(y, q_phi). At w = 0 the KL alone is computed, so the
    step is bit-identical to the reference form.
    """
    kl = kl_to_target(teacher_probs, student_logits)
    if label_weight == 0.0:
        return kl
    if labels is None:
        raise ValueError("prokt_student_loss: label_weight > 0 needs the labels")
    return (1.0 - label_weight) * kl + label_weight * F.cross_entropy(student_logits, labels)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, alpha: float, temperature: float) -> torch.Tensor:
    """Hinton KD: (1 - a) * CE(y, q_S) + a * T^2 * KL(softmax(t/T) || softmax(s/T))."""
    soft = F.softmax(teacher_logits.detach() / temperature, dim=-1)
    kl = kl_to_target(soft, student_logits / temperature)
    return (1.0 - alpha) * F.cross_entropy(student_logits, labels) + alpha * temperature**2 * kl
