"""Declarative pipelines: inline, pool and router stages, pipelined.

One job a module: ``definition`` (the ``Pipe`` class, checked when it is
created), ``run`` (one execution: threads, bounded inboxes, the collector;
its docstring draws how items travel), ``stages`` (what each kind of stage
does), ``handle`` (a long-lived pipe's handle, and the engine that runs its stages
in this process), ``api`` (run_pipe, stream_pipe, start_pipe). A supervised
long-lived pipe runs in a PipeRunner process: see ``slither._pipe_runner``.
"""

from slither._pipe.api import check_restart, run_pipe, start_pipe, stream_pipe
from slither._pipe.definition import Pipe, PipeResult, check_handlers_travel
from slither._pipe.handle import LocalEngine, PipeHandle

__all__ = [
    "Pipe",
    "PipeHandle",
    "PipeResult",
    "LocalEngine",
    "check_handlers_travel",
    "check_restart",
    "run_pipe",
    "start_pipe",
    "stream_pipe",
]
