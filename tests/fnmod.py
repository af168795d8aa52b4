"""Batch functions importable by name in workers ("fnmod:double")."""

import os


def double(xs):
    return [x * 2 for x in xs]


def pid_and_counter(xs):
    global _count
    _count = globals().get("_count", 0) + len(xs)
    return [(os.getpid(), _count) for _ in xs]


def not_a_list(xs):
    return tuple(xs)


if os.environ.get("SLITHER_TEST_BROKEN_IMPORT") == "1":  # pragma: no cover
    raise ImportError("fnmod refuses to import")


def invert(xs):
    return [1 / x for x in xs]
