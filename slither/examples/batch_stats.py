"""batch_stats: Dispatch with three batching strategies and streaming; poison isolated.

6,500 datasets (2,000 small, 2,000 medium, 2,450 of 2,000–3,000 values,
50 poison: 20 with None, 20 with the string "NaN", 10 empty), shuffled.
Each dataset's mean, variance, skewness and kurtosis are computed in one
pure-Python pass. Each worker also keeps Welford running statistics of every
value it saw; the per-worker states are merged exactly (Chan et al.) and
checked against a direct computation. A healthy dataset's values are an
``array("d")``: 8 bytes a value, pickled as one buffer on their way to a worker
(a list of floats costs the caller and the worker a pickled object per value).
A batch holding poison fails before it computes anything (its datasets are
checked first); its datasets are re-dispatched one by one, so only the poison
datasets end up skipped and every healthy one is computed once. WeightedBatch
runs on every dataset (the work the threaded baselines do); FixedBatch,
KeyPartition and streaming show their batching on the first fifth. Last, a
batch that segfaults shows what it costs Slither (one batch of the first
2,000 datasets) and a threaded process (everything).
"""

from __future__ import annotations

import functools
import math
import random
import threading
from array import array

import slither
from slither import FixedBatch, KeyPartition, WeightedBatch
from slither.examples._common import Checks, Outcome, Timer, gil_status, report, run_threads

N = 2000
SEED = 7  # the datasets every run and baseline use


SIZES = (("small", 2000, 5, 10), ("medium", 2000, 50, 100), ("large", 2450, 2000, 3000))


def make_datasets(seed: int = SEED) -> list[dict]:
    return [{"kind": d["kind"], "values": d["values"], "id": d["id"]} for d in _datasets(seed)]


@functools.lru_cache(maxsize=1)
def _datasets(seed: int) -> tuple[dict, ...]:
    rng = random.Random(seed)
    out = []
    for kind, n, lo, hi in SIZES:
        for _ in range(n):
            r = rng.random
            out.append({"kind": kind, "values": array("d", [7.0 + 6.0 * r() for _ in range(rng.randint(lo, hi))])})
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
    return tuple(out)


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
    """Mean, variance, skewness and excess kurtosis in one pass (Welford/Pébay updates)."""
    if not values:
        raise ValueError("empty dataset")
    n, mean, m2, m3, m4 = 0, 0.0, 0.0, 0.0, 0.0
    for v in values:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise TypeError(f"non-numeric value {v!r}")
        n1 = n
        n += 1
        d = float(v) - mean
        dn = d / n
        dn2 = dn * dn
        t1 = d * dn * n1
        mean += dn
        m4 += t1 * dn2 * (n * n - 3 * n + 3) + 6 * dn2 * m2 - 4 * dn * m3
        m3 += t1 * dn * (n - 2) - 3 * dn * m2
        m2 += t1
    var = m2 / n
    skew = (m3 / n) / var**1.5 if var > 0 else 0.0
    kurt = (m4 / n) / (var * var) - 3.0 if var > 0 else 0.0
    return {"n": n, "mean": mean, "var": var, "skew": skew, "kurtosis": kurt}


def check_dataset(values) -> None:
    """Raise as ``dataset_stats`` would on a dataset it cannot take, before any work on it."""
    if not values:
        raise ValueError("empty dataset")
    if type(values) is array and values.typecode == "d":
        return  # floats by construction
    for v in values:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise TypeError(f"non-numeric value {v!r}")


def stats_batch(datasets: list[dict]) -> list[dict]:
    """Runs in a worker. All-or-nothing: the accumulator changes only if the whole batch is
    valid, and a batch holding poison fails before it computes anything, so the datasets
    re-dispatched one by one after it are computed once in all."""
    for d in datasets:
        check_dataset(d["values"])
    results = [dataset_stats(d["values"]) for d in datasets]
    for d in datasets:
        for v in d["values"]:  # numbers: dataset_stats checked every one
            _acc.add(v)
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


@functools.lru_cache(maxsize=2)  # one computation shared by run() and both baselines: a second each
def _expected(n: int) -> tuple[int, Welford]:
    """How many poison datasets the first ``n`` datasets hold, and the Welford state of their healthy values."""
    data = _datasets(SEED)[:n]
    direct = Welford()
    for d in data:
        if d["kind"] != "poison":
            for v in d["values"]:
                direct.add(v)
    return sum(d["kind"] == "poison" for d in data), direct


