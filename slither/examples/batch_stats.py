"""batch_stats: Dispatch with three batching strategies and streaming; poison isolated.

2,000 datasets (800 small, 800 medium, 350 large, 50 poison: 20 with None,
20 with the string "NaN", 10 empty), shuffled. Each worker keeps Welford
running statistics of every value it saw; the per-worker states are merged
exactly (Chan et al.) and checked against a direct computation. A batch
holding poison fails; its datasets are re-dispatched one by one, so only the
50 poison datasets end up skipped.
"""

from __future__ import annotations

import math
import random
import threading

import slither
from slither import FixedBatch, KeyPartition, WeightedBatch
from slither.examples._common import Checks, Timer, gil_status, report, run_threads

N = 2000


def make_datasets(seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for kind, n, lo, hi in (("small", 800, 5, 10), ("medium", 800, 50, 100), ("large", 350, 200, 500)):
        for _ in range(n):
            out.append({"kind": kind, "values": [rng.gauss(10, 3) for _ in range(rng.randint(lo, hi))]})
    for i in range(20):
        vals = [rng.random() for _ in range(8)]
        vals[3] = None
        out.append({"kind": "poison", "values": vals})
    for i in range(20):
        out.append({"kind": "poison", "values": [1.0, "NaN", 2.0]})
    for i in range(10):
        out.append({"kind": "poison", "values": []})
    rng.shuffle(out)
    for i, d in enumerate(out):
        d["id"] = i
    return out


class Welford:
    __slots__ = ("n", "mean", "m2")

    def __init__(self, n=0, mean=0.0, m2=0.0):
        self.n, self.mean, self.m2 = n, mean, m2

    def add(self, x: float) -> None:
        self.n += 1
        d = x - self.mean
        self.mean += d / self.n
        self.m2 += d * (x - self.mean)

    def merge(self, o: Welford) -> Welford:
        if o.n == 0:
            return Welford(self.n, self.mean, self.m2)
        if self.n == 0:
            return Welford(o.n, o.mean, o.m2)
        n = self.n + o.n
        d = o.mean - self.mean
        return Welford(n, self.mean + d * o.n / n, self.m2 + o.m2 + d * d * self.n * o.n / n)

    def state(self):
        return (self.n, self.mean, self.m2)


_acc = Welford()


def dataset_stats(values: list) -> dict:
    if not values:
        raise ValueError("empty dataset")
    w = Welford()
    for v in values:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise TypeError(f"non-numeric value {v!r}")
        w.add(float(v))
    return {"n": w.n, "mean": w.mean, "var": w.m2 / w.n}


def stats_batch(datasets: list[dict]) -> list[dict]:
    """Runs in a worker. All-or-nothing: the accumulator changes only if the whole batch is valid."""
    results = [dataset_stats(d["values"]) for d in datasets]
    for d in datasets:
        for v in d["values"]:
            _acc.add(float(v))
    return [{"id": d["id"], **r} for d, r in zip(datasets, results)]


def take_state() -> tuple:
    global _acc
    s = _acc.state()
    _acc = Welford()
    return s


def _run_strategy(rt, data, label, progress, **kw) -> tuple[list, list, float]:
    with Timer() as t:
        if kw.pop("stream", False):
            first = list(rt.dispatch_stream(data, stats_batch, on_error="skip", batch_size=10, **kw))
        else:
            first = rt.dispatch(data, stats_batch, on_error="skip", progress=progress, total=len(data), **kw)
        ok = [i for i in first if not i.meta.get("skipped")]
        suspects = [i for i in first if i.meta.get("skipped")]
        # bisect to single datasets: healthy neighbours of a poison dataset succeed now
        fresh = [slither.Item(i.id, i.payload) for i in suspects]  # drop the first pass's skip markers
        second = rt.dispatch(fresh, stats_batch, on_error="skip", batch_size=1) if fresh else []
        ok += [i for i in second if not i.meta.get("skipped")]
        poison = [i for i in second if i.meta.get("skipped")]
    report(f"batch_stats {label}", t.elapsed, len(data), "datasets")
    return ok, poison, t.elapsed


def run(workers: int = 2, progress: bool = False) -> bool:
    checks = Checks("batch_stats")
    data = make_datasets()
    healthy = [v for d in data if d["kind"] != "poison" for v in d["values"]]
    direct = Welford()
    for v in healthy:
        direct.add(v)
    n_poison = sum(d["kind"] == "poison" for d in data)
    strategies = {
        "FixedBatch(10)": {"strategy": FixedBatch(10)},
        "WeightedBatch(500 values)": {"strategy": WeightedBatch(500, lambda i: max(1, len(i.payload["values"])))},
        "KeyPartition(kind)": {"strategy": KeyPartition(lambda i: i.payload["kind"])},
        "dispatch_stream": {"stream": True},
    }
    with slither.Runtime(pools={"default": workers}) as rt:
        rt.run_on_workers(take_state)
        for label, kw in strategies.items():
            ok, poison, _ = _run_strategy(rt, data, label, progress, **kw)
            merged = Welford()
            for _, s in rt.run_on_workers(take_state):
                merged = merged.merge(Welford(*s))
            checks.check(
                f"{label}: exactly the {n_poison} poison datasets isolated",
                len(poison) == n_poison and all(i.payload["kind"] == "poison" for i in poison),
            )
            checks.check(f"{label}: every healthy dataset computed", len(ok) == N - n_poison)
            checks.check(
                f"{label}: per-worker Welford merge equals direct computation",
                merged.n == direct.n
                and math.isclose(merged.mean, direct.mean, rel_tol=1e-9)
                and math.isclose(merged.m2, direct.m2, rel_tol=1e-9),
                f"n={merged.n} mean={merged.mean:.6f} var={merged.m2 / merged.n:.6f}",
            )
    return checks.passed


def baseline(mode: str = "safe", threads: int = 4) -> bool:
    """Threads updating one shared Welford ("unsafe") or thread-local ones merged ("safe")."""
    checks = Checks(f"batch_stats baseline ({mode})")
    data = make_datasets()
    shared = Welford()
    locals_: list[Welford] = []
    poison = []
    lock = threading.Lock()

    def work(chunk):
        mine = Welford()
        for d in chunk:
            try:
                dataset_stats(d["values"])
            except (ValueError, TypeError):
                with lock:
                    poison.append(d["id"])
                continue
            for v in d["values"]:
                if mode == "unsafe":
                    shared.add(v)  # three fields updated without a lock: interleavings corrupt them
                else:
                    mine.add(v)
        with lock:
            locals_.append(mine)

    with Timer() as t:
        run_threads(work, data, threads)
    report(f"batch_stats baseline {mode}, {threads} threads, {gil_status()}", t.elapsed, len(data), "datasets")
    direct = Welford()
    for d in data:
        if d["kind"] != "poison":
            for v in d["values"]:
                direct.add(v)
    result = shared
    if mode != "unsafe":
        result = Welford()
        for w in locals_:
            result = result.merge(w)
    checks.check("poison isolated", len(poison) == 50)
    checks.check(
        "statistics equal the direct computation",
        result.n == direct.n
        and math.isclose(result.mean, direct.mean, rel_tol=1e-9)
        and math.isclose(result.m2, direct.m2, rel_tol=1e-9),
        f"n={result.n} vs {direct.n}",
    )
    return checks.passed
