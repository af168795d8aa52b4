"""Slither: isolated worker processes under a supervised actor runtime.

Three primitives: :class:`Store` (shared state, lock-free reads from every
process), :func:`dispatch` (batched fan-out with backpressure), and
:class:`Pipe` (declarative pipelines). See ``docs/``.
"""

from slither import errors, stage, telemetry, testing, worker
from slither._dispatch import (
    FixedBatch,
    InlineExecutor,
    KeyPartition,
    Retry,
    Route,
    Strategy,
    WeightedBatch,
    call_batch,
    dispatch,
    dispatch_stream,
)
from slither._item import Context, Item
from slither._pipe import Pipe, PipeHandle, PipeResult, run_pipe, start_pipe, stream_pipe
from slither._runtime import PoolSpec, Runtime, runtime, shutdown, start
from slither._store import ANY, Store, Table, View
from slither.errors import (
    BadBatchResult,
    BatchTimeout,
    ConfigurationError,
    DispatchError,
    PipeDefinitionError,
    PipeError,
    PoolDown,
    SerializationError,
    SlitherError,
    StoreError,
    ViewNotFound,
    ViewTimeout,
    WorkerCrashed,
    WorkerError,
)
from slither.stage import Fail, Routed, Skip
from slither.supervision import ChildSpec, Supervisor

__version__ = "0.1.0"

__all__ = [
    "ANY",
    "BadBatchResult",
    "BatchTimeout",
    "ChildSpec",
    "ConfigurationError",
    "Context",
    "DispatchError",
    "Fail",
    "FixedBatch",
    "InlineExecutor",
    "Item",
    "KeyPartition",
    "Pipe",
    "PipeDefinitionError",
    "PipeError",
    "PipeHandle",
    "PipeResult",
    "PoolDown",
    "PoolSpec",
    "Retry",
    "Route",
    "Routed",
    "Runtime",
    "SerializationError",
    "Skip",
    "SlitherError",
    "Store",
    "StoreError",
    "Strategy",
    "Supervisor",
    "Table",
    "View",
    "ViewNotFound",
    "ViewTimeout",
    "WeightedBatch",
    "WorkerCrashed",
    "WorkerError",
    "call_batch",
    "dispatch",
    "dispatch_stream",
    "errors",
    "run_pipe",
    "runtime",
    "shutdown",
    "stage",
    "start",
    "start_pipe",
    "stream_pipe",
    "telemetry",
    "worker",
    "testing",
]

# Quiet by default, as a library should be: `logger.enable("slither")` to see our logs.
from loguru import logger as _logger

_logger.disable("slither")
del _logger
