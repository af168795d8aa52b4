"""Ordering and error policies: properties over random failure patterns.

Run once with the in-process executor (fast, many examples) and once against
the real multi-process pool (fewer examples): the same invariants hold.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import slither
from slither import DispatchError, InlineExecutor, Item, Retry, Route


def make_fn(bad):
    def fn(xs):
        if any(x in bad for x in xs):
            raise ValueError(f"bad payload in {xs}")
        return [x * 10 for x in xs]

    return fn


policies = st.sampled_from(["skip", "route", "halt"])


def check(out_or_exc, payloads, bad, batch_size, policy):
    batches = [payloads[i : i + batch_size] for i in range(0, len(payloads), batch_size)]
    failing = [any(x in bad for x in b) for b in batches]
    if policy == "halt" and any(failing):
        assert isinstance(out_or_exc, DispatchError)
        assert isinstance(out_or_exc.reason, slither.WorkerError)
        assert out_or_exc.reason.remote_type == "ValueError"
        # partial results are whole good batches, each correct
        for it in out_or_exc.partial_results:
            assert it.payload % 10 == 0
        return
    out = out_or_exc
    assert len(out) == len(payloads)
    expected = []
    for b, f in zip(batches, failing):
        for x in b:
            if not f:
                expected.append(x * 10)
            elif policy == "skip":
                expected.append(x)
            else:
                expected.append(("routed", x))
    assert [i.payload for i in out] == expected
    if policy == "skip":
        assert [bool(i.meta.get("skipped")) for i in out] == [f for b, f in zip(batches, failing) for _ in b]


def run(payloads, bad, batch_size, policy, **kw):
    on_error = {"skip": "skip", "halt": "halt", "route": Route(lambda it, reason: it.update_payload(("routed", it.payload)))}[
        policy
    ]
    try:
        return slither.dispatch(payloads, make_fn(bad), batch_size=batch_size, on_error=on_error, **kw)
    except DispatchError as exc:
        return exc


@given(
    st.lists(st.integers(0, 50), max_size=80),
    st.sets(st.integers(0, 50), max_size=5),
    st.integers(1, 9),
    policies,
    st.integers(1, 6),
)
def test_policies_inline(payloads, bad, batch_size, policy, window):
    out = run(payloads, bad, batch_size, policy, executor=InlineExecutor(make_fn(bad)), max_in_flight=window)
    check(out, payloads, bad, batch_size, policy)


@pytest.mark.timeout(120)
@settings(max_examples=15)
@given(
    st.lists(st.integers(0, 50), max_size=60),
    st.sets(st.integers(0, 50), max_size=4),
    st.integers(1, 9),
    policies,
    st.sampled_from(["preserve", "as_completed"]),
)
def test_policies_on_real_pool(rt, payloads, bad, batch_size, policy, ordering):
    on_error = {"skip": "skip", "halt": "halt", "route": Route(lambda it, reason: it.update_payload(("routed", it.payload)))}[
        policy
    ]
    try:
        out = rt.dispatch(payloads, make_fn(bad), batch_size=batch_size, on_error=on_error, ordering=ordering, max_in_flight=4)
    except DispatchError as exc:
        out = exc
    if ordering == "as_completed" and not isinstance(out, DispatchError):
        ids = [i.id for i in out]
        assert len(set(ids)) == len(payloads)
        out = sorted(out, key=lambda i: i.id)
    check(out, payloads, bad, batch_size, policy)


@given(st.lists(st.integers(), max_size=100), st.integers(1, 7), st.integers(1, 5))
def test_preserve_ordering_inline(payloads, batch_size, window):
    out = slither.dispatch(payloads, None, executor=InlineExecutor(lambda xs: xs), batch_size=batch_size, max_in_flight=window)
    assert [i.payload for i in out] == payloads
    ids = [i.id for i in out]
    assert ids == sorted(ids)


def test_retry_then_skip_inline():
    calls = []

    def fn(xs):
        calls.append(list(xs))
        raise RuntimeError("always")

    out = slither.dispatch([1, 2, 3], None, executor=InlineExecutor(fn), batch_size=2, on_error=Retry(3, backoff=0, then="skip"))
    assert [i.meta["attempts"] for i in out] == [3, 3, 3]
    assert all(i.meta["skipped"] for i in out)
    assert len(calls) == 6


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, "batch_size must be a positive int, got 0"),
        ({"batch_size": -3}, "batch_size must be a positive int, got -3"),
        ({"max_in_flight": 0}, "max_in_flight"),
        ({"ordering": "random"}, "ordering"),
        ({"on_error": "ignore"}, "on_error"),
        ({"timeout": -1}, "timeout"),
        ({"affinity": "sticky"}, "affinity"),
        ({"strategy": object()}, "strategy"),
        ({"context": {"session_id": "x"}}, "context"),
    ],
)
def test_nonsense_options_fail_before_work(kwargs, match):
    ran = []
    with pytest.raises(slither.ConfigurationError, match=match):
        slither.dispatch([1, 2], None, executor=InlineExecutor(lambda xs: ran.append(1) or xs), **kwargs)
    assert not ran


def test_empty_batches_from_a_strategy_are_an_error():
    class Empty:
        def batches(self, items):
            yield []

    with pytest.raises(slither.ConfigurationError, match="strategy Empty produced"):
        slither.dispatch([1], None, executor=InlineExecutor(lambda xs: xs), strategy=Empty())


def test_items_keep_ids_and_meta():
    items = [Item("a", 1, {"k": "v"}), Item("b", 2)]
    out = slither.dispatch(items, None, executor=InlineExecutor(lambda xs: [x + 1 for x in xs]))
    assert [(i.id, i.payload, dict(i.meta)) for i in out] == [("a", 2, {"k": "v"}), ("b", 3, {})]
