"""One ProKT step on tiny models, checked against an independent re-implementation of PROKT.md."""

import copy

import torch
import torch.nn.functional as F
from torch import nn

from prokt_deploy.recipe import OptimizerConfig
from prokt_deploy.train.losses import kl_to_target
from prokt_deploy.train.methods.prokt import ProktConfig, prokt_method

SGD = OptimizerConfig(name="sgd", lr=0.5, momentum=0.0, schedule="constant")


def tiny(seed: int, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(dropout), nn.Linear(8, 3))


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)


def reference_step(student, teacher, x, y, lam):
    """PROKT.md's pseudo-code, written out independently with plain SGD (lr 0.5, clip 1.0)."""
    student.eval()
    with torch.no_grad():
        q = F.softmax(student(x), -1)
    teacher.train()
    t_logits = teacher(x)
    loss_t = (1 - lam) * F.cross_entropy(t_logits, y) + lam * (q * (q.log() - F.log_softmax(t_logits, -1))).sum(-1).mean()
    teacher.zero_grad()
    loss_t.backward()
    nn.utils.clip_grad_norm_(teacher.parameters(), 1.0)
    with torch.no_grad():
        for p in teacher.parameters():
            p -= 0.5 * p.grad
    teacher.eval()
    with torch.no_grad():
        p_new = F.softmax(teacher(x), -1)
    student.train()
    s_logits = student(x)
    loss_s = (p_new * (p_new.log() - F.log_softmax(s_logits, -1))).sum(-1).mean()
    student.zero_grad()
    loss_s.backward()
    nn.utils.clip_grad_norm_(student.parameters(), 1.0)
    with torch.no_grad():
        for p in student.parameters():
            p -= 0.5 * p.grad


def run_engine_step(student, teacher, x, y, lam):
    method = prokt_method(student, teacher, SGD, SGD, ProktConfig(lam=lam, zero_init_heads=False), total_steps=10, grad_clip=1.0)
    return method.step(x, y)


def assert_same_params(a: nn.Module, b: nn.Module):
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(pa.float(), pb.float(), atol=1e-6), name


def test_step_matches_reference_with_updated_teacher_targets():
    x, y = batch()
    student, teacher = tiny(0, dropout=0.5), tiny(1, dropout=0.5)
    ref_student, ref_teacher = copy.deepcopy(student), copy.deepcopy(teacher)
    torch.manual_seed(123)
    run_engine_step(student, teacher, x, y, lam=0.4)
    torch.manual_seed(123)  # same dropout masks in the teacher's train-mode forward
    reference_step(ref_student, ref_teacher, x, y, lam=0.4)
    assert_same_params(teacher, ref_teacher)
    assert_same_params(student, ref_student)


def test_student_targets_come_from_updated_teacher_not_old_one():
    x, y = batch()
    student, teacher = tiny(0), tiny(1)
    old_teacher = copy.deepcopy(teacher)
    wrong_student = copy.deepcopy(student)
    run_engine_step(student, teacher, x, y, lam=0.4)
    # A student distilled from the teacher BEFORE its update ends elsewhere.
    old_teacher.eval()
    with torch.no_grad():
        p_old = F.softmax(old_teacher(x), -1)
    opt = torch.optim.SGD(wrong_student.parameters(), lr=0.5)
    wrong_student.train()
    loss = kl_to_target(p_old, wrong_student(x))
    loss.backward()
    nn.utils.clip_grad_norm_(wrong_student.parameters(), 1.0)
    opt.step()
    diff = max((a - b).abs().max().item() for a, b in zip(student.parameters(), wrong_student.parameters()))
    assert diff > 1e-4


def test_lambda_one_moves_teacher_toward_student():
    x, y = batch()
    student, teacher = tiny(0), tiny(1)
    student.eval()
    teacher.eval()
    with torch.no_grad():
        q = F.softmax(student(x), -1)
        before = kl_to_target(q, teacher(x)).item()
    frozen_student = copy.deepcopy(student)
    method = prokt_method(
        student,
        teacher,
        OptimizerConfig(name="sgd", lr=0.1, momentum=0.0, schedule="constant"),
        SGD,
        ProktConfig(lam=1.0, zero_init_heads=False),
        10,
        1.0,
    )
    method.step(x, y)
    teacher.eval()
    with torch.no_grad():
        after = kl_to_target(F.softmax(frozen_student.eval()(x), -1), teacher(x)).item()
    assert after < before


def test_lambda_one_ignores_labels_entirely():
    # With lam = 1 the teacher loss has no CE term and the student loss never has one:
    # two different label vectors give identical models.
    x, y = batch()
    results = []
    for labels in (y, (y + 1) % 3):
        student, teacher = tiny(0), tiny(1)
        run_engine_step(student, teacher, x, labels, lam=1.0)
        results.append((student, teacher))
    assert_same_params(results[0][0], results[1][0])
    assert_same_params(results[0][1], results[1][1])


