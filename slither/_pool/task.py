"""A batch on its way to a worker (``Task``) and the caller's end of one worker's
socket (``WorkerConn``)."""

from __future__ import annotations

import itertools
import os
import queue
import signal
import socket
import threading
from collections import deque

from slither import _wire

_refs = itertools.count(1)


def new_ref() -> int:
    """A reference unique in this process: a reply names the task it answers by it."""
    return next(_refs)


class Task:
    """One batch (or probe) on its way to a worker.

    ``callback(task, result, error, worker pid)`` is called once, from whichever
    thread learns the outcome.
    """

    __slots__ = (
        "ref",
        "fn_key",
        "fn_blob",
        "chunks",
        "session",
        "timeout",
        "callback",
        "owner",
        "deadline",
        "timed_out",
        "meta",
        "pinned",
        "cancelled",
    )

    def __init__(self, fn_key, fn_blob, chunks, ref, session=None, timeout=None, callback=None, owner=None, meta=None):
        self.ref = ref
        self.fn_key = fn_key
        self.fn_blob = fn_blob
        self.chunks = chunks  # the pre-pickled frame
        self.session = session
        self.timeout = timeout
        self.callback = callback
        self.owner = owner
        self.deadline = None  # set when it becomes the head of its worker
        self.timed_out = False
        self.meta = meta
        self.pinned = None  # a worker index this task must run on (probes)
        self.cancelled = False  # its owner gave it up after it was sent: never run again elsewhere

    def __repr__(self) -> str:
        return f"<Task {self.ref}>"


class WorkerConn:
    """One connected worker: its socket, the tasks it holds, how it is read and sent to."""

    __slots__ = (
        "pool",
        "index",
        "pid",
        "sock",
        "inflight",
        "private",
        "fn_keys",
        "sendq",
        "send_lock",
        "alive",
        "sessions",
        "remote",
        "reader",
        "bulk",
        "sender",
        "batches",
        "retiring",
        "recycling",
        "depth",
        "run_ns",
        "budget",
    )

    def __init__(self, pool, index, pid, sock, remote: bool = False):
        self.remote = remote  # on another node: its pid means nothing here, never signal it
        self.pool = pool
        self.index = index
        self.pid = pid
        self.sock = sock
        self.inflight: deque[Task] = deque()  # sent (or being sent), in order; the head runs
        self.private: deque[Task] = deque()  # bound to this worker (session affinity, probes), not sent yet
        self.fn_keys: set = set()  # functions this worker already has
        self.sendq: deque[Task] = deque()  # frames to send, in inflight order (see Sender)
        self.send_lock = threading.Lock()
        self.alive = True
        self.sessions: set = set()
        self.reader = _wire.Reader(sock)
        self.bulk: queue.SimpleQueue | None = None  # hands large frames to a thread of this connection
        self.sender: queue.SimpleQueue | None = None  # hands sends that would block to a thread of this connection
        self.batches = 0  # replies it sent (max_batches)
        self.retiring = False  # told to recycle or stop: its end is no crash
        self.recycling = False  # max_batches reached or above max_rss: recycled once it holds no task
        self.depth = 2  # tasks it may hold at once (see slither._pool.scheduler)
        self.run_ns = 0  # running average of its batches' run time, as it reports them (automatic depth)
        self.budget: int | None = None  # tasks it may still be given (max_batches); None: no end


def _kill_conn(conn: WorkerConn) -> None:
    """End a worker: SIGKILL a local one; cut a remote one's connection (its
    reader sees the EOF and exits the process, stuck or not)."""
    if conn.remote:
        try:
            conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    else:
        _kill(conn.pid)


def _kill(pid: int | None) -> None:
    if pid and pid != os.getpid():  # an in-process (debug) worker cannot be killed
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
