"""What a study may claim: each method's outcomes over seeds, and paired verdicts between methods that hold at
the few seeds fine-tuning studies run, on scores that are bounded and often bimodal (runs "click" or fail).

Outcomes (``Outcomes``): n, mean, median, std, min and max over all runs; the failed runs (a rule fixed before
the study ran: ``study.spec.Verdicts``) with the failure rate's exact (Clopper–Pearson) 95 % interval; the mean
of the runs that did not fail, labelled conditional. Nothing is dropped: verdicts use every run.

A verdict (``compare``) pairs the two methods' scores on the seeds both ran (same seed, same initialisation and
data order) and tests the paired differences with an exact sign-flip permutation test (``scipy.stats.
permutation_test``; every sign pattern up to 13 seeds, 9,999 random ones beyond). Under "the two methods are
interchangeable" every sign pattern is equally likely, whatever the scores' distribution, so the false-positive
rate is at most 5 % at every n; a t-test assumes what bimodal scores are not. Its word:
- *better* / *worse*: the two-sided test rejects (p < 0.05), in the metric's good / bad direction;
- *equivalent*: both one-sided tests against ±``margin`` reject at 5 % (TOST: the 90 % interval lies within the
  margin);
- *not distinguishable*: neither; its ``plan`` then says how many paired seeds would decide it;
- *no verdict*: fewer than 3 shared seeds.
An adaptive study's primary comparison is decided instead by an anytime-valid rule (``decide_anytime``), or ends
*undetermined*.
With 5 seeds or fewer no sign-flip test can reach p < 0.05 (the smallest two-sided p is 2/2ⁿ): such a study can
say *not distinguishable* only, and its plan says so. The 95 % interval is the set of shifts the test does not
reject, cut to the differences the metric allows. Beside the word: the probability of improvement (the share of
paired seeds where the subject scored higher, ties half), and the paired table of failed runs with an exact
McNemar test on its discordant pairs. The procedure's error rates and power are simulated in
tests/test_verdicts.py and benchmarks/verdict_power.py.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

MIN_SEEDS = 3
LEVEL = 0.05  # two-sided: a verdict's false-positive rate; TOST's one-sided tests each at this level
RESAMPLES = 9999  # sign patterns: all of them up to n = 13 (2¹³ ≤ 9,999), else this many at random
POWER = 0.8  # what a seed plan aims for
MIN_DECISIVE_SEEDS = 6  # the fewest paired seeds at which a sign-flip test can reach p < 0.05 (2/2⁶ = 0.031)


class Word(StrEnum):
    BETTER = "better"
    WORSE = "worse"
    EQUIVALENT = "equivalent"
    NOT_DISTINGUISHABLE = "not distinguishable"
    UNDETERMINED = "undetermined"  # an adaptive confirmation that ended (max seeds, time budget) without deciding
    NO_VERDICT = "no verdict"

    @property
    def decisive(self) -> bool:
        return self in (Word.BETTER, Word.WORSE, Word.EQUIVALENT)


@dataclass(frozen=True)
class Outcomes:
    """One method's (or cell's) runs over seeds, as they are."""

    n: int
    mean: float
    median: float
    std: float  # NaN below two runs
    min: float
    max: float
    failed: int | None  # None: no failure rule for this study
    failure_low: float  # exact 95 % interval of the failure rate
    failure_high: float
    clicked_mean: float  # mean over the runs that did not fail (conditional on not failing)

    @classmethod
    def of(cls, values, failed=None) -> Outcomes:
        """``values`` in run order; ``failed``: one flag per run, or None when no failure rule applies."""
        from scipy.stats import binomtest

        values = [float(v) for v in values]
        n, nan = len(values), math.nan
        if n == 0:
            return cls(0, nan, nan, nan, nan, nan, None if failed is None else 0, nan, nan, nan)
        std = statistics.stdev(values) if n > 1 else nan
        count, low, high, clicked = None, nan, nan, statistics.fmean(values)
        if failed is not None:
            failed = [bool(f) for f in failed]
            count = sum(failed)
            interval = binomtest(count, n).proportion_ci(0.95, method="exact")
            low, high = float(interval.low), float(interval.high)
            kept = [v for v, f in zip(values, failed) if not f]
            clicked = statistics.fmean(kept) if kept else nan
        return cls(n, statistics.fmean(values), statistics.median(values), std, min(values), max(values), count,
                   low, high, clicked)

    @property
    def failure_rate(self) -> float:
        return math.nan if not self.n or self.failed is None else self.failed / self.n

    def text(self, digits: int = 3) -> str:
        if self.n == 0:
            return "no scores"
        f = f".{digits}f"
        if self.n == 1:
            return f"{self.mean:{f}} (1 seed)" + ("" if not self.failed else ", failed")
        text = (f"mean {self.mean:{f}}, median {self.median:{f}}, std {self.std:{f}}, "
                f"min {self.min:{f}}, max {self.max:{f}} ({self.n} seeds)")
        if self.failed is not None:
            text += (f"; failed {self.failed}/{self.n} [{self.failure_low:.2f}, {self.failure_high:.2f}]"
                     + (f", mean of the rest {self.clicked_mean:{f}} (conditional)" if self.failed else ""))
        return text


@dataclass(frozen=True)
class Plan:
    """Paired seeds that would give ``POWER`` to decide a comparison, and what they cost."""

    detect: float  # the difference planned for
    seeds: int | None  # paired seeds for POWER to call ``detect`` better/worse (None: nothing to detect)
    margin: float | None
    seeds_for_margin: int | None  # paired seeds for POWER to call two methods within ``margin`` equivalent
    spread: float  # the paired differences' standard deviation planned with
    from_failure_rates: bool  # the spread comes from the failure rates (click-type scores), not the sample std

    def text(self) -> str:
        parts = []
        if self.seeds is not None:
            parts.append(f"{self.seeds} paired seeds for {POWER:.0%} power to detect ±{self.detect:.3f}")
        if self.seeds_for_margin is not None:
            parts.append(f"{self.seeds_for_margin} to show equivalence within ±{self.margin:g}")
        basis = "failure rates" if self.from_failure_rates else "spread of the differences"
        return "; ".join(parts) + f" (planned from the {basis}, σ_d = {self.spread:.3f})" if parts else ""


@dataclass(frozen=True)
class Verdict:
    """``subject`` against ``control`` on their shared seeds; differences are subject − control."""

    subject: str
    control: str
    seeds: tuple[int, ...]
    word: Word
    difference: float = math.nan  # mean paired difference
    low: float = math.nan  # 95 % interval: the shifts the sign-flip test does not reject
    high: float = math.nan
    p_value: float = math.nan  # exact sign-flip test, two-sided
    margin: float | None = None  # the equivalence margin (None: no equivalence claim for this metric)
    improvement: float = math.nan  # share of paired seeds where the subject scored better (ties half)
    subject_only_failed: int | None = None  # paired runs where only the subject failed
    control_only_failed: int | None = None
    failures_p_value: float = math.nan  # exact McNemar test on those discordant pairs
    plan: Plan | None = None  # for a verdict that is not decisive
    reason: str = ""  # why there is no verdict
    evalue: float = math.nan  # adaptive confirmation: the anytime-valid rule's two-sided e-value (1/LEVEL decides)
    stopped: str = ""  # adaptive confirmation: why it added no more seeds ("" while it goes on, or fixed seeds)

    @property
    def n(self) -> int:
        return len(self.seeds)

    def record(self) -> dict:
        """Every field, as JSON takes it (verdicts.json, the report page)."""
        from dataclasses import asdict

        return {**asdict(self), "seeds": list(self.seeds), "word": str(self.word)}

    def numbers(self) -> dict[str, float]:
        """The finite numeric fields (metrics on the parent run), the plan's prefixed ``plan_``."""
        record = self.record()
        fields = {**record, **{f"plan_{k}": v for k, v in (record["plan"] or {}).items()}}
        return {name: float(value) for name, value in fields.items() if isinstance(value, (int, float))
                and not isinstance(value, bool) and math.isfinite(value)}

    def text(self, digits: int = 3) -> str:
        if self.word is Word.NO_VERDICT:
            return f"{self.subject} vs {self.control}: no verdict ({self.reason})"
        f = f"+.{digits}f"
        if math.isnan(self.evalue):
            text = (f"{self.subject} vs {self.control}: {self.word} — difference {self.difference:{f}} "
                    f"[{self.low:{f}}, {self.high:{f}}] over {self.n} paired seeds, sign-flip p = {self.p_value:.3f}, "
                    f"better on {self.improvement:.0%} of seeds")
        else:
            text = (f"{self.subject} vs {self.control}: {self.word} after {self.n} paired seeds (adaptive"
                    + (f", stopped: {self.stopped}" if self.stopped else "") + f") — difference "
                    f"{self.difference:{f}} [{self.low:{f}}, {self.high:{f}}], e-value {self.evalue:.2f} "
                    f"({1 / LEVEL:g} decides), better on {self.improvement:.0%} of seeds")
        if self.subject_only_failed is not None and self.subject_only_failed + self.control_only_failed:
            text += (f"; failed alone {self.subject_only_failed} vs {self.control_only_failed} "
                     f"(McNemar p = {self.failures_p_value:.3f})")
        if self.plan is not None and self.plan.text():
            text += f"; {self.plan.text()}"
        return text


