"""Pipes a user would test with slither.testing.PipeMachine (importable by workers)."""

import slither
from slither import stage


def double_all(xs):
    return [2 * x for x in xs]


def fail_on_negative(xs):
    for x in xs:
        if x < 0:
            raise ValueError(f"negative payload {x}")
    return xs


class OffsetStore(slither.Store):
    tables = [slither.Table("cfg")]

    def load(self, tables):
        tables["cfg"].put("offset", 0)


def add_offset(item, ctx):
    return item.payload + OffsetStore.get("cfg", "offset", 0)


class ScorePipe(slither.Pipe):
    """inline (reads a Store) -> pool (retried) -> router: what docs/testing.md tests."""

    stores = {"offsets": OffsetStore}
    stages = [
        stage.inline("offset", handler=add_offset),
        stage.pool("double", fn="pipes_under_test:double_all", batch_size=4),
        stage.router("sign", routes=[(lambda i: i.payload > 0, "positive")]),
    ]
    outputs = ["positive"]
    on_error = {"double": slither.Retry(max_attempts=4, backoff=0.0, then="skip")}


class BuggyPipe(slither.Pipe):
    """Halts on any negative payload: a bug PipeMachine must find without any fault injected."""

    stages = [stage.pool("check", fn="pipes_under_test:fail_on_negative", batch_size=4)]
