"""Distillation losses. All KL terms are KL(target || model) = sum_c t_c (log t_c - log p_c),
averaged over the batch, with ``target`` a detached probability vector.

References: ProKT, Shi et al. 2021 (arXiv 2107.09305), see shared PROKT.md; KD, Hinton et
al. 2015 (arXiv 1503.02531).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def labelled_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over the labelled samples of a batch; a transfer batch's unlabelled samples have label
    -1 and no label term (0 when the batch has none). A fully labelled batch gives exactly F.cross_entropy."""
    mask = labels >= 0
    if bool(mask.all()):
        return F.cross_entropy(logits, labels)
    if not bool(mask.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[mask], labels[mask])


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
    detached. Returns (loss, kl) so callers can log the teacher-student gap. In a transfer batch (label -1 on the
    unlabelled samples) the CE is averaged over the labelled samples and the KL over all of them (a deviation from
    PROKT.md, which has labels everywhere: docs/prokt.md).
    """
    kl = kl_to_target(student_probs, teacher_logits)
    return (1.0 - lam) * labelled_ce(teacher_logits, labels) + lam * kl, kl.detach()


def prokt_constrained_teacher_loss(
    teacher_logits: torch.Tensor, labels: torch.Tensor, student_probs: torch.Tensor, beta: float, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Constrained ProKT teacher loss: L_T = CE + beta * (KL(q || p_theta) - eps). Returns (loss, kl)."""
    kl = kl_to_target(student_probs, teacher_logits)
    return labelled_ce(teacher_logits, labels) + beta * (kl - eps), kl.detach()


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
    return (1.0 - label_weight) * kl + label_weight * labelled_ce(student_logits, labels)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, alpha: float, temperature: float) -> torch.Tensor:
    """Hinton KD: (1 - a) * CE(y, q_S) + a * T^2 * KL(softmax(t/T) || softmax(s/T)); in a transfer batch the CE
    over the labelled samples, the KL over all (Hinton's transfer set)."""
    soft = F.softmax(teacher_logits.detach() / temperature, dim=-1)
    kl = kl_to_target(soft, student_logits / temperature)
    return (1.0 - alpha) * labelled_ce(student_logits, labels) + alpha * temperature**2 * kl


def dkd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor, alpha: float, beta: float, temperature: float
) -> torch.Tensor:
    """Decoupled KD (Zhao et al., CVPR 2022, arXiv 2203.08679) without its CE term: alpha * TCKD + beta * NCKD.

    With p = softmax(z / T) for the student (s) and teacher (t) and ``target`` the class t of each sample:
    TCKD = T^2 * KL(b_t || b_s), b = (p_target, 1 - p_target), the binary target-vs-rest distribution;
    NCKD = T^2 * KL(p^_t || p^_s), p^ = softmax over the non-target classes only (z / T with the target removed).
    Both are summed over the classes and averaged over the batch, as the authors' code does.
    """
    t = temperature
    s_log = F.log_softmax(student_logits / t, dim=-1)
    t_prob = F.softmax(teacher_logits.detach() / t, dim=-1)
    gt = F.one_hot(target, student_logits.shape[-1]).bool()
    s_target = s_log.gather(1, target[:, None]).exp().clamp(1e-12, 1 - 1e-7)
    t_target = t_prob.gather(1, target[:, None]).clamp(1e-12, 1.0)
    b_s = torch.cat([s_target, 1 - s_target], dim=1)
    b_t = torch.cat([t_target, (1 - t_target).clamp_min(0)], dim=1)
    tckd = (torch.special.xlogy(b_t, b_t) - b_t * b_s.log()).sum(1).mean() * t**2
    masked = -1e9  # the target class removed from the non-target distributions
    s_nt = F.log_softmax((student_logits / t).masked_fill(gt, masked), dim=-1)
    t_nt = F.softmax((teacher_logits.detach() / t).masked_fill(gt, masked), dim=-1)
    nckd = (torch.special.xlogy(t_nt, t_nt) - t_nt * s_nt).masked_fill(gt, 0.0).sum(1).mean() * t**2
    return alpha * tckd + beta * nckd
