"""Sending frames to workers without ever blocking the pool.

No writer thread: the thread that queued a task sends it (one sender per
connection at a time, under its send lock), which saves a thread hand-off
per batch. A thread that finds another one sending leaves its frames to it
(the sender looks at the queue again after releasing the lock, so none is
stranded). What the socket does not take at once (a large frame the worker
has not read yet; a worker that stopped reading: a SIGSTOPped process, a
member cut off by the network) is finished by the connection's sender
thread, which holds the send lock meanwhile.
"""

from __future__ import annotations

import queue
import threading

from slither import _protocol, _wire
from slither._pool.task import WorkerConn


class Sender:
    def __init__(self, name: str, lock: threading.Lock):
        self.name = name
        self.lock = lock  # the pool's: a connection's liveness changes under it

    def flush(self, conns: list[WorkerConn]) -> None:
        """Send what is queued on ``conns``. Never called with the pool lock held; never blocks."""
        for conn in conns:
            while conn.sendq:
                if not conn.send_lock.acquire(blocking=False):
                    break  # the current sender will see our frames
                handed = False
                try:
                    rest = _wire.send_buffers(conn.sock, self._take_frames(conn), block=False)
                    if rest:
                        handed = self._hand_over(conn, rest)
                except OSError:
                    conn.sendq.clear()  # the reader sees the EOF and fails what was in flight
                finally:
                    if not handed:
                        conn.send_lock.release()

    def _take_frames(self, conn: WorkerConn) -> list:
        """Empty ``conn.sendq`` into the buffers to send, in order (holds its send lock):
        small frames queued together are joined into one buffer, a large frame's chunks
        stay as they are (out-of-band buffers are never copied)."""
        out: list = []
        small: list[bytes] = []
        while conn.sendq:
            task = conn.sendq.popleft()
            frames = [task.chunks]
            if task.fn_blob is not None and task.fn_key not in conn.fn_keys:
                frames.insert(0, _wire.dumps(_protocol.fn(task.fn_key, task.fn_blob)))
                conn.fn_keys.add(task.fn_key)
            for chunks in frames:
                if len(chunks) == 1 and len(chunks[0]) <= _wire._SMALL:
                    small.append(chunks[0])
                    continue
                if small:  # a large frame: what is queued before it goes first
                    out.append(b"".join(small))
                    small = []
                out += chunks
        if small:
            out.append(b"".join(small))  # one frame: join() hands it back as it is
        return out

    def _hand_over(self, conn: WorkerConn, rest: list) -> bool:
        """Give ``rest`` and the send lock of ``conn`` to the connection's sender thread
        (False if the connection is lost meanwhile: nothing is left to send to)."""
        with self.lock:
            if not conn.alive:
                return False
            if conn.sender is None:
                conn.sender = queue.SimpleQueue()
                threading.Thread(
                    target=self._send_loop, args=(conn,), name=f"slither-{self.name}-w{conn.index}-send", daemon=True
                ).start()
            conn.sender.put(rest)  # under the lock: before any end-of-connection marker
        return True

    def _send_loop(self, conn: WorkerConn) -> None:
        """Finish the sends handed over to this connection (holding its send lock,
        blocking as long as the worker takes to read), then what was queued meanwhile."""
        while True:
            rest = conn.sender.get()
            if rest is None:
                return
            try:
                _wire.send_buffers(conn.sock, rest)
                while conn.sendq:
                    _wire.send_buffers(conn.sock, self._take_frames(conn))
            except OSError:
                conn.sendq.clear()  # the reader sees the EOF and fails what was in flight
            finally:
                conn.send_lock.release()
            self.flush([conn])  # frames queued after our last look and before the release
