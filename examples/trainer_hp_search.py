"""Static SelfD in a plain transformers Trainer script, and a Ray Tune search of its α, τ and learning rate with ASHA
(`trainer.hyperparameter_search(backend="ray")`).

Runs offline on selfd's packaged assets (MiniLM-L6, the RTE-like BIG-bench task); with hub access, swap in your
own model name and `datasets.load_dataset(...)`. Everything selfd-specific is the two names from `trainables.hf`:

    python examples/trainer_hp_search.py --trials 4 --train 96 --layers 2 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from trainables.config import TaskConfig
from trainables.hf import SelfDistillationArguments, SelfDistillationTrainer
from trainables.models import resolve_model
from trainables.tasks import load_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--train", type=int, default=400, help="training samples")
    parser.add_argument("--layers", type=int, default=None, help="keep the model's first N blocks (faster)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--output-dir", default="trainer_hp_search")
    parser.add_argument("--json", action="store_true", help="print the best trial as JSON")
    options = parser.parse_args()

    model_path = resolve_model("minilm-l6")  # a local folder from the package registry; or a hub id
    task = load_task(TaskConfig(name="epistemic_reasoning"))  # Dataset(text, text_pair, label); or load_dataset
    tokenizer = AutoTokenizer.from_pretrained(model_path)

    def tokenize(rows):
        return tokenizer(rows["text"], rows["text_pair"], truncation=True, max_length=128)

    train = task.train.select(range(options.train)).map(tokenize, batched=True)
    validation = task.validation.select(range(min(128, len(task.validation)))).map(tokenize, batched=True)

    def model_init(trial=None):
        layers = {"num_hidden_layers": options.layers} if options.layers else {}
        return AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2, **layers)

    def accuracy(prediction):
        return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}

    args = SelfDistillationArguments(
        options.output_dir, selfd_method="static", selfd_alpha=1.0, selfd_tau=2.0,  # the search sets these
        per_device_train_batch_size=16, num_train_epochs=options.epochs, learning_rate=1e-4, eval_strategy="epoch",
        save_strategy="epoch", logging_steps=5, report_to=[], use_cpu=True, disable_tqdm=True)
    trainer = SelfDistillationTrainer(model_init=model_init, args=args, train_dataset=train,
                                      eval_dataset=validation, data_collator=DataCollatorWithPadding(tokenizer),
                                      compute_metrics=accuracy)

    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    best = trainer.hyperparameter_search(
        hp_space=lambda _: {"selfd_alpha": tune.choice([0.5, 1.0, 2.0]), "selfd_tau": tune.choice([1.0, 2.0, 4.0]),
                            "learning_rate": tune.loguniform(3e-5, 3e-4)},
        backend="ray", n_trials=options.trials, direction="maximize",
        compute_objective=lambda metrics: metrics["eval_accuracy"],
        scheduler=ASHAScheduler(metric="objective", mode="max", max_t=args.num_train_epochs, grace_period=1),
        resources_per_trial={"cpu": 1}, storage_path=os.path.abspath(options.output_dir))
    result = {"objective": best.objective, "hyperparameters": best.hyperparameters, "run_id": best.run_id}
    print(json.dumps(result) if options.json else f"best: validation accuracy {best.objective:.4f} with "
          + ", ".join(f"{name}={value:g}" for name, value in best.hyperparameters.items()))


if __name__ == "__main__":
    main()
