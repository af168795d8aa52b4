"""Batch functions for the actor tests, importable by name in workers."""

import threading
import time


def slow_inc(xs):
    time.sleep(0.02)
    return [x + 1 for x in xs]


def inc(xs):
    return [x + 1 for x in xs]


def boom_at_13(xs):
    if 13 in xs:
        raise ValueError("thirteen")
    return xs


def hang(xs):
    threading.Event().wait()


def square_all(xs):
    return [x * x for x in xs]
