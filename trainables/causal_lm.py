"""The causal-LM objective: what the recipe (``trainables/recipe.py``) needs from a decoder-only model on a
generation task, trained token by token under teacher forcing (METHOD.md, "Language models").

- batches: prompt + target + EOS, right-padded; targets are -100 on the prompt and padding, so prompt tokens
  are never learnt nor distilled;
- loss: CE over the batch's target tokens + mean over revisited sequences of the per-token KD term
  (α_t · τ_t² · KL averaged over the sequence's target tokens, ``token_teachers``);
- teachers: chosen when kept: the rule's per-token α_t, τ_t from the full distribution (C = V, y = the target
  token), then stored at the target tokens as ``distill.teacher_storage`` says (full, bf16, int8, or top-k with
  a rest bucket); revisited sequences are re-padded in a new batch, so teachers are aligned to the student by
  the common-prefix rule (``token_teachers.aligned``), which under teacher forcing keeps every target token;
- evaluation: on the validation split (what choices read) and the test split (read by none): the
  teacher-forced loss, then greedy generation from each prompt (at most ``task.max_target_length`` new tokens),
  scored by the task (answer accuracy, ROUGE-L).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from trainables.generation_tasks import load_generation_task, score_generations, tokenized_generation_task
from trainables.losses import extremes
from trainables.metrics import Metric, on_test
from trainables.models import load_causal_lm, load_tokenizer, resolve_model
from trainables.token_teachers import TokenTeachers, aligned, keep_teachers, per_sample, token_kl


@dataclass(frozen=True)
class Step:
    """One step's forward pass: the loss, what is logged, and what the next step's teachers are cut from."""

    loss: Tensor
    values: dict[str, Tensor]
    logits: Tensor  # (N, T, V) at target positions
    targets: Tensor  # (N, T), -100 off target tokens
    mask: Tensor  # (N, T) bool: target tokens


class CausalLMObjective:
    teachers_type = TokenTeachers

    def __init__(self, config, device: torch.device, autocast, rule) -> None:
        """Load and tokenize the task (checked before the model is loaded)."""
        self.config, self.device, self.autocast, self.rule = config, device, autocast, rule
        self.data = load_generation_task(config.task)
        self.scores = tuple(Metric(name) for name in self.data.task.scores)
        self.model_path = resolve_model(config.model.name)
        self.tokenizer = load_tokenizer(self.model_path)
        train, validation, test = tokenized_generation_task(self.data, self.tokenizer, config.model.name,
                                                            config.task.max_length, config.task.max_target_length)
        self.train_rows = [torch.tensor(r) for r in train["input_ids"]], [torch.tensor(r) for r in train["labels"]]
        self.validation, self.test = validation.with_format("torch"), test.with_format("torch")
        self.train_size, self.validation_size, self.test_size = len(self.train_rows[0]), len(validation), len(test)
        self.train_lengths = torch.tensor([len(row) for row in self.train_rows[0]])  # tokens per sequence

    def load_model(self):
        model = self.config.model
        return load_causal_lm(self.model_path, model.num_layers, model.attn_implementation, model.lora)

    def forward(self, model, ids: Tensor, teachers: TokenTeachers | None, step: int, total_steps: int) -> Step:
        """The loss of the sequences ``ids``; the first ``len(teachers.targets)`` of them are the revisited ones."""
        input_ids, attention, targets = _collate(self.train_rows, ids, self.tokenizer.pad_token_id, self.device)
        with self.autocast():
            logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1]
        mask = targets != -100
        ce = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        loss, values = ce, {"ce": ce}
        if teachers is not None:
            revisits = len(teachers.targets)
            cut, kd_mask = aligned(teachers, targets[:revisits], mask[:revisits])
            kl = token_kl(logits[:revisits, :cut.mask.shape[1]], cut, kd_mask)
            loss = ce + per_sample(cut.alpha * kl, kd_mask).mean()
            values |= {"kd": per_sample(kl, kd_mask).mean(), "wrong_teachers": _wrong_teachers(cut, kd_mask),
                       **extremes("alpha", cut.alpha[kd_mask]), **extremes("tau", cut.tau[kd_mask])}
        values["loss"] = loss
        return Step(loss, values, logits, targets, mask)

    def keep(self, step: Step, positions: Tensor, step_number: int, total_steps: int) -> TokenTeachers:
        """The next step's teachers: the rule's per-token α, τ (from the full distribution) for the sequences at
        ``positions``, then the configured storage. The rule sees the step they will teach in."""
        positions = positions.to(step.logits.device)
        logits, targets, mask = step.logits.detach()[positions], step.targets[positions], step.mask[positions]
        labels = targets.clamp(min=0)  # prompt and padding positions carry -100; they are masked out anyway
        distill = self.config.distill
        alpha, tau = self.rule(logits, labels, step_number + 1, total_steps, distill.alpha, distill.tau)
        return keep_teachers(logits, labels, mask, alpha * mask, tau, distill.teacher_storage, distill.topk)

    def score_validation(self, model) -> dict[str, float]:
        """Validation scores (``val_…``); evaluation never touches the training teachers."""
        return self._scores(model, self.validation)

    def score_test(self, model) -> dict[str, float]:
        """The same scores on test (``test_…``)."""
        return on_test(self._scores(model, self.test))

    @torch.inference_mode()
    def _scores(self, model, rows) -> dict[str, float]:
        """Teacher-forced loss, then greedy generations from the prompts, scored by the task."""
        model.eval()
        pad = self.tokenizer.pad_token_id
        batch_size = self.config.training.eval_batch_size
        loss_sum, tokens, predictions, references = 0.0, 0, [], []
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            input_ids, labels = list(chunk["input_ids"]), list(chunk["labels"])
            inputs, attention, targets = _collate((input_ids, labels), torch.arange(len(input_ids)), pad, self.device)
            with self.autocast():
                logits = model(input_ids=inputs, attention_mask=attention).logits[:, :-1].float()
            loss_sum += F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100,
                                        reduction="sum").item()
            tokens += int((targets != -100).sum())
            prompts = [row[:length] for row, length in zip(input_ids, chunk["prompt_length"].tolist())]
            longest = max(map(len, prompts))  # decoder-only generation continues from the right: pad on the left
            left = torch.stack([F.pad(p, (longest - len(p), 0), value=pad) for p in prompts])
            left_attention = torch.stack([F.pad(torch.ones_like(p), (longest - len(p), 0)) for p in prompts])
            with self.autocast():
                generated = model.generate(input_ids=left.to(self.device),
                                           attention_mask=left_attention.to(self.device),
                                           max_new_tokens=self.config.task.max_target_length, do_sample=False,
                                           pad_token_id=pad)
            predictions += self.tokenizer.batch_decode(generated[:, longest:], skip_special_tokens=True)
            references += [self.tokenizer.decode(row[length:], skip_special_tokens=True)
                           for row, length in zip(input_ids, chunk["prompt_length"].tolist())]
        model.train()
        return {Metric.VAL_LOSS: loss_sum / max(tokens, 1),
                **score_generations(self.data.name, [p.strip() for p in predictions], [r.strip() for r in references])}

    def summary(self) -> dict:
        return {"task": self.data.name, "test_size": self.test_size}


def _wrong_teachers(teachers: TokenTeachers, valid: Tensor) -> Tensor:
    """Fraction of target tokens whose teacher's most likely token is another one (d ≤ 0 but for ties)."""
    wrong = teachers.top_tokens() != teachers.targets[teachers.mask]
    return wrong[valid[teachers.mask]].float().mean()


def _collate(rows, ids: Tensor, pad: int, device: torch.device):
    """(input ids, attention mask, targets), right-padded; targets[t] is the label of input token t + 1."""
    inputs = pad_sequence([rows[0][i] for i in ids.tolist()], batch_first=True, padding_value=pad)
    labels = pad_sequence([rows[1][i] for i in ids.tolist()], batch_first=True, padding_value=-100)
    lengths = torch.tensor([len(rows[0][i]) for i in ids.tolist()])
    attention = (torch.arange(inputs.shape[1]) < lengths.unsqueeze(1)).long()
    return inputs.to(device), attention.to(device), labels[:, 1:].to(device)
