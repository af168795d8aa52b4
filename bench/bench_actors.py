"""An actor's ``Dispatch`` message against ``rt.dispatch()``, in one run.

The requester is a Thespian actor (``bench/_requester.py``): it sends ``Dispatch``
to ``Runtime.address`` and grants demand back to the runner in chunks of half its
window of ``demand=16`` messages. Both
paths use the same pool of 2 workers, the same batches, and hand back every Item.

Also measured: the cost of one ``Results`` message (a dispatch of N one-item
batches of no work, per batch), and the start of a DispatchRunner (a dispatch
of one item). Run: ``.venv/bin/python bench/bench_actors.py [--quick]``.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

from _requester import BenchRequester  # noqa: E402
from bench_dispatch import busy_2ms, tiny  # noqa: E402  (the same work as the dispatch bench)
from thespian.actors import ActorExitRequest, ActorSystem  # noqa: E402

import slither  # noqa: E402
from slither.actors import Dispatch, capabilities  # noqa: E402

WORKERS = 2


def busy_20ms(xs):
    t_end = time.perf_counter() + 0.02
    while time.perf_counter() < t_end:
        pass
    return xs


def by_message(asys, rt, items, fn, batch, demand=16) -> int:
    """Through a requester actor (bench/_requester.py), which grants demand in chunks."""
    req = asys.createActor(BenchRequester)
    try:
        with asys.private() as p:
            answer = p.ask(req, ("go", rt.address, Dispatch("bench", items, fn, batch_size=batch, demand=demand)), 120)
    finally:
        asys.tell(req, ActorExitRequest())
    if answer is None or answer[0] != "done":
        raise RuntimeError(f"the dispatch did not finish: {answer!r}")
    return answer[1]


def by_call(rt, items, fn, batch) -> int:
    return len(rt.dispatch(items, fn, batch_size=batch, max_in_flight=8))


def medians(cases: dict, repeats: int) -> dict:
    times: dict = {k: [] for k in cases}
    for _ in range(repeats):  # in turn, repeat after repeat: both see the same machine
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main(quick: bool) -> None:
    repeats = 3 if quick else 7
    asys = ActorSystem("multiprocTCPBase", capabilities(), transientUnique=True)
    try:
        with slither.Runtime(pools={"default": WORKERS}, actor_system=asys) as rt:
            rows = []
            for label, items, fn, batch in (
                ("tiny work, batch 64", list(range(64_000 if quick else 192_000)), tiny, 64),
                ("tiny work, batch 4096", list(range(64_000 if quick else 192_000)), tiny, 4096),
                ("~2 ms batches of 16", list(range(16 * (100 if quick else 400))), busy_2ms, 16),
                ("~20 ms batches of 16", list(range(16 * (20 if quick else 80))), busy_20ms, 16),
            ):
                m = medians(
                    {
                        "rt.dispatch()": lambda items=items, fn=fn, batch=batch: by_call(rt, items, fn, batch),
                        "actor Dispatch": lambda items=items, fn=fn, batch=batch: by_message(asys, rt, items, fn, batch),
                    },
                    repeats,
                )
                n = len(items)
                for name, t in m.items():
                    print(f"{label:24} {name:15} {n / t:12,.0f} items/s  ({t * 1000:.1f} ms)")
                rows.append((label, m["actor Dispatch"] / m["rt.dispatch()"]))
            n = 400 if quick else 2000
            one = list(range(n))
            m = medians(
                {
                    "rt.dispatch()": lambda: by_call(rt, one, tiny, 1),
                    "actor Dispatch": lambda: by_message(asys, rt, one, tiny, 1, demand=64),
                },
                repeats,
            )
            per_call, per_msg = m["rt.dispatch()"] / n * 1e6, m["actor Dispatch"] / n * 1e6
            print(f"one-item batches: {per_call:.0f} µs a batch by rt.dispatch(), {per_msg:.0f} µs a Results message")
            start = medians(
                {
                    "rt.dispatch()": lambda: by_call(rt, [1], tiny, 1),
                    "actor Dispatch": lambda: by_message(asys, rt, [1], tiny, 1),
                },
                repeats * 3,
            )
            print(
                f"one item, start to finish: {start['rt.dispatch()'] * 1000:.2f} ms by rt.dispatch(), "
                f"{start['actor Dispatch'] * 1000:.1f} ms by Dispatch (a DispatchRunner process starts)"
            )
            print("SUMMARY")
            for label, ratio in rows:
                print(f"RATIO {label}: actor Dispatch takes {ratio:.2f}x the time of rt.dispatch()")
            print(f"RATIO one Results message: {per_msg - per_call:.0f} µs over a batch of rt.dispatch()")
    finally:
        asys.shutdown()


if __name__ == "__main__":
    main("--quick" in sys.argv)
