"""A ``SelfDistillationTrainer`` that trains as a selfd run config does: the recipe's tokenized training split, its
model, optimizer (fused AdamW), schedule, clipping and seed. What the parity tests and the Trainer benchmark
compare with the recipe (``trainables/recipe.py``); float32 unless ``arguments`` say otherwise."""

from __future__ import annotations

from trainables.config import RunConfig
from trainables.hf.arguments import SelfDistillationArguments
from trainables.hf.settings import trainer_arguments
from trainables.hf.trainer import SelfDistillationTrainer
from trainables.recipe import load_data


def trainer_like_recipe(config: RunConfig, output_dir: str, trainer_class=SelfDistillationTrainer, model_init=None,
                        **arguments) -> SelfDistillationTrainer:
    """``arguments`` override the ``SelfDistillationArguments`` (e.g. ``gradient_accumulation_steps``);
    ``model_init`` the recipe's model loader."""
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding

    objective = load_data(config)
    if isinstance(objective.train_rows, dict):  # a classifier's token columns, one tensor per sample
        rows = objective.train_rows
        features = [{name: (rows[name][i].item() if name == "labels" else rows[name][i].tolist()) for name in rows}
                    for i in range(objective.train_size)]
        collator = DataCollatorWithPadding(objective.tokenizer)
    else:  # a causal LM's (input ids, labels): labels are -100 on the prompt
        features = [{"input_ids": ids.tolist(), "attention_mask": [1] * len(ids), "labels": labels.tolist()}
                    for ids, labels in zip(*objective.train_rows)]
        objective.tokenizer.padding_side = "right"  # as the recipe pads
        collator = DataCollatorForSeq2Seq(objective.tokenizer, label_pad_token_id=-100)
    values = trainer_arguments(config, causal_lm=not isinstance(objective.train_rows, dict))
    total_steps = config.steps_per_epoch(objective.train_size) * config.training.epochs
    values["warmup_steps"] = round(config.training.warmup_ratio * total_steps)  # the recipe rounds to nearest
    args = SelfDistillationArguments(**{
        "output_dir": output_dir, **values, "optim": "adamw_torch_fused", "logging_steps": config.training.log_every,
        "save_strategy": "no", "report_to": [], "use_cpu": config.training.device == "cpu",
        "dataloader_pin_memory": False, "disable_tqdm": True, **arguments})
    return trainer_class(model_init=model_init or objective.load_model, args=args, train_dataset=features,
                         data_collator=collator)