def run(workers: int = 2, progress: bool = False) -> Outcome:
    checks = Checks("batch_stats")
    data = make_datasets()
    # The other strategies show how they batch, on a fifth of the datasets: the first one
    # (WeightedBatch) does the work the baselines do, on all of them.
    part = data[: len(data) // 5]
    strategies = {
        "WeightedBatch(10,000 values)": (data, {"strategy": WeightedBatch(10_000, lambda i: max(1, len(i.payload["values"])))}),
        "FixedBatch(10)": (part, {"strategy": FixedBatch(10)}),
        "KeyPartition(kind)": (part, {"strategy": KeyPartition(lambda i: i.payload["kind"])}),
        "dispatch_stream": (part, {"stream": True}),
    }
    with Timer() as wall:  # the runtime's start and the first strategy's pass: what the baselines are compared with
        with slither.Runtime(pools={"default": workers}) as rt:
            rt.run_on_workers(take_state)
            for label, (these, kw) in strategies.items():
                ok, poison, _ = _run_strategy(rt, these, label, progress, **kw)
                wall.stop()
                n_poison, direct = _expected(len(these))
                merged = Welford()
                for _, st in rt.run_on_workers(take_state):
                    merged = merged.merge(Welford(*st))
                checks.check(
                    f"{label}: exactly the {n_poison} poison datasets isolated",
                    len(poison) == n_poison and all(i.payload["kind"] == "poison" for i in poison),
                )
                checks.check(f"{label}: every healthy dataset computed", len(ok) == len(these) - n_poison)
                checks.check(
                    f"{label}: per-worker Welford merge equals direct computation",
                    merged.n == direct.n
                    and math.isclose(merged.mean, direct.mean, rel_tol=1e-9)
                    and math.isclose(merged.m2, direct.m2, rel_tol=1e-9),
                    f"n={merged.n} mean={merged.mean:.6f} var={merged.m2 / merged.n:.6f}",
                )
            findings = _fault_isolation(rt, checks)
    return checks.outcome(wall.elapsed, findings=findings)


# -- fault isolation: a segfault in one batch ---------------------------------------------------

SEGFAULT_AT = 1234  # the dataset whose batch dereferences NULL
FAULT_DATASETS = 2000  # of which the healthy ones run: the crash costs one batch at any size


def stats_or_segfault(datasets: list[dict]) -> list[dict]:
    """``stats_batch``, except that the batch holding dataset ``SEGFAULT_AT`` crashes its process."""
    if any(d["id"] == SEGFAULT_AT for d in datasets):
        import ctypes

        ctypes.string_at(0)  # SIGSEGV, as a bug in a C extension would
    return [{"id": d["id"], **dataset_stats(d["values"])} for d in datasets]


def _fault_isolation(rt, checks: Checks) -> tuple[str, str]:
    """The same segfault costs Slither one batch; it kills a threaded run and everything it held."""
    data = [d for d in make_datasets()[:FAULT_DATASETS] if d["kind"] != "poison"]
    out = rt.dispatch(data, stats_or_segfault, batch_size=10, on_error="skip")
    lost = [i for i in out if i.meta.get("skipped")]
    crash = lost[0].meta.get("error") if lost else None
    signal_name = getattr(getattr(crash, "signal", None), "name", None)
    ours = (
        f"fault isolation, slither: a SIGSEGV in one batch cost {len(lost)} of {len(data):,} datasets "
        f"({type(crash).__name__}: {crash}); {len(out) - len(lost):,} computed"
    )
    print(ours, flush=True)
    threaded = _threaded_segfault_in_subprocess()
    theirs = f"fault isolation, threads: {threaded['summary']}"
    print(theirs, flush=True)
    checks.check(
        "fault isolation: the segfault cost Slither one batch of 10, the pool kept serving",
        len(lost) == 10
        and signal_name == "SIGSEGV"
        and [i.payload for i in rt.dispatch([1, 2], _double, batch_size=1)] == [2, 4],
    )
    checks.check(
        "fault isolation: the same segfault took the threaded process down, with every result it held",
        threaded["returncode"] == -11 and not threaded["results"],
        f"exit {threaded['returncode']}",
    )
    return ours, theirs


def _double(batch: list) -> list:
    return [2 * x for x in batch]


_THREADED_SEGFAULT = """
import faulthandler, threading
faulthandler.disable()  # the parent reports the signal; the child's dump would only be noise
from slither.examples.batch_stats import make_datasets, stats_or_segfault
from slither.examples._common import run_threads
from slither.examples.batch_stats import FAULT_DATASETS
data = [d for d in make_datasets()[:FAULT_DATASETS] if d["kind"] != "poison"]
done = []
lock = threading.Lock()
def work(chunk):
    for i in range(0, len(chunk), 10):
        r = stats_or_segfault(chunk[i : i + 10])
        with lock:
            done.extend(r)
run_threads(work, data, 2)
print(len(done))
"""


def _threaded_segfault_in_subprocess() -> dict:
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-c", _THREADED_SEGFAULT], capture_output=True, text=True, timeout=120)
    results = int(p.stdout.strip()) if p.stdout.strip().isdigit() else 0
    if p.returncode < 0:
        import signal

        summary = f"the whole process was killed by {signal.Signals(-p.returncode).name}; no result survived"
    else:
        summary = f"the process exited with {p.returncode} and printed {results} results"
    return {"returncode": p.returncode, "results": results, "summary": summary}


def baseline(mode: str = "safe", threads: int = 2) -> Outcome:
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
        used = run_threads(work, data, threads)
    report(f"batch_stats baseline {mode}, {used} threads, {gil_status()}", t.elapsed, len(data), "datasets")
    n_poison, direct = _expected(len(data))
    result = shared
    if mode != "unsafe":
        result = Welford()
        for w in locals_:
            result = result.merge(w)
    checks.check("poison isolated", len(poison) == n_poison)
    checks.check(
        "statistics equal the direct computation",
        result.n == direct.n
        and math.isclose(result.mean, direct.mean, rel_tol=1e-9)
        and math.isclose(result.m2, direct.m2, rel_tol=1e-9),
        f"n={result.n} vs {direct.n}",
    )
    return checks.outcome(t.elapsed, used)
