"""Stores importable by name (the server and workers can also get them by value)."""

import time

from slither import ANY, Store, Table, View


def lookup(params, ctx):
    return {"value": KV.get("kv", params["key"])}


def slow(params, ctx):
    time.sleep(params.get("sleep", 0))
    return {"ok": True}


class KV(Store):
    tables = [Table("kv"), Table("bag", "bag"), Table("ord", "ordered_set")]
    views = [
        View("kv_lookup", lookup, scope="global"),
        View("kv_session", lookup, scope="session"),
        View("kv_slow", slow, scope="global", timeout=0.2),
    ]

    def load(self, tables):
        tables["kv"].put("seed", 1)


class TwoTables(Store):
    """Every load stamps both tables (and every key of table a) with one new stamp."""

    tables = [Table("a"), Table("b")]
    fail_next = False

    def load(self, tables):
        stamp = time.monotonic_ns()
        for i in range(50):
            tables["a"].put(i, stamp)
        tables["b"].put("stamp", stamp)


__all__ = ["KV", "TwoTables", "ANY"]
