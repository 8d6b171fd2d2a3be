"""The one table between a selfd run config and a transformers Trainer's arguments (``SelfDistillationArguments``):
what ``selfd report`` prints for a chosen setting, and what the arguments turn back into a ``distill`` section.
Light on purpose (no transformers import): the study side reads it."""

from __future__ import annotations

from trainables.config import RunConfig
from trainables.methods import METHODS, Method

# SelfDistillationArguments field ← the run config's field (``distill.*`` fields are the ``selfd_`` ones)
DISTILL_FIELDS = {"selfd_alpha": "alpha", "selfd_tau": "tau", "selfd_reuse": "reuse", "selfd_rule": "rule",
                  "selfd_warmup_fraction": "warmup_fraction", "selfd_teacher_storage": "teacher_storage",
                  "selfd_topk": "topk"}
TRAINING_FIELDS = {"learning_rate": "learning_rate", "per_device_train_batch_size": "batch_size",
                   "num_train_epochs": "epochs", "weight_decay": "weight_decay",
                   "warmup_steps": "warmup_ratio",  # below 1: a fraction of the steps (rounded up; selfd rounds)
                   "max_grad_norm": "max_grad_norm", "seed": "seed"}


def trainer_arguments(config: RunConfig, causal_lm: bool = False) -> dict:
    """The ``SelfDistillationArguments`` values that train as ``config`` does: the method, the distillation
    fields the method reads (the rule for ``dynamic``, the warm-up for ``warmup_static``, the teacher storage for a
    causal LM) and the optimisation settings. ``per_device_train_batch_size`` is B on one device (with gradient
    accumulation, B = it × ``gradient_accumulation_steps``)."""
    method = config.method
    values: dict = {"selfd_method": str(method)}
    if METHODS[method].distils:
        wanted = ["selfd_alpha", "selfd_tau", "selfd_reuse"]
        wanted += ["selfd_rule"] if method is Method.DYNAMIC else []
        wanted += ["selfd_warmup_fraction"] if method is Method.WARMUP_STATIC else []
        wanted += ["selfd_teacher_storage"] + (["selfd_topk"] if config.distill.teacher_storage == "topk" else []) \
            if causal_lm else []
        values |= {name: _plain(getattr(config.distill, DISTILL_FIELDS[name])) for name in wanted}
    elif method is Method.VANILLA_REPEAT:
        values["selfd_reuse"] = config.distill.reuse
    training = config.training
    values |= {name: getattr(training, field) for name, field in TRAINING_FIELDS.items()}
    if values["max_grad_norm"] is None:
        values["max_grad_norm"] = 0.0  # the Trainer's "no clipping"
    return values


def arguments_text(values: dict) -> str:
    """``values`` as keyword arguments to paste: ``selfd_method="static", selfd_alpha=2.0, …``."""
    return ", ".join(f"{name}={value!r}" if isinstance(value, str) else f"{name}={value:g}"
                     if isinstance(value, float) else f"{name}={value}" for name, value in values.items())


def _plain(value):
    return str(value) if isinstance(value, str) else value  # a StrEnum (Rule) prints as its value