def test_labels_reach_student_only_through_teacher():
    # With lam < 1 different labels change the teacher, hence the student targets.
    x, y = batch()
    students = []
    for labels in (y, (y + 1) % 3):
        student, teacher = tiny(0), tiny(1)
        run_engine_step(student, teacher, x, labels, lam=0.3)
        students.append(student)
    diff = max((a - b).abs().max().item() for a, b in zip(students[0].parameters(), students[1].parameters()))
    assert diff > 1e-5


def test_constrained_variant_dual_ascent():
    x, y = batch()
    student, teacher = tiny(0), tiny(1)
    cfg = ProktConfig(constrained=True, eps=0.0, eta_beta=0.5, beta0=1.0, zero_init_heads=False)
    method = prokt_method(student, teacher, SGD, SGD, cfg, 10, 1.0)
    metrics = method.step(x, y)
    # beta <- max(0, beta + eta * (KL - eps)) with the KL measured in the teacher step.
    assert abs(method.state["beta"] - (1.0 + 0.5 * metrics["kl_q_p"])) < 1e-6
    cfg2 = ProktConfig(constrained=True, eps=100.0, eta_beta=1.0, beta0=1.0, zero_init_heads=False)
    method2 = prokt_method(tiny(0), tiny(1), SGD, SGD, cfg2, 10, 1.0)
    method2.step(x, y)
    assert method2.state["beta"] == 0.0


class Steps:
    """A progress sink that records (phase, metrics) of every step."""

    def __init__(self) -> None:
        self.phase, self.seen = None, []

    def start(self, phase, total_steps, completed=0):
        self.phase = phase

    def step(self, metrics):
        self.seen.append((self.phase, dict(metrics)))

    def epoch(self, record):
        pass

    def stop(self):
        pass


def test_pretrain_trains_the_teacher_then_resets_its_head(tmp_path):
    """teacher.init: pretrain = CE on the labels first, then ProKT from the reference's start:
    a trained backbone with a zero head, so the first ProKT step has teacher-student KL 0."""
    from conftest import RECIPES

    from prokt_deploy import apply_overrides, distill, load_recipe

    torch.set_num_threads(1)
    r = apply_overrides(
        load_recipe(RECIPES / "digits.yaml"), {"teacher.init": "pretrain", "teacher.epochs": 3, "train.epochs": 1, "data.max_train_samples": 400}
    )
    sink = Steps()
    res = distill(r, out=tmp_path / "run", runs_root=tmp_path / "runs", progress=sink)
    hist = res.manifest["metrics"]["history"]
    assert len(hist["teacher"]) == 3 and len(hist["student"]) == 1
    teacher_steps = [m for p, m in sink.seen if p == "teacher (CE)"]
    prokt_steps = [m for p, m in sink.seen if p == "prokt"]
    assert len(teacher_steps) == 3 * 7 and len(prokt_steps) == 7
    assert teacher_steps[-1]["acc"] > 0.5  # the teacher learned from labels first
    assert abs(prokt_steps[0]["kl_q_p"]) < 1e-6  # both heads zero at the first ProKT step
    assert max(m["teacher_acc"] for m in prokt_steps[1:4]) > 0.5  # ... yet its backbone is trained: a few steps of its head separate the classes


def test_batch_stats_teacher_targets_leave_running_stats():
    """prokt.teacher_targets: batch-stats normalises the teacher's targets with the batch's statistics,
    changes no buffer, leaves the model in eval mode and only touches the teacher's targets."""
    from prokt_deploy.train.engine import soft_targets as _soft_targets

    teacher = tiny(1, dropout=0.5)
    x = torch.randn(16, 6) * 3 + 1  # far from the initial running stats (0, 1)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    p = _soft_targets(teacher, x, batch_stats=True)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not teacher.training and not any(m.training for m in teacher.modules())
    assert not torch.allclose(p, F.softmax(teacher(x), -1), atol=1e-4)  # not the running-stats output
    bn, dropout = teacher[1], teacher[3]
    bn.train()
    bn.momentum = 0.0
    assert torch.allclose(p, F.softmax(teacher(x), -1), atol=1e-6)  # batch statistics, dropout off
    assert not dropout.training

    # in a ProKT step only the teacher's targets change: same teacher update, different student update
    x, y = batch()
    runs = []
    for targets in ("eval", "batch-stats"):
        student, teacher = tiny(0), tiny(1)
        method = prokt_method(student, teacher, SGD, SGD, ProktConfig(lam=0.3, zero_init_heads=False, teacher_targets=targets), 10, 1.0)
        method.step(x, y)
        runs.append((student, teacher))
    assert_same_params(runs[0][1], runs[1][1])
    assert max((a - b).abs().max().item() for a, b in zip(runs[0][0].parameters(), runs[1][0].parameters())) > 1e-5
