"""A leader alone against a leader plus one member, on this machine.

The member is a `slither node --network-only` process, so its workers use
the TCP data path a remote host would use (same machine, loopback: no
network namespaces yet). Prints throughput with the leader's workers only,
with the workers split between leader and member, and the round trip of a
one-item batch on a local worker against a member's worker.

    .venv/bin/python bench/bench_cluster.py
"""

from __future__ import annotations

import os
import secrets
import socket
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _util import median_time  # noqa: E402

import slither  # noqa: E402
from slither import PoolSpec  # noqa: E402
from slither.cluster import Convention  # noqa: E402


def busy_1ms(xs):
    t_end = time.perf_counter() + 0.001
    while time.perf_counter() < t_end:
        pass
    return xs


def round_trip(rt, pool, n=200):
    lat = []
    for i in range(n):
        t0 = time.perf_counter()
        rt.dispatch([i], lambda xs: xs, pool=pool)
        lat.append(time.perf_counter() - t0)
    return statistics.median(lat)


def main():
    secret = secrets.token_hex(32)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rt = slither.Runtime(pools={"default": 2}, convention=Convention(f"127.0.0.1:{port}", secret)).start()
    member = subprocess.Popen(
        [sys.executable, "-m", "slither.cli", "node", "--join", f"127.0.0.1:{port}", "--name", "m1", "--network-only"],
        env={**os.environ, "SLITHER_SECRET": secret},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        member.stdout.readline()
        rt.add_pool("local1", PoolSpec(size=1, where={"node": "leader"}))
        rt.add_pool("remote1", PoolSpec(size=1, where={"node": "m1"}))
        rt.add_pool("split", PoolSpec(size=2, where=[{"node": "leader"}, {"node": "m1"}]))
        items = list(range(64 * 200))
        for pool in ("default", "split"):
            rt.dispatch(items[:640], busy_1ms, pool=pool)
        t_local = median_time(lambda: rt.dispatch(items, busy_1ms, pool="default", batch_size=64), 3)
        t_split = median_time(lambda: rt.dispatch(items, busy_1ms, pool="split", batch_size=64), 3)
        n = len(items) / 64
        print(
            f"1 ms batches, 2 workers: leader only {n / t_local:,.0f} batches/s; "
            f"leader + member {n / t_split:,.0f} batches/s ({t_local / t_split:.2f}x)"
        )
        lat_local = round_trip(rt, "local1")
        lat_remote = round_trip(rt, "remote1")
        print(
            f"one-item batch round trip (median): local worker {lat_local * 1e6:,.0f} µs, "
            f"member's worker over TCP {lat_remote * 1e6:,.0f} µs (+{(lat_remote - lat_local) * 1e6:,.0f} µs)"
        )
    finally:
        rt.shutdown()
        member.terminate()
        member.wait(30)
        member.stdout.close()


if __name__ == "__main__":
    main()
