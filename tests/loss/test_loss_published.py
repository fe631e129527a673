"""Compatible mode: fusion_loss reproduces the published collator + loss (spec section 7)."""
import random

import pytest
import torch

from fusekernels.loss import fusion_loss
from tests.reference.published_loss import published_fusion_loss

VOCAB, K = 30, 4


def random_alignment(rng, length, empty_rate):
    """Per position a list of distinct ids with logits, sometimes the (id, 1.0) fallback pair or empty."""
    indices, logits = [], []
    for _ in range(length):
        roll = rng.random()
        if roll < empty_rate:
            indices.append([]), logits.append([])
        elif roll < empty_rate + 0.2:
            indices.append([rng.randrange(VOCAB)]), logits.append([1.0])
        else:
            count = rng.randint(1, K)
            indices.append(rng.sample(range(VOCAB), count))
            logits.append(sorted((rng.gauss(0, 3) for _ in range(count)), reverse=True))
    return indices, logits


def make_batch(seed, lengths=(7, 5), n_teachers=3, tie=False):
    rng = random.Random(seed)
    batch, width = len(lengths), max(lengths)
    teachers = []
    for t in range(n_teachers):
        aligned = [random_alignment(rng, n, 0.0 if t == 0 else 0.15) for n in lengths]
        teachers.append({"indices": [a[0] for a in aligned], "logits": [a[1] for a in aligned],
                         "metric_ce": [rng.uniform(0.5, 3.0) for _ in lengths]})
    if tie:
        for b in range(batch):
            teachers[2]["metric_ce"][b] = teachers[1]["metric_ce"][b] = 0.1
    gen = torch.Generator().manual_seed(seed)
    student = torch.randn(batch, width, VOCAB, generator=gen) * 2
    input_ids = torch.randint(1, VOCAB, (batch, width), generator=gen)
    attention = torch.zeros(batch, width, dtype=torch.long)
    for b, n in enumerate(lengths):
        attention[b, :n] = 1
    labels = input_ids.masked_fill(attention == 0, -100)
    return teachers, student, labels, attention


def sparse_columns(teachers, batch, width):
    """What a compatible collator produces: [B, L, T, k] ids / logits (-inf padding) and [B, 1, T]
    metrics; an empty aligned list takes the base model's (teacher 0's) pairs, as published."""
    n_teachers = len(teachers)
    ids = torch.zeros(batch, width, n_teachers, K, dtype=torch.int32)
    logits = torch.full((batch, width, n_teachers, K), float("-inf"))
    for t, teacher in enumerate(teachers):
        for b in range(batch):
            for pos, row in enumerate(teacher["logits"][b]):
                idx = teacher["indices"][b][pos]
                if not row:
                    idx, row = teachers[0]["indices"][b][pos], teachers[0]["logits"][b][pos]
                ids[b, pos, t, :len(idx)] = torch.tensor(idx, dtype=torch.int32)
                logits[b, pos, t, :len(row)] = torch.tensor(row)
    ce = torch.tensor([t["metric_ce"] for t in teachers], dtype=torch.float32).T[:, None, :]
    return ids, logits, ce


@pytest.mark.parametrize("mode", ["mince", "avgce"])
@pytest.mark.parametrize("loss_type", ["kl", "ce"])
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_matches_published_recipe(mode, loss_type, temperature):
    teachers, student, labels, attention = make_batch(seed=hash((mode, loss_type, temperature)) % 997)
    batch, width, _ = student.shape
    ref_in = student.double().requires_grad_(True)
    ref, ref_clm, ref_fusion = published_fusion_loss(ref_in, labels, attention, teachers, mode=mode,
                                                     loss_type=loss_type, temperature=temperature, lam=0.9)
    ref.backward()

    ids, t_logits, ce = sparse_columns(teachers, batch, width)
    shifted = torch.full_like(labels, -100)
    shifted[:, :-1] = labels[:, 1:]
    ours_in = student.clone().requires_grad_(True)
    out = fusion_loss(ours_in, shifted, ids, t_logits, teacher_ce=ce, fusion=mode, loss_type=loss_type,
                      temperature=temperature, lam=0.9, fusion_mask=attention, backend="torch",
                      return_components=True)
    out.loss.backward()
    torch.testing.assert_close(out.loss.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.clm_loss.double(), ref_clm.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.fusion_loss.double(), ref_fusion.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours_in.grad.double(), ref_in.grad, rtol=0, atol=1e-6)


def test_mince_tie_matches_published_argmax():
    teachers, student, labels, attention = make_batch(seed=5, tie=True)
    batch, width, _ = student.shape
    ref, _, _ = published_fusion_loss(student, labels, attention, teachers, mode="mince", lam=0.0)
    ids, t_logits, ce = sparse_columns(teachers, batch, width)
    ours = fusion_loss(student, None, ids, t_logits, teacher_ce=ce, lam=0.0, fusion_mask=attention)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
