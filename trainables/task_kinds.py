"""Which kind of task a run config names (classification or generation), the metrics such a task reports,
and the checks of a run config that need neither network nor cluster.

``check_offline`` is what ``selfd validate`` runs for every method of a study, and ``selfd run`` before Ray
starts: known task names, packaged model aliases and local model folders, local data files and their columns,
and combinations the recipe refuses. Hub ids (models and data sets) are left to ``selfd run``, which fetches them.
"""

from __future__ import annotations

from enum import StrEnum

from trainables.errors import AssetError, ConfigError
from trainables.generation_tasks import GENERATION_TASKS
from trainables.metrics import Metric
from trainables.models import ALTERNATIVES, MODEL_ALIASES, check_tokenizer_packages, local_model_folder
from trainables.tasks import BIGBENCH_TASKS, KNOWN_TASKS, load_task


class TaskKind(StrEnum):
    CLASSIFICATION = "classification"  # an encoder with a classification head
    GENERATION = "generation"  # a decoder-only model, trained token by token


def task_kind(task) -> TaskKind:
    """The kind of ``task`` (a TaskConfig): packaged generation tasks are generation, everything else is
    classification (packaged, hub and file tasks)."""
    plain = task.files is None and task.hub is None
    return TaskKind.GENERATION if plain and task.name in GENERATION_TASKS else TaskKind.CLASSIFICATION


def reported_metrics(task) -> tuple[Metric, ...]:
    """The validation metrics every evaluation of a run on ``task`` reports."""
    if task_kind(task) is TaskKind.GENERATION:
        return (*(Metric(name) for name in GENERATION_TASKS[task.name].scores), Metric.VAL_LOSS)
    return Metric.VAL_ACCURACY, Metric.VAL_MACRO_F1, Metric.VAL_LOSS


def check_combination(config) -> None:
    """Settings the recipe cannot train together (a RunConfig): refused with what to change."""
    if config.model.lora is not None and task_kind(config.task) is TaskKind.CLASSIFICATION:
        raise ConfigError("model.lora applies to decoder-only models on generation tasks "
                          f"({', '.join(GENERATION_TASKS)}); remove it for the classification task {config.task.name}")
    chooser, reported = config.training.metric_for_best_model, reported_metrics(config.task)
    if chooser is not None and chooser not in reported:
        raise ConfigError(f"training.metric_for_best_model: task {config.task.name} never reports {chooser}; it "
                          f"reports {', '.join(reported)}")


def check_offline(config) -> None:
    """Everything about a RunConfig that can be checked without network or cluster (see the module docstring)."""
    check_combination(config)
    task = config.task
    if task.files is None and task.hub is None and task.name not in (*KNOWN_TASKS, *GENERATION_TASKS):
        raise ConfigError(f"unknown task {task.name!r}; known tasks: {', '.join([*KNOWN_TASKS, *GENERATION_TASKS])} "
                          "(or give task.files / task.hub with task.columns)")
    if task.files is not None:
        load_task(task)  # local files: existence, format, columns and label values; prepared once and cached
    name = config.model.name
    folder = None if name in MODEL_ALIASES else local_model_folder(name)
    if name not in MODEL_ALIASES and folder is None and name.count("/") != 1:
        raise AssetError(f"unknown model {name!r}: {ALTERNATIVES}, or a hub id (organisation/name)")
    if name not in MODEL_ALIASES:  # a local folder, or a hub id when it is cached (else `run` fetches it first)
        check_tokenizer_packages(folder or name)
    labels = BIGBENCH_TASKS[task.name].label_names if task.name in BIGBENCH_TASKS and task.files is None \
        and task.hub is None else None
    if labels and config.model.num_labels and config.model.num_labels != len(labels):
        raise ConfigError(f"model.num_labels is {config.model.num_labels} but task {task.name} has {len(labels)} "
                          f"labels ({', '.join(labels)})")
