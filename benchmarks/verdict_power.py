"""How often selfd's paired verdicts (study.verdicts) are wrong, and how often they decide, on simulated studies:
the false-positive rate under no difference, the power against a difference, and the equivalence test's
false-positive rate at a true difference of exactly the margin; beside them the paired t-test selfd used before.

Two kinds of outcomes, each method's seeds paired through a shared latent (correlation 0.5: the same seed gives
both methods the same initialisation and data order):
- click: a run fails (scores near the majority class, 0.63 ± 0.005) or clicks (0.90 ± 0.04), clipped to [0, 1]
  — the RTE-like task of `make demo`;
- gaussian: 0.80 ± 0.02 — a task where every run trains.

    .venv/bin/python benchmarks/verdict_power.py [--studies 2000]   # prints JSON
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import norm, ttest_rel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from study.verdicts import LEVEL, Word, decide, decide_anytime, plan_seeds  # noqa: E402

SEEDS = (3, 4, 6, 10, 20)
CORRELATION = 0.5
MARGIN = 0.01


@dataclass(frozen=True)
class Click:
    """Runs fail with these rates (subject, control); clicked runs of the subject score ``shift`` higher."""

    fail: tuple[float, float] = (0.3, 0.3)
    shift: float = 0.0
    clicked: tuple[float, float] = (0.90, 0.04)
    failed: tuple[float, float] = (0.63, 0.005)

    def draw(self, rng, studies: int, n: int):
        """(subject, control) scores and failure flags, each of shape (studies, n)."""
        shared = rng.standard_normal((studies, n))
        scores, flags = [], []
        for rate, shift in zip(self.fail, (self.shift, 0.0)):
            latent = np.sqrt(CORRELATION) * shared + np.sqrt(1 - CORRELATION) * rng.standard_normal((studies, n))
            failed = latent < norm.ppf(rate)
            noise = np.sqrt(CORRELATION) * shared + np.sqrt(1 - CORRELATION) * rng.standard_normal((studies, n))
            value = np.where(failed, self.failed[0] + self.failed[1] * noise,
                             self.clicked[0] + shift + self.clicked[1] * noise)
            scores.append(np.clip(value, 0, 1))
            flags.append(failed)
        return scores[0], scores[1], flags[0], flags[1]

    @property
    def difference(self) -> float:
        """The true mean difference, subject − control."""
        gap = self.clicked[0] - self.failed[0]
        return (self.fail[1] - self.fail[0]) * gap + (1 - self.fail[0]) * self.shift


@dataclass(frozen=True)
class Gaussian:
    shift: float = 0.0
    mean: float = 0.80
    sd: float = 0.02

    def draw(self, rng, studies: int, n: int):
        shared = rng.standard_normal((studies, n))
        a, b = (self.mean + shift + self.sd * (np.sqrt(CORRELATION) * shared + np.sqrt(1 - CORRELATION)
                                               * rng.standard_normal((studies, n))) for shift in (self.shift, 0.0))
        none = np.zeros_like(a, dtype=bool)
        return a, b, none, none

    @property
    def difference(self) -> float:
        return self.shift


def rates(outcomes, n: int, studies: int, seed: int = 0, margin: float | None = MARGIN) -> dict:
    """Shares of simulated studies: each word of selfd's verdict, and the paired t-test's rejections."""
    a, b, _, _ = outcomes.draw(np.random.default_rng(seed), studies, n)
    words, _ = decide(a - b, 1, margin)
    t_rejects = ttest_rel(a, b, axis=-1).pvalue < LEVEL
    share = {str(word): float(np.mean(words == word)) for word in (Word.BETTER, Word.WORSE, Word.EQUIVALENT)}
    return {**share, "decided": float(np.mean(words != Word.NOT_DISTINGUISHABLE)),
            "rejects": share["better"] + share["worse"], "t_test_rejects": float(np.nanmean(t_rejects))}


def adaptive_rates(outcomes, most: int, studies: int, least: int = 3, round_size: int = 2, seed: int = 0,
                   margin: float | None = MARGIN) -> dict:
    """The whole adaptive confirmation: ``least`` seeds, then ``round_size`` more at a time up to ``most``,
    stopping at the first look where the anytime-valid rule decides; shares of each word and the mean seeds."""
    a, b, _, _ = outcomes.draw(np.random.default_rng(seed), studies, most)
    d = a - b
    words = np.full(studies, Word.UNDETERMINED, dtype=object)
    seeds = np.full(studies, most)
    looks = [*range(min(least, most), most, round_size), most]
    for n in looks:
        seen, _ = decide_anytime(d[:, :n], 1, margin)
        new = (words == Word.UNDETERMINED) & (seen != Word.NOT_DISTINGUISHABLE)
        words[new], seeds[new] = seen[new], n
    share = {str(word): float(np.mean(words == word)) for word in (Word.BETTER, Word.WORSE, Word.EQUIVALENT)}
    return {**share, "rejects": share["better"] + share["worse"], "mean_seeds": float(seeds.mean()),
            "looks": len(looks)}


def planned_power(outcomes, pilot: int = 4000, studies: int = 1000) -> dict:
    """The seeds ``plan_seeds`` asks for, from a large pilot of this outcome model, and the power the verdict then
    has at that many seeds (simulated)."""
    rng = np.random.default_rng(1)
    a, b, fa, fb = (x[0] for x in outcomes.draw(rng, 1, pilot))
    failed = (fa, fb) if fa.any() or fb.any() else None
    plan = plan_seeds(a - b, abs(outcomes.difference), None, failed, a, b)
    achieved = rates(outcomes, plan.seeds, studies, seed=2, margin=None)["better"] if plan.seeds <= 200 else None
    return {"planned_seeds": plan.seeds, "spread": round(plan.spread, 4), "power_at_plan": achieved}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=2000, help="simulated studies per cell")
    args = parser.parse_args()
    started = time.perf_counter()
    cases = {
        "click_null": Click(),
        "gaussian_null": Gaussian(),
        "click_fail_0.1_vs_0.5": Click(fail=(0.1, 0.5)),
        "gaussian_shift_1sd": Gaussian(shift=0.02),
        "click_equal_at_margin": Click(shift=MARGIN / 0.7),  # true difference = +margin
        "gaussian_equal_at_margin": Gaussian(shift=MARGIN),
        # a coin-flip task, every pair independent: the t-test's worst case here (tiny spread within a mode)
        "click_coin_null": Click(fail=(0.5, 0.5), clicked=(0.9, 0.002), failed=(0.63, 0.002)),
    }
    table = {name: {n: rates(outcomes, n, args.studies, seed=n) for n in SEEDS} for name, outcomes in cases.items()}
    adaptive = {name: {n: adaptive_rates(outcomes, n, args.studies, seed=n) for n in SEEDS}
                for name, outcomes in cases.items()}
    plans = {name: planned_power(cases[name]) for name in ("click_fail_0.1_vs_0.5", "gaussian_shift_1sd")}
    print(json.dumps({"studies_per_cell": args.studies, "level": LEVEL, "margin": MARGIN,
                      "correlation": CORRELATION, "fixed_n": table, "adaptive_up_to_n": adaptive, "plans": plans,
                      "seconds": round(time.perf_counter() - started, 1)}, indent=1))


if __name__ == "__main__":
    main()
