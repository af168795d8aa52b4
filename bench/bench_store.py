"""Store reads inside a worker vs multiprocessing.Manager().dict() and a plain dict (medians of 5 rounds).

Also bulk load rate and write throughput. Run: ``.venv/bin/python bench/bench_store.py``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

from _util import target  # noqa: E402

import slither  # noqa: E402

N_KEYS = 10_000
READS = 50_000


class BenchStore(slither.Store):
    tables = [slither.Table("kv")]

    def load(self, tables):
        for i in range(N_KEYS):
            tables["kv"].put(f"key:{i}", {"tier": i % 7, "score": i * 0.5})


def read_in_worker(_):
    import statistics

    keys = [f"key:{i % N_KEYS}" for i in range(READS)]
    get = BenchStore.get
    get("kv", keys[0])  # open the environment outside the timing
    rounds = []
    for _ in range(5):
        t0 = time.perf_counter()
        for k in keys:
            get("kv", k)
        rounds.append((time.perf_counter() - t0) / READS)
    return [statistics.median(rounds)]


def manager_reads(d, q):
    import statistics

    keys = [f"key:{i % N_KEYS}" for i in range(READS // 10)]
    rounds = []
    for _ in range(5):
        t0 = time.perf_counter()
        for k in keys:
            d[k]
        rounds.append((time.perf_counter() - t0) / len(keys))
    q.put(statistics.median(rounds))


def main():
    plain = {f"key:{i}": {"tier": i % 7, "score": i * 0.5} for i in range(N_KEYS)}
    keys = [f"key:{i % N_KEYS}" for i in range(READS)]
    t0 = time.perf_counter()
    for k in keys:
        plain[k]
    t_plain = (time.perf_counter() - t0) / READS

    ctx = mp.get_context("fork")
    with ctx.Manager() as m:
        d = m.dict(plain)
        q = ctx.Queue()
        p = ctx.Process(target=manager_reads, args=(d, q))
        p.start()
        t_mgr = q.get()
        p.join()

    with slither.Runtime(pools={"default": 1}, stores=[BenchStore]) as rt:
        t_store = rt.dispatch([0], read_in_worker, timeout=300)[0].payload
        records = [(f"bulk:{i}", {"v": i}) for i in range(100_000)]
        t0 = time.perf_counter()
        BenchStore.bulk_insert("kv", records)
        t_bulk = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(2000):
            BenchStore.put("kv", f"w:{i}", i)
        t_put = (time.perf_counter() - t0) / 2000
        t0 = time.perf_counter()
        BenchStore.reload()
        t_reload = time.perf_counter() - t0

    print(
        f"read latency: plain dict {t_plain * 1e6:.2f} µs, slither Store in a worker {t_store * 1e6:.2f} µs, "
        f"Manager().dict() in a child {t_mgr * 1e6:.1f} µs"
    )
    print(
        f"bulk_insert: {len(records) / t_bulk:,.0f} records/s; put: {1 / t_put:,.0f} writes/s "
        f"({t_put * 1e6:.0f} µs each, acknowledged after commit); reload of {N_KEYS:,} keys: {t_reload * 1e3:.0f} ms"
    )
    print("\nSUMMARY")
    target("Store read in a worker (µs per key)", t_store * 1e6, 5.0, higher_is_better=False, unit=" µs")
    target("Store read speed vs Manager().dict()", t_mgr / t_store, 30.0)


if __name__ == "__main__":
    main()
