"""selfd's methods in a user's own ``transformers.Trainer`` or TRL script (``trainables/hf/trainer.py``)::

    from trainables.hf import SelfDistillationArguments, SelfDistillationTrainer

    args = SelfDistillationArguments("out", selfd_method="static", selfd_alpha=2.0, selfd_tau=1.0, ...)
    SelfDistillationTrainer(model=model, args=args, train_dataset=train, data_collator=collator).train()
"""

from trainables.hf.arguments import SelfDistillationArguments
from trainables.hf.trainer import SelfDistillationMixin, SelfDistillationTrainer

__all__ = ["SelfDistillationArguments", "SelfDistillationMixin", "SelfDistillationTrainer"]
