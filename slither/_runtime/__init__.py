"""The runtime: ``runtime`` (the ``Runtime`` class), ``spec`` (``PoolSpec``), ``pools``
(starting pools), ``stop`` (stopping the actor system), ``current`` (the default
runtime, and which one the top-level functions use).
"""

from slither._registry import _current, _live
from slither._runtime.current import runtime, shutdown, start
from slither._runtime.runtime import Runtime
from slither._runtime.spec import PoolSpec

__all__ = ["PoolSpec", "Runtime", "runtime", "shutdown", "start", "_current", "_live"]
