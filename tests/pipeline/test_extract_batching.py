"""Length grouping of the extraction's forward batches and its padding report."""
import pytest

from fusekernels.pipeline.extract import length_batches, padding_fraction


def test_length_batches_group_similar_lengths():
    lengths = [5, 100, 7, 98, 6, 99]
    batches = length_batches(lengths, 2)
    assert batches == [[1, 5], [3, 2], [4, 0]]
    assert sorted(i for b in batches for i in b) == list(range(6))


def test_padding_fraction_before_and_after():
    lengths = [5, 100, 7, 98, 6, 99]
    # dataset order: batches (5, 100), (7, 98), (6, 99) -> 2 * (100 + 98 + 99) positions for 315 tokens
    assert padding_fraction(lengths, batch_size=2, shard_size=10, grouped=False) == pytest.approx(1 - 315 / 594)
    # grouped: (100, 99), (98, 7), (6, 5) -> 2 * (100 + 98 + 6)
    assert padding_fraction(lengths, batch_size=2, shard_size=10) == pytest.approx(1 - 315 / 408)
    # shards group separately: shard (5, 100, 7) -> (100, 7), (5); shard (98, 6, 99) -> (99, 98), (6)
    assert padding_fraction(lengths, batch_size=2, shard_size=3) == pytest.approx(1 - 315 / (200 + 5 + 198 + 6))
    assert padding_fraction([], batch_size=2, shard_size=3) == 0.0
    assert padding_fraction([4, 4, 4], batch_size=2, shard_size=3, grouped=False) == 0.0
