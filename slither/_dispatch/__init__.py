"""Batched fan-out to a pool of worker processes, with real backpressure.

One job a module: ``strategies`` (cutting the input into batches),
``policies`` (what a failed batch becomes), ``executors`` (running a batch
without a pool), ``options`` (checks before any work), ``batch`` (a batch and
its frame), ``engine`` (one running dispatch: window, ordering, retries,
cancellation; its module docstring draws how a batch travels), ``api`` (the
calls a ``Runtime`` makes).

Tunables and their trade-offs:

* ``batch_size`` (FixedBatch): larger batches amortise the per-batch cost
  (~tens of µs here) but coarsen load balancing, retries and timeouts.
* ``max_in_flight``: how much input is read ahead. It bounds memory; it
  should be at least ``2 × workers`` to keep every worker fed. Unless given,
  ``dispatch`` and ``map`` size it from the pool (twice the sum of its
  workers' depths, at least 8 and 16); ``dispatch_stream`` reads 8 ahead.
* ``timeout``: per batch, counted from when the batch starts on a worker
  (None by default). A late batch's worker is SIGKILLed and replaced.
* ``on_error``: "halt" | "skip" | ``Retry(...)`` | ``Route(fn)``.
"""

from slither._dispatch.api import (
    call_batch,
    collect,
    collecting,
    dispatch,
    dispatch_stream,
    known_options,
    progress_bar,
    run_on_workers,
)
from slither._dispatch.engine import _Dispatch
from slither._dispatch.executors import InlineExecutor
from slither._dispatch.mapping import Skipped, map_values
from slither._dispatch.options import check_options
from slither._dispatch.policies import Retry, Route, check_policy
from slither._dispatch.strategies import AutoBatch, FixedBatch, KeyPartition, Strategy, WeightedBatch

__all__ = [
    "AutoBatch",
    "FixedBatch",
    "InlineExecutor",
    "KeyPartition",
    "Retry",
    "Route",
    "Skipped",
    "Strategy",
    "WeightedBatch",
    "_Dispatch",
    "call_batch",
    "collect",
    "collecting",
    "check_options",
    "check_policy",
    "dispatch",
    "dispatch_stream",
    "known_options",
    "map_values",
    "progress_bar",
    "run_on_workers",
]
