"""The statistics a verdict rests on: exact values worked out by hand, and the whole procedure's error rates and
power on simulated studies (benchmarks/verdict_power.py prints the full table)."""

import math

import numpy as np
import pytest

from benchmarks.verdict_power import MARGIN, Click, Gaussian, adaptive_rates, planned_power, rates
from study.verdicts import Outcomes, Word, compare, shift_interval, sign_flip_p

STUDIES = 400  # per cell: a 5 % rate's Monte Carlo standard error is 1.1 points


def allowed(rate: float = 0.05, studies: int = STUDIES) -> float:
    """The largest simulated rate consistent with a true rate of ``rate`` (3 standard errors above it)."""
    return rate + 3 * math.sqrt(rate * (1 - rate) / studies)


@pytest.mark.parametrize("outcomes", [Click(), Gaussian()], ids=["click", "gaussian"])
def test_no_difference_is_called_better_or_worse_at_most_5_percent_of_the_time_at_every_n(outcomes):
    for n in (3, 4, 6, 10, 20):
        studies = STUDIES if n <= 10 else 250  # random sign patterns beyond 13 seeds cost more
        seen = rates(outcomes, n, studies, seed=n)
        print(f"{type(outcomes).__name__} null, {n} seeds: {seen['rejects']:.3f} called better or worse "
              f"(t-test {seen['t_test_rejects']:.3f})")
        assert seen["rejects"] <= allowed(studies=studies)
        if n <= 5:  # no exact sign-flip test reaches p < 0.05 with 5 seeds or fewer
            assert seen["decided"] == 0


@pytest.mark.parametrize("outcomes", [Click(shift=MARGIN / 0.7), Gaussian(shift=MARGIN)], ids=["click", "gaussian"])
def test_a_difference_of_exactly_the_margin_is_called_equivalent_at_most_5_percent_of_the_time(outcomes):
    assert outcomes.difference == pytest.approx(MARGIN)
    for n in (6, 10, 20):
        studies = STUDIES if n <= 10 else 250
        seen = rates(outcomes, n, studies, seed=100 + n)
        assert seen["equivalent"] <= allowed(studies=studies), (n, seen)


def test_power_against_failure_rates_of_0_1_versus_0_5_and_seed_plans_that_reach_it():
    power = {n: rates(Click(fail=(0.1, 0.5)), n, 300, seed=7)["better"] for n in (6, 10, 20)}
    print(f"power, failure rates 0.1 vs 0.5: {power}")
    assert power[6] < power[10] < power[20] and power[20] >= 0.8
    for outcomes in (Click(fail=(0.1, 0.5)), Gaussian(shift=0.02)):
        plan = planned_power(outcomes, studies=300)
        print(f"{outcomes}: {plan}")
        assert 6 <= plan["planned_seeds"] <= 40 and plan["power_at_plan"] >= 0.7


def test_the_exact_sign_flip_p_value_and_its_smallest_values():
    assert sign_flip_p([0.1, 0.2, 0.3, 0.4], "two-sided") == pytest.approx(2 / 16)  # every sign agrees
    assert sign_flip_p([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], "two-sided") == pytest.approx(2 / 64)
    # one of 8 patterns of (-1, 2, 3) has a mean as large: the observed one (flipping -1 only raises it; so 2/8)
    assert sign_flip_p([-1.0, 2.0, 3.0], "greater") == pytest.approx(2 / 8)
    assert sign_flip_p([0.0, 0.0, 0.0], "two-sided") == 1.0


def test_words_by_direction_margin_and_seeds():
    up = {s: 0.80 + 0.01 * s for s in range(6)}
    down = {s: 0.70 + 0.012 * s for s in range(6)}
    better = compare("dynamic", up, "static", down, margin=0.01, bounds=(0, 1))
    assert better.word is Word.BETTER and better.p_value == pytest.approx(2 / 64) and better.improvement == 1.0
    assert compare("static", down, "dynamic", up).word is Word.WORSE
    assert compare("dynamic", up, "static", down, mode="min").word is Word.WORSE  # a loss: lower is better
    # five seeds, all better: still not decisive (smallest p 2/32), and the plan says 6 seeds are the least
    five = compare("dynamic", {s: up[s] for s in range(5)}, "static", {s: down[s] for s in range(5)})
    assert five.word is Word.NOT_DISTINGUISHABLE and five.plan.seeds == 6
    same = {s: 0.8 + 0.0004 * (-1) ** s for s in range(8)}
    equivalent = compare("a", same, "b", {s: 0.8 for s in range(8)}, margin=0.01, bounds=(0, 1))
    assert equivalent.word is Word.EQUIVALENT and equivalent.plan is None
    assert compare("a", same, "b", {s: 0.8 for s in range(8)}).word is Word.NOT_DISTINGUISHABLE  # no margin


