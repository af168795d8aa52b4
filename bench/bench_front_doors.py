"""The front doors users know, against the pools they replace: rt.map and the Executor
vs multiprocessing.Pool, ProcessPoolExecutor, and (when installed in the bench's
environment: ``.venv/bin/pip install joblib mpire``) joblib's loky backend and mpire.

2 workers each, the same work, every contender handing back one flat list with a
result per input; contenders run in turn, repeat after repeat, and each one's median
is printed with the ratios. Run: ``.venv/bin/python bench/bench_front_doors.py [--quick]``.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

from _util import target  # noqa: E402
from bench_dispatch import interleaved  # noqa: E402

import slither  # noqa: E402

WORKERS = 2


def tiny_one(x):
    return x * 1.5 + 2.0


def busy_one(x):  # ~2 ms a batch of 64
    t_end = time.perf_counter() + 0.002 / 64
    while time.perf_counter() < t_end:
        pass
    return x


def _peers():
    peers = {}
    try:
        import joblib

        peers["joblib"] = lambda fn, items, chunk: joblib.Parallel(n_jobs=WORKERS, backend="loky", batch_size=chunk)(
            joblib.delayed(fn)(x) for x in items
        )
    except ImportError:
        print("joblib is not installed in this environment (pip install joblib): not measured")
    try:
        import mpire

        started: list = []  # one WorkerPool, made on first use, reused by every repeat

        def run_mpire(fn, items, chunk):
            if not started:
                started.append(mpire.WorkerPool(n_jobs=WORKERS, start_method="fork"))
            return started[0].map(fn, items, chunk_size=chunk)

        peers["mpire"] = run_mpire
    except ImportError:
        print("mpire is not installed in this environment (pip install mpire): not measured")
    return peers


def compare(label, contenders: dict, repeats: int, n_inputs: int) -> dict:
    names = list(contenders)
    times = dict(zip(names, interleaved([contenders[n] for n in names], repeats)))
    figures = "  ".join(f"{n} {n_inputs / t:,.0f}/s" for n, t in times.items())
    print(f"{label} ({n_inputs:,} inputs): {figures}", flush=True)
    return times


def rss_growth_mb(fn) -> float:
    """Resident memory this process gains while ``fn`` builds and keeps its result."""
    import gc

    gc.collect()
    before = _rss()
    kept = fn()
    grew = _rss() - before
    del kept
    return grew


def _rss() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    quick = "--quick" in sys.argv
    n_tiny = 64 * (500 if quick else 3000)
    n_busy = 64 * (50 if quick else 200)
    ctx = mp.get_context("fork")
    lines = []
    peers = _peers()
    with slither.Runtime(pools={"default": WORKERS}) as rt, ctx.Pool(WORKERS) as pool:
        with cf.ProcessPoolExecutor(WORKERS, mp_context=ctx) as ppe, rt.executor() as ex:
            items = list(range(n_tiny))
            runs = {
                "Pool.imap": lambda: list(pool.imap(tiny_one, items, chunksize=64)),
                "PPE.map": lambda: list(ppe.map(tiny_one, items, chunksize=64)),
                "slither map": lambda: list(rt.map(tiny_one, items, batch_size=64)),
                "slither Executor.map": lambda: list(ex.map(tiny_one, items, chunksize=64)),
                **{name: (lambda run=run: list(run(tiny_one, items, 64))) for name, run in peers.items()},
            }
            t = compare("tiny work, 64 a batch", runs, 3 if quick else 5, n_tiny)
            lines.append(target("tiny work, batch 64: rt.map / Pool.imap", t["Pool.imap"] / t["slither map"], 1.3))
            lines.append(target("tiny work, batch 64: Executor.map / PPE.map", t["PPE.map"] / t["slither Executor.map"], 1.0))
            # Every result read: the Items of dispatch are built as they are (its list keeps
            # each batch as the worker sent it until then).
            r = interleaved(
                [
                    lambda: sum(i.payload for i in rt.dispatch(items, lambda xs: [x * 1.5 + 2.0 for x in xs])),
                    lambda: sum(pool.imap(tiny_one, items, chunksize=64)),
                ],
                3 if quick else 5,
            )
            lines.append(target("tiny work, batch 64: dispatch (Items) / Pool.imap", r[1] / r[0], 1.0))

            busy = list(range(n_busy))
            t = compare(
                "~2 ms batches of 64",
                {
                    "Pool.imap": lambda: list(pool.imap(busy_one, busy, chunksize=64)),
                    "slither map": lambda: list(rt.map(busy_one, busy, batch_size=64)),
                    "slither Executor.map": lambda: list(ex.map(busy_one, busy, chunksize=64)),
                },
                3,
                n_busy,
            )
            lines.append(target("~2 ms batches: rt.map / Pool.imap", t["Pool.imap"] / t["slither map"], 0.97))
            lines.append(target("~2 ms batches: Executor.map / Pool.imap", t["Pool.imap"] / t["slither Executor.map"], 0.97))

            n_submit = 2000 if quick else 10_000
            t = compare(
                "one-item submits",
                {
                    "PPE.submit": lambda: [f.result() for f in [ppe.submit(abs, -i) for i in range(n_submit)]],
                    "slither Executor.submit": lambda: [f.result() for f in [ex.submit(abs, -i) for i in range(n_submit)]],
                },
                3,
                n_submit,
            )
            lines.append(target("Executor.submit / PPE.submit", t["PPE.submit"] / t["slither Executor.submit"], 1.0))

        n_mem = 200_000 if quick else 1_000_000
        grow_pool = rss_growth_mb(lambda: pool.map(tiny_one, range(n_mem), chunksize=1000))
        grow_items = rss_growth_mb(lambda: rt.dispatch(range(n_mem), lambda xs: [x * 1.5 for x in xs], batch_size=1000))
        grow_map = rss_growth_mb(lambda: list(rt.map(tiny_one, range(n_mem), batch_size=1000)))
        print(
            f"caller memory kept for {n_mem:,} results: Pool.map +{grow_pool:.0f} MB, "
            f"dispatch (Items) +{grow_items:.0f} MB, map +{grow_map:.0f} MB"
        )
        lines.append(
            target("dispatch Items kept: growth / Pool.map's", grow_items / max(grow_pool, 1e-6), 1.5, higher_is_better=False)
        )
    print("\nSUMMARY")
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
