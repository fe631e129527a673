"""precision="published": weights, targets, loss and extraction rounded as the published code.

Checked against tests/reference/published_loss.py, an independent re-implementation of the
published collator (dense bf16 targets built position by position), trainer (bf16 rewards, its
MinCE / AvgCE branches) and extraction (fp16 logits and CE).
"""
import random

import pytest
import torch

from fusekernels.loss import fusion_loss, sequence_ce, teacher_topk
from fusekernels.loss.published import published_target
from fusekernels.loss.rules import published_weights
from tests.loss.test_loss_published import VOCAB, K, make_batch, sparse_columns
from tests.reference.published_loss import fused_target_bf16, published_extract, published_precision_loss


def _reference_choice(ce_rows, mode, use_base):
    """Weights [N, T] of the reference trainer, read off targets that are one-hot per teacher."""
    ce = torch.tensor(ce_rows, dtype=torch.float64)
    n, t = ce.shape
    eye = torch.eye(t).to(torch.bfloat16)
    dists = [eye[i].expand(n, 1, t).clone() for i in range(t)]
    metrics = [ce[:, i].tolist() for i in range(t)]
    if use_base:
        target, _ = fused_target_bf16(dists[0], metrics[0], dists[1:], metrics[1:], mode, True)
    else:
        target, _ = fused_target_bf16(None, None, dists, metrics, mode, False)
    return target[:, 0].float()


def test_issue_repro_first_teacher_wins_bf16_tie():
    ce = torch.tensor([[2.315, 2.31, 3.0]])
    present = torch.ones(1, 3, dtype=torch.bool)
    assert published_weights("mince", present, ce).tolist() == [[1.0, 0.0, 0.0]]
    assert _reference_choice(ce.tolist(), "mince", True).tolist() == [[1.0, 0.0, 0.0]]
    # the default fp32 mode compares exact rewards: teacher 1 has the smaller CE
    gen = torch.Generator().manual_seed(0)
    z, y = torch.randn(1, 50, generator=gen), torch.tensor([3])
    ids = torch.arange(12, dtype=torch.int32).reshape(1, 3, 4)
    t_logits = torch.randn(1, 3, 4, generator=gen)
    only = [fusion_loss(z, y, ids[:, i:i + 1], t_logits[:, i:i + 1], teacher_ce=ce[:, i:i + 1], lam=0.0)
            for i in range(3)]
    fp32 = fusion_loss(z, y, ids, t_logits, teacher_ce=ce, lam=0.0)
    published = fusion_loss(z, y, ids, t_logits, teacher_ce=ce, lam=0.0, precision="published")
    assert fp32.item() == pytest.approx(only[1].item(), rel=1e-6)
    assert published.item() == pytest.approx(only[0].item(), rel=1e-2)  # teacher 0, bf16 target


@pytest.mark.parametrize("use_base", [True, False])
@pytest.mark.parametrize("mode", ["mince", "avgce"])
def test_random_choices_and_weights_bit_for_bit(mode, use_base):
    rng = random.Random(1)
    n_teachers = 3 if use_base else 2
    rows = []
    for _ in range(4000):
        centre = rng.uniform(0.3, 4.0)
        rows.append([centre + rng.uniform(0, 0.05) for _ in range(n_teachers)])
    rows += [[1.5] * n_teachers, [0.7, 0.7, 2.0][:n_teachers]]  # exact ties
    ce = torch.tensor(rows, dtype=torch.float32)
    present = torch.ones(ce.shape, dtype=torch.bool)
    ours = published_weights(mode, present, ce, base_teacher=use_base)
    ref = _reference_choice(ce.tolist(), mode, use_base)
    assert torch.equal(ours, ref)
    if mode == "mince":
        fp32_choice = ce.argmin(-1)
        differ = (ours.argmax(-1) != fp32_choice).float().mean().item()
        assert 0.01 < differ < 0.2  # the bf16 rounding changes the choice on a few percent of rows
        if not use_base:  # exact ties go to the SECOND teacher without the base distribution
            assert ours[-2].tolist() == [0.0, 1.0]
        else:
            assert ours[-2].tolist() == [1.0, 0.0, 0.0] and ours[-1].tolist() == [1.0, 0.0, 0.0]


def _published_inputs(seed, use_base, lengths=(7, 5)):
    teachers, student, labels, attention = make_batch(seed=seed, lengths=lengths)
    batch, width, _ = student.shape
    ids, t_logits, ce = sparse_columns(teachers, batch, width)
    if not use_base:
        ids, t_logits, ce = ids[:, :, 1:], t_logits[:, :, 1:], ce[..., 1:]
    base = dict(teachers[0])
    aligned = [dict(t) for t in teachers[1:]]
    return base, aligned, student, labels, attention, ids.contiguous(), t_logits.contiguous(), ce.contiguous()


