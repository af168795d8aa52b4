"""Slither: isolated worker processes under a supervised actor runtime.

Three primitives: :class:`Store` (shared state, lock-free reads from every
process), :func:`dispatch` (batched fan-out with backpressure), and
:class:`Pipe` (declarative pipelines). See ``docs/``.
"""

from loguru import logger as _logger

from slither import cluster, errors, stage, telemetry, worker
from slither._api import call_batch, dispatch, dispatch_stream, map, run_pipe, start_pipe, stream_pipe
from slither._dispatch import AutoBatch, FixedBatch, InlineExecutor, KeyPartition, Retry, Route, Skipped, Strategy, WeightedBatch
from slither._executor import Executor
from slither._item import Context, Item
from slither._pipe import Pipe, PipeHandle, PipeResult
from slither._runtime import PoolSpec, Runtime, runtime, shutdown, start
from slither._store import ANY, Store, Table, View
from slither.cluster import Convention
from slither.errors import (
    BadBatchResult,
    BatchTimeout,
    ConfigurationError,
    DispatchError,
    PipeDefinitionError,
    PipeDown,
    PipeError,
    PoolDown,
    RemoteTraceback,
    RuntimeNotStarted,
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
    "AutoBatch",
    "BadBatchResult",
    "BatchTimeout",
    "ChildSpec",
    "ConfigurationError",
    "Context",
    "Convention",
    "DispatchError",
    "Executor",
    "Fail",
    "FixedBatch",
    "InlineExecutor",
    "Item",
    "KeyPartition",
    "Pipe",
    "PipeDefinitionError",
    "PipeDown",
    "PipeError",
    "PipeHandle",
    "PipeResult",
    "PoolDown",
    "PoolSpec",
    "RemoteTraceback",
    "Retry",
    "Route",
    "Routed",
    "Runtime",
    "RuntimeNotStarted",
    "SerializationError",
    "Skip",
    "Skipped",
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
    "cluster",
    "dispatch",
    "dispatch_stream",
    "errors",
    "map",
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


def __getattr__(name: str):
    # slither.testing (fault injectors, hypothesis strategies) is imported on first use only.
    if name == "testing":
        import importlib

        return importlib.import_module("slither.testing")
    raise AttributeError(f"module 'slither' has no attribute {name!r}")


# Quiet by default, as a library should be: `logger.enable("slither")` to see our logs.
_logger.disable("slither")
del _logger
