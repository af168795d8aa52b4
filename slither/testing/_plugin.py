"""What the pytest plugin (``pytest_slither``) builds on: shared runtimes and the chaos monkey."""

from __future__ import annotations

import os
import random
import signal
import threading

from slither._runtime import Runtime
from slither.errors import ConfigurationError
from slither.testing import wait_pids_gone

DEFAULT_POOLS = {"default": 2}


def runtime_options(marker, where: str) -> dict:
    """The ``Runtime`` arguments a ``@pytest.mark.slither(...)`` marker asks for."""
    if marker is None:
        return {"pools": dict(DEFAULT_POOLS)}
    if marker.args:
        raise ConfigurationError(f"{where}: @pytest.mark.slither takes keyword arguments only (pools=..., stores=...)")
    opts = dict(marker.kwargs)
    opts.setdefault("pools", dict(DEFAULT_POOLS))
    return opts


class Runtimes:
    """The runtimes of one fixture scope, one per distinct configuration."""

    def __init__(self):
        self._by_key: dict[str, Runtime] = {}
        self._pids: set[int] = set()

    def get(self, opts: dict) -> Runtime:
        key = repr(sorted(opts.items(), key=lambda kv: kv[0]))
        rt = self._by_key.get(key)
        if rt is None or not rt.running:
            rt = self._by_key[key] = Runtime(**opts).start()
        self._pids.update(rt.pids())
        return rt

    def close(self) -> list[int]:
        """Shut every runtime down; the pids of processes still alive after it."""
        for rt in self._by_key.values():
            if rt.running:
                self._pids.update(rt.pids())
                rt.shutdown()
        self._by_key.clear()
        return wait_pids_gone(self._pids, timeout=5)


class Chaos:
    """A thread that SIGKILLs a random worker of ``rt`` every 50-300 ms (a seeded schedule)."""

    def __init__(self, rt: Runtime, seed):
        self.rt = rt
        self.kills = 0
        self._rng = random.Random(str(seed))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slither-chaos", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._rng.uniform(0.05, 0.3)):  # the schedule itself is what is random
            pids = [p for name in sorted(self.rt._pools) for p in self.rt.worker_pids(name)]
            if not pids:
                continue
            try:
                os.kill(self._rng.choice(pids), signal.SIGKILL)
                self.kills += 1
            except ProcessLookupError:
                pass

    def __enter__(self) -> Chaos:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
