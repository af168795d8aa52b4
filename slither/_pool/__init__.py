"""The caller's side of the data plane: one ``Pool`` per named pool, and the ``Hub``.

``task`` (a batch on its way, a worker's connection), ``scheduler`` (who gets
which task; no I/O), ``sender`` and ``receiver`` (the sockets), ``pool`` (the
façade: replies, crashes, the end), ``exits`` (a dead worker's EOF matched with
its nanny's report), ``timer`` (timeouts), ``remote`` (tracebacks, log records
and crashes from workers), ``hub`` (where workers connect).
"""

from slither._pool.exits import EXIT_REPORT_WAIT
from slither._pool.hub import Hub
from slither._pool.pool import Pool, PoolStats
from slither._pool.task import Task, WorkerConn, new_ref

__all__ = ["EXIT_REPORT_WAIT", "Hub", "Pool", "PoolStats", "Task", "WorkerConn", "new_ref"]
