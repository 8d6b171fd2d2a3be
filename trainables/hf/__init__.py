"""selfd's methods in a user's own ``transformers.Trainer`` or TRL script (``trainables/hf/trainer.py``)::

    from trainables.hf import SelfDistillationArguments, SelfDistillationTrainer

    args = SelfDistillationArguments("out", selfd_method="static", selfd_alpha=2.0, selfd_tau=1.0, ...)
    SelfDistillationTrainer(model=model, args=args, train_dataset=train, data_collator=collator).train()

The names load transformers when first used; ``trainables.hf.settings`` (what a study prints) does not.
"""

__all__ = ["SelfDistillationArguments", "SelfDistillationMixin", "SelfDistillationTrainer"]


def __getattr__(name: str):
    if name == "SelfDistillationArguments":
        from trainables.hf.arguments import SelfDistillationArguments

        return SelfDistillationArguments
    if name in ("SelfDistillationMixin", "SelfDistillationTrainer"):
        from trainables.hf import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
