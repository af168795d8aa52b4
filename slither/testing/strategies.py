"""Hypothesis strategies for testing code built on Slither (requires hypothesis).

::

    from hypothesis import given
    from slither.testing import strategies as sst

    @given(sst.payload_lists(), sst.error_policies(), sst.fault_schedules(max_batches=10))
    def test_my_pipeline(payloads, policy, faults): ...
"""

from __future__ import annotations

from hypothesis import strategies as st

from slither._dispatch import Retry
from slither._item import Item

FAULTS = ("none", "crash", "kill", "raise")


def payloads():
    """Picklable payloads: ints, floats, short strings, small tuples."""
    return st.one_of(
        st.integers(-(10**6), 10**6),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=12),
        st.tuples(st.integers(0, 9), st.text(max_size=3)),
    )


def payload_lists(max_size: int = 200):
    return st.lists(payloads(), max_size=max_size)


def items(max_size: int = 200):
    """Lists of Items with unique, increasing ids."""
    return payload_lists(max_size).map(Item.wrap_many)


def batches(max_batch: int = 16):
    """Non-empty batches of payloads."""
    return st.lists(payloads(), min_size=1, max_size=max_batch)


def error_policies(routes: bool = False):
    """'halt', 'skip' or a Retry with a fast backoff (and a 'then')."""
    retry = st.builds(Retry, max_attempts=st.integers(1, 4), backoff=st.just(0.0), then=st.sampled_from(["halt", "skip"]))
    return st.one_of(st.sampled_from(["halt", "skip"]), retry)


def fault_schedules(max_batches: int = 20, kinds=FAULTS):
    """``{batch_index: fault}`` with fault in ``kinds``: which batch misbehaves how."""
    return st.dictionaries(st.integers(0, max_batches - 1), st.sampled_from(kinds), max_size=max_batches // 2)


__all__ = ["payloads", "payload_lists", "items", "batches", "error_policies", "fault_schedules", "FAULTS"]
