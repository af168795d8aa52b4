"""The data plane's framing: whatever is sent arrives whole, in order, however the bytes are split."""

import os
import pickle
import socket
import threading
import time

import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from slither import _wire

pytestmark = pytest.mark.timeout(60)

payloads = st.one_of(
    st.integers(),
    st.text(max_size=50),
    st.binary(max_size=3000),  # bigger than the small test buffer below
    st.lists(st.floats(allow_nan=False), max_size=40),
    st.builds(lambda n: np.arange(n, dtype=np.float64), st.integers(0, 600)),  # out-of-band buffers
    st.builds(lambda b: pickle.PickleBuffer(bytearray(b)), st.binary(max_size=2000)),
)


def _same(a, b):
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and np.array_equal(a, b)
    if isinstance(a, pickle.PickleBuffer):
        return bytes(a.raw()) == bytes(b)
    return a == b


@settings(
    max_examples=60, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate]
)  # no shrinking: a hang replays slowly
@given(objs=st.lists(payloads, min_size=1, max_size=12), buf=st.integers(64, 4096), split=st.integers(1, 700))
def test_reader_gets_every_frame_whole_and_in_order(objs, buf, split):
    a, b = socket.socketpair()
    a.settimeout(2)  # a reader that loses bytes must fail here, not hang
    b.settimeout(2)
    try:
        wire = b"".join(bytes(c) for o in objs for c in _wire.dumps(o))

        def feed():  # dribble the bytes in pieces so frames straddle reads
            for i in range(0, len(wire), split):
                a.sendall(wire[i : i + split])

        t = threading.Thread(target=feed)
        t.start()
        reader = _wire.Reader(b, size=buf)
        got = []
        for o in objs:
            size = sum(len(c) if isinstance(c, bytes) else c.nbytes for c in _wire.dumps(o))
            assert 0 <= reader.unread() <= size  # peeking at the header consumes nothing
            got.append(reader.recv())
        t.join()
        assert all(_same(x, y) for x, y in zip(objs, got))
    finally:
        a.close()
        b.close()


def test_reader_raises_eof_on_close_even_mid_frame():
    a, b = socket.socketpair()
    chunks = _wire.dumps(b"x" * 1000)
    a.sendall(b"".join(chunks)[:-10])
    a.close()
    with pytest.raises(EOFError):
        _wire.Reader(b, size=128).recv()
    b.close()


def test_out_of_band_results_own_their_memory():
    a, b = socket.socketpair()
    arrays = [np.full(5000, i, dtype=np.int64) for i in range(3)]
    for arr in arrays:
        _wire.send(a, arr)
    reader = _wire.Reader(b, size=1024)
    got = [reader.recv() for _ in arrays]  # later reads must not overwrite earlier arrays
    assert [int(g[0]) for g in got] == [0, 1, 2] and all(np.array_equal(x, y) for x, y in zip(arrays, got))
    a.close()
    b.close()


def test_a_frame_whose_buffer_lengths_overflow_the_reader_buffer():
    """40 out-of-band buffers: their lengths alone (320 bytes) exceed a 64-byte reader buffer."""
    a, b = socket.socketpair()
    obj = [pickle.PickleBuffer(bytearray([i])) for i in range(40)]
    _wire.send(a, obj)
    reader = _wire.Reader(b, size=64)
    assert reader.unread() > 64
    assert [bytes(x) for x in reader.recv()] == [bytes([i]) for i in range(40)]
    a.close()
    b.close()


def _tcp_pair():
    with socket.create_server(("127.0.0.1", 0)) as srv:
        a = socket.create_connection(srv.getsockname())
        b, _ = srv.accept()
    return a, b


