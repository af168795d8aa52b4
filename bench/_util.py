"""Shared benchmark helpers: medians over repeats, ratio lines."""

from __future__ import annotations

import statistics
import time


def median_time(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def target(label: str, ratio: float, goal: float, higher_is_better: bool = True, unit: str = "×") -> str:
    ok = ratio >= goal if higher_is_better else ratio <= goal
    op = ">=" if higher_is_better else "<="
    line = f"TARGET {label}: {ratio:.2f}{unit} (target {op} {goal}{unit}) {'MET' if ok else 'NOT MET'}"
    print(line, flush=True)
    return line
