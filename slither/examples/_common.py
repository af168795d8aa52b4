"""Helpers shared by the examples: checks, outcomes, timing, optional extras.

Every example module has ``run(workers, progress) -> Outcome`` (Slither) and
``baseline(mode, threads) -> Outcome`` (the same work on threads of one
process). An ``Outcome`` is truthy when its checks passed; its ``seconds``
cover the work and, for Slither, the runtime's start, never the checks.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
import time


class MissingExtra(Exception):
    """An optional package of the ``examples`` extra is not installed."""


def need(module: str, package: str | None = None):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(f"this example needs {package or module}: pip install 'slither[examples]'") from None


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one run of an example or baseline measured and whether its checks passed."""

    seconds: float
    checks_passed: bool
    threads: int | None = None
    findings: tuple[str, ...] = ()  # results to show beside the timings (what isolation bought)

    def __bool__(self) -> bool:
        return self.checks_passed


class Checks:
    """Collects ``check <what>: PASS|FAIL`` lines, each computed, never assumed."""

    def __init__(self, title: str):
        self.title = title
        self.results: list[tuple[str, bool]] = []

    def check(self, what: str, ok: bool, detail: str = "") -> bool:
        ok = bool(ok)
        self.results.append((what, ok))
        print(f"check {what}: {'PASS' if ok else 'FAIL'}" + (f"  ({detail})" if detail else ""), flush=True)
        return ok

    @property
    def passed(self) -> bool:
        return all(ok for _, ok in self.results)

    def outcome(self, seconds: float, threads: int | None = None, findings: tuple[str, ...] = ()) -> Outcome:
        """The run's :class:`Outcome`: its time and whether every check so far passed."""
        return Outcome(seconds, self.passed, threads, tuple(findings))


class Timer:
    """``with Timer() as t``: ``t.elapsed`` is the block's time, or the time until ``t.stop()``."""

    def __enter__(self):
        self.elapsed: float | None = None
        self.t0 = time.perf_counter()
        return self

    def stop(self) -> None:
        if self.elapsed is None:
            self.elapsed = time.perf_counter() - self.t0

    def __exit__(self, *exc):
        self.stop()


def report(name: str, elapsed: float, n: int, unit: str = "items") -> None:
    rate = n / elapsed if elapsed > 0 else float("inf")
    print(f"{name}: {n:,} {unit} in {elapsed:.3f}s ({rate:,.0f} {unit}/s)", flush=True)


def run_threads(work, data: list, threads: int) -> int:
    """Split ``data`` into ``threads`` contiguous chunks, run ``work(chunk)`` on each; return the threads used."""
    import threading

    step = max(1, (len(data) + threads - 1) // threads)
    ts = [threading.Thread(target=work, args=(data[i : i + step],)) for i in range(0, len(data), step)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return len(ts)


def gil_status() -> str:
    f = getattr(sys, "_is_gil_enabled", None)
    return "free-threaded (no GIL)" if f is not None and not f() else "GIL enabled"


def progress_wanted() -> bool:
    return sys.stderr.isatty()
