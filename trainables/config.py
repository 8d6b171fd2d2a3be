"""The configuration of one fine-tuning run: a YAML file (plus ``--override a.b=value``) checked by pydantic.

Every field is documented in docs/config.md. Invalid values are rejected here, before any data or model
is loaded, with one line that names the field.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from trainables.metrics import Metric
from trainables.methods import METHODS, Method, Rule
from trainables.schema import Strict, apply_overrides, read_yaml, validated, with_values


class LoraConfig(Strict):
    """Low-rank adapters (peft) on the decoder's attention and MLP projections; the base weights stay frozen."""

    r: int = Field(8, gt=0)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class ModelConfig(Strict):
    name: str = "minilm-l6"
    num_layers: int | None = Field(None, gt=0)
    num_labels: int | None = Field(None, gt=1)
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] | None = None  # None: transformers' choice
    freeze_embeddings: bool = False  # keep the input token embeddings as pretrained (a cheaper step on a CPU)
    freeze_layers: int = Field(0, ge=0)  # keep the embedding layer and the lowest N blocks as pretrained (no backward)
    lora: LoraConfig | None = None  # decoder-only models: train adapters instead of every weight

    @model_validator(mode="after")
    def _frozen_blocks_exist(self) -> ModelConfig:
        if self.num_layers and self.freeze_layers > self.num_layers:
            raise ValueError(f"freeze_layers is {self.freeze_layers} but num_layers keeps {self.num_layers} "
                             f"transformer blocks; freeze at most {self.num_layers}")
        return self


class Columns(Strict):
    text: str
    text_pair: str | None = None
    label: str = "label"


class TaskConfig(Strict):
    name: str = "epistemic_reasoning"
    files: str | dict[Literal["train", "validation", "test"], str] | None = None
    hub: str | None = None
    hub_config: str | None = None
    columns: Columns | None = None
    labels: list[str] | None = Field(None, min_length=2)
    validation_fraction: float = Field(0.2, gt=0, lt=1)  # carved from train where the data has no validation split
    test_fraction: float = Field(0.2, gt=0, lt=1)  # carved from train where the data has no (labelled) test split
    split_seed: int = 0
    max_length: int = Field(128, ge=8)
    max_target_length: int = Field(64, ge=1)  # generation tasks: target tokens kept (then EOS)
    train_subset: int | None = Field(None, gt=1)
    validation_subset: int | None = Field(None, gt=1)
    test_subset: int | None = Field(None, gt=1)  # default: as many as validation_subset (all when that is unset)

    @model_validator(mode="after")
    def _source_is_consistent(self) -> TaskConfig:
        if self.files is not None and self.hub is not None:
            raise ValueError("give either files or hub, not both")
        if (self.files is not None or self.hub is not None) and self.columns is None:
            raise ValueError("files and hub data sets need columns: {text: ..., text_pair: ..., label: ...}")
        if isinstance(self.files, dict) and "train" not in self.files:
            raise ValueError("files needs a train entry")
        if self.validation_fraction + self.test_fraction >= 0.9:
            raise ValueError(f"validation_fraction + test_fraction is {self.validation_fraction + self.test_fraction:g}; "
                             "keep it below 0.9 so that training keeps a tenth of the data or more")
        return self


