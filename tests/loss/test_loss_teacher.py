"""teacher_topk (public) vs a float64 torch reference; backend selection."""
import pytest
import torch

from fusekernels.loss import resolve_backend, sequence_ce, teacher_topk


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_teacher_topk_matches_reference(dtype):
    gen = torch.Generator().manual_seed(40)
    logits = (torch.randn(3, 7, 211, generator=gen) * 3).to(dtype)
    labels = torch.randint(0, 211, (3, 7), generator=gen)
    labels[0, 2] = -100
    out = teacher_topk(logits, labels, k=10)
    z = logits.double()
    values, _ = z.topk(10, dim=-1)
    assert out.ids.shape == (3, 7, 10) and out.ids.dtype == torch.int32
    torch.testing.assert_close(out.values.double(), values)
    torch.testing.assert_close(z.gather(-1, out.ids.long()), values)
    lse = torch.logsumexp(z, -1)
    torch.testing.assert_close(out.lse.double(), lse, rtol=1e-6, atol=1e-5)
    ce = lse - z.gather(-1, labels.clamp_min(0)[..., None])[..., 0]
    torch.testing.assert_close(out.ce.double(), torch.where(labels != -100, ce, 0.0), rtol=1e-6, atol=1e-5)


def test_teacher_topk_ties_and_no_labels():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0]])
    out = teacher_topk(logits, k=2)
    assert out.values.tolist() == [[3.0, 3.0]]
    assert set(out.ids[0].tolist()) <= {1, 2, 4} and len(set(out.ids[0].tolist())) == 2
    assert out.ce.tolist() == [0.0]


def test_teacher_topk_keeps_fp32_precision():
    # Two logits that fp16 (the published cast) would merge stay distinct and ordered.
    logits = torch.tensor([[10.0001, 10.0002, -5.0]])
    out = teacher_topk(logits, k=2)
    assert out.ids[0].tolist() == [1, 0]
    assert out.values[0, 0] > out.values[0, 1]


def test_sequence_ce_masks_positions():
    token_ce = torch.tensor([[1.0, 2.0, 9.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    assert sequence_ce(token_ce, mask).tolist() == [1.5, 0.0]
    with pytest.raises(ValueError, match="token_ce and mask"):
        sequence_ce(token_ce, mask[:, :2])


def test_resolve_backend_on_cpu():
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    assert resolve_backend("torch", torch.device("cpu")) == "torch"
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("fast", torch.device("cpu"))