def test_no_verdict_below_three_shared_seeds_and_only_shared_seeds_pair():
    verdict = compare("static", {0: 0.9, 1: 0.8, 5: 0.7}, "vanilla", {0: 0.5, 1: 0.5, 2: 0.5})
    assert verdict.word is Word.NO_VERDICT and verdict.seeds == (0, 1)
    assert "2 shared seeds" in verdict.reason and "at least 3" in verdict.reason
    assert "no verdict" in verdict.text()


def test_the_interval_never_leaves_the_metric_and_covers_what_the_test_keeps():
    assert shift_interval([0.3, -0.2, 0.25, 0.0], 0.95, (-1, 1)) == (-1, 1)  # 4 seeds reject no shift
    rng = np.random.default_rng(3)
    d = np.clip(rng.normal(0.05, 0.1, 12), -1, 1)
    low, high = shift_interval(d, 0.95, (-1, 1))
    assert -1 <= low < d.mean() < high <= 1
    assert sign_flip_p(d - (low + 0.002), "two-sided") >= 0.05 and sign_flip_p(d - (high - 0.002), "two-sided") >= 0.05
    assert sign_flip_p(d - (low - 0.01), "two-sided") < 0.05 and sign_flip_p(d - (high + 0.01), "two-sided") < 0.05


def test_paired_failures_and_the_click_type_verdict_of_the_demo():
    # the RTE-like demo's chosen static cell against vanilla_repeat (docs/benchmarks.md, 2026-11-29): 4 seeds
    static = {0: 0.93, 1: 0.995, 2: 0.885, 3: 0.735}
    repeat = {0: 0.90, 1: 0.998, 2: 0.63, 3: 0.63}
    verdict = compare("static", static, "vanilla_repeat", repeat, margin=0.01, bounds=(0, 1),
                      subject_failed=dict.fromkeys(static, False),
                      control_failed={0: False, 1: False, 2: True, 3: True})
    assert verdict.word is Word.NOT_DISTINGUISHABLE and (verdict.low, verdict.high) == (-1, 1)
    assert (verdict.subject_only_failed, verdict.control_only_failed) == (0, 2)
    assert verdict.failures_p_value == pytest.approx(0.5)  # both discordant pairs one way: 2 · (1/2)²
    assert verdict.improvement == 0.75 and verdict.plan.from_failure_rates and verdict.plan.seeds > 6


def test_outcomes_count_failures_with_an_exact_interval_and_drop_nothing():
    outcomes = Outcomes.of([0.9, 0.63, 0.88, 0.92], failed=[False, True, False, False])
    assert (outcomes.n, outcomes.failed, outcomes.min, outcomes.max) == (4, 1, 0.63, 0.92)
    assert outcomes.mean == pytest.approx(0.8325) and outcomes.median == pytest.approx(0.89)
    assert outcomes.clicked_mean == pytest.approx(0.9)
    assert (outcomes.failure_low, outcomes.failure_high) == pytest.approx((0.00631, 0.80588), abs=1e-5)
    assert "failed 1/4" in outcomes.text() and "conditional" in outcomes.text()
    assert Outcomes.of([0.5]).text() == "0.500 (1 seed)" and Outcomes.of([0.5, 0.6]).failed is None


@pytest.mark.parametrize("outcomes", [Click(), Gaussian()], ids=["click", "gaussian"])
def test_adaptive_confirmation_looking_after_every_round_keeps_false_positives_at_5_percent(outcomes):
    """The whole adaptive procedure: 3 seeds, then 2 more a round up to n, stopping at the first look that
    decides. Optional stopping does not raise the anytime-valid rule's error rate."""
    for n in (3, 4, 6, 10, 20, 40):
        seen = adaptive_rates(outcomes, n, 1000, seed=200 + n)
        print(f"{type(outcomes).__name__} null, adaptive up to {n} seeds: {seen['rejects']:.3f} better or worse")
        assert seen["rejects"] <= allowed(studies=1000)


@pytest.mark.parametrize("outcomes", [Click(shift=MARGIN / 0.7), Gaussian(shift=MARGIN)], ids=["click", "gaussian"])
def test_adaptive_equivalence_at_a_difference_of_exactly_the_margin_stays_within_5_percent(outcomes):
    for n in (10, 20, 40):
        assert adaptive_rates(outcomes, n, 1000, seed=300 + n)["equivalent"] <= allowed(studies=1000)


def test_adaptive_confirmation_decides_real_differences_and_stops_early():
    seen = adaptive_rates(Click(fail=(0.1, 0.5)), 40, 1000, seed=9)
    print(f"adaptive up to 40 seeds, failure rates 0.1 vs 0.5: {seen}")
    assert seen["better"] >= 0.8 and seen["worse"] == 0 and seen["mean_seeds"] < 32
    shifted = adaptive_rates(Gaussian(shift=0.02), 40, 1000, seed=10)
    assert shifted["better"] >= 0.95 and shifted["mean_seeds"] < 25
