"""Views: named read functions of a store, callable from any process of the runtime."""

from __future__ import annotations

import threading
import time

from slither import telemetry
from slither._store.local import _registry
from slither.errors import StoreError, ViewNotFound, ViewTimeout


def call_view(name: str, params, ctx, store: str | None = None):
    found = None
    for e in [_registry[store]] if store in _registry else list(_registry.values()):
        for v in e.cls.views:
            if v.name == name:
                found = (e, v)
                break
        if found:
            break
    if found is None:
        raise ViewNotFound(f"no started store has a view named {name!r}")
    e, v = found
    if v.scope == "session" and e.name not in set((ctx.stores or {}).values()):
        raise ViewNotFound(
            f"view {name!r} of store {e.name!r} is session-scoped: callable only during a pipe run whose pipe declares the store"
        )
    if v.mode == "batch" and not isinstance(params, list):
        raise ValueError(f"view {name!r} is a batch view: params must be a list")
    meta = {"store": e.name, "view": name, "session_id": getattr(ctx, "session_id", None)}
    t0 = time.monotonic_ns()
    telemetry._emit_anywhere(("slither", "store", "view", "start"), {"system_time": time.time_ns()}, meta)
    if v.timeout is None:
        result = v.handler(params, ctx)
    else:
        box: dict = {}

        def run():
            try:
                box["ok"] = v.handler(params, ctx)
            except BaseException as exc:  # noqa: BLE001
                box["err"] = exc

        t = threading.Thread(target=run, name=f"slither-view-{name}", daemon=True)
        t.start()
        t.join(v.timeout)
        if t.is_alive():
            raise ViewTimeout(f"view {name!r} of store {e.name!r} ran past its timeout of {v.timeout}s")
        if "err" in box:
            raise box["err"]
        result = box["ok"]
    if v.mode == "batch" and (not isinstance(result, list) or len(result) != len(params)):
        raise StoreError(f"batch view {name!r} returned {type(result).__name__}; expected a list of {len(params)}")
    telemetry._emit_anywhere(("slither", "store", "view", "stop"), {"duration": time.monotonic_ns() - t0}, meta)
    return result
