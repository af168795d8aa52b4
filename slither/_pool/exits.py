"""Matching a lost worker's EOF with its nanny's report of how it ended.

The two arrive in either order, a few ms apart (the EOF through the pool's
reader, the report through the hub). A batch whose worker died waits for the
report at most ``EXIT_REPORT_WAIT`` seconds; then it fails without the exit
status. Every method is called holding the pool's lock.
"""

from __future__ import annotations

import time

# How long a batch whose worker died waits for its nanny's report of how (a few ms
# after the EOF, as a rule) before it fails without it.
EXIT_REPORT_WAIT = 1.0


class ExitReports:
    def __init__(self):
        self._exits: dict[int, tuple] = {}  # pid -> (exitcode, fault): reports not yet matched to an EOF
        self._awaiting: dict[int, tuple] = {}  # pid -> (deadline, tasks): lost workers whose report is awaited

    def lost(self, pid: int, victims: list) -> tuple | None:
        """Worker ``pid``'s EOF: its report ``(exitcode, fault)``, or None and ``victims`` wait for it."""
        report = self._exits.pop(pid, None)
        if report is None:
            self._awaiting[pid] = (time.monotonic() + EXIT_REPORT_WAIT, victims)
        return report

    def reported(self, pid: int, exitcode, fault: str) -> list | None:
        """A report: the tasks that waited for it, or None (kept for the EOF still on its way)."""
        waiting = self._awaiting.pop(pid, None)
        if waiting is not None:
            return waiting[1]
        self._exits[pid] = (exitcode, fault)
        while len(self._exits) > 64:  # reports of workers that held no batch
            del self._exits[next(iter(self._exits))]
        return None

    def late(self, now: float) -> list[int]:
        """Pids whose report did not come in time."""
        return [pid for pid, (deadline, _) in self._awaiting.items() if deadline <= now]

    def next_deadline(self, default: float) -> float:
        return min([default, *(deadline for deadline, _ in self._awaiting.values())])

    def take_all(self) -> list:
        """Every task waiting for a report, taken."""
        tasks = [t for _, ts in self._awaiting.values() for t in ts]
        self._awaiting.clear()
        return tasks
