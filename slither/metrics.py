"""Prometheus metrics for a runtime: ``pip install 'slither[metrics]'`` (prometheus_client).

::

    m = slither.metrics.Metrics(rt)           # its own CollectorRegistry unless given one
    body = m.exposition()                     # the text format, for any HTTP server
    m.close()                                 # detach its telemetry handlers

``slither serve --status-port PORT`` serves it at ``/metrics``. Two kinds of metric:

* histograms and counters fed by telemetry events, as they happen:
  ``slither_batch_duration_seconds{pool,pipe,stage}``,
  ``slither_batch_failures_total{pool,reason}``,
  ``slither_pipe_stage_duration_seconds{pipe,stage}``,
  ``slither_store_write_duration_seconds{store}`` and ``slither_store_writes_total{store}``
  (items written), ``slither_worker_crashes_total{pool}``;
* the runtime's state, read at each scrape: per pool its size, connected workers,
  batches queued and in flight, crashes and restarts, and whether it is down; per
  long-lived pipe its submitted, completed and pending inputs, its runner's restarts,
  and per stage the items in, out, skipped and routed, its busy seconds and the chunks
  queued before it.
"""

from __future__ import annotations

import itertools

from slither import telemetry

_BATCH = [("slither", "dispatch", "batch", "stop"), ("slither", "dispatch", "batch", "exception")]
_STAGE = [("slither", "pipe", "stage", "stop")]
_STORE = [("slither", "store", "write")]
_CRASH = [("slither", "worker", "crash")]
_ids = itertools.count(1)


def _require():
    try:
        import prometheus_client
    except ImportError:
        from slither.errors import ConfigurationError

        raise ConfigurationError("Prometheus metrics need prometheus_client: pip install 'slither[metrics]'") from None
    return prometheus_client


class Metrics:
    """Prometheus metrics of ``runtime`` (see the module docstring)."""

    def __init__(self, runtime, registry=None):
        pc = _require()
        self._pc = pc
        self.runtime = runtime
        self.registry = registry if registry is not None else pc.CollectorRegistry()
        r = self.registry
        self.batch_seconds = pc.Histogram(
            "slither_batch_duration_seconds", "Batches run, by pool and pipe stage", ["pool", "pipe", "stage"], registry=r
        )
        self.batch_failures = pc.Counter(
            "slither_batch_failures", "Batches that failed, by the failure's type", ["pool", "reason"], registry=r
        )
        self.stage_seconds = pc.Histogram(
            "slither_pipe_stage_duration_seconds", "Chunks through a pipe stage", ["pipe", "stage"], registry=r
        )
        self.store_seconds = pc.Histogram("slither_store_write_duration_seconds", "Store writes", ["store"], registry=r)
        self.store_items = pc.Counter("slither_store_writes", "Items written to a store", ["store"], registry=r)
        self.crashes = pc.Counter("slither_worker_crashes", "Worker processes that died under a batch", ["pool"], registry=r)
        r.register(_State(pc, runtime))
        self._ids = []
        for events in (_BATCH, _STAGE, _STORE, _CRASH):
            hid = f"slither-metrics-{next(_ids)}"
            telemetry.attach(hid, events, self._on_event)
            self._ids.append(hid)

    def _on_event(self, event, measurements, md) -> None:
        kind = event[1:3]
        if kind == ("dispatch", "batch"):
            pool = str(md.get("pool") or "")
            if event[3] == "stop":
                labels = (pool, str(md.get("pipe") or ""), str(md.get("stage") or ""))
                self.batch_seconds.labels(*labels).observe(measurements.get("duration", 0) / 1e9)
            else:
                self.batch_failures.labels(pool, type(md.get("error")).__name__).inc()
        elif kind == ("pipe", "stage"):
            self.stage_seconds.labels(str(md.get("pipe")), str(md.get("stage"))).observe(measurements.get("duration", 0) / 1e9)
        elif kind == ("store", "write"):
            store = str(md.get("store"))
            self.store_seconds.labels(store).observe(measurements.get("duration", 0) / 1e9)
            self.store_items.labels(store).inc(measurements.get("count", 1) or 0)
        elif kind == ("worker", "crash"):
            self.crashes.labels(str(md.get("pool"))).inc()

    def exposition(self) -> bytes:
        """The registry in Prometheus's text format."""
        return self._pc.generate_latest(self.registry)

    content_type = "text/plain; version=0.0.4; charset=utf-8"

    def close(self) -> None:
        """Detach this object's telemetry handlers (its registry keeps what it counted)."""
        for hid in self._ids:
            telemetry.detach(hid)
        self._ids = []


