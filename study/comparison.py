"""Which configuration of each method a study compares, and the verdicts between them.

Validation chooses (METHOD.md, "Evaluation protocol"): a trial's score is its test score at its best validation
evaluation; a searched method's configuration is the setting its search found best on validation (the one the
study re-ran over seeds, when it did), a baseline's its base settings. Test scores are read only here, after
every choice was made. Each selection is one row per seed, so two methods pair on the seeds both ran.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from study import state as phases
from study.spec import StudySpec
from study.state import StopReason, StudyState
from study.verdicts import Outcomes, Verdict, compare
from trainables.methods import Method

CONTROLS = (Method.VANILLA_REPEAT, Method.VANILLA)  # what each searched method is judged against, in this order
FAILED_RUN = "failed_run"  # results-table column: the run failed by the study's rule (NaN: the study has none)


def failed_runs(best_validation: pd.Series, spec: StudySpec, threshold: float | None) -> pd.Series:
    """Per run, whether it failed: its best validation score is at or below ``threshold`` (at or above, for a
    loss); NaN for every run when the study has no failure rule, and for runs without a score."""
    if threshold is None:
        return pd.Series(math.nan, index=best_validation.index, dtype=object)
    return best_validation.map(lambda v: math.nan if pd.isna(v) else spec.metric.failed(v, threshold))


@dataclass(frozen=True)
class Selection:
    method: str
    how: str  # how the configuration was chosen
    setting: dict  # the searched values (empty: the base settings)
    rows: pd.DataFrame  # the configuration's trials, one per seed

    def scored(self, spec: StudySpec) -> pd.DataFrame:
        return self.rows[self.rows[spec.metric.test].notna()]

    def test_scores(self, spec: StudySpec) -> dict[int, float]:
        rows = self.scored(spec)
        return dict(zip(rows.seed.astype(int), rows[spec.metric.test].astype(float)))

    def failed_runs(self, spec: StudySpec) -> dict[int, bool] | None:
        """Which seeds' runs failed (the study's failure rule), or None when it has none."""
        rows = self.scored(spec)
        if rows[FAILED_RUN].isna().any():
            return None
        return dict(zip(rows.seed.astype(int), rows[FAILED_RUN].astype(bool)))

    def outcomes(self, spec: StudySpec) -> Outcomes:
        failed = self.failed_runs(spec)
        scores = self.test_scores(spec)
        return Outcomes.of(scores.values(), None if failed is None else [failed[s] for s in scores])

    def summary(self, spec: StudySpec) -> dict:
        """One row of the comparison table: cost (means over seeds) and the test score's outcomes."""
        rows = self.rows
        return {"method": self.method, "how": self.how, "setting": setting_text(self.setting),
                "steps": _mean(rows, "steps"), "samples": _mean(rows, "samples"),
                "train_seconds": _mean(rows, "train_seconds"), "test": self.outcomes(spec)}


def selections(table: pd.DataFrame, spec: StudySpec, state: StudyState) -> list[Selection]:
    """Each baseline at its base settings, then each searched method at the setting validation chose; the
    adaptive confirmation's rounds add to the two methods they ran."""
    scored = table[table[spec.metric.best].notna()]
    rounds = scored[scored.phase.map(phases.is_added_round)]
    chosen = []
    for method, rows in scored[scored.phase == phases.BASELINES.name].groupby("method", sort=False):
        chosen.append(Selection(str(method), "base settings", {}, _with_rounds(rows, rounds, method)))
    for method in spec.searched:
        search = scored[scored.phase == phases.search(method).name]
        reruns = scored[scored.phase == phases.rerun(method).name]
        record = state.ended(phases.search(method))
        setting = record.best if record and record.best else chosen_setting(search, spec, method)
        if setting is None:
            continue
        if len(reruns):
            chosen.append(Selection(str(method), "best setting re-run", setting, _with_rounds(reruns, rounds, method)))
        else:
            rows = search[_matches(search, setting)]
            chosen.append(Selection(str(method), "best setting on validation", setting, rows))
    return chosen


def _with_rounds(rows: pd.DataFrame, rounds: pd.DataFrame, method: str) -> pd.DataFrame:
    return pd.concat([rows, rounds[rounds.method == method]]) if len(rounds) else rows


def verdicts(chosen: list[Selection], spec: StudySpec, detect: float | None = None,
             stopped: StopReason | None = None, only: tuple[str, str] | None = None) -> list[Verdict]:
    """Each searched method against ``vanilla_repeat`` and ``vanilla``, and ``dynamic`` against ``static``,
    where the study ran both (paired test scores on shared seeds); ``detect``: plan every verdict's seeds for this
    difference (else undecided ones for the difference they saw). An adaptive study's primary comparison is
    decided by the anytime-valid rule; ``stopped``: why its confirmation ended (None: it goes on). ``only``: that
    one comparison (what adaptive confirmation looks at after each round), if the study makes it."""
    by_method = {selection.method: selection for selection in chosen}
    pairs = [(method, control) for method in dict.fromkeys(map(str, spec.methods)) for control in CONTROLS
             if method != control and control in by_method and method in by_method]
    if Method.DYNAMIC in by_method and Method.STATIC in by_method:
        pairs.append((Method.DYNAMIC, Method.STATIC))
    primary = _primary(spec)
    if primary and primary not in pairs and all(m in by_method for m in primary):
        pairs.insert(0, primary)
    if only is not None:
        pairs = [pair for pair in pairs if pair == only]
    return [compare(str(a), by_method[a].test_scores(spec), str(b), by_method[b].test_scores(spec), spec.mode,
                    spec.equivalence_margin, spec.metric.bounds, by_method[a].failed_runs(spec),
                    by_method[b].failed_runs(spec), detect, adaptive=primary == (a, b),
                    stopped=str(stopped or ""))
            for a, b in pairs]


