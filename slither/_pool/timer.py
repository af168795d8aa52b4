"""The pool's timer thread: kills workers whose head task is late, fails crashes whose
exit report never came, and notices a pool supervisor that died."""

from __future__ import annotations

import time

from slither._sys import pid_alive


def timer_loop(pool) -> None:
    """Kill workers whose head task is late, fail crashes whose report never came,
    and notice a pool supervisor that died."""
    with pool.lock:
        while not pool.closed:
            now = time.monotonic()
            nxt = now + 0.25
            for conn in list(pool.scheduler.workers.values()):
                head = conn.inflight[0] if conn.inflight else None
                if head is not None and head.deadline is not None and not head.timed_out:
                    if head.deadline <= now:
                        head.timed_out = True
                        pool._doom(conn)
                    else:
                        nxt = min(nxt, head.deadline)
            late = pool.exits.late(now)
            gone = pool.sup_pid is not None and pool.down is None and not pid_alive(pool.sup_pid)
            if late or gone:
                pool.lock.release()
                try:
                    for pid in late:
                        pool.exited(pid, None, "")  # the nanny died too, or the caller is too busy to hear it
                    if gone:
                        pool.mark_down(f"pool {pool.name!r} is down: its supervisor process {pool.sup_pid} exited")
                finally:
                    pool.lock.acquire()
                continue
            nxt = pool.exits.next_deadline(nxt)
            pool._timer_next = nxt
            pool.changed.wait(max(0.0, nxt - time.monotonic()))
            pool._timer_next = 0.0
