"""The study spec: one YAML file that says what to fine-tune, which methods, which search, where it runs and
where it is recorded. Every field is documented in docs/study.md.

A spec is checked here, before Ray starts or any MLflow run exists: unknown keys, wrong types, empty search
spaces and run settings that no trial could use (τ ≤ 0, α < 0, an odd batch for DLB methods …) end the
command with one line and exit code 2.
"""

from __future__ import annotations

import collections
import itertools
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Discriminator, Field, Tag, field_validator, model_validator

from trainables.config import RunConfig, RunSettings, parse_config
from trainables.errors import ConfigError
from trainables.methods import METHODS, Method
from trainables.metrics import Metric
from trainables.schema import Strict, apply_overrides, read_yaml, union_tag, validated
from trainables.task_kinds import reported_metrics
from trainables.task_kinds import check_offline as check_run_offline

LOGIN_IN_URI = ("holds a login (user:password@): URIs are recorded and printed, so put the login in "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD instead")

DEFAULT_EQUIVALENCE_MARGIN = 0.01  # one point of accuracy
MAX_NAME = 100  # a study name names folders and an MLflow experiment; every file system takes this many bytes


def distinct_seeds(seeds: list[int]) -> list[int]:
    """Seeds pair runs across methods (a paired verdict counts each seed once): each one may be given once."""
    twice = sorted(seed for seed, count in collections.Counter(seeds).items() if count > 1)
    if twice:
        raise ValueError(f"the seed {twice[0]} is given more than once; give each seed once")
    return seeds


class Dimension(Strict):
    """One searched run-config field: a list of ``values`` (grid / categorical), or a ``low``–``high`` range."""

    values: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False

    def distribution(self):
        """This dimension as the Optuna distribution that samples it (the search and the importances)."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.values is not None:
            return CategoricalDistribution(self.values)
        if self.integer:
            return IntDistribution(int(self.low), int(self.high), log=self.log)
        return FloatDistribution(self.low, self.high, log=self.log)

    @model_validator(mode="after")
    def _values_or_range(self) -> Dimension:
        if self.values is not None:
            if not self.values:
                raise ValueError("values is empty")
            if self.low is not None or self.high is not None:
                raise ValueError("give values or low/high, not both")
        elif self.low is None or self.high is None:
            raise ValueError("give values: [...] or low and high")
        elif not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        elif self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self

    @property
    def extremes(self) -> list[Any]:
        return list(self.values) if self.values is not None else [self.low, self.high]


class SearchConfig(Strict):
    algorithm: Literal["grid", "tpe", "random"] = "grid"
    space: dict[str, Dimension] = Field(min_length=1)
    num_samples: int | None = Field(None, gt=0)  # tpe / random: trials per method
    seed: int = 0

    @model_validator(mode="after")
    def _grid_takes_values(self) -> SearchConfig:
        if self.algorithm == "grid":
            ranged = [name for name, d in self.space.items() if d.values is None]
            if ranged:
                raise ValueError(f"a grid needs values for every dimension; {ranged[0]} is a range")
            if self.num_samples is not None:
                raise ValueError("num_samples is for tpe and random; a grid runs every combination")
        elif self.num_samples is None:
            raise ValueError(f"{self.algorithm} needs num_samples (trials per method)")
        return self


class SchedulerConfig(Strict):
    type: Literal["asha", "none"] = "asha"
    grace_period: int = Field(1, gt=0)  # evaluations before a trial can be stopped (training.eval_every)
    reduction_factor: float = Field(2.0, gt=1)


class Resources(Strict):
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)


class Failure(Strict):
    max_retries: int = Field(1, ge=0)


class Tracking(Strict):
    tracking_uri: str | None = None  # default: sqlite:///<study dir>/mlflow.db
    experiment: str | None = None  # default: the study name

    @field_validator("tracking_uri")
    @classmethod
    def _no_login(cls, uri: str | None) -> str | None:
        if uri is not None and urlsplit(uri).username is not None:
            raise ValueError(LOGIN_IN_URI)
        return uri


class SeedRange(Strict):
    """Adaptive confirmation: ``min`` seeds first, then rounds of ``round`` more to the primary comparison's two
    methods until the anytime-valid rule decides it, or ``max`` seeds, or the time budget."""

    min: int = Field(ge=2)
    max: int
    start: int | None = Field(None, ge=0)  # the first seed; default: one past the search's largest
    round: int | None = Field(None, gt=0)  # seeds a round adds; default: as many as run at once (two trials a seed)

    @model_validator(mode="after")
    def _ordered(self) -> SeedRange:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) is below min ({self.min})")
        return self


class Rerun(Strict):
    """Re-run each searched method's best configuration over these seeds (paired comparisons); the fixed
    baselines run on them too. Seeds apart from the search's give test scores that chose nothing. A range
    (``{min: 4, max: 24}``) confirms adaptively (SeedRange)."""

    seeds: Annotated[Annotated[list[int], Field(min_length=2), AfterValidator(distinct_seeds), Tag(union_tag("list"))]
                     | Annotated[SeedRange, Tag(union_tag("range"))],
                     Discriminator(lambda value: union_tag("range" if isinstance(value, dict | SeedRange) else "list"))]
    # the comparison adaptive confirmation decides: [searched method, control]; default: the first method
    # against vanilla_repeat (vanilla when the study has no vanilla_repeat)
    primary: tuple[Method, Method] | None = None
    # adaptive confirmation starts no round that would end after this many minutes of confirmation
    budget_minutes: float | None = Field(None, gt=0)


class Verdicts(Strict):
    """How verdicts read the runs (study.verdicts), fixed before the study runs."""

    # |difference| within this is "equivalent" (two one-sided tests); default 0.01 for a metric in [0, 1]
    # (accuracy, macro-F1, ROUGE-L: one point), none for val_loss
    equivalence_margin: float | None = Field(None, gt=0)
    # classification: a run whose best validation score is within this of always predicting the majority class
    # has failed (it never left the majority class)
    failure_margin: float = Field(0.02, ge=0)
    # any task: a run whose best validation score is at or below this (at or above, for val_loss) has failed;
    # none by default (for classification, it replaces the majority-class rule)
    failure_threshold: float | None = None


class Report(Strict):
    heatmaps: list[tuple[str, str]] | None = None  # (x, y) searched fields; default τ × α when both are searched
    grad_norm_layers: list[str] | None = None  # default: embeddings, first, middle, last block, head


class StudySpec(RunSettings):
    """model / task / training / distill are the base run config of every trial (see RunSettings)."""

    name: str
    description: str = ""
    methods: list[Method] = Field(min_length=1)
    baselines: list[Method] = []  # run once per seed with the base settings, as reference scores
    tune_baselines: bool = False  # baselines get the same search as the methods, over the fields they share
    seeds: Annotated[list[int], AfterValidator(distinct_seeds)] = Field([0], min_length=1)
    metric: Metric = Metric.VAL_ACCURACY
    search: SearchConfig
    scheduler: SchedulerConfig = SchedulerConfig()
    resources: Resources = Resources()
    max_concurrent_trials: int = Field(2, gt=0)
    failure: Failure = Failure()
    mlflow: Tracking = Tracking()
    report: Report = Report()
    rerun_best: Rerun | None = None
    verdicts: Verdicts = Verdicts()

    @field_validator("name")
    @classmethod
    def _name_is_a_slug(cls, name: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise ValueError("use letters, digits, '_', '-' and '.' (it names folders and the MLflow experiment)")
        if len(name) > MAX_NAME:
            raise ValueError(f"{len(name)} characters; at most {MAX_NAME} (it names folders and the MLflow "
                             "experiment)")
        return name

    @model_validator(mode="after")
    def _each_method_once(self) -> StudySpec:
        both = [str(method) for method in self.methods if method in self.baselines]
        if both:
            raise ValueError(f"{both[0]} is both in methods (searched) and in baselines (a control): list it once")
        return self

    @model_validator(mode="after")
    def _adaptive_has_a_primary(self) -> StudySpec:
        if not self.adaptive:
            return self
        if self.primary is None:
            raise ValueError("rerun_best.seeds is a range, which confirms one comparison adaptively: add "
                             "vanilla_repeat (or vanilla) to baselines, or name rerun_best.primary: [method, control]")
        subject, control = self.primary
        if subject not in self.methods or control not in self.baselines:
            raise ValueError(f"rerun_best.primary is [{subject}, {control}]: give one of methods "
                             f"({', '.join(self.methods)}) and one of baselines "
                             f"({', '.join(self.baselines) or 'none'})")
        overlap = sorted(set(self.seeds) & set(self.confirmation_seeds))
        if overlap:
            raise ValueError(f"rerun_best.seeds.start makes the confirmation use search seed {overlap[0]}: confirm "
                             "on seeds that chose nothing")
        return self

    @model_validator(mode="after")
    def _one_metric(self) -> StudySpec:
        chooser = self.training.metric_for_best_model
        if chooser is not None and chooser != self.metric:
            raise ValueError(f"training.metric_for_best_model ({chooser}) differs from metric ({self.metric}): a "
                             "study's metric chooses both its trials' best evaluations and its best trials; set "
                             "metric alone")
        return self

    @property
    def mode(self) -> str:
        return self.metric.mode

    @property
    def equivalence_margin(self) -> float | None:
        if self.verdicts.equivalence_margin is not None:
            return self.verdicts.equivalence_margin
        return DEFAULT_EQUIVALENCE_MARGIN if self.metric.bounds == (0.0, 1.0) else None

    def failure_threshold(self, majority_score: float | None) -> float | None:
        """The best validation score at or below which (at or above, for a loss) a run has failed: the spec's
        threshold, else the majority-class predictor's score plus the margin, else none."""
        if self.verdicts.failure_threshold is not None:
            return self.verdicts.failure_threshold
        if majority_score is None:
            return None
        return majority_score + self.verdicts.failure_margin

    def base_run(self, method: str) -> dict:
        """The run config (as a dict) every trial of ``method`` starts from; its best evaluation is chosen on the
        study's metric."""
        training = {**self.training.model_dump(), "metric_for_best_model": self.metric}
        return {"method": method, "model": self.model.model_dump(), "task": self.task.model_dump(),
                "training": training, "distill": self.distill.model_dump()}

    @property
    def heatmap_axes(self) -> list[tuple[str, str]]:
        if self.report.heatmaps is not None:
            return self.report.heatmaps
        default = ("distill.tau", "distill.alpha")
        return [default] if set(default) <= set(self.search.space) else []

    @property
    def searched(self) -> list[Method]:
        """The methods with a search phase: ``methods``, and the baselines when ``tune_baselines``."""
        return [*self.methods, *(self.baselines if self.tune_baselines else [])]

    @property
    def verdict_seeds(self) -> list[int]:
        """The seeds the verdicts pair on: ``rerun_best.seeds`` when the study re-runs its best settings (the
        first ``min`` of an adaptive range), else ``seeds``. The fixed baselines (the controls) run on these."""
        if self.adaptive:
            return self.confirmation_seeds[:self.adaptive.min]
        return self.rerun_best.seeds if self.rerun_best else self.seeds

    @property
    def adaptive(self) -> SeedRange | None:
        """The adaptive confirmation's seed range, if the study confirms adaptively."""
        seeds = self.rerun_best.seeds if self.rerun_best else None
        return seeds if isinstance(seeds, SeedRange) else None

    @property
    def confirmation_seeds(self) -> list[int]:
        """Every seed adaptive confirmation may use, in the order it adds them."""
        start = self.adaptive.start if self.adaptive.start is not None else max(self.seeds) + 1
        return list(range(start, start + self.adaptive.max))

    @property
    def round_seeds(self) -> int:
        """Seeds an adaptive round adds: two trials a seed, as many as run at once."""
        return self.adaptive.round or max(1, self.max_concurrent_trials // 2)

    @property
    def primary(self) -> tuple[Method, Method] | None:
        """The comparison adaptive confirmation decides, (searched method, control)."""
        if self.rerun_best and self.rerun_best.primary:
            return self.rerun_best.primary
        control = next((c for c in (Method.VANILLA_REPEAT, Method.VANILLA) if c in self.baselines), None)
        return (self.methods[0], control) if control else None

    @property
    def fixed_baselines(self) -> list[Method]:
        """The baselines run at the base settings (none when ``tune_baselines``)."""
        return [] if self.tune_baselines else list(self.baselines)

    @property
    def baseline_trials(self) -> int:
        """Trials of the baselines phase: each fixed baseline at each verdict seed."""
        return len(self.fixed_baselines) * len(self.verdict_seeds)

    def space_for(self, method: str) -> dict[str, Dimension]:
        """The searched fields that apply to ``method``: all of them, but ``distill.*`` only for methods that
        distil (vanilla and vanilla_repeat ignore α and τ)."""
        if METHODS[method].distils:
            return dict(self.search.space)
        return {name: d for name, d in self.search.space.items() if not name.startswith("distill.")}

    def grid_size(self, method: str | None = None) -> int:
        """Trials of ``method``'s grid (default: the first searched method's): combinations × seeds."""
        space = self.space_for(method or self.methods[0])
        return math.prod(len(d.values) for d in space.values()) * len(self.seeds)

    def method_search_trials(self, method: str) -> int:
        """Trials of ``method``'s search phase: its grid, or the samples TPE and random search draw."""
        return self.grid_size(method) if self.search.algorithm == "grid" else self.search.num_samples

    def search_trials(self) -> int:
        """Trials of every search phase together."""
        return sum(self.method_search_trials(method) for method in self.searched)

    def corner_runs(self, method: str) -> list[RunConfig]:
        """``method``'s run configs at every corner of its search space (each searched field at an extreme)."""
        space = self.space_for(method)
        runs = []
        for corner in itertools.product(*(d.extremes for d in space.values())):
            try:
                runs.append(parse_config(self.base_run(method), values=dict(zip(space, corner))))
            except ConfigError as error:
                raise ConfigError(f"search.space gives {method} trials a bad run config: {error}") from None
        return runs

    def most_evaluations(self, method: str, train_size: int | None = None) -> int | None:
        """The most evaluations a trial of ``method`` reports (ASHA's ``max_t``). Without ``train_size`` only what
        is known before the data is loaded: an upper bound, or None where ``eval_every`` counts steps."""
        runs = self.corner_runs(method)
        if train_size is not None:
            return max(run.evaluations(train_size) for run in runs)
        if any(isinstance(run.training.eval_every, int) for run in runs):
            return None
        return max(run.training.epochs * math.ceil(1 / (run.training.eval_every or 1)) for run in runs)


def check_scheduler(spec: StudySpec, train_size: int | None = None) -> None:
    """ASHA must be able to stop a trial: ``grace_period`` below the evaluations each searched method reports.
    Checked before the data is loaded where the count is known then, and again with the training set's size."""
    if spec.scheduler.type != "asha":
        return
    for method in spec.searched:
        most = spec.most_evaluations(method, train_size)
        if most is not None and spec.scheduler.grace_period >= most:
            raise ConfigError(
                f"scheduler.grace_period is {spec.scheduler.grace_period} but a {method} trial reports at most {most} "
                f"evaluation{'s' * (most > 1)} (training.epochs × evaluations an epoch, see training.eval_every), so "
                "ASHA could never stop one; lower grace_period, evaluate more often (e.g. training.eval_every: "
                "0.25), or set scheduler.type: none")


def check_runs(spec: StudySpec) -> None:
    """Every run a trial could get must be a valid run config: each method with each searched extreme."""
    for method in {*spec.methods, *spec.baselines}:
        parse_config(spec.base_run(method))
    names = list(spec.search.space)
    for method in spec.searched:
        spec.corner_runs(method)
    check_scheduler(spec)
    if spec.tune_baselines:
        for method in spec.baselines:
            if not spec.space_for(method):
                raise ConfigError(f"tune_baselines: {method} ignores every searched field "
                                  f"({', '.join(spec.search.space)}); search a field it reads (a training.* one, "
                                  "e.g. training.learning_rate) or set tune_baselines: false")
    for x, y in spec.heatmap_axes:
        for axis in (x, y):
            if axis not in spec.search.space:
                raise ConfigError(f"report.heatmaps: {axis} is not a searched field ({', '.join(names)})")


def check_offline(spec: StudySpec) -> None:
    """What `selfd validate` checks beyond the schema, without network or cluster: the metric is one the task
    reports, and every method's run config names a known task, a packaged or local model, readable local files."""
    reported = reported_metrics(spec.task)
    if spec.metric not in reported:
        raise ConfigError(f"metric: task {spec.task.name} never reports {spec.metric}; it reports "
                          f"{', '.join(reported)}")
    for method in {*spec.methods, *spec.baselines}:
        check_run_offline(parse_config(spec.base_run(method)))


def load_spec(path: str | Path, overrides: list[str] = ()) -> StudySpec:
    """A checked spec: the schema, every run a trial could get (``check_runs``) and ``check_offline``."""
    spec = validated(StudySpec, apply_overrides(read_yaml(path), overrides))
    check_runs(spec)
    check_offline(spec)
    return spec
