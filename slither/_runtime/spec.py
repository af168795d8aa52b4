"""How a pool is sized and supervised (``PoolSpec``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import attrs

from slither.errors import ConfigurationError


def _positive_int(inst, attr, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigurationError(f"PoolSpec.{attr.name} must be a positive int, got {value!r}")


def _optional_fn(inst, attr, value):
    if value is not None and not callable(value) and not (isinstance(value, str) and ":" in value):
        raise ConfigurationError(f"PoolSpec.{attr.name} must be a callable or 'module:function', got {value!r}")


@attrs.frozen
class PoolSpec:
    """How a pool is sized and supervised.

    Args:
        size: worker processes (default: ``os.cpu_count()``).
        max_restarts, max_seconds: restart intensity. More than
            ``max_restarts`` worker restarts within ``max_seconds`` and the
            pool goes down (``PoolDown``) until ``Runtime.restart_pool``.
        max_memory: bytes of address space each worker may allocate beyond
            what it starts with (``RLIMIT_AS`` set to its size at start plus
            this); a batch that exceeds it fails (``MemoryError`` as a
            ``WorkerError``, or a crash) and the pool carries on.
        depth: batches handed to one worker at a time (1 running + queued).
            None (the default): about 1 ms of the worker's recent batches,
            at least 2 and at most 16 (for tiny batches the round trip, not
            the work, is what it would wait on). An int fixes it: 2 hides the
            round trip; 1 gives strictly one batch per worker.
        where: capabilities the workers' host must offer, for a runtime that
            leads a convention (``{"node": "gpu-1"}``, ``{"gpu": "1"}``);
            Thespian creates the workers on a matching member. A list of
            such mappings spreads the workers over them in turn (worker ``i``
            goes to ``where[i % len(where)]``). None: here.
        setup: ``fn()`` (a callable or ``"module:function"``) run once in each
            worker before its first batch, and again in every replacement; its
            value is ``slither.worker.state()`` there (load a model, open a
            connection). One that raises ends the worker with its traceback;
            that counts against the restart intensity, and ``PoolDown`` has the
            setup's ``WorkerError`` as its cause.
        teardown: ``fn()`` run in a worker that ends on purpose: recycled
            (``max_batches``), at ``shutdown()``, or when the caller goes away.
        max_batches: recycle a worker after this many batches (a leaky library):
            it gets no new batch, finishes those it holds, tears down, and its
            nanny forks a fresh one (not a restart: intensity is not touched).
        max_rss: recycle a worker, as ``max_batches`` does, once its resident
            memory (VmRSS: what it touched, pages shared with its parent
            included) is above this many bytes after a batch. Checked between
            batches, so no batch fails for it; a single batch that needs too
            much is what ``max_memory`` bounds.
    """

    size: int = attrs.field(factory=lambda: os.cpu_count() or 1, validator=_positive_int)
    max_restarts: int = 3
    max_seconds: float = 5.0
    max_memory: int | None = None
    depth: int | None = attrs.field(default=None, validator=attrs.validators.optional(_positive_int))
    where: Mapping | None = None
    setup: Any = attrs.field(default=None, validator=_optional_fn)
    teardown: Any = attrs.field(default=None, validator=_optional_fn)
    max_batches: int | None = attrs.field(default=None, validator=attrs.validators.optional(_positive_int))
    max_rss: int | None = attrs.field(default=None, validator=attrs.validators.optional(_positive_int))

    def __attrs_post_init__(self):
        if not isinstance(self.max_restarts, int) or self.max_restarts < 0:
            raise ConfigurationError(f"PoolSpec.max_restarts must be an int >= 0, got {self.max_restarts!r}")
        if not self.max_seconds > 0:
            raise ConfigurationError(f"PoolSpec.max_seconds must be > 0, got {self.max_seconds!r}")
        if self.where is not None:
            wheres = [self.where] if isinstance(self.where, Mapping) else self.where
            if not isinstance(wheres, (list, tuple)) or not wheres or not all(isinstance(w, Mapping) and w for w in wheres):
                raise ConfigurationError(
                    f"PoolSpec.where must be a mapping of capabilities or a list of them, got {self.where!r}"
                )

    @property
    def placements(self) -> list:
        """One requirements mapping (or None) per worker."""
        if self.where is None:
            return [None] * self.size
        wheres = [self.where] if isinstance(self.where, Mapping) else list(self.where)
        return [dict(wheres[i % len(wheres)]) for i in range(self.size)]


def as_spec(name: str, value: Any) -> PoolSpec:
    """``value`` (a size, a PoolSpec or a mapping) as the PoolSpec of pool ``name``."""
    if isinstance(value, PoolSpec):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return PoolSpec(size=value)
    if isinstance(value, Mapping):
        return PoolSpec(**value)
    raise ConfigurationError(f"pool {name!r}: expected a size, a PoolSpec or a mapping, got {value!r}")