class TrainingConfig(Strict):
    epochs: int = Field(3, gt=0)
    batch_size: int = Field(16, gt=1)
    learning_rate: float = Field(5e-5, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    max_grad_norm: float | None = Field(1.0, gt=0)
    seed: int = 0
    log_every: int = Field(10, gt=0)
    grad_norm_every: int = Field(50, ge=0)  # 0 turns the probe off
    # evaluate (validation and test) every this many steps (an integer) or this fraction of an epoch (a number
    # with a point, up to 1.0); every epoch also ends with one. Default: once an epoch. ASHA decides at evaluations
    eval_every: int | float | None = Field(None, gt=0)
    eval_batch_size: int = Field(64, gt=0)
    # the validation score that chooses a run's best evaluation, whose test scores the run reports; test is scored
    # only at evaluations this score chooses. Default: the task's first score (val_accuracy, val_rougeL). A
    # study sets it to its `metric`
    metric_for_best_model: Metric | None = None
    # batches of samples of similar lengths (fewer padding tokens): as transformers' group_by_length, each epoch's
    # shuffled order is cut into groups of 50 batches, each group sorted longest first
    group_by_length: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast where the device has native bf16
    cpus: int | None = Field(None, gt=0)  # CPU threads; default: the CPUs this process may run on

    @field_validator("eval_every")
    @classmethod
    def _steps_or_fraction(cls, every: int | float | None) -> int | float | None:
        if isinstance(every, float) and every > 1:
            raise ValueError(f"{every:g} is neither a number of steps (write an integer, e.g. {round(every)}) nor a "
                             "fraction of an epoch (at most 1.0, e.g. 0.25 for four evaluations an epoch)")
        return every

    def evaluation_steps(self, steps_per_epoch: int) -> frozenset[int]:
        """The steps of an epoch (counted 1 … ``steps_per_epoch`` within it) after which a run evaluates: every
        ``eval_every`` steps (an integer) or fraction of an epoch (a float), and the epoch's last step."""
        if self.eval_every is None:
            return frozenset({steps_per_epoch})
        interval = self.eval_every if isinstance(self.eval_every, int) else self.eval_every * steps_per_epoch
        points = {round(k * interval) for k in range(1, math.ceil(steps_per_epoch / interval))}
        return frozenset(p for p in points if 0 < p < steps_per_epoch) | {steps_per_epoch}


class DistillConfig(Strict):
    alpha: float = Field(1.0, ge=0)
    tau: float = Field(2.0, gt=0)
    reuse: Literal["previous", "random"] = "previous"
    rule: Rule = Rule.DYNSDPB
    warmup_fraction: float = Field(0.1, gt=0, le=1)
    # decoder-only models: how teacher logits are kept between steps (trainables/token_teachers.py)
    teacher_storage: Literal["full", "bf16", "int8", "topk"] = "int8"
    topk: int = Field(64, gt=0)

    @field_validator("rule", mode="before")
    @classmethod
    def _known_rule(cls, rule):
        if rule not in set(Rule):
            raise ValueError(f"unknown rule {rule!r}; known rules: {', '.join(sorted(Rule))}")
        return rule


class RunSettings(Strict):
    """What a run trains on and how: shared by a run config and a study spec (whose trials vary it)."""

    model: ModelConfig = ModelConfig()
    task: TaskConfig = TaskConfig()
    training: TrainingConfig = TrainingConfig()
    distill: DistillConfig = DistillConfig()

    @field_validator("model", "task", mode="before")
    @classmethod
    def _by_name(cls, value):
        return {"name": value} if isinstance(value, str) else value  # `model: minilm-l6`, `task: rte`


class RunConfig(RunSettings):
    method: Method = Method.DYNAMIC

    def steps_per_epoch(self, train_size: int) -> int:
        """Optimizer steps an epoch takes: every training sample is fresh once, ``fresh_size`` of them a step."""
        return math.ceil(train_size / METHODS[self.method].fresh_size(self.training.batch_size))

    def evaluations(self, train_size: int) -> int:
        """Evaluations a run reports on ``train_size`` training samples (ASHA's ``max_t``)."""
        return len(self.training.evaluation_steps(self.steps_per_epoch(train_size))) * self.training.epochs

    @model_validator(mode="after")
    def _batch_splits_in_halves(self) -> RunConfig:
        if METHODS[self.method].dlb_batches and self.training.batch_size % 2:
            raise ValueError(
                f"method {self.method} reuses half of each batch, so training.batch_size must be even "
                f"(got {self.training.batch_size})"
            )
        return self


def parse_config(data: dict, overrides: list[str] = (), values: dict | None = None) -> RunConfig:
    """A checked RunConfig from ``data`` with ``--override`` strings and then dotted-path ``values`` applied."""
    return validated(RunConfig, with_values(apply_overrides(data, overrides), values or {}))


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    return parse_config(read_yaml(path), overrides)
