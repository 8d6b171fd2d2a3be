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

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from trainables.generation_tasks import load_generation_task, score_generations, tokenized_generation_task
from trainables.losses import StepShare, extremes
from trainables.metrics import Metric, on_test
from trainables.models import load_causal_lm, load_tokenizer, resolve_model
from trainables.objective import Step
from trainables.token_teachers import TokenTeachers, aligned, keep_teachers, per_sample, token_kl


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
        taught = None if teachers is None else slice(0, len(teachers.targets))
        loss, values = loss_terms(logits, targets, teachers, taught)
        return Step(loss, values, logits, targets)

    def keep(self, step: Step, positions: Tensor, step_number: int, total_steps: int) -> TokenTeachers:
        """The next step's teachers: the sequences at ``positions`` of this step's batch (``kept_teachers``)."""
        return kept_teachers(step.logits, step.targets, positions, self.rule, step_number + 1, total_steps,
                             self.config.distill)

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


def loss_terms(logits: Tensor, targets: Tensor, teachers: TokenTeachers | None, taught: slice | Tensor | None,
               share: StepShare | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """The loss and the logged values of a batch of causal-LM ``logits`` (N, T, V) at target positions: the CE over
    every target token plus, over the revisited sequences (the rows ``taught``, whose teachers are ``teachers`` in
    that order), the mean of the per-sequence KD term (α_t · τ_t² · KL averaged over the aligned target tokens).
    α_t and τ_t were chosen when the teachers were kept (``kept_teachers``). ``share`` (default: this batch is the
    whole optimizer step) gives the step's counts; α, τ and wrong-teacher means are per token within a batch."""
    mask = targets != -100
    share = share or StepShare(mask.sum(), 0 if teachers is None else len(teachers.targets))
    ce = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="sum") / share.items
    loss, values = ce, {"ce": ce}
    if teachers is not None:
        cut, kd_mask = aligned(teachers, targets[taught], mask[taught])
        kl = token_kl(logits[taught, :cut.mask.shape[1]], cut, kd_mask)
        loss = ce + per_sample(cut.alpha * kl, kd_mask).sum() / share.revisited
        weight = share.of_revisited(len(cut.targets))
        values |= {"kd": per_sample(kl, kd_mask).mean() * weight,
                   "wrong_teachers": _wrong_teachers(cut, kd_mask) * weight,
                   **extremes("alpha", cut.alpha[kd_mask], weight), **extremes("tau", cut.tau[kd_mask], weight)}
    values["loss"] = loss
    return loss, values


def kept_teachers(logits: Tensor, targets: Tensor, rows: Tensor, rule, step: int, total_steps: int,
                  distill) -> TokenTeachers:
    """Teachers for the sequences at ``rows`` of a batch (logits (N, T, V) at target positions): the rule's per-token
    α, τ at ``step`` (the step they will teach in) from the full distribution, with C = V and y = the target token,
    then stored as ``distill.teacher_storage`` says."""
    rows = rows.to(logits.device)
    logits, targets = logits.detach()[rows], targets[rows]
    mask = targets != -100
    labels = targets.clamp(min=0)  # prompt and padding positions carry -100; they are masked out anyway
    alpha, tau = rule(logits, labels, step, total_steps, distill.alpha, distill.tau)
    return keep_teachers(logits, labels, mask, alpha * mask, tau, distill.teacher_storage, distill.topk)


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