@pytest.mark.parametrize("pair", [socket.socketpair, _tcp_pair], ids=["unix", "tcp"])
def test_a_send_that_would_block_leaves_the_rest_cut_where_the_socket_stopped(pair):
    """The pool's non-blocking send (_wire.send_buffers): with nobody reading, it stops where
    the socket's buffer is full and hands back the rest; sent later, the rest completes the
    bytes exactly (nothing lost or sent twice at the cut, out-of-band buffers included)."""
    a, b = pair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)  # well under the 10 MB sent, whatever the system's tuning
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    try:
        array = np.arange(300_000, dtype=np.float64)
        bufs = [b"head", bytes(range(256)) * 40_000, memoryview(array).cast("B"), b"tail"]
        rest = _wire.send_buffers(a, bufs, block=False)
        assert rest, "10 MB went into a socket nobody reads"
        got = bytearray()
        reader = threading.Thread(target=lambda: got.extend(_wire._recv_exact(b, sum(len(x) for x in bufs))))
        reader.start()
        assert _wire.send_buffers(a, rest, block=True) == []
        reader.join(30)
        assert got == b"".join(bytes(x) for x in bufs)
    finally:
        a.close()
        b.close()


class _Pool:
    """What a Receiver asks of its pool, recording the frames it is handed."""

    def __init__(self, expect: int):
        self.name = "stub"
        self.lock = threading.Lock()
        self.got: list = []
        self.all_in = threading.Event()
        self.expect = expect
        self.sender = self

    def flush(self, touched):
        pass

    def _handle(self, conn, msg, touched):
        self.got.append(msg)
        if len(self.got) == self.expect:
            self.all_in.set()

    def _lost(self, conn):
        self.all_in.set()


def test_small_frames_read_with_the_end_of_a_large_one_are_handled():
    """The thread that read a large frame goes on with the small ones read into the
    buffer behind it: given back to the shared poll, they would wait for a readiness
    that never comes (their bytes have left the socket)."""
    from slither._pool.receiver import BULK, Receiver
    from slither._pool.task import WorkerConn

    frames = [("ok", 1, [b"x" * (8 * BULK)], 0)] + [("ok", k, [k], 0) for k in range(2, 6)]
    blob = b"".join(b"".join(_wire.dumps(f)) for f in frames)  # as a worker answering back to back
    pool = _Pool(expect=len(frames))
    rx = Receiver(pool)
    a, b = socket.socketpair()
    conn = WorkerConn(pool, 0, 0, a)
    writer = threading.Thread(target=b.sendall, args=(blob,))
    try:
        writer.start()
        rx.polled(conn, True)
        deadline = time.monotonic() + 10
        while not pool.all_in.is_set() and time.monotonic() < deadline:
            rx._read(0.05)  # as a waiting caller does: the large frame goes to the connection's thread
        assert conn.bulk is not None, "the large frame was read by the polling thread"
        assert pool.all_in.is_set(), f"handled {[m[1] for m in pool.got]} of {[f[1] for f in frames]}"
        assert [m[1] for m in pool.got] == [f[1] for f in frames]
    finally:
        writer.join(10)
        if conn.bulk is not None:
            conn.bulk.put(False)
        a.close()
        b.close()
        os.close(rx._wake_r)
        os.close(rx._wake_w)


def test_a_crash_reported_after_its_eof_reaches_the_caller_reading_the_sockets():
    """The worker's EOF comes first and its batch waits for the nanny's report of how it
    ended; the report comes by another thread (the hub's). The caller, in poll() on the
    pool's sockets meanwhile, gets the failure at once, not when its poll next wakes."""
    import queue

    from slither import _protocol
    from slither._pool import Pool, Task
    from slither._pool.task import WorkerConn
    from slither.errors import WorkerCrashed

    pool = Pool("crash-report", 1)
    a, b = socket.socketpair()
    q: queue.SimpleQueue = queue.SimpleQueue()
    pid = 2**22 + 1  # no such process: nothing here may signal it
    got: dict = {}
    try:
        pool.attach(WorkerConn(pool, 0, pid, a))
        frame = _wire.dumps(_protocol.probe("r1", "fn"))
        pool.submit(Task("fn", None, frame, ref="r1", callback=lambda task, result, error, p: q.put(error)))
        caller = threading.Thread(target=lambda: got.setdefault("error", pool.wait(q, 30)))
        caller.start()
        b.close()  # the worker's end: EOF
        with pool.lock:
            assert pool.changed.wait_for(lambda: pid in pool.exits._awaiting, 10)  # the EOF was read
        pool.exited(pid, -9, "")  # the nanny's report, from this thread
        caller.join(10)  # the caller's poll waits up to 30 s unless it is woken
        assert isinstance(got.get("error"), WorkerCrashed) and "SIGKILL" in str(got["error"])
    finally:
        pool.close()
        a.close()
