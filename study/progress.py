"""A study's progress on stderr: one line per ended trial with the trials ended of the study's total, the
elapsed time and an estimate of the time left.

The estimate is this run's pace (wall seconds per trial ended since the run started: concurrency and early
stopping are in it) times the trials left; it needs one trial to have ended in this run. Trials that ended
before a ``selfd resume`` count as ended but not towards the pace.
"""

from __future__ import annotations

import sys
import time

from ray import tune
from ray.tune.experiment import Trial

from study.tracking import failure_reason
from trainables.metrics import Metric

ENDED = (Trial.TERMINATED, Trial.ERROR)
_live: StudyProgress | None = None  # the progress of this process's study run


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class StudyProgress(tune.Callback):
    """Given to every phase's Tuner; the runner names the phase running (``phase``) and counts each ended
    phase's trials in (``phase_ended``)."""

    def __init__(self, total: int, metric: Metric, out=None, clock=time.monotonic, most: int | None = None) -> None:
        # total: the trials planned so far; most: the most an adaptive confirmation could run (None: total)
        self.total, self.most, self.metric = total, most, Metric(metric)
        self.out, self.clock = out, clock
        self.started = clock()
        self.before_phase = 0  # trials of the phases that ended before the current one
        self.ended_here = 0  # trials that ended in this run (the pace)
        self.phase = ""
        global _live
        _live = self

    def __reduce__(self):
        # Tune pickles its callbacks with a phase's state and unpickles them when `selfd resume` restores the
        # phase: the restored phase then reports to this run's progress, not to a copy of the interrupted one's
        return (live_progress, ())

    def phase_ended(self, trials: int) -> None:
        self.before_phase += trials

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._ended(trials, trial, "")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._ended(trials, trial, f"failed: {failure_reason(trial)[:200]}")

    def line(self, ended: int, what: str) -> str:
        elapsed = self.clock() - self.started
        left = max(self.total - ended, 0)
        more = (self.most or self.total) - self.total  # trials adaptive confirmation may still add
        if left == 0 and not more:
            estimate = "done"
        elif self.ended_here:
            pace = elapsed / self.ended_here
            estimate = f"about {duration(pace * left)} left" + (
                f", up to {duration(pace * (left + more))} if confirmation needs every seed" if more else "")
        else:
            estimate = "time left: after the first trial"
        planned = f"{self.total}" + (f" (up to {self.most})" if more else "")
        return f"progress: {ended}/{planned} trials · {what} · {duration(elapsed)} elapsed · {estimate}"

    def _ended(self, trials: list, trial, outcome: str) -> None:
        self.ended_here += 1
        ended = self.before_phase + sum(t.status in ENDED or t is trial for t in trials)
        # searched floats to 4 significant digits (TPE draws 1.2452504145361234)
        setting = " ".join(f"{name.rpartition('.')[2]}={float(f'{value:.4g}') if isinstance(value, float) else value}"
                           for name, value in trial.config.items())
        best = (trial.last_result or {}).get(self.metric.best)
        outcome = outcome or (f"{self.metric.best} {best:.3f}" if isinstance(best, float) else "ended")
        print(self.line(ended, f"{self.phase}: {setting}: {outcome}"), file=self.out or sys.stderr, flush=True)


def live_progress() -> StudyProgress:
    """This process's study progress (a silent one where no study runs)."""
    return _live if _live is not None else StudyProgress(0, Metric.VAL_ACCURACY, out=_Silent())


class _Silent:
    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass
