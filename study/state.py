"""A study's state on disk (``<study dir>/study.json``): where it is recorded, the phases that have ended, and
whether it has finished. Phase names are made and read here only.

Phases, in order, each one Tune experiment under ``<study dir>/tune/<phase name>``: ``search-<method>`` per
searched method; then, with ``rerun_best``, ``confirm-1``: the fixed baselines and each searched method's chosen
setting on the verdict seeds, whose trials are tagged ``baselines`` and ``rerun-<method>`` (without
``rerun_best``, the fixed baselines alone, as the phase ``baselines``); with adaptive confirmation, ``confirm-<n>``
per added round, n = 2, 3, … (Studies begun by selfd before 2026-11-30 ran ``baselines`` first and each
``rerun-<method>`` as a phase of its own; they resume as they began.)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from trainables.errors import ConfigError
from trainables.methods import Method

if TYPE_CHECKING:  # imported where a state is read: study.tracking imports MLflow, which bad input never needs
    from study.tracking import Tracking

STUDY_FILE = "study.json"


class PhaseKind(StrEnum):
    BASELINES = "baselines"  # each baseline method once per seed, base settings
    SEARCH = "search"  # a method's search over the space
    RERUN = "rerun"  # a method's best setting again over the re-run seeds
    # round 1: the baselines and re-runs on the verdict seeds; each later (adaptive) round: the primary
    # comparison's two methods on more seeds
    CONFIRM = "confirm"


class StopReason(StrEnum):
    """Why adaptive confirmation added no more seeds."""

    DECIDED = "decided"
    MAX_SEEDS = "max seeds"
    BUDGET = "time budget"


@dataclass(frozen=True)
class Phase:
    kind: PhaseKind
    method: Method | None = None  # None for the baselines and confirmation rounds
    round: int | None = None  # a confirmation round's number (1, 2, …)

    @property
    def name(self) -> str:
        if self.round is not None:
            return f"{self.kind}-{self.round}"
        return str(self.kind) if self.method is None else f"{self.kind}-{self.method}"

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, name: str) -> Phase:
        kind, _, rest = name.partition("-")
        if PhaseKind(kind) is PhaseKind.CONFIRM:
            return cls(PhaseKind.CONFIRM, round=int(rest))
        return cls(PhaseKind(kind), Method(rest) if rest else None)


BASELINES = Phase(PhaseKind.BASELINES)


def search(method: str) -> Phase:
    return Phase(PhaseKind.SEARCH, Method(method))


def rerun(method: str) -> Phase:
    return Phase(PhaseKind.RERUN, Method(method))


def confirm(round_number: int) -> Phase:
    return Phase(PhaseKind.CONFIRM, round=round_number)


FIRST_ROUND = confirm(1)


def is_added_round(name: str) -> bool:
    """Whether a phase name (or a trial's phase tag) is an adaptive confirmation round's after the first."""
    return name.partition("-")[0] == PhaseKind.CONFIRM and name != FIRST_ROUND.name

@dataclass(frozen=True)
class PhaseRecord:
    """How an ended phase went: for a search the searched values it found best, and its wall seconds in the run
    that ended it. (Failed trials are counted from the results table, which has every trial's status.)"""

    best: dict | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class StudyState:
    name: str
    tracking: Tracking
    phases: dict[str, PhaseRecord] = field(default_factory=dict)  # ended phases by name, in order
    finished: bool = False
    resumed: int = 0
    # the best validation score at or below which (above, for a loss) a run failed, fixed when the study began;
    # None: no failure rule (or a study begun before selfd counted failed runs)
    failure_threshold: float | None = None
    stopped: StopReason | None = None  # why adaptive confirmation ended

    def ended(self, phase: Phase) -> PhaseRecord | None:
        return self.phases.get(phase.name)

    def with_phase(self, phase: Phase, record: PhaseRecord) -> StudyState:
        return replace(self, phases={**self.phases, phase.name: record})

    @property
    def seconds(self) -> float:
        """Wall seconds of the ended phases."""
        return sum(record.seconds for record in self.phases.values())

    def write(self, study_dir: Path) -> None:
        data = {"name": self.name, **asdict(self.tracking), "finished": self.finished, "resumed": self.resumed,
                "failure_threshold": self.failure_threshold, "stopped": self.stopped,
                "phases": {name: asdict(record) for name, record in self.phases.items()}}
        path = Path(study_dir) / STUDY_FILE
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(data, indent=2))
        partial.replace(path)  # atomic: a kill mid-write leaves the previous state

    @classmethod
    def read(cls, study_dir: Path) -> StudyState:
        path = Path(study_dir) / STUDY_FILE
        if not path.is_file():
            raise ConfigError(f"{study_dir} is not a study directory (no {STUDY_FILE}); run `selfd run SPEC` first")
        try:
            data = json.loads(path.read_bytes())
        except ValueError as error:
            raise _damaged(path, error) from None
        from study.tracking import Tracking  # after the checks: a wrong directory is told so before MLflow loads

        try:
            return cls(data["name"], Tracking(data["tracking_uri"], data["experiment_id"], data["parent_run_id"]),
                       {name: PhaseRecord(record.get("best"), float(record.get("seconds", 0.0)))
                        for name, record in data.get("phases", {}).items()},
                       bool(data.get("finished")), int(data.get("resumed", 0)),
                       _optional_float(data.get("failure_threshold")),
                       StopReason(data["stopped"]) if data.get("stopped") else None)
        except (ValueError, KeyError, TypeError, AttributeError) as error:  # not written by selfd, or edited
            raise _damaged(path, error) from None


def _damaged(path: Path, error: Exception) -> ConfigError:
    return ConfigError(f"{path} is damaged ({type(error).__name__}: {str(error)[:80]}); selfd writes it whole or "
                       "not at all, so it was edited or is another program's file")


def _optional_float(value) -> float | None:
    return None if value is None else float(value)