def _ours(student, labels, attention, ids, t_logits, ce, backend, **kw):
    shifted = torch.full_like(labels, -100)
    shifted[:, :-1] = labels[:, 1:]
    z = student.clone().requires_grad_(True)
    out = fusion_loss(z, shifted, ids, t_logits, teacher_ce=ce, fusion_mask=attention, backend=backend,
                      precision="published", return_components=True, **kw)
    out.loss.backward()
    return out, z.grad


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("use_base", [True, False])
@pytest.mark.parametrize("mode", ["mince", "avgce"])
@pytest.mark.parametrize("loss_type", ["kl", "ce"])
def test_loss_and_target_match_published_code(backend, use_base, mode, loss_type):
    if backend == "triton":
        pytest.importorskip("triton")
    temperature = 0.7 if loss_type == "kl" else 1.0
    base, aligned, student, labels, attention, ids, t_logits, ce = _published_inputs(
        seed=11 + 3 * use_base + (mode == "avgce"), use_base=use_base)
    ref_in = student.clone().requires_grad_(True)
    ref, ref_clm, ref_fusion, ref_target = published_precision_loss(
        ref_in, labels, attention, base, aligned, mode=mode, loss_type=loss_type, temperature=temperature,
        lam=0.9, use_base=use_base)
    ref.backward()
    out, grad = _ours(student, labels, attention, ids, t_logits, ce, backend, fusion=mode, loss_type=loss_type,
                      temperature=temperature, lam=0.9, base_teacher=use_base)
    # the fused target: the same bf16 values, bit for bit, at every attended position
    n, t, k = ids.reshape(-1, ids.shape[-2], ids.shape[-1]).shape
    flat_ce = ce.expand(*ids.shape[:2], t).reshape(n, t)
    present = torch.isfinite(t_logits.reshape(n, t, k)).any(-1)
    weights = published_weights(mode, present, flat_ce, base_teacher=use_base)
    q_ids, q, _ = published_target(ids.reshape(n, t, k), t_logits.reshape(n, t, k), weights, temperature)
    dense = torch.zeros(n, VOCAB)
    valid = q[:, 0] > float("-inf")
    dense.scatter_add_(1, torch.where(valid, q_ids[:, 0], 0).long(), torch.where(valid, q[:, 0], 0.0))
    rows = attention.reshape(-1) == 1
    assert torch.equal(dense[rows], ref_target.reshape(n, VOCAB)[rows].float())
    torch.testing.assert_close(out.loss, ref.detach(), rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(out.fusion_loss, ref_fusion.detach(), rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(out.clm_loss, ref_clm.detach(), rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(grad, ref_in.grad, rtol=1e-5, atol=1e-6)


def near_tie_rows(seed, count, length, temperature=1.0, within=2.0**-21):
    """``count`` rows of ``length`` bf16-representable logits (sorted, descending) whose softmax
    has an entry within ``within`` (relative) of a bf16 rounding midpoint: a softmax computed in
    another precision or order rounds those entries to the other bf16 neighbour. Found by
    search, the exact softmax taken in float64 of ``bf16(bf16(logits) / temperature)``."""
    gen = torch.Generator().manual_seed(seed)
    found = []
    while len(found) < count:
        logits = (torch.randn(50000, length, generator=gen) * 3).to(torch.bfloat16)
        exact = torch.softmax((logits / temperature).double(), -1)
        near = exact.to(torch.bfloat16)
        up = torch.nextafter(near, torch.tensor(2.0, dtype=torch.bfloat16)).double()
        down = torch.nextafter(near, torch.tensor(-1.0, dtype=torch.bfloat16)).double()
        mids = torch.stack([(near.double() + up) / 2, (near.double() + down) / 2], -1)
        distance = ((exact[..., None] - mids).abs() / mids).amin(-1)
        rows = logits[(distance < within).any(-1)].float()
        found += torch.sort(rows, -1, descending=True).values.tolist()
    return found[:count]


_TIES = {}


def _tie_rows(temperature):
    if temperature not in _TIES:  # a few hundred rows per length, searched once
        _TIES[temperature] = {n: near_tie_rows(n, 60, n, temperature) for n in range(2, K + 1)}
    return _TIES[temperature]


def _inject_near_ties(teachers, seed, temperature, rate=0.5):
    """Replace the logits of about ``rate`` of the non-empty positions with near-tie rows of the
    same length (distinct ids kept), in every teacher."""
    rng = random.Random(seed)
    rows = _tie_rows(temperature)
    for teacher in teachers:
        for seq in teacher["logits"]:
            for pos, row in enumerate(seq):
                if len(row) >= 2 and rng.random() < rate:
                    seq[pos] = list(rng.choice(rows[len(row)]))
    return teachers


@pytest.mark.parametrize("use_base", [True, False])
@pytest.mark.parametrize("mode", ["mince", "avgce"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_targets_bit_for_bit_over_many_seeds_with_near_bf16_ties(mode, use_base, temperature):
    """40 seeds of random batches where half the teacher rows have a softmax entry within 2^-21
    of a bf16 rounding midpoint: the fused bf16 target equals the published collator's bit for
    bit at every attended position, and the loss matches."""
    near_ties = 0
    for seed in range(40):
        teachers, student, labels, attention = make_batch(seed=1000 + seed, lengths=(6, 4))
        _inject_near_ties(teachers, seed, temperature)
        batch, width, _ = student.shape
        ids, t_logits, ce = sparse_columns(teachers, batch, width)
        if not use_base:
            ids, t_logits, ce = ids[:, :, 1:], t_logits[:, :, 1:], ce[..., 1:]
        ref, _, _, ref_target = published_precision_loss(
            student, labels, attention, dict(teachers[0]), [dict(t) for t in teachers[1:]], mode=mode,
            temperature=temperature, lam=0.9, use_base=use_base)
        out, _ = _ours(student, labels, attention, ids.contiguous(), t_logits.contiguous(), ce.contiguous(), "torch",
                       fusion=mode, temperature=temperature, lam=0.9, base_teacher=use_base)
        n, t, k = ids.reshape(-1, ids.shape[-2], ids.shape[-1]).shape
        flat_ce = ce.expand(*ids.shape[:2], t).reshape(n, t)
        present = torch.isfinite(t_logits.reshape(n, t, k)).any(-1)
        weights = published_weights(mode, present, flat_ce, base_teacher=use_base)
        q_ids, q, _ = published_target(ids.reshape(n, t, k), t_logits.reshape(n, t, k), weights, temperature)
        dense = torch.zeros(n, VOCAB)
        valid = q[:, 0] > float("-inf")
        dense.scatter_add_(1, torch.where(valid, q_ids[:, 0], 0).long(), torch.where(valid, q[:, 0], 0.0))
        rows = attention.reshape(-1) == 1
        assert torch.equal(dense[rows], ref_target.reshape(n, VOCAB)[rows].float()), seed
        torch.testing.assert_close(out.loss, ref.detach(), rtol=2e-6, atol=2e-6)
        # how many target entries sit on a near tie (the float64 softmax of the same logits
        # rounds to the other bf16 neighbour than float32 would, or lies within 2^-21 of a midpoint)
        exact = torch.softmax((t_logits.to(torch.bfloat16) / temperature).double(), -1).to(torch.bfloat16)
        near_ties += int((exact != torch.softmax(t_logits.to(torch.bfloat16) / temperature, -1)).sum())
    assert near_ties > 0  # the batches do contain rows where the rounding order decides the bits


@pytest.mark.parametrize("mode", ["mince", "avgce"])
def test_soft_lam_matches_published_code(mode):
    base, aligned, student, labels, attention, ids, t_logits, ce = _published_inputs(seed=23, use_base=True,
                                                                                   lengths=(9,))
    ref_in = student.clone().requires_grad_(True)
    ref, *_ = published_precision_loss(ref_in, labels, attention, base, aligned, mode=mode, schedule="soft")
    ref.backward()
    out, grad = _ours(student, labels, attention, ids, t_logits, ce, "torch", fusion=mode, lam="soft")
    torch.testing.assert_close(out.loss, ref.detach(), rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(grad, ref_in.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_extraction_fp16_as_published(backend):
    if backend == "triton":
        pytest.importorskip("triton")
    gen = torch.Generator().manual_seed(5)
    batch, length, vocab, k = 3, 9, 64, 10
    logits = torch.randn(batch, length, vocab, generator=gen) * 4
    labels = torch.randint(0, vocab, (batch, length), generator=gen)
    attention = torch.ones(batch, length, dtype=torch.long)
    attention[2, 6:] = 0
    labels = labels.masked_fill(attention == 0, -100)
    ref_values, ref_ids, ref_metric, ref_token_ce = published_extract(logits, labels, attention, k)
    shifted = torch.full_like(labels, -100)
    shifted[:, :-1] = labels[:, 1:]
    top = teacher_topk(logits, shifted, k, precision="published", backend=backend)
    assert torch.equal(top.values, ref_values.float())
    assert torch.equal(torch.sort(top.ids, -1).values.long(), torch.sort(ref_ids, -1).values)
    assert torch.equal(top.ce[:, :-1], ref_token_ce.float())
    metric = sequence_ce(top.ce[:, :-1], attention[:, 1:], precision="published")
    assert torch.equal(metric, ref_metric.float())
    # the default keeps fp32: its values differ from the fp16 ones
    assert not torch.equal(teacher_topk(logits, shifted, k).values, top.values)


def test_published_rejects_explicit_weights_and_missing_ce():
    z, y = torch.randn(2, 10), torch.tensor([1, 2])
    ids, tl = torch.zeros(2, 2, 3, dtype=torch.int32), torch.randn(2, 2, 3)
    with pytest.raises(ValueError, match="published"):
        fusion_loss(z, y, ids, tl, teacher_weights=torch.ones(2, 2), fusion="weights", precision="published")
    with pytest.raises(ValueError, match="teacher_ce"):
        fusion_loss(z, y, ids, tl, precision="published")
    with pytest.raises(ValueError, match="precision"):
        fusion_loss(z, y, ids, tl, teacher_ce=torch.ones(2, 2), precision="bf16")


def test_absent_teacher_never_wins_the_two_teacher_rule():
    ce = torch.tensor([[0.1, 2.0], [2.0, 0.1], [1.0, 1.0]])
    present = torch.tensor([[False, True], [True, False], [True, True]])
    w = published_weights("mince", present, ce, base_teacher=False)
    assert w.tolist() == [[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]
