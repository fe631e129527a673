"""Triton teacher top-k / logsumexp / CE kernel vs torch in float64 (CPU interpreter).

Ties: the kernel may order equal values differently from torch.topk, so values are compared
exactly (sorted descending) and ids are checked by looking them up: z[ids] == values, distinct.
"""
import pytest
import torch

triton = pytest.importorskip("triton")
from fusekernels.kernels.teacher_topk_triton import MAX_TOP_K, launch_teacher_topk_rows, teacher_topk_rows_triton  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy inf arithmetic in the interpreter

NEG_INF = float("-inf")


def check_rows(logits, labels, k, out, ignore_index=-100):
    ids, values, lse, ce = out
    n, vocab = logits.shape
    assert ids.shape == values.shape == (n, k) and lse.shape == ce.shape == (n,)
    assert ids.dtype == torch.int32 and values.dtype == lse.dtype == ce.dtype == torch.float32
    z = logits.double()
    want_values = torch.topk(z, k, dim=-1).values
    assert torch.equal(values.double(), want_values)  # fp32 holds bf16/fp16/fp32 logits exactly
    assert ((ids >= 0) & (ids < vocab)).all()
    finite = torch.isfinite(values)
    assert torch.equal(z.gather(1, ids.long())[finite], values.double()[finite])
    for row in range(n):  # distinct ids, -inf entries of rows with fewer than k finite logits included
        assert ids[row].unique().numel() == k
    want_lse = torch.logsumexp(z, dim=-1)
    torch.testing.assert_close(lse.double(), want_lse, rtol=1e-6, atol=1e-6)
    if labels is None:
        assert (ce == 0).all()
        return
    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    want_ce = torch.where(valid, want_lse - z.gather(1, safe[:, None])[:, 0], torch.zeros_like(want_lse))
    torch.testing.assert_close(ce.double(), want_ce, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("k", [1, 5])
def test_matches_torch_over_chunks(dtype, k):
    gen = torch.Generator().manual_seed(k)
    logits = (torch.randn(8, 300, generator=gen) * 3).to(dtype)
    labels = torch.randint(0, 300, (8,), generator=gen)
    labels[2] = -100
    out = launch_teacher_topk_rows(logits, labels, k, block_v=64)
    check_rows(logits, labels, k, out)


def test_ties_and_sorted_order():
    """Few distinct values (integers 0..5): many ties, including at the k-th place."""
    gen = torch.Generator().manual_seed(3)
    logits = torch.randint(0, 6, (6, 200), generator=gen).float()
    out = launch_teacher_topk_rows(logits, None, 7, block_v=32)
    check_rows(logits, None, 7, out)
    assert (out[1][:, :-1] >= out[1][:, 1:]).all()


def test_monotone_rows_stress_the_insertion_loop():
    """Ascending rows insert into the buffer in every chunk; descending rows only in the first."""
    ramp = torch.linspace(-5, 5, 257)
    logits = torch.stack([ramp, ramp.flip(0), ramp.roll(100)])
    labels = torch.tensor([0, 256, -100])
    out = launch_teacher_topk_rows(logits, labels, 9, block_v=16)
    check_rows(logits, labels, 9, out)


def test_rows_with_fewer_than_k_finite_logits():
    logits = torch.randn(3, 50)
    logits[0, 3:] = NEG_INF        # 3 finite values, k = 6
    logits[1] = NEG_INF            # nothing finite: lse = -inf
    ids, values, lse, ce = launch_teacher_topk_rows(logits, None, 6, block_v=16)
    assert torch.isfinite(values[0, :3]).all() and (values[0, 3:] == NEG_INF).all()
    assert set(ids[0, :3].tolist()) == set(torch.topk(logits[0], 3).indices.tolist())
    assert (values[1] == NEG_INF).all() and lse[1] == NEG_INF
    assert ((ids >= 0) & (ids < 50)).all()
    for row in (0, 1):  # the -inf entries get distinct ids too (no repeat of a real id)
        assert ids[row].unique().numel() == 6
    few = torch.full((1, 50), NEG_INF)
    few[0, 4], few[0, 5] = 1.0, 2.0  # found ids 5 and 4 land in slots 0-1; placeholders were the slot numbers
    few_ids = launch_teacher_topk_rows(few, None, 6, block_v=16)[0]
    assert few_ids[0, :2].tolist() == [5, 4] and few_ids[0].unique().numel() == 6
    check_rows(logits[2:], None, 6, tuple(x[2:] for x in (ids, values, lse, ce)))


def test_public_entry_point_default_config_and_custom_ignore_index():
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(4, 120, generator=gen).to(torch.bfloat16)
    labels = torch.tensor([3, 7, 119, 0])
    out = teacher_topk_rows_triton(logits, labels, 10, ignore_index=7)
    check_rows(logits, labels, 10, out, ignore_index=7)


def test_k_equal_to_vocab_and_empty_batch():
    logits = torch.randn(2, 8)
    check_rows(logits, None, 8, launch_teacher_topk_rows(logits, None, 8))
    ids, values, lse, ce = launch_teacher_topk_rows(torch.zeros(0, 8), None, 3)
    assert ids.shape == (0, 3) and lse.shape == (0,)


def test_invalid_arguments():
    logits = torch.randn(2, 20)
    with pytest.raises(ValueError, match="k must be"):
        teacher_topk_rows_triton(logits, None, 21)
    with pytest.raises(ValueError, match="k must be"):
        teacher_topk_rows_triton(logits, None, 0)
    with pytest.raises(ValueError, match="k must be"):
        teacher_topk_rows_triton(torch.randn(1, 400), None, MAX_TOP_K + 1)
    with pytest.raises(TypeError, match="k must be an int"):
        teacher_topk_rows_triton(logits, None, 2.0)
    with pytest.raises(TypeError, match="labels"):
        teacher_topk_rows_triton(logits, torch.zeros(2, dtype=torch.int32), 2)
    with pytest.raises(ValueError, match="labels"):
        teacher_topk_rows_triton(logits, torch.zeros(3, dtype=torch.long), 2)
    with pytest.raises(TypeError, match="logits"):
        teacher_topk_rows_triton(logits.double(), None, 2)


@pytest.mark.parametrize("seed", range(6))
def test_random_shapes(seed):
    """Random V (below/above/not a multiple of BLOCK_V), k, dtype, tie-heavy rows, -inf runs."""
    gen = torch.Generator().manual_seed(200 + seed)

    def pick(options):
        return options[int(torch.randint(len(options), (1,), generator=gen))]

    n, vocab, block_v = pick([1, 4, 7]), pick([9, 64, 250]), pick([8, 32, 256])
    k = pick([1, 3, min(vocab, 12)])
    dtype = pick([torch.float32, torch.bfloat16, torch.float16])
    logits = torch.randn(n, vocab, generator=gen) * 3
    if pick([False, True]):
        logits = logits.round()  # ties
    logits[torch.rand(n, vocab, generator=gen) < 0.2] = NEG_INF
    logits = logits.to(dtype)
    labels = torch.randint(0, vocab, (n,), generator=gen)
    labels[torch.rand(n, generator=gen) < 0.3] = -100
    labels = torch.where(torch.isfinite(logits.gather(1, labels.clamp_min(0)[:, None])[:, 0]), labels, -100)
    out = launch_teacher_topk_rows(logits, labels, k, block_v=block_v)
    check_rows(logits, labels, k, out)