class _State:
    """The runtime's pools and pipes, read at each scrape."""

    def __init__(self, pc, runtime):
        self._pc = pc
        self._rt = runtime

    def describe(self):
        return []  # read at scrape time only: nothing to check at registration

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        rt = self._rt
        gauges = {
            "size": GaugeMetricFamily("slither_pool_size", "Workers a pool should have", labels=["pool"]),
            "connected": GaugeMetricFamily("slither_pool_workers", "Workers connected", labels=["pool"]),
            "queued": GaugeMetricFamily("slither_pool_queued_batches", "Batches waiting for a worker", labels=["pool"]),
            "in_flight": GaugeMetricFamily("slither_pool_in_flight_batches", "Batches on workers", labels=["pool"]),
            "down": GaugeMetricFamily("slither_pool_down", "1 when the pool is down", labels=["pool"]),
        }
        counters = {
            "crashes": CounterMetricFamily("slither_pool_crashes", "Workers that died", labels=["pool"]),
            "restarts": CounterMetricFamily("slither_pool_restarts", "Workers restarted", labels=["pool"]),
        }
        for name, pool in list(getattr(rt, "_pools", {}).items()):
            s = pool.stats()
            for key, fam in {**gauges, **counters}.items():
                fam.add_metric([name], float(getattr(s, key)))
        yield from gauges.values()
        yield from counters.values()
        pipe_g = {
            k: GaugeMetricFamily(f"slither_pipe_{k}_inputs", f"A long-lived pipe's {k} inputs", labels=["pipe"])
            for k in ("pending",)
        }
        pipe_c = {
            k: CounterMetricFamily(f"slither_pipe_{k}_inputs", f"A long-lived pipe's {k} inputs", labels=["pipe"])
            for k in ("submitted", "completed")
        }
        restarts = CounterMetricFamily("slither_pipe_runner_restarts", "Restarts of a pipe's runner", labels=["pipe"])
        up = GaugeMetricFamily("slither_pipe_up", "1 while the pipe runs", labels=["pipe"])
        stage = {
            k: CounterMetricFamily(f"slither_pipe_stage_items_{k}", f"Items {k} at a pipe stage", labels=["pipe", "stage"])
            for k in ("in", "out", "skipped", "routed")
        }
        busy = CounterMetricFamily("slither_pipe_stage_busy_seconds", "Time a stage spent on its items", labels=["pipe", "stage"])
        queued = GaugeMetricFamily("slither_pipe_stage_queued_chunks", "Chunks waiting for a stage", labels=["pipe", "stage"])
        for h in list(getattr(rt, "_pipes", [])):
            st = h.status()
            for k, fam in {**pipe_g, **pipe_c}.items():
                fam.add_metric([h.name], float(st[k]))
            restarts.add_metric([h.name], float(st.get("restarts") or 0))
            up.add_metric([h.name], 1.0 if st["state"] == "running" else 0.0)
            for sname, counts in st.get("stages", {}).items():
                for k, fam in stage.items():
                    fam.add_metric([h.name, sname], float(counts.get(k, 0)))
                busy.add_metric([h.name, sname], float(counts.get("seconds", 0.0)))
                queued.add_metric([h.name, sname], float(counts.get("queued", 0)))
        yield from pipe_g.values()
        yield from pipe_c.values()
        yield restarts
        yield up
        yield from stage.values()
        yield busy
        yield queued


__all__ = ["Metrics"]
