"""Losses against values computed by hand (golden values)."""

import math

import torch
import torch.nn.functional as F

from prokt_deploy.train.losses import kd_loss, kl_to_target, prokt_constrained_teacher_loss, prokt_student_loss, prokt_teacher_loss


def test_kl_hand_computed():
    target = torch.tensor([[0.5, 0.5]])
    logits = torch.log(torch.tensor([[0.25, 0.75]]))
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert math.isclose(kl_to_target(target, logits).item(), expected, rel_tol=1e-6)


def test_kl_zero_when_equal_and_handles_zero_targets():
    p = torch.tensor([[1.0, 0.0, 0.0]])
    logits = torch.log(torch.tensor([[0.9, 0.05, 0.05]]))
    assert math.isclose(kl_to_target(p, logits).item(), -math.log(0.9), rel_tol=1e-6)
    q = torch.softmax(torch.randn(4, 5), -1)
    assert kl_to_target(q, torch.log(q)).abs().item() < 1e-6


def test_kl_is_batch_mean():
    t = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    logits = torch.log(torch.tensor([[0.25, 0.75], [0.5, 0.5]]))
    first = 0.5 * math.log(2) + 0.5 * math.log(2 / 3)
    assert math.isclose(kl_to_target(t, logits).item(), first / 2, rel_tol=1e-6)


def test_prokt_teacher_loss_is_mixed_target_cross_entropy():
    # Up to a constant (the entropy of q), L_T is CE against (1-lam)*onehot(y) + lam*q.
    torch.manual_seed(0)
    logits = torch.randn(6, 4)
    y = torch.randint(0, 4, (6,))
    q = torch.softmax(torch.randn(6, 4), -1)
    lam = 0.3
    loss, kl = prokt_teacher_loss(logits, y, q, lam)
    mixed = (1 - lam) * F.one_hot(y, 4).float() + lam * q
    ce_mixed = -(mixed * F.log_softmax(logits, -1)).sum(-1).mean()
    entropy_q = -(q * q.log()).sum(-1).mean()
    assert torch.allclose(loss, ce_mixed - lam * entropy_q, atol=1e-6)
    assert torch.allclose(kl, kl_to_target(q, logits))


def test_prokt_teacher_loss_hand_values():
    logits = torch.log(torch.tensor([[0.25, 0.75]]))
    q = torch.tensor([[0.5, 0.5]])
    y = torch.tensor([1])
    kl = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    loss, _ = prokt_teacher_loss(logits, y, q, 0.4)
    assert math.isclose(loss.item(), 0.6 * -math.log(0.75) + 0.4 * kl, rel_tol=1e-6)
    loss0, _ = prokt_teacher_loss(logits, y, q, 0.0)
    assert math.isclose(loss0.item(), -math.log(0.75), rel_tol=1e-6)


def test_constrained_teacher_loss():
    logits = torch.log(torch.tensor([[0.25, 0.75]]))
    q = torch.tensor([[0.5, 0.5]])
    y = torch.tensor([0])
    kl = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    loss, _ = prokt_constrained_teacher_loss(logits, y, q, beta=2.0, eps=0.1)
    assert math.isclose(loss.item(), -math.log(0.25) + 2.0 * (kl - 0.1), rel_tol=1e-6)


def test_student_loss_has_no_label_term():
    logits = torch.randn(3, 5, requires_grad=True)
    p = torch.softmax(torch.randn(3, 5), -1)
    loss = prokt_student_loss(logits, p)
    assert torch.allclose(loss, kl_to_target(p, logits))
    # When the student matches the teacher exactly the loss is 0 whatever the labels are.
    assert prokt_student_loss(torch.log(p), p).abs().item() < 1e-6


def test_kd_loss_hand_values():
    s = torch.log(torch.tensor([[0.25, 0.75]]))
    t = torch.log(torch.tensor([[0.5, 0.5]]))
    y = torch.tensor([1])
    # T = 1: (1-a)*CE + a*KL(p_t || q_s)
    kl = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert math.isclose(kd_loss(s, t, y, alpha=0.7, temperature=1.0).item(), 0.3 * -math.log(0.75) + 0.7 * kl, rel_tol=1e-6)
    # T = 2 scales the KL term by T^2 and softens both distributions.
    T = 2.0
    pt = torch.softmax(t / T, -1)
    qs = torch.log_softmax(s / T, -1)
    kl_t = (pt * (pt.log() - qs)).sum().item()
    assert math.isclose(kd_loss(s, t, y, alpha=1.0, temperature=T).item(), T * T * kl_t, rel_tol=1e-6)
