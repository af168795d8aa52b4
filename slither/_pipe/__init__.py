"""Declarative pipelines: inline, pool and router stages, pipelined.

One job a module: ``definition`` (the ``Pipe`` class, checked when it is
created), ``run`` (one execution: threads, bounded inboxes, the collector;
its docstring draws how items travel), ``stages`` (what each kind of stage
does), ``handle`` (a long-lived pipe's handle), ``api`` (run_pipe,
stream_pipe, start_pipe).
"""

from slither._pipe.api import run_pipe, start_pipe, stream_pipe
from slither._pipe.definition import Pipe, PipeResult
from slither._pipe.handle import PipeHandle

__all__ = ["Pipe", "PipeHandle", "PipeResult", "run_pipe", "start_pipe", "stream_pipe"]
