"""The KD term and the (α, τ) rules against values worked out by hand."""

import math

import pytest
import torch

from trainables.losses import dynsdpb, kd_term, no_distillation, static, teacher_signals, warmup_static

LN3 = math.log(3.0)


def kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def test_every_rule_a_config_may_name_has_its_function():
    from trainables.losses import RULES
    from trainables.methods import Rule

    assert set(RULES) == set(Rule) and all(callable(rule) for rule in RULES.values())


def test_kd_term_is_kl_of_teacher_to_student():
    # teacher softmax([ln 3, 0]) = (3/4, 1/4); student softmax([0, 0]) = (1/2, 1/2)
    kd = kd_term(torch.tensor([[0.0, 0.0]]), torch.tensor([[LN3, 0.0]]), 1.0)
    assert kd.item() == pytest.approx(kl([0.75, 0.25], [0.5, 0.5]), rel=1e-6)


def test_kd_term_scales_by_tau_squared_with_softened_distributions():
    # at τ = 2 the teacher is softmax([ln 3 / 2, 0]) = (√3, 1) / (√3 + 1)
    s3 = math.sqrt(3.0)
    expected = 4.0 * kl([s3 / (s3 + 1), 1 / (s3 + 1)], [0.5, 0.5])
    kd = kd_term(torch.tensor([[0.0, 0.0]]), torch.tensor([[LN3, 0.0]]), 2.0)
    assert kd.item() == pytest.approx(expected, rel=1e-6)


def test_kd_term_takes_one_tau_per_sample_and_a_mask():
    student = torch.zeros(3, 2)
    teacher = torch.tensor([[LN3, 0.0], [LN3, 0.0], [LN3, 0.0]])
    kd = kd_term(student, teacher, torch.tensor([1.0, 2.0, 1.0]), mask=torch.tensor([1.0, 1.0, 0.0]))
    s3 = math.sqrt(3.0)
    assert kd.tolist() == pytest.approx([kl([0.75, 0.25], [0.5, 0.5]),
                                         4.0 * kl([s3 / (s3 + 1), 1 / (s3 + 1)], [0.5, 0.5]), 0.0], rel=1e-6)


def test_kd_term_is_zero_for_identical_logits_and_has_gradient_only_through_the_student():
    student = torch.tensor([[1.0, -2.0, 0.5]], requires_grad=True)
    teacher = student.detach().clone()
    kd = kd_term(student, teacher, 3.0)
    assert kd.item() == pytest.approx(0.0, abs=1e-7)
    kd_term(student, teacher + torch.tensor([1.0, 0.0, 0.0]), 3.0).sum().backward()
    assert student.grad.abs().sum() > 0


def test_teacher_signals_uncertainty_and_discrimination():
    teacher = torch.tensor([[LN3, 0.0], [LN3, 0.0]])
    u, d = teacher_signals(teacher, torch.tensor([0, 1]))
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(2)
    assert u.tolist() == pytest.approx([entropy, entropy], rel=1e-6)
    assert d.tolist() == pytest.approx([0.5, -0.5], rel=1e-6)
    # three classes, the true class is the least likely: d = q[y] − max of the others = 0.2 − 0.5
    three = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    u3, d3 = teacher_signals(three, torch.tensor([2]))
    assert d3.item() == pytest.approx(-0.3, rel=1e-5)
    assert u3.item() == pytest.approx(-(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2)) / math.log(3),
                                      rel=1e-6)


def test_dynsdpb_by_hand_and_wrong_teacher_gets_zero_alpha():
    teacher = torch.tensor([[LN3, 0.0], [LN3, 0.0]])
    alpha, tau = dynsdpb(teacher, torch.tensor([0, 1]), step=5, total_steps=10, alpha=1.5, tau=3.0)
    confidence = 1 + (0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(2)
    assert alpha.tolist() == pytest.approx([1.5 * confidence, 0.0], rel=1e-6)  # sample 2: teacher was wrong
    assert tau.tolist() == pytest.approx([1 + 2 * confidence, 1 + 2 * confidence], rel=1e-6)


def test_dynsdpb_is_plain_ce_for_uniform_teachers_and_tends_to_static_for_confident_ones():
    alpha, tau = dynsdpb(torch.zeros(4, 2), torch.tensor([0, 1, 0, 1]), 1, 10, alpha=2.0, tau=4.0)
    assert alpha.tolist() == [0.0] * 4 and tau.tolist() == pytest.approx([1.0] * 4)
    confident = torch.tensor([[20.0, 0.0], [0.0, 20.0]])
    alpha, tau = dynsdpb(confident, torch.tensor([0, 1]), 1, 10, alpha=2.0, tau=4.0)
    static_alpha, static_tau = static(confident, torch.tensor([0, 1]), 1, 10, alpha=2.0, tau=4.0)
    assert alpha.tolist() == pytest.approx(static_alpha.tolist(), abs=1e-5)
    assert tau.tolist() == pytest.approx(static_tau.tolist(), abs=1e-5)


def test_static_warmup_and_no_distillation():
    labels = torch.tensor([0, 1, 1])
    alpha, tau = static(None, labels, 3, 100, alpha=0.5, tau=2.0)
    assert alpha.tolist() == [0.5] * 3 and tau.tolist() == [2.0] * 3
    ramp = [warmup_static(None, labels, step, 100, alpha=1.0, tau=2.0, warmup_fraction=0.1)[0][0].item()
            for step in (1, 5, 10, 60)]
    assert ramp == pytest.approx([0.1, 0.5, 1.0, 1.0])
    alpha, tau = no_distillation(None, labels, 3, 100, alpha=0.5, tau=2.0)
    assert alpha.tolist() == [0.0] * 3 and tau.tolist() == [2.0] * 3