def _primary(spec: StudySpec) -> tuple[str, str] | None:
    return tuple(map(str, spec.primary)) if spec.adaptive else None


@dataclass(frozen=True)
class SeedPlan:
    """What deciding a verdict would take: more paired seeds and their trial-hours at the study's own pace."""

    verdict: Verdict
    more_seeds: int | None  # beyond the shared seeds (None: no plan reaches the power)
    trial_hours: float  # both methods' extra trials, at their mean trial seconds in this study
    more_for_margin: int | None
    trial_hours_for_margin: float

    def text(self, concurrent: int) -> str:
        verdict, plan = self.verdict, self.verdict.plan
        head = f"{verdict.subject} vs {verdict.control}: {verdict.word} after {verdict.n} paired seeds"
        if plan is None:
            return head + ("" if verdict.word.decisive else f" ({verdict.reason})")
        parts = []
        if plan.seeds is not None:
            parts.append(f"to detect ±{plan.detect:.3f}: {plan.seeds} paired seeds ({self.more_seeds} more, "
                         f"{_hours(self.trial_hours, concurrent)})")
        if plan.seeds_for_margin is not None:
            parts.append(f"to show equivalence within ±{plan.margin:g}: {plan.seeds_for_margin} "
                         f"({self.more_for_margin} more, {_hours(self.trial_hours_for_margin, concurrent)})")
        basis = "failure rates" if plan.from_failure_rates else "spread of the differences"
        return f"{head}; " + "; ".join(parts) + f" — 80 % power, planned from the {basis} (σ_d = {plan.spread:.3f})"


def seed_plans(chosen: list[Selection], spec: StudySpec, detect: float | None = None,
               stopped: StopReason | None = None) -> list[SeedPlan]:
    """Each verdict's seed plan (``verdicts``), costed at the mean trial seconds of the two configurations."""
    by_method = {selection.method: selection for selection in chosen}
    plans = []
    for verdict in verdicts(chosen, spec, detect, stopped):
        seconds = _mean(by_method[verdict.subject].rows, "seconds") + _mean(by_method[verdict.control].rows,
                                                                            "seconds")
        plan = verdict.plan

        def more(seeds: int | None) -> int | None:
            return None if seeds is None else max(0, seeds - verdict.n)

        def hours(seeds: int | None) -> float:
            return math.nan if seeds is None else more(seeds) * seconds / 3600

        plans.append(SeedPlan(verdict, more(plan and plan.seeds), hours(plan and plan.seeds),
                              more(plan and plan.seeds_for_margin), hours(plan and plan.seeds_for_margin)))
    return plans


def _hours(trial_hours: float, concurrent: int) -> str:
    if math.isnan(trial_hours):
        return "trial time unknown"
    return f"≈ {trial_hours:.2f} trial-hours, {trial_hours / concurrent:.2f} h at {concurrent} trials at once"


def setting_text(values: dict) -> str:
    return ", ".join(f"{label(name)}={value:g}" if isinstance(value, (int, float)) else f"{label(name)}={value}"
                     for name, value in values.items())


def label(field: str) -> str:
    return {"distill.tau": "τ", "distill.alpha": "α", "training.learning_rate": "learning rate"}.get(field, field)


def chosen_setting(rows: pd.DataFrame, spec: StudySpec, method: str) -> dict | None:
    """The searched values of ``method`` that validation chooses from its search's trials (``rows``: one per
    trial, its searched values and ``spec.metric.best``): the best mean over seeds (a grid's cell), or the best
    trial (a TPE or random search, one seed). The runner chooses with it during the study; the report reads the
    choice it recorded."""
    names = list(spec.space_for(method))
    rows = rows[rows[spec.metric.best].notna()]
    if rows.empty:
        return None
    means = rows.groupby(names, sort=False)[spec.metric.best].mean()
    best = means.idxmax() if spec.mode == "max" else means.idxmin()
    return dict(zip(names, best if isinstance(best, tuple) else (best,)))


def _matches(rows: pd.DataFrame, setting: dict) -> pd.Series:
    keep = pd.Series(True, index=rows.index)
    for name, value in setting.items():
        column = rows[name]
        if isinstance(value, (int, float)):
            keep &= column.map(lambda v, value=value: isinstance(v, (int, float)) and math.isclose(v, value))
        else:
            keep &= column == value
    return keep


def _mean(rows: pd.DataFrame, column: str) -> float:
    return float(rows[column].mean()) if column in rows and rows[column].notna().any() else math.nan
