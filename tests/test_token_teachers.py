"""Token-level teachers: the KD term against hand-computed values, what is stored (target tokens only), bf16,
int8 and top-k storage against full on real SmolLM2-135M logits, and the output-mismatch alignment rule."""

from __future__ import annotations

import math

import pytest
import torch

from trainables.token_teachers import aligned, keep_teachers, token_kd


def softmax(values):
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def test_token_kd_by_hand_with_masks_and_per_token_alpha_tau():
    teacher = torch.tensor([[[0.0, 1.0, 0.0], [2.0, 0.0, 0.0]], [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])
    student = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], [[0.0, 1.0, 0.0], [0.0, 3.0, 0.0]]])
    mask = torch.tensor([[True, True], [False, False]])  # the second sample has no target tokens
    alpha, tau = torch.tensor([[0.5, 1.0], [1.0, 1.0]]), torch.tensor([[2.0, 1.0], [1.0, 1.0]])
    teachers = keep_teachers(teacher, torch.zeros(2, 2, dtype=torch.long), mask, alpha, tau)
    first = 0.5 * 2.0**2 * kl(softmax([0.0, 0.5, 0.0]), softmax([0.5, 0.0, 0.0]))
    second = 1.0 * 1.0**2 * kl(softmax([2.0, 0.0, 0.0]), softmax([0.0, 0.0, 0.0]))
    expected = torch.tensor([(first + second) / 2, 0.0])
    assert torch.allclose(token_kd(student, teachers), expected, atol=1e-6)
    only_first = torch.tensor([[True, False], [False, False]])
    assert torch.allclose(token_kd(student, teachers, only_first), torch.tensor([first, 0.0]), atol=1e-6)


def test_topk_buckets_never_exceed_the_full_kl_and_keeping_every_token_is_exact():
    generator = torch.Generator().manual_seed(0)
    teacher, student = torch.randn(3, 5, 50, generator=generator) * 3, torch.randn(3, 5, 50, generator=generator) * 3
    mask = torch.ones(3, 5, dtype=torch.bool)
    alpha, tau = torch.ones(3, 5), torch.full((3, 5), 2.0)
    targets = torch.zeros(3, 5, dtype=torch.long)
    full = token_kd(student, keep_teachers(teacher, targets, mask, alpha, tau, "full"))
    for k in (1, 5, 20):
        assert (token_kd(student, keep_teachers(teacher, targets, mask, alpha, tau, "topk", k)) <= full + 1e-5).all()
    everything = token_kd(student, keep_teachers(teacher, targets, mask, alpha, tau, "topk", 50))
    assert torch.allclose(everything, full, rtol=2e-2)  # bf16 values; the empty rest bucket holds ~1e-7


def test_only_target_tokens_are_kept_and_int8_is_close_to_full():
    generator = torch.Generator().manual_seed(0)
    teacher, student = torch.randn(2, 6, 500, generator=generator) * 4, torch.randn(2, 6, 500, generator=generator) * 4
    mask = torch.tensor([[False, False, True, True, True, False], [False, True, True, False, False, False]])
    alpha, tau, targets = torch.ones(2, 6), torch.full((2, 6), 2.0), torch.zeros(2, 6, dtype=torch.long)
    full = keep_teachers(teacher, targets, mask, alpha, tau, "full")
    assert full.logits.shape == (5, 500) and torch.equal(full.logits, teacher[mask])  # prompt and padding dropped
    int8 = keep_teachers(teacher, targets, mask, alpha, tau, "int8")
    assert int8.logits.dtype == torch.uint8 and int8.logits.shape == (5, 500) and int8.grid.shape == (5, 2)
    assert int8.nbytes() < full.nbytes() / 3.5
    exact, coded = token_kd(student, full), token_kd(student, int8)
    assert torch.allclose(coded, exact, rtol=0.01), (coded, exact)
    assert torch.equal(int8.top_tokens(), full.top_tokens())


def test_alignment_distils_only_the_common_target_prefix():
    # prompt positions (mask False) then targets; the student's target was regenerated: it diverges at
    # its third target token and is shorter
    teacher_targets = torch.tensor([[0, 0, 5, 6, 7, 8]])
    teacher_mask = torch.tensor([[False, False, True, True, True, True]])
    student_targets = torch.tensor([[0, 0, 5, 6, 9]])
    student_mask = torch.tensor([[False, False, True, True, True]])
    teachers = keep_teachers(torch.zeros(1, 6, 10), teacher_targets, teacher_mask, torch.ones(1, 6),
                             torch.ones(1, 6))
    cut, mask = aligned(teachers, student_targets, student_mask)
    assert cut.mask.shape == (1, 5) and cut.logits.shape == (3, 10)  # rows of the 3 target tokens left
    assert mask.tolist() == [[False, False, True, True, False]]
    # a first target token that differs leaves nothing to distil, even if later tokens agree again
    _, nothing = aligned(teachers, torch.tensor([[0, 0, 4, 6, 7]]), student_mask)
    assert not nothing.any()


@pytest.fixture(scope="module")
def smollm2_logits():
    """Logits of SmolLM2-135M on two short sequences, before (teacher) and after (student) one AdamW step."""
    from transformers import AutoModelForCausalLM

    from trainables.models import load_tokenizer, resolve_model

    path = resolve_model("smollm2-135m")
    tokenizer = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    batch = tokenizer(["Is the sky blue? Yes. Light scatters.", "Can fish fly? No. Most fish swim."],
                      return_tensors="pt", padding=True)
    torch.manual_seed(0)
    outputs = model(**batch, labels=batch["input_ids"])
    teacher = outputs.logits.detach()[:, :-1]
    outputs.loss.backward()
    torch.optim.AdamW(model.parameters(), lr=1e-4).step()
    with torch.no_grad():
        student = model(**batch).logits[:, :-1]
    return teacher, student, batch["input_ids"][:, 1:], batch["attention_mask"][:, 1:].bool()


def test_topk_and_bf16_storage_against_full_on_real_smollm2_logits(smollm2_logits):
    teacher, student, targets, mask = smollm2_logits
    assert teacher.shape[-1] == 49152
    alpha, tau = torch.ones(targets.shape), torch.ones(targets.shape)
    full = token_kd(student, keep_teachers(teacher, targets, mask, alpha, tau, "full"))
    assert (full > 0).all()
    errors = {}
    for storage, k in (("bf16", 0), ("int8", 0), ("topk", 32), ("topk", 64)):
        kept = token_kd(student, keep_teachers(teacher, targets, mask, alpha, tau, storage, k))
        errors[f"{storage}{k or ''}"] = ((kept - full).abs() / full).max().item()
    # Stated bounds at τ = 1, per sample, relative to the full KL (measured: bf16 0.3 %, top-32 15 %, top-64
    # 11 %). The top-k KL is a lower bound: the error is what the rest bucket merges away, and it grows with τ
    # (at τ = 2 the top 64 of 49,152 tokens hold ~22 % of the mass and the error is 50–70 %).
    assert errors["bf16"] < 0.02 and errors["int8"] < 0.05, errors
    assert errors["topk32"] < 0.20 and errors["topk64"] < 0.15 and errors["topk64"] <= errors["topk32"], errors
