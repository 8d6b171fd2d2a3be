"""What a study may claim: per-method score statistics over seeds and paired verdicts between methods.

METHOD.md, "Evaluation protocol": per method, the mean, std and 95 % t-interval over seeds; per comparison, the
mean paired difference over the seeds both ran (same seed = same initialisation and data order), its 95 %
t-interval, a paired t-test's p-value, and one word decided by the interval: *better* (entirely above 0 in the
metric's good direction), *worse* (entirely below), *not distinguishable* (it spans 0). With fewer than 3 shared
seeds no verdict is given. The smallest difference the seeds could detect is the interval's half-width,
t(0.975, n − 1) · s_d / √n. The statistics are scipy's (``scipy.stats.ttest_1samp``, ``ttest_rel``).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from enum import StrEnum

MIN_SEEDS = 3
CONFIDENCE = 0.95


class Word(StrEnum):
    BETTER = "better"
    WORSE = "worse"
    NOT_DISTINGUISHABLE = "not distinguishable"
    NO_VERDICT = "no verdict"


@dataclass(frozen=True)
class Scores:
    """One method's (or cell's) scores over seeds: mean, sample std and the 95 % t-interval of the mean."""

    n: int
    mean: float
    std: float
    low: float  # NaN below two seeds
    high: float

    @classmethod
    def of(cls, values) -> Scores:
        from scipy.stats import ttest_1samp

        values = [float(v) for v in values]
        n = len(values)
        if n == 0:
            return cls(0, math.nan, math.nan, math.nan, math.nan)
        mean = statistics.fmean(values)
        if n < 2:
            return cls(1, mean, math.nan, math.nan, math.nan)
        std = statistics.stdev(values)
        if std == 0:
            return cls(n, mean, 0.0, mean, mean)
        interval = ttest_1samp(values, 0.0).confidence_interval(CONFIDENCE)
        return cls(n, mean, std, float(interval.low), float(interval.high))

    def text(self, digits: int = 3) -> str:
        if self.n == 0:
            return "no scores"
        if self.n == 1:
            return f"{self.mean:.{digits}f} (1 seed)"
        return (f"{self.mean:.{digits}f} ± {self.std:.{digits}f} "
                f"[{self.low:.{digits}f}, {self.high:.{digits}f}] ({self.n} seeds)")


@dataclass(frozen=True)
class Verdict:
    """``subject`` against ``control`` on their shared seeds; differences are subject − control."""

    subject: str
    control: str
    seeds: tuple[int, ...]
    difference: float  # mean paired difference
    low: float  # its 95 % t-interval
    high: float
    p_value: float  # paired t-test, two-sided
    detectable: float  # the smallest difference these seeds could tell from 0 (the interval's half-width)
    word: Word
    reason: str = ""  # why there is no verdict

    def text(self, digits: int = 3) -> str:
        if self.word is Word.NO_VERDICT:
            return f"{self.subject} vs {self.control}: no verdict ({self.reason})"
        p = "n/a" if math.isnan(self.p_value) else f"{self.p_value:.3f}"
        return (f"{self.subject} vs {self.control}: {self.word} — difference {self.difference:+.{digits}f} "
                f"[{self.low:+.{digits}f}, {self.high:+.{digits}f}] over {len(self.seeds)} paired seeds, p = {p}; "
                f"these seeds detect differences of ±{self.detectable:.{digits}f} or more")


def compare(subject: str, subject_scores: dict[int, float], control: str, control_scores: dict[int, float],
            mode: str = "max") -> Verdict:
    """The paired verdict of ``subject`` against ``control`` (scores by seed); ``mode`` is the metric's
    direction (``max``: higher is better)."""
    from scipy.stats import t, ttest_rel

    seeds = tuple(sorted(set(subject_scores) & set(control_scores)))
    nan = math.nan
    if len(seeds) < MIN_SEEDS:
        return Verdict(subject, control, seeds, nan, nan, nan, nan, nan, Word.NO_VERDICT,
                       f"{len(seeds)} shared seed{'s' * (len(seeds) != 1)}; a paired interval needs at least "
                       f"{MIN_SEEDS} — run more seeds")
    a = [float(subject_scores[s]) for s in seeds]
    b = [float(control_scores[s]) for s in seeds]
    differences = [x - y for x, y in zip(a, b)]
    mean, n = statistics.fmean(differences), len(seeds)
    spread = statistics.stdev(differences)
    if spread == 0:  # every seed moved by the same amount: the interval is that amount, the test undefined
        low = high = mean
        p_value = 0.0 if mean else 1.0
    else:
        test = ttest_rel(a, b)
        interval = test.confidence_interval(CONFIDENCE)
        low, high, p_value = float(interval.low), float(interval.high), float(test.pvalue)
    detectable = float(t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * spread / math.sqrt(n)
    sign = 1 if mode == "max" else -1
    if sign * low > 0 and sign * high > 0:
        word = Word.BETTER
    elif sign * low < 0 and sign * high < 0:
        word = Word.WORSE
    else:
        word = Word.NOT_DISTINGUISHABLE
    return Verdict(subject, control, seeds, mean, low, high, p_value, detectable, word)
