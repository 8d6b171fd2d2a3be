"""``SelfDistillationArguments``: transformers' ``TrainingArguments`` plus the self-distillation method and its
settings, each prefixed ``selfd_`` so that no field of transformers or TRL is shadowed (TRL's ``temperature`` is a
sampling temperature)."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from trainables.config import DistillConfig
from trainables.errors import ConfigError
from trainables.hf.settings import DISTILL_FIELDS
from trainables.methods import METHODS, Method
from trainables.schema import validated


@dataclass
class SelfDistillationArguments(TrainingArguments):
    """``per_device_train_batch_size`` × ``gradient_accumulation_steps`` is B, the samples of one optimizer step on
    one device: B/2 revisited from that device's previous step and B/2 fresh (step 1: B/2 fresh only).

    The trainer reads these fields from ``self.args`` at every step, so a hyperparameter search may set them after
    the trainer is built. The values a study chose are printed by ``selfd report`` in this form."""

    selfd_method: str = field(default=Method.STATIC.value, metadata={
        "help": "vanilla (the plain Trainer), vanilla_repeat (DLB batches, α = 0), static (DLB / static SelfD), "
                "warmup_static (α ramped from 0) or dynamic (DynSDPB: per-sample α, τ from the teacher)"})
    selfd_alpha: float = field(default=1.0, metadata={"help": "α (dynamic: α₀), the weight of the distillation term"})
    selfd_tau: float = field(default=2.0, metadata={"help": "τ (dynamic: τ₀), the distillation temperature"})
    selfd_reuse: str = field(default="previous", metadata={
        "help": "which half of the previous step is revisited: previous (its fresh samples) or random"})
    selfd_rule: str = field(default="dynsdpb", metadata={"help": "the dynamic method's (α_i, τ_i) rule"})
    selfd_warmup_fraction: float = field(default=0.1, metadata={
        "help": "warmup_static: the fraction of the steps over which α ramps up"})
    selfd_teacher_storage: str = field(default="int8", metadata={
        "help": "causal LMs: how teacher logits are kept between steps (full, bf16, int8, topk)"})
    selfd_topk: int = field(default=64, metadata={"help": "teacher_storage topk: the logits kept per token"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.distill_config()  # refuse bad values when the arguments are made, not at the first step
        method = self.method()
        if METHODS[method].dlb_batches and self.per_device_train_batch_size % 2:
            raise ValueError(f"selfd_method {method} revisits half of each batch: per_device_train_batch_size must "
                             f"be even (got {self.per_device_train_batch_size})")
        if METHODS[method].dlb_batches and self.train_sampling_strategy not in ("random", "group_by_length"):
            raise ValueError(f"selfd_method {method} draws its batches in a seeded random order (grouped by length "
                             f"or not): train_sampling_strategy {self.train_sampling_strategy!r} does not apply; "
                             "use random or group_by_length")

    def method(self) -> Method:
        if self.selfd_method not in set(Method):
            raise ValueError(f"selfd_method {self.selfd_method!r}: choose one of {', '.join(Method)}")
        return Method(self.selfd_method)

    def distill_config(self) -> DistillConfig:
        """The ``distill`` section of a selfd run with these values (the same checks and defaults)."""
        values = {field: getattr(self, name) for name, field in DISTILL_FIELDS.items()}
        try:
            return validated(DistillConfig, values)
        except ConfigError as error:
            raise ValueError(f"selfd_{error}") from None
