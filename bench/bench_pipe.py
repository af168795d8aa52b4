"""A three-stage pipe against the same three stages as sequential dispatches.

Stages: pool (~1 ms per batch of 32) → pool (~1 ms) → pool (~1 ms), 2 workers.
Pipelining overlaps the stages; sequential dispatches run them one after
another over the whole input. Also compares with the slowest stage alone.
Run: ``.venv/bin/python bench/bench_pipe.py``.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

from _util import median_time, target  # noqa: E402

import slither  # noqa: E402
from slither import stage  # noqa: E402


def spin(ms):
    def fn(xs):
        end = time.perf_counter() + ms / 1000
        while time.perf_counter() < end:
            pass
        return [x + 1 for x in xs]

    return fn


A, B, C = spin(1.0), spin(1.0), spin(1.0)


class Three(slither.Pipe):
    stages = [
        stage.pool("a", fn=A, batch_size=32, max_in_flight=4),
        stage.pool("b", fn=B, batch_size=32, max_in_flight=4),
        stage.pool("c", fn=C, batch_size=32, max_in_flight=4),
    ]
    chunk_size = 32


def caller_work(item, ctx):
    end = time.perf_counter() + 0.00003  # ~30 µs of coordinating-process work per item
    while time.perf_counter() < end:
        pass
    return item.payload + 1


class InlinePool(slither.Pipe):
    stages = [stage.inline("prep", handler=caller_work), stage.pool("work", fn=A, batch_size=32, max_in_flight=4)]
    chunk_size = 32


def overlap():
    """Inline (caller) work overlapping pool work: where pipelining pays on 2 cores."""
    items = list(range(32 * 200))
    with slither.Runtime(pools={"default": 1}) as rt:
        rt.run_pipe(InlinePool, items[:320])
        t_pipe = median_time(lambda: rt.run_pipe(InlinePool, items), 3)

        def sequential():
            from slither._item import Item

            xs = [caller_work(Item.wrap(x), None) for x in items]
            return rt.dispatch(xs, A, batch_size=32, max_in_flight=4)

        t_seq = median_time(sequential, 3)
    print(
        f"inline + pool stage (1 worker): pipe {len(items) / t_pipe:,.0f} items/s, "
        f"inline loop then dispatch {len(items) / t_seq:,.0f} items/s"
    )
    return t_seq / t_pipe


def lookup_chunk(items, ctx):
    time.sleep(0.002)  # one call to a lookup service per chunk of 32 (I/O: releases the GIL)
    return [i.payload for i in items]


class IoThenPool(slither.Pipe):
    stages = [stage.inline("lookup", batch_handler=lookup_chunk), stage.pool("work", fn=A, batch_size=32, max_in_flight=4)]
    chunk_size = 32


def io_overlap():
    items = list(range(32 * 200))
    with slither.Runtime(pools={"default": 2}) as rt:
        rt.run_pipe(IoThenPool, items[:320])
        t_pipe = median_time(lambda: rt.run_pipe(IoThenPool, items), 3)

        def sequential():
            looked = []
            for k in range(0, len(items), 32):
                time.sleep(0.002)
                looked += items[k : k + 32]
            return rt.dispatch(looked, A, batch_size=32, max_in_flight=4)

        t_seq = median_time(sequential, 3)
    print(
        f"I/O-bound inline lookup + pool stage (2 workers): pipe {len(items) / t_pipe:,.0f} items/s, "
        f"lookups then dispatch {len(items) / t_seq:,.0f} items/s"
    )
    return t_seq / t_pipe


def _inc(item, ctx):
    return item.payload + 1


def _square_all(xs):
    return [x * x for x in xs]


class LongLived(slither.Pipe):
    """inline, then pool, then router: one item through it is the latency target."""

    stages = [
        stage.inline("inc", handler=_inc),
        stage.pool("square", fn=_square_all, batch_size=8),
        stage.router("size", routes=[(lambda i: i.payload > 10_000, "big")]),
    ]
    outputs = ["big"]


def latency(n: int = 400):
    """Median seconds for one item through a long-lived three-stage pipe (its runner in a
    process of its own), and for a one-item dispatch, alternated in one run."""
    with slither.Runtime(pools={"default": 2}) as rt:
        h = rt.start_pipe(LongLived)
        results = h.results(timeout=30)
        pipe, one = [], []
        for k in range(n + 20):
            t0 = time.perf_counter()
            h.submit(k)
            next(results)
            t1 = time.perf_counter()
            rt.dispatch([k], _square_all)
            t2 = time.perf_counter()
            if k >= 20:  # warm
                pipe.append(t1 - t0)
                one.append(t2 - t1)
        h.stop()
    return statistics.median(pipe), statistics.median(one)


def main():
    t_pipe1, t_disp1 = latency()
    print(
        f"one item through a long-lived inline → pool → router pipe: {t_pipe1 * 1e3:.2f} ms median; "
        f"a one-item dispatch: {t_disp1 * 1e3:.2f} ms (pipe / dispatch {t_pipe1 / t_disp1:.2f}×)",
        flush=True,
    )
    io_gain = io_overlap()
    gain = overlap()
    items = list(range(32 * 300))
    with slither.Runtime(pools={"default": 2}) as rt:
        rt.run_pipe(Three, items[:320])
        t_pipe = median_time(lambda: rt.run_pipe(Three, items), 3)

        def sequential():
            xs = [i.payload for i in rt.dispatch(items, A, batch_size=32, max_in_flight=4)]
            xs = [i.payload for i in rt.dispatch(xs, B, batch_size=32, max_in_flight=4)]
            return rt.dispatch(xs, C, batch_size=32, max_in_flight=4)

        t_seq = median_time(sequential, 3)
        t_one = median_time(lambda: rt.dispatch(items, A, batch_size=32, max_in_flight=4), 3)
    n = len(items)
    print(
        f"three pool stages: pipe {n / t_pipe:,.0f} items/s, sequential dispatches {n / t_seq:,.0f} items/s, "
        f"slowest stage alone {n / t_one:,.0f} items/s"
    )
    print("\nSUMMARY")
    target("one item through a long-lived three-stage pipe, median", t_pipe1 * 1e3, 1.0, higher_is_better=False, unit=" ms")
    target("that latency / a one-item dispatch's", t_pipe1 / t_disp1, 2.0, higher_is_better=False)
    target("I/O-bound inline + pool pipe / the same stages one after the other (gain from pipelining)", io_gain, 1.2)
    print(
        f"(CPU-bound inline + pool on 1 worker: pipe / sequential = {gain:.2f}×; inline Python work shares "
        "the GIL with the data-plane threads, so overlap is partial)"
    )
    print(
        f"(three pool stages sharing one saturated 2-worker pool: pipe / sequential = {t_seq / t_pipe:.2f}×; "
        "no overlap is possible when every stage needs the same two cores)"
    )
    # three stages share two workers: the ideal is 1/3 of one stage's rate.
    target("pipe of three pool stages / (slowest stage alone ÷ 3 stages sharing the pool)", (n / t_pipe) / (n / t_one / 3), 0.8)


if __name__ == "__main__":
    main()