def method_text(scores: str, margin: float | None) -> str:
    """How the verdicts on ``scores`` were reached, in three sentences (docs/study.md has the whole protocol)."""
    return (f"Paired differences of {scores} over shared seeds (same seed, same initialisation and data order); "
            "every configuration was chosen on validation. The word comes from an exact sign-flip permutation test "
            "(better / worse at p < 0.05)"
            + (f" and two one-sided tests against ±{margin:g} (equivalent)" if margin else "")
            + ": its false-positive rate is at most 5 % at any number of seeds, and with 5 seeds or fewer it "
            "cannot decide. The interval holds the differences the test does not reject, within the metric's "
            "range; a verdict that does not decide gives the paired seeds that would.")


def compare(subject: str, subject_scores: dict[int, float], control: str, control_scores: dict[int, float],
            mode: str = "max", margin: float | None = None, bounds: tuple[float, float] = (-math.inf, math.inf),
            subject_failed: dict[int, bool] | None = None, control_failed: dict[int, bool] | None = None,
            detect: float | None = None, adaptive: bool = False, stopped: str = "") -> Verdict:
    """The paired verdict of ``subject`` against ``control`` (scores by seed). ``mode``: the metric's direction
    (``max``: higher is better); ``margin``: equivalence margin; ``bounds``: the metric's range; ``*_failed``:
    which runs failed, by seed, when the study has a failure rule. An undecided verdict plans the seeds that
    would detect the difference it saw; with ``detect``, every verdict plans for that difference. ``adaptive``:
    the seeds came in rounds until the anytime-valid rule decided (``decide_anytime``, seeds in the order they
    were added, which is theirs) or the confirmation ``stopped`` for another reason: then *undetermined*."""
    from scipy.stats import binomtest

    seeds = tuple(sorted(set(subject_scores) & set(control_scores)))
    a = np.array([float(subject_scores[s]) for s in seeds])
    b = np.array([float(control_scores[s]) for s in seeds])
    d = a - b
    paired = subject_failed is not None and control_failed is not None
    flags = ([subject_failed[s] for s in seeds], [control_failed[s] for s in seeds]) if paired else None
    if len(seeds) < MIN_SEEDS:  # two seeds still plan, as a pilot
        planned = plan_seeds(d, _worth_detecting(d, margin) if detect is None else detect, margin, flags, a, b) \
            if len(seeds) >= 2 else None
        return Verdict(subject, control, seeds, Word.NO_VERDICT, margin=margin, plan=planned, reason=(
            f"{len(seeds)} shared seed{'s' * (len(seeds) != 1)}; a paired verdict needs at least {MIN_SEEDS} — "
            "run more seeds"))
    sign = 1 if mode == "max" else -1
    word, p_value = decide(d, sign, margin)
    evalue = math.nan
    if adaptive:
        word, evalue = decide_anytime(d, sign, margin)
        if not word.decisive and stopped:
            word = Word.UNDETERMINED
    widest = bounds[1] - bounds[0]
    low, high = shift_interval(d, 1 - LEVEL, (-widest, widest))
    failures = {}
    if paired:
        only_subject = sum(subject_failed[s] and not control_failed[s] for s in seeds)
        only_control = sum(control_failed[s] and not subject_failed[s] for s in seeds)
        discordant = only_subject + only_control
        failures = {"subject_only_failed": only_subject, "control_only_failed": only_control,
                    "failures_p_value": float(binomtest(only_subject, discordant).pvalue) if discordant else 1.0}
    improvement = float(np.mean((sign * d > 0) + 0.5 * (d == 0)))
    planned = None
    if detect is not None or not word.decisive:
        planned = plan_seeds(d, _worth_detecting(d, margin) if detect is None else detect, margin, flags, a, b)
    return Verdict(subject, control, seeds, word, float(d.mean()), low, high, p_value, margin, improvement,
                   plan=planned, evalue=evalue, stopped=stopped, **failures)


