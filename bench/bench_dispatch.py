"""Dispatch against multiprocessing.Pool.imap and ProcessPoolExecutor.map.

Same batches, same worker count (2), measured side by side in one run; the
median of several repeats. Run: ``.venv/bin/python bench/bench_dispatch.py``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, os.path.dirname(__file__))

from _util import median_time, target  # noqa: E402

import slither  # noqa: E402

WORKERS = 2


def tiny(xs):
    return [x * 1.5 + 2.0 for x in xs]


def busy_2ms(xs):
    t_end = time.perf_counter() + 0.002
    acc = 0
    while time.perf_counter() < t_end:
        acc += 1
    return [x for x in xs]


def echo(xs):
    return xs


def chunks(n_items, size):
    data = list(range(n_items))
    return [data[i : i + size] for i in range(0, n_items, size)]


# Every contender hands back the same thing: one flat list with a result per input item.
def run_pool(pool, batches, fn):
    return len([x for r in pool.imap(fn, batches) for x in r])


def run_ppe(ex, batches, fn):
    return len([x for r in ex.map(fn, batches) for x in r])


def run_slither(rt, items, fn, batch, window=8):
    return len(rt.dispatch(items, fn, batch_size=batch, max_in_flight=window))


# Consumed as it arrives (a sum), nothing kept: the result Items die young.
def sum_pool(pool, batches, fn):
    return sum(x for r in pool.imap(fn, batches) for x in r)


def sum_stream(rt, items, fn, batch, window=8):
    return sum(i.payload for i in rt.dispatch_stream(items, fn, batch_size=batch, max_in_flight=window))


def interleaved(fns, repeats):
    """Median time of each of ``fns``, run in turn ``repeats`` times (drift hits all alike)."""
    times = [[] for _ in fns]
    for _ in range(repeats):
        for t, fn in zip(times, fns):
            t.append(median_time(fn, 1))
    return [statistics.median(t) for t in times]


def compare(label, rt, pool, ex, items, batch, fn, repeats=5, window=8):
    batches = [items[i : i + batch] for i in range(0, len(items), batch)]
    t_pool, t_ppe, t_sl = interleaved(
        [
            lambda: run_pool(pool, batches, fn),
            lambda: run_ppe(ex, batches, fn),
            lambda: run_slither(rt, items, fn, batch, window),
        ],
        repeats,
    )
    n = len(batches)
    print(
        f"{label}: {n} batches of {batch}; batches/s  Pool.imap {n / t_pool:,.0f}  ProcessPoolExecutor {n / t_ppe:,.0f}"
        f"  slither {n / t_sl:,.0f}  (slither/Pool {t_pool / t_sl:.2f}×, slither/PPE {t_ppe / t_sl:.2f}×)",
        flush=True,
    )
    return t_pool / t_sl


def item_floor(items, batch, repeats=5):
    """Batches/s of building one result Item per item in the caller, and nothing else.

    dispatch returns Items (the contract); this is the ceiling that puts on
    tiny work, measured without any process or socket.
    """
    from itertools import repeat

    from slither._item import _EMPTY, _ItemSlots

    batches = [items[i : i + batch] for i in range(0, len(items), batch)]

    def build():  # as dispatch builds them (_Dispatch._finish_ok)
        out = []
        i = 0
        for b in batches:
            out.extend(map(_ItemSlots, range(i, i + len(b)), b, repeat(_EMPTY), repeat("default")))
            i += len(b)
        return len(out)

    return len(batches) / median_time(build, repeats)


def collector_time(rt, items, batch, repeats=3):
    """Per batch of one dispatch of tiny work: (its whole time, the time spent in collections, in full ones).

    Timed with ``gc.callbacks``: what Python's garbage collector takes of the
    caller while ``dispatch`` gathers its result Items (the median run).
    """
    import gc

    runs = []
    for _ in range(repeats):
        spent = {0: 0.0, 1: 0.0, 2: 0.0}
        started = [0.0]

        def cb(phase, info, spent=spent, started=started):
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                spent[info["generation"]] += time.perf_counter() - started[0]

        gc.collect()
        gc.callbacks.append(cb)
        try:
            t0 = time.perf_counter()
            run_slither(rt, items, tiny, batch)
            total = time.perf_counter() - t0
        finally:
            gc.callbacks.remove(cb)
        runs.append((total, sum(spent.values()), spent[2]))
    n = len(items) / batch
    total, collecting, full = sorted(runs)[len(runs) // 2]
    return total / n * 1e6, collecting / n * 1e6, full / n * 1e6


def kill_recovery(rt, n=20):
    """Median time from SIGKILL of a busy worker to its batch's result under Retry, another
    worker being free to run it (each kill waits for the last one's replacement)."""
    from slither.testing import Rendezvous, settle

    lat = []
    for _ in range(n):
        settle(rt)
        with Rendezvous() as rv:
            marker = f"/tmp/slither-bench-kill-{os.getpid()}-{time.monotonic_ns()}"

            def fn(xs, rv=rv, marker=marker):
                if not os.path.exists(marker):
                    open(marker, "w").close()
                    rv.arrive(os.getpid(), wait=True)
                return xs

            import threading

            done = {}

            def go(done=done):
                done["out"] = rt.dispatch([1], fn, on_error=slither.Retry(3, backoff=0))
                done["t"] = time.perf_counter()

            th = threading.Thread(target=go)
            th.start()
            pid = rv.wait(timeout=30)
            t0 = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            th.join(30)
            lat.append(done["t"] - t0)
            os.unlink(marker)
    return statistics.median(lat)


def stream_memory(rt, n):
    def rss_mb():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    before = rss_mb()
    peak = before
    count = 0
    for count, _ in enumerate(rt.dispatch_stream(range(n), echo, batch_size=1000, max_in_flight=8), 1):
        if count % 200_000 == 0:
            peak = max(peak, rss_mb())
    return count, peak - before


def main():
    quick = "--quick" in sys.argv
    ctx = mp.get_context("fork")
    lines = []
    t0 = time.perf_counter()
    rt = slither.Runtime(pools={"default": slither.PoolSpec(size=WORKERS, max_restarts=100, max_seconds=1.0)}).start()
    rt.dispatch([1], echo)
    t_first = time.perf_counter() - t0
    with ctx.Pool(WORKERS) as pool, ProcessPoolExecutor(WORKERS, mp_context=ctx) as ex:
        r_tiny = compare("tiny work", rt, pool, ex, list(range(64 * (500 if quick else 3000))), 64, tiny)
        lines.append(target("tiny work, batch 64, max_in_flight 8: dispatch / Pool.imap", r_tiny, 1.0))
        tiny_items = list(range(64 * (500 if quick else 3000)))
        floor = item_floor(tiny_items, 64)
        pool_rate = len(tiny_items) / 64 / median_time(lambda: run_pool(pool, chunks(len(tiny_items), 64), tiny), 3)
        print(
            f"tiny work ceiling: building the result Items alone (no processes) runs at {floor:,.0f} batches/s "
            f"= {floor / pool_rate:.2f}× Pool.imap ({pool_rate:,.0f} batches/s)",
            flush=True,
        )
        us, gc_us, full_us = collector_time(rt, tiny_items, 64)
        print(
            f"tiny work, where the caller's time goes: {us:.1f} µs a batch, of which {gc_us:.1f} µs in the garbage "
            f"collector ({full_us:.1f} µs in full collections, which walk every result Item gathered so far)",
            flush=True,
        )
        import gc

        batches = chunks(len(tiny_items), 64)
        gc.disable()  # for reference only: what the result Items' garbage collection costs
        try:
            t_pool, t_sl = interleaved([lambda: run_pool(pool, batches, tiny), lambda: run_slither(rt, tiny_items, tiny, 64)], 5)
        finally:
            gc.enable()
        print(
            f"tiny work with the garbage collector paused (reference, not a target): slither/Pool {t_pool / t_sl:.2f}×",
            flush=True,
        )
        t_pool, t_sl = interleaved([lambda: sum_pool(pool, batches, tiny), lambda: sum_stream(rt, tiny_items, tiny, 64)], 5)
        print(
            "tiny work consumed as it arrives, no result kept (reference, not a target): "
            f"dispatch_stream / Pool.imap {t_pool / t_sl:.2f}×",
            flush=True,
        )
        r_busy = compare("2 ms batches", rt, pool, ex, list(range(64 * (100 if quick else 400))), 64, busy_2ms, repeats=3)
        lines.append(target("~2 ms batches: dispatch / Pool.imap", r_busy, 0.95))
        import numpy as np

        arrays = [np.random.rand(131072) for _ in range(50 if quick else 200)]  # 1 MB each
        r_np = compare("1 MB numpy arrays", rt, pool, ex, arrays, 1, echo, repeats=3, window=4)
        lines.append(target("1 MB numpy array batches: dispatch / Pool.imap", r_np, 0.8))
        blobs = [os.urandom(1 << 20) for _ in range(50 if quick else 200)]
        r_bytes = compare("1 MB bytes", rt, pool, ex, blobs, 1, echo, repeats=3, window=4)
        lines.append(target("1 MB bytes batches: dispatch / Pool.imap", r_bytes, 0.8))
    rec = kill_recovery(rt, 5 if quick else 20)
    lines.append(
        target("SIGKILLed worker: batch re-run and result back (median, ms)", rec * 1000, 100, higher_is_better=False, unit=" ms")
    )
    n = 1_000_000 if quick else 10_000_000
    count, grew = stream_memory(rt, n)
    lines.append(target(f"dispatch_stream over {count:,} items: RSS growth (MB)", grew, 50, higher_is_better=False, unit=" MB"))
    t0 = time.perf_counter()
    rt.shutdown()
    t_down = time.perf_counter() - t0
    lines.append(target("runtime start to first result (s)", t_first, 1.0, higher_is_better=False, unit=" s"))
    lines.append(target("shutdown (s)", t_down, 1.0, higher_is_better=False, unit=" s"))
    print("\nSUMMARY")
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
