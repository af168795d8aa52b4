"""Stopping a runtime's actor system, with a backstop for processes that outlive it.

``ActorSystem.shutdown()`` waits up to 10 s for the admin's "shutdown completed",
which after SIGKILLed actors may never come: it runs on a thread of its own, and
the wait ends when every process of the runtime's process group is gone, when
none of them has exited for a while (the tree sits idle), or at the deadline.
What is still alive then is SIGKILLed by process group: the actor system's own
group, never the caller's. A tree embedded in the user's own actor system is
stopped by its root, and what outlives it is killed by pid (``stop_embedded_tree``).
"""

from __future__ import annotations

import os
import signal
import threading
import time

from loguru import logger

from slither._sys import descendants, pid_alive, pids_in_group

STALL = 0.5  # at least this long without any runtime process exiting while Thespian's shutdown waits


def stop_actor_system(asys, pgid: int | None, deadline: float, stall: float) -> bool:
    """Run ``asys.shutdown()`` until ``deadline``; True when the tree stalled (none of
    its processes exited for ``stall`` seconds). ``pgid`` None: nothing to watch."""

    def _stop():
        try:
            asys.shutdown()
        except Exception:  # noqa: BLE001
            logger.exception("ActorSystem.shutdown() raised")

    stopper = threading.Thread(target=_stop, name="slither-asys-shutdown", daemon=True)
    stopper.start()
    seen, since = None, time.monotonic()
    while stopper.is_alive() and time.monotonic() < deadline:
        stopper.join(0.01)
        if pgid is None or not stopper.is_alive():
            continue
        alive = pids_in_group(pgid)
        if not alive:
            return False  # the admin can exit without its "shutdown completed" reply
        if alive != seen:
            seen, since = alive, time.monotonic()
        elif time.monotonic() - since > stall:
            return True
    return False


def kill_what_is_left(pgid: int, deadline: float, stalled: bool, why: str) -> None:
    """Wait (at most until ``deadline``, or 0.2 s when the tree stalled) for the group's
    processes to exit, then SIGKILL the group if any is left, saying ``why``."""
    end = min(deadline, time.monotonic() + 0.2) if stalled else deadline
    while pids_in_group(pgid) and time.monotonic() < end:
        time.sleep(0.01)  # polling process exit: there is no event to await for non-children
    left = pids_in_group(pgid)
    if left:
        logger.info("runtime processes {} still alive after shutdown ({}); killing their process group", left, why)
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def stop_embedded_tree(asys, root, root_pid: int | None, deadline: float) -> None:
    """Stop a tree that lives in the user's own actor system: ask its root to exit (its
    supervisors stop their children), wait for the root and every descendant of it,
    then SIGKILL by pid whatever is left (never a process group: the user's actors
    share the admin's)."""
    from thespian.actors import ActorExitRequest

    pids = [root_pid, *descendants(root_pid)] if root_pid else []
    try:
        asys.tell(root, ActorExitRequest())
    except Exception:  # noqa: BLE001 - the user's system may be gone already
        logger.exception("asking Slither's root actor to exit")
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.01)  # polling process exit: there is no event to await for non-children
    left = [p for p in pids if pid_alive(p)]
    if left:
        logger.info("Slither's processes {} still alive after its root was asked to exit; killing them", left)
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
