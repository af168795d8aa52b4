"""Checking a dispatch's options, and resolving its function, before any work starts."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
from collections.abc import Iterable
from typing import Any

from slither import _pickle
from slither._dispatch.policies import Route, check_policy
from slither._dispatch.strategies import AutoBatch, FixedBatch, _check_positive
from slither._item import Context
from slither.errors import ConfigurationError, SerializationError

ORDERINGS = ("preserve", "as_completed")
AFFINITIES = ("none", "session")


def _positive_int(where: str, name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigurationError(f"{where}: {name} must be a positive int, got {value!r}")


def check_options(
    where: str,
    *,
    pool: str = "default",
    strategy=None,
    batch_size: int = 64,
    max_in_flight: int = 8,
    ordering: str = "preserve",
    timeout: float | None = None,
    affinity: str = "none",
    allow_auto: bool = False,
) -> None:
    """Check dispatch options (also a pool stage's, when its Pipe class is created).

    Raises:
        ConfigurationError: naming ``where``, the option and what it got.
    """
    if not isinstance(pool, str) or not pool:
        raise ConfigurationError(f"{where}: pool must be a pool name, got {pool!r}")
    if strategy is not None and not hasattr(strategy, "batches"):
        raise ConfigurationError(f"{where}: strategy must be an object with batches(items), got {strategy!r}")
    if not (allow_auto and batch_size == "auto"):
        _positive_int(where, "batch_size", batch_size)
    _positive_int(where, "max_in_flight", max_in_flight)
    if ordering not in ORDERINGS:
        raise ConfigurationError(f"{where}: ordering must be one of {ORDERINGS}, got {ordering!r}")
    if timeout is not None:
        _check_positive(where, "timeout", timeout)
    if affinity not in AFFINITIES:
        raise ConfigurationError(f"{where}: affinity must be one of {AFFINITIES}, got {affinity!r}")


def resolve_fn(fn) -> tuple[Any, bytes | None]:
    if isinstance(fn, str):
        mod, sep, attr = fn.partition(":")
        if not sep or not mod or not attr:
            raise ConfigurationError(f"fn: expected 'module:function', got {fn!r}")
        try:
            found = importlib.util.find_spec(mod)
        except (ImportError, ValueError) as exc:
            raise ConfigurationError(f"fn {fn!r}: module {mod!r} cannot be found: {exc}") from exc
        if found is None:
            raise ConfigurationError(f"fn {fn!r}: no module named {mod!r} on sys.path")
        _check_named(fn, mod, attr)
        return ("name", fn), None
    if callable(fn):
        try:
            blob = _pickle.dumps_code(fn)
        except Exception as exc:
            raise SerializationError(f"fn {fn!r} could not be pickled: {type(exc).__name__}: {exc}") from exc
        return ("pickled", hashlib.blake2b(blob, digest_size=16).hexdigest()), blob
    raise ConfigurationError(f"fn: expected 'module:function' or a callable, got {fn!r}")


_checked_names: set[str] = set()


def _check_named(fn: str, mod: str, attr: str) -> None:
    """Import ``mod`` here once and check that it has a callable ``attr`` (dotted), so a
    misspelt function fails before any work, as a missing module does. A module that
    fails to import here is left to the worker, whose error says why."""
    if fn in _checked_names:
        return
    try:
        obj = importlib.import_module(mod)
    except Exception:  # noqa: BLE001
        return
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigurationError(f"fn {fn!r}: module {mod!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise ConfigurationError(f"fn {fn!r}: {attr!r} of module {mod!r} is not callable (it is {type(obj).__name__})")
    _checked_names.add(fn)


def check_dispatch(
    items, fn, pool, strategy, batch_size, max_in_flight, ordering, on_error, timeout, context, affinity, executor
):
    """Every check of a dispatch call, before any work; returns the strategy to use.

    Raises:
        ConfigurationError: naming the option and what it got.
    """
    check_options(
        "dispatch",
        pool=pool,
        strategy=strategy,
        batch_size=batch_size,
        max_in_flight=max_in_flight,
        ordering=ordering,
        timeout=timeout,
        affinity=affinity,
        allow_auto=True,
    )
    check_policy(on_error)
    if isinstance(on_error, Route) and not callable(on_error.fn):
        raise ConfigurationError("on_error=Route(...) in a dispatch needs a callable fn(item, reason) -> Item")
    if context is not None and not isinstance(context, Context):
        raise ConfigurationError(f"context must be a slither.Context, got {type(context).__name__}")
    if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise ConfigurationError(f"items must be an iterable of payloads or Items, got {type(items).__name__}")
    if executor is None and fn is None:
        raise ConfigurationError("dispatch needs fn ('module:function' or a callable) unless executor= is given")
    if executor is not None and not hasattr(executor, "execute_batch"):
        raise ConfigurationError(f"executor: expected an object with execute_batch(batch, ctx), got {executor!r}")
    if strategy is not None:
        return strategy
    return AutoBatch() if batch_size == "auto" else FixedBatch(batch_size)