def _worth_detecting(differences, margin: float | None) -> float:
    """The difference an undecided verdict plans for: the one it saw, unless it lies within the equivalence margin
    (0: then only showing equivalence is planned)."""
    seen = abs(float(np.mean(differences)))
    return seen if margin is None or seen >= margin else 0.0


def decide(differences, sign: int = 1, margin: float | None = None):
    """The words for paired ``differences`` (one study per row of a 2-D array, or one 1-D study; ``sign`` −1
    when lower is better) and their two-sided p-values."""
    d = np.asarray(differences, dtype=float)
    p_value = sign_flip_p(d, "two-sided")
    mean = sign * d.mean(axis=-1)
    words = np.where(p_value < LEVEL, np.where(mean > 0, Word.BETTER, Word.WORSE), Word.NOT_DISTINGUISHABLE)
    if margin is not None:
        undecided = p_value >= LEVEL
        within = (sign_flip_p(d + margin, "greater") < LEVEL) & (sign_flip_p(d - margin, "less") < LEVEL)
        words = np.where(undecided & within, Word.EQUIVALENT, words)
    if d.ndim == 1:
        return Word(words.item()), float(p_value)
    return words, p_value


# ---- anytime-valid: adaptive confirmation -------------------------------------------------------------------

BETS = np.linspace(0.05, 0.95, 19)  # the fractions of wealth a sign e-process mixes over, equally weighted


