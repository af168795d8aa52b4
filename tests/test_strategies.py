"""Batching strategies: invariants that hold for every input."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slither import ConfigurationError, FixedBatch, Item, KeyPartition, WeightedBatch


@given(st.lists(st.integers(), max_size=200), st.integers(1, 50))
def test_fixed_batch_preserves_order_and_sizes(payloads, size):
    items = Item.wrap_many(payloads)
    batches = list(FixedBatch(size).batches(items))
    assert [i for b in batches for i in b] == items
    assert all(1 <= len(b) <= size for b in batches)
    assert all(len(b) == size for b in batches[:-1])


@given(st.lists(st.integers(0, 30), max_size=200), st.integers(1, 60))
def test_weighted_batch_respects_max_weight(weights, max_w):
    items = Item.wrap_many(weights)
    batches = list(WeightedBatch(max_w, lambda i: i.payload).batches(items))
    assert [i for b in batches for i in b] == items
    for b in batches:
        total = sum(i.payload for i in b)
        assert total <= max_w or len(b) == 1  # an item heavier than the max travels alone
        assert b


@given(st.lists(st.tuples(st.sampled_from("abcde"), st.integers()), max_size=100))
def test_key_partition_groups_in_key_order(pairs):
    items = Item.wrap_many(pairs)
    batches = list(KeyPartition(lambda i: i.payload[0]).batches(items))
    keys = [b[0].payload[0] for b in batches]
    assert keys == sorted(set(p[0] for p in pairs))
    for b in batches:
        assert len({i.payload[0] for i in b}) == 1
        assert [i.id for i in b] == sorted(i.id for i in b)  # input order kept within a key
    assert sorted(i.id for b in batches for i in b) == sorted(i.id for i in items)


def test_fixed_batch_streams_lazily():
    def endless():
        n = 0
        while True:
            yield Item.wrap(n)
            n += 1

    gen = FixedBatch(3).batches(endless())
    assert [i.payload for i in next(gen)] == [0, 1, 2]


@pytest.mark.parametrize("bad", [0, -1, 1.5, "3", True])
def test_fixed_batch_rejects_bad_size(bad):
    with pytest.raises(ConfigurationError, match="FixedBatch: size"):
        FixedBatch(bad)


def test_weighted_batch_rejects_bad_weight():
    with pytest.raises(ConfigurationError, match="max_weight"):
        WeightedBatch(0)
    with pytest.raises(ConfigurationError, match="weight_fn returned"):
        list(WeightedBatch(10, lambda i: "heavy").batches(Item.wrap_many([1])))


def test_item_ids_unique_and_increasing():
    a = Item.wrap_many(range(5))
    b = Item.wrap_many(range(5))
    ids = [i.id for i in a + b]
    assert ids == sorted(ids) and len(set(ids)) == 10
    it = a[0].update_payload(9).put_meta({"k": 1})
    assert it.id == a[0].id and it.payload == 9 and it.meta["k"] == 1 and a[0].meta == {}
