"""What dispatch() returns: a read-only sequence of Items built when read, equal to the list it stands for."""

import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

import slither
from slither import Item, Retry
from slither._dispatch.items import Columns, ItemList

pytestmark = pytest.mark.timeout(60)


@given(st.lists(st.tuples(st.booleans(), st.lists(st.integers(), max_size=6)), max_size=8), st.data())
def test_an_item_list_behaves_as_the_list_it_stands_for(parts, data):
    built, flat, next_id = [], [], 0
    for as_columns, values in parts:
        ids = range(next_id, next_id + len(values))
        next_id += len(values)
        items = [Item(i, v) for i, v in zip(ids, values)]
        built.append(Columns(ids, list(values)) if as_columns else items)
        flat += items
    got = ItemList(built)
    assert len(got) == len(flat) and list(got) == flat and got == flat and flat == got
    if flat:
        k = data.draw(st.integers(-len(flat), len(flat) - 1))
        assert got[k] == flat[k]
    a, b = data.draw(st.integers(-10, 10)), data.draw(st.integers(-10, 10))
    assert got[a:b] == flat[a:b]
    assert got + [Item(-1, 0)] == flat + [Item(-1, 0)]
    assert pickle.loads(pickle.dumps(got)) == flat
    with pytest.raises(IndexError):
        got[len(flat)]


def test_dispatch_results_index_iterate_and_compare(rt):
    out = rt.dispatch(range(10), lambda xs: [x * 2 for x in xs], batch_size=3)
    assert isinstance(out, ItemList) and len(out) == 10
    assert [i.payload for i in out] == [x * 2 for x in range(10)]
    assert out[-1].payload == 18 and [i.payload for i in out[2:4]] == [4, 6]
    assert out == list(out) and repr(out) == repr(list(out))
    assert len({i.id for i in out}) == 10


def test_batches_with_metadata_keep_their_items(rt):
    out = rt.dispatch([1, 0, 2], lambda xs: [10 // x for x in xs], batch_size=1, on_error=Retry(2, backoff=0, then="skip"))
    assert [i.meta["attempts"] for i in out] == [1, 2, 1]
    assert out[1].meta["skipped"] and [out[0].payload, out[2].payload] == [10, 5]
    mixed = rt.dispatch([Item.wrap(5).put_meta({"tag": "x"}), 6], lambda xs: xs)
    assert mixed[0].meta["tag"] == "x" and mixed[1].payload == 6


def test_partial_results_of_a_failed_dispatch_are_a_list(rt):
    with pytest.raises(slither.DispatchError) as ei:
        rt.dispatch([1, 2, 0], lambda xs: [1 / x for x in xs], batch_size=1, max_in_flight=1)  # in turn: the order is known
    assert [i.payload for i in ei.value.partial_results] == [1.0, 0.5]