def sign_evalues(differences, direction: int):
    """The running e-values of "each difference's sign is a fair coin, whatever its size" (what interchangeable
    methods give), betting on ``direction`` (+1: positive differences): a mixture over ``BETS`` of the wealth
    ∏ (1 + λ · sign(dᵢ) · |dᵢ| / maxⱼ≤ᵢ |dⱼ|). Under that null each factor has mean 1 given the past and |dᵢ|,
    so the wealth is a test martingale and, by Ville's inequality, exceeds 1/α at *any* seed count with
    probability at most α: a study may look after every round and stop when it crosses. Over the last axis."""
    d = np.asarray(differences, dtype=float)
    size = np.abs(d)
    scale = np.maximum.accumulate(size, axis=-1)
    weight = np.divide(size, scale, out=np.zeros_like(size), where=scale > 0)
    bets = BETS.reshape((-1,) + (1,) * d.ndim)
    return np.cumprod(1 + direction * bets * np.sign(d) * weight, axis=-1).mean(axis=0)


def decide_anytime(differences, sign: int = 1, margin: float | None = None):
    """The anytime-valid words for paired ``differences`` in the order they were observed (seed order, one
    study per row of a 2-D array), and the two-sided e-values: *better* / *worse* when the two-sided e-value
    (the mean of the two directions') reaches 1/``LEVEL``; *equivalent* when the one-sided e-values of
    ``d − margin`` betting down and ``d + margin`` betting up both reach it (differences symmetric about their
    mean, as the fixed-n TOST assumes); else *not distinguishable* (so far)."""
    d = np.asarray(differences, dtype=float)
    up, down = sign_evalues(d, 1)[..., -1], sign_evalues(d, -1)[..., -1]
    evalue = (up + down) / 2
    better = sign * (up - down) > 0
    words = np.where(evalue >= 1 / LEVEL, np.where(better, Word.BETTER, Word.WORSE), Word.NOT_DISTINGUISHABLE)
    if margin is not None:
        within = (sign_evalues(d - margin, -1)[..., -1] >= 1 / LEVEL) & \
            (sign_evalues(d + margin, 1)[..., -1] >= 1 / LEVEL)
        words = np.where((evalue < 1 / LEVEL) & within, Word.EQUIVALENT, words)
    if d.ndim == 1:
        return Word(words.item()), float(evalue)
    return words, evalue


def sign_flip_p(differences, alternative: str):
    """The sign-flip permutation test of "the differences are symmetric about 0" on their mean, over the last
    axis (a float for one study, an array for a batch)."""
    from scipy.stats import permutation_test

    d = np.asarray(differences, dtype=float)
    # enumerated when 2ⁿ ≤ n_resamples; the random patterns beyond are seeded: one study, one answer
    p_value = permutation_test((d,), _mean, permutation_type="samples", vectorized=True, alternative=alternative,
                               n_resamples=RESAMPLES, axis=-1, rng=np.random.default_rng(0)).pvalue
    p_value = np.where((d == 0).all(axis=-1), 1.0, p_value)  # no difference at all: nothing to test
    return float(p_value) if d.ndim == 1 else p_value


def _mean(x, axis=-1):
    return np.mean(x, axis=axis)


