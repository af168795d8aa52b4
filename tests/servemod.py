"""A user's module for `slither serve` tests (tests/test_serve.py): a pipe, sources, a sink.

Files come from the environment, as a service's configuration would: SERVE_OUT (the
sink's output, one JSON line per item), SERVE_ACK (the positioned source's
acknowledged position), SERVE_LIMIT (how many payloads a source yields).
"""

import itertools
import json
import os
import threading
import time

import slither
from slither import stage


def tag(item, ctx):
    if item.payload == -1:
        time.sleep(120)  # a stuck handler: a drain cannot finish
    return {"x": item.payload, "pid": os.getpid()}


def stuck():
    yield from range(10)
    yield -1
    yield from itertools.count(10)


def double_all(xs):
    return [{**x, "y": 2 * x["x"]} for x in xs]


class ServePipe(slither.Pipe):
    stages = [
        stage.inline("tag", handler=tag),
        stage.pool("double", fn="servemod:double_all", batch_size=8),
        stage.router("parity", routes=[(lambda i: i.payload["x"] % 2, "odd")]),
    ]
    outputs = ["odd"]


def endless():
    """Payloads 0, 1, 2, ... for ever: only a signal ends the service."""
    return itertools.count()


class FileSource:
    """A source that resumes: positions are payload numbers; the last acknowledged one
    is kept in SERVE_ACK, and a new run starts after it."""

    def __init__(self):
        self.path = os.environ["SERVE_ACK"]
        self.limit = int(os.environ.get("SERVE_LIMIT", "1000000000"))

    def __iter__(self):
        start = 0
        if os.path.exists(self.path):
            with open(self.path) as f:
                start = int(f.read()) + 1
        with open(self.path + ".starts", "a") as f:
            f.write(f"{start}\n")
        for n in range(start, self.limit):
            yield n, n

    def ack(self, position):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(position))
        os.replace(tmp, self.path)  # atomic: a kill never leaves half a number


def resumable():
    return FileSource()


class Refusing(FileSource):
    """Positions 0..SERVE_LIMIT-1; the payload at position 5 cannot be pickled."""

    def __iter__(self):
        for n, payload in super().__iter__():
            yield n, (threading.Lock() if n == 5 else payload)


def refusing():
    return Refusing()


_out = None


def write(name, item):
    global _out
    if _out is None:
        _out = open(os.environ["SERVE_OUT"], "a", buffering=1)
    if name == "skipped" and not isinstance(item.payload, dict):  # refused before it entered the pipe
        _out.write(json.dumps({"output": name, "x": None, "error": type(item.meta["error"]).__name__}) + "\n")
        return
    _out.write(json.dumps({"output": name, "x": item.payload["x"], "y": item.payload.get("y")}) + "\n")
