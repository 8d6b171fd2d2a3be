"""The statistics a verdict rests on, against values worked out by hand from t tables."""

import math

import pytest

from study.verdicts import Scores, Word, compare

T_975_DF2 = 4.302652729911275  # t(0.975, 2)
T_975_DF4 = 2.7764451051977987  # t(0.975, 4)


def test_a_paired_difference_that_spans_zero_is_not_distinguishable():
    # differences 1, 2, 3: mean 2, s_d 1, half-width t(0.975, 2) / √3; t = 2√3 on 2 df, two-sided p = 0.0742
    verdict = compare("static", {0: 11, 1: 12, 2: 13}, "vanilla_repeat", {0: 10, 1: 10, 2: 10})
    half = T_975_DF2 / math.sqrt(3)
    assert verdict.difference == pytest.approx(2.0)
    assert (verdict.low, verdict.high) == pytest.approx((2 - half, 2 + half))
    assert verdict.detectable == pytest.approx(half)
    assert verdict.p_value == pytest.approx(0.07418, abs=1e-5)
    assert verdict.word is Word.NOT_DISTINGUISHABLE and verdict.seeds == (0, 1, 2)


def test_an_interval_above_zero_is_better_and_below_is_worse_and_loss_turns_them_round():
    subject = {s: 0.80 + 0.01 * s for s in range(5)}
    control = {s: 0.70 + 0.012 * s for s in range(5)}  # differences 0.1, 0.098, …, 0.092: s_d = 0.00316
    better = compare("dynamic", subject, "static", control)
    differences = [subject[s] - control[s] for s in range(5)]
    s_d = math.sqrt(sum((d - 0.096) ** 2 for d in differences) / 4)
    assert better.difference == pytest.approx(0.096)
    assert better.high - better.difference == pytest.approx(T_975_DF4 * s_d / math.sqrt(5))
    assert better.word is Word.BETTER and better.p_value < 1e-4
    assert compare("static", control, "dynamic", subject).word is Word.WORSE
    assert compare("dynamic", subject, "static", control, mode="min").word is Word.WORSE  # a loss: lower is better


def test_no_verdict_below_three_shared_seeds_and_only_shared_seeds_pair():
    verdict = compare("static", {0: 0.9, 1: 0.8, 5: 0.7}, "vanilla", {0: 0.5, 1: 0.5, 2: 0.5})
    assert verdict.word is Word.NO_VERDICT and verdict.seeds == (0, 1)
    assert "2 shared seeds" in verdict.reason and "at least 3" in verdict.reason
    assert "no verdict" in verdict.text()


def test_the_same_shift_on_every_seed_is_decided_by_its_sign():
    assert compare("a", {0: 2, 1: 3, 2: 4}, "b", {0: 1, 1: 2, 2: 3}).word is Word.BETTER
    same = compare("a", {0: 2, 1: 3, 2: 4}, "b", {0: 2, 1: 3, 2: 4})
    assert same.word is Word.NOT_DISTINGUISHABLE and same.p_value == 1.0


def test_scores_mean_std_and_t_interval():
    scores = Scores.of([0.6, 0.7, 0.8])  # mean 0.7, s 0.1, half-width t(0.975, 2) · 0.1 / √3
    half = T_975_DF2 * 0.1 / math.sqrt(3)
    assert (scores.n, scores.mean, scores.std) == (3, pytest.approx(0.7), pytest.approx(0.1))
    assert (scores.low, scores.high) == pytest.approx((0.7 - half, 0.7 + half))
    assert Scores.of([0.5]).text() == "0.500 (1 seed)" and math.isnan(Scores.of([0.5]).low)