def shift_interval(differences, confidence: float, bounds: tuple[float, float]) -> tuple[float, float]:
    """The shifts δ at which the two-sided sign-flip test of ``differences − δ`` does not reject at
    1 − ``confidence``, within ``bounds`` (with 5 seeds or fewer the test rejects no shift: the whole range)."""
    d = np.asarray(differences, dtype=float)
    level = 1 - confidence
    low_end = max(bounds[0], float(d.min()) - 1e-9)  # beyond the data every sign agrees: its p is 2/2ⁿ
    high_end = min(bounds[1], float(d.max()) + 1e-9)
    centre = float(d.mean())

    def rejected(shift: float) -> bool:
        return sign_flip_p(d - shift, "two-sided") < level

    def edge(inside: float, outside: float) -> float:
        if not rejected(outside):
            return bounds[0] if outside < inside else bounds[1]
        for _ in range(16):  # bisection: to 1/65,536 of the data's span
            middle = (inside + outside) / 2
            inside, outside = (inside, middle) if rejected(middle) else (middle, outside)
        return inside

    if d.min() == d.max():  # the same difference on every seed
        return (centre, centre) if 2 / 2 ** len(d) < level else bounds
    return edge(centre, low_end), edge(centre, high_end)


def plan_seeds(differences, detect: float, margin: float | None, failed=None, subject_scores=None,
               control_scores=None) -> Plan:
    """Paired seeds for ``POWER`` to call a true difference of ``detect`` (0: none) better or worse, and to call two
    methods that do not differ equivalent within ``margin``, by the power of a paired test with the sign-flip
    test's smallest decisive n. With a failure rule, the differences' spread comes from each method's failure
    rate (Jeffreys-smoothed, so 0 failures in 4 runs still allows some), the gap between failed and clicked
    scores and the spread within each, as if the two methods failed independently; else from the sample std.
    ``failed``: the (subject, control) failure flags of the paired runs, or None."""
    d = np.asarray(differences, dtype=float)
    spread = float(np.std(d, ddof=1))
    from_failures = failed is not None and any([*failed[0], *failed[1]])
    if from_failures:
        subject_failed, control_failed = failed
        pooled = np.concatenate([subject_scores, control_scores])
        pooled_failed = np.array([*subject_failed, *control_failed], dtype=bool)
        spread = max(spread, math.sqrt(_mixture_variance(subject_scores, subject_failed, pooled, pooled_failed) +
                                       _mixture_variance(control_scores, control_failed, pooled, pooled_failed)))
    seeds = _seeds_for(lambda n: _difference_power(n, detect, spread)) if detect > 0 else None
    for_margin = _seeds_for(lambda n: _equivalence_power(n, margin, spread)) if margin else None
    return Plan(detect, seeds, margin, for_margin, spread, from_failures)


def _mixture_variance(scores, failed, pooled, pooled_failed) -> float:
    """A score's variance as a two-part mixture: fails with a Jeffreys-smoothed rate, else clicks; each part's
    mean and spread from this method's runs of that kind, or both methods' when it has none."""
    scores, failed = np.asarray(scores, dtype=float), np.asarray(failed, dtype=bool)
    rate = (failed.sum() + 0.5) / (len(failed) + 1)

    def part(mask, pooled_mask):
        values = scores[mask] if mask.sum() >= 2 else pooled[pooled_mask]
        if not len(values):  # every run of both methods failed (or none did): no gap to measure
            return math.nan, 0.0
        return float(values.mean()), float(values.var(ddof=1)) if len(values) > 1 else 0.0

    failed_mean, failed_var = part(failed, pooled_failed)
    clicked_mean, clicked_var = part(~failed, ~pooled_failed)
    gap = 0.0 if math.isnan(failed_mean) or math.isnan(clicked_mean) else clicked_mean - failed_mean
    return rate * failed_var + (1 - rate) * clicked_var + rate * (1 - rate) * gap ** 2


def _difference_power(n: int, detect: float, spread: float) -> float:
    from scipy.stats import nct, t

    if spread == 0:
        return 1.0
    critical = t.ppf(1 - LEVEL / 2, n - 1)
    shift = detect / spread * math.sqrt(n)
    return float(nct.sf(critical, n - 1, shift) + nct.cdf(-critical, n - 1, shift))


def _equivalence_power(n: int, margin: float, spread: float) -> float:
    from scipy.stats import norm, t

    if spread == 0:
        return 1.0
    slack = margin / spread * math.sqrt(n) - t.ppf(1 - LEVEL, n - 1)
    return max(0.0, float(2 * norm.cdf(slack) - 1))


def _seeds_for(power, most: int = 10_000) -> int | None:
    """The fewest paired seeds (at least MIN_DECISIVE_SEEDS) whose ``power(n)`` reaches POWER."""
    n = MIN_DECISIVE_SEEDS
    while power(n) < POWER:
        n = n + 1 if n < 100 else int(n * 1.05) + 1
        if n > most:
            return None
    return n
