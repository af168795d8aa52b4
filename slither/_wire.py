"""Framed pickle messages over stream sockets: the data plane's one seam.

Every batch and result between the caller and a worker, and every store
write, travels through :func:`send` and :func:`recv`. A frame is a header
(``!QI``: main pickle length, number of out-of-band buffers; then one ``!Q``
length per buffer), the protocol-5 pickle, and the raw buffers. Objects that
support out-of-band pickling (numpy arrays, ``pickle.PickleBuffer``) are
sent without being copied into the pickle.

A single-host runtime uses only Unix-domain sockets inside its private
(0700) directory, so nothing here is reachable from another host. On a
convention, the same frames also travel over TCP between hosts, always after
the mutual HMAC handshake of :mod:`slither.cluster` (workers of members, store
writers and store replicas).
"""

from __future__ import annotations

import pickle
import socket
import struct

from slither import _pickle

_HEAD = struct.Struct("!QI")
_LEN = struct.Struct("!Q")
_SMALL = 256 * 1024
LARGE = object()  # Reader.recv(large=n): the frame has more than n bytes still to come


class UnpicklingFailed(Exception):
    """A whole frame arrived but could not be unpickled here (a class this process
    cannot import). The stream stays in step: the next frame can be read."""

    def __init__(self, cause: BaseException, main: bytes, buffers: list):
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause
        self.main = main
        self.buffers = buffers


def dumps(obj, by_value: bool = False) -> list:
    """Serialise ``obj`` into the list of byte chunks of one frame.

    A small frame without out-of-band buffers (most batches and results) is
    one chunk, ready for a single ``sendall``. ``by_value`` pickles classes
    and functions of ``__main__`` (or not importable) by value, with
    cloudpickle: slower, for what the C pickler cannot do or the other side
    could not load (see :mod:`slither._pickle`).
    """
    bufs: list = []
    if by_value:
        main = _pickle.dumps_by_value(obj, buffer_callback=bufs.append)
    else:
        main = pickle.dumps(obj, protocol=5, buffer_callback=bufs.append)
    if not bufs:
        head = _HEAD.pack(len(main), 0)
        return [head + main] if len(main) <= _SMALL else [head, main]
    raws = [b.raw() for b in bufs]
    head = _HEAD.pack(len(main), len(raws)) + b"".join(_LEN.pack(r.nbytes) for r in raws)
    return [head, main, *raws]


def send_chunks(sock: socket.socket, chunks: list) -> None:
    if len(chunks) == 1:
        sock.sendall(chunks[0])
        return
    total = sum(len(c) if isinstance(c, bytes) else c.nbytes for c in chunks)
    if total <= _SMALL:
        sock.sendall(b"".join(chunks))
    else:
        for c in chunks:
            sock.sendall(c)


def send_buffers(sock: socket.socket, bufs: list, block: bool = True) -> list:
    """Send ``bufs`` (bytes or byte memoryviews) in order and return what is left:
    nothing when ``block``; otherwise what the socket would not take at once,
    the first of it cut where the socket stopped taking."""
    for k, buf in enumerate(bufs):
        if block:
            sock.sendall(buf)
            continue
        try:
            n = sock.send(buf, socket.MSG_DONTWAIT)
        except BlockingIOError:
            n = 0
        if n < len(buf):
            return [memoryview(buf)[n:], *bufs[k + 1 :]]
    return []


def send(sock: socket.socket, obj) -> None:
    """Send one object as a frame. Raises what pickling raises, before sending anything."""
    send_chunks(sock, dumps(obj))


def _recv_exact(sock: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise EOFError("connection closed")
        got += k
    return buf


def recv(sock: socket.socket):
    """Receive one frame and unpickle it. Raises EOFError when the peer closed."""
    mlen, nbufs = _HEAD.unpack(_recv_exact(sock, _HEAD.size))
    lens = [_LEN.unpack_from(_recv_exact(sock, 8))[0] for _ in range(nbufs)] if nbufs else []
    main = _recv_exact(sock, mlen)
    bufs = [_recv_exact(sock, n) for n in lens]
    return pickle.loads(main, buffers=bufs)


class Reader:
    """Buffered frame reader for one socket: one ``recv`` usually brings a whole
    frame (often several), where :func:`recv` makes two or three system calls
    per frame. Out-of-band buffers get memory of their own (the objects built
    from them keep it); the main pickle is read from the shared buffer.
    """

    __slots__ = ("sock", "buf", "view", "start", "end")

    def __init__(self, sock: socket.socket, size: int = 256 * 1024):
        self.sock = sock
        self.buf = bytearray(size)
        self.view = memoryview(self.buf)
        self.start = 0
        self.end = 0

    def _fill(self, need: int) -> None:
        """Make at least ``need`` (<= buffer size) bytes available at ``start``."""
        if self.start + need > len(self.buf):
            n = self.end - self.start
            self.buf[:n] = self.view[self.start : self.end]
            self.start, self.end = 0, n
        while self.end - self.start < need:
            k = self.sock.recv_into(self.view[self.end :])
            if k == 0:
                raise EOFError("connection closed")
            self.end += k

    def _own(self, n: int) -> bytearray:
        """The next ``n`` bytes in memory of their own."""
        out = bytearray(n)
        have = min(n, self.end - self.start)
        out[:have] = self.view[self.start : self.start + have]
        self.start += have
        if have < n:
            view = memoryview(out)
            while have < n:
                k = self.sock.recv_into(view[have:], n - have)
                if k == 0:
                    raise EOFError("connection closed")
                have += k
        return out

    def unread(self) -> int:
        """Bytes of the next frame still to come from the socket (reads its header first)."""
        self._fill(_HEAD.size)
        mlen, nbufs = _HEAD.unpack_from(self.buf, self.start)
        head = _HEAD.size + nbufs * _LEN.size
        total = head + mlen
        if head > len(self.buf):
            return head  # lengths alone overflow the buffer: a large frame, whatever its size
        if nbufs:
            self._fill(head)
            total += sum(_LEN.unpack_from(self.buf, self.start + _HEAD.size + _LEN.size * i)[0] for i in range(nbufs))
        return max(0, total - (self.end - self.start))

    def recv(self, large: int | None = None):
        """Receive one frame and unpickle it. Raises EOFError when the peer closed.

        With ``large``: ``LARGE``, and nothing consumed, when more than ``large``
        bytes of the frame are still to come (see :meth:`unread`). A frame
        already whole in the buffer (the usual one) is not measured first.
        """
        self._fill(_HEAD.size)
        mlen, nbufs = _HEAD.unpack_from(self.buf, self.start)
        if large is not None and (nbufs or _HEAD.size + mlen > self.end - self.start) and self.unread() > large:
            return LARGE
        self.start += _HEAD.size
        lens = []
        for _ in range(nbufs):
            self._fill(_LEN.size)
            lens.append(_LEN.unpack_from(self.buf, self.start)[0])
            self.start += _LEN.size
        if mlen <= len(self.buf):
            self._fill(mlen)
            main = self.view[self.start : self.start + mlen]
            self.start += mlen
        else:
            main = self._own(mlen)
        bufs = [self._own(n) for n in lens]
        try:
            return pickle.loads(main, buffers=bufs)
        except (AttributeError, ImportError, pickle.UnpicklingError, TypeError, ValueError) as exc:
            raise UnpicklingFailed(exc, bytes(main), bufs) from exc
        finally:
            if self.start == self.end:
                self.start = self.end = 0


def connect(path: str, timeout: float | None = None) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if timeout is not None:
        s.settimeout(timeout)
    s.connect(path)
    s.settimeout(None)
    return s


def listen(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(128)
    return s
