"""What comes back from a worker besides results: a traceback to complete, a log
record to handle here, how a dead worker ended."""

from __future__ import annotations

import linecache
import logging
import re

from slither.errors import WorkerCrashed


def crashed(pool: str, pid: int, exitcode: int | None, fault: str) -> WorkerCrashed:
    how = WorkerCrashed.how(exitcode)
    return WorkerCrashed(f"worker {pid} of pool {pool!r} {how} while running the batch", pid=pid, exitcode=exitcode, fault=fault)


_FRAME = re.compile(r'^  File "(?P<file>[^"]+)", line (?P<line>\d+)')


def with_source(tb: str) -> str:
    """A worker's traceback with the source lines it could not show filled in from
    this process's ``linecache`` (a notebook cell, a file not on the worker's host)."""
    if not tb:
        return tb
    lines = tb.splitlines(keepends=True)
    out = []
    for k, line in enumerate(lines):
        out.append(line)
        m = _FRAME.match(line)
        if m and not (k + 1 < len(lines) and lines[k + 1].startswith("    ")):
            src = linecache.getline(m["file"], int(m["line"])).strip()
            if src:
                out.append(f"    {src}\n")
    return "".join(out)


def relog(d: dict) -> None:
    """A ``logging`` record from a worker, handled here under its logger's name."""
    record = logging.makeLogRecord(d)
    lg = logging.getLogger(record.name) if record.name != "root" else logging.getLogger()
    if lg.isEnabledFor(record.levelno):
        lg.handle(record)
