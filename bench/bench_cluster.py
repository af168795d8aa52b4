"""A leader alone against a leader plus one member, on this machine.

The member is a `slither node --network-only` process, so its workers use
the TCP data path a remote host would use. With ``--netns`` (root and
iproute2), the leader and the member run in two network namespaces joined by
a veth pair (10.77.0.1 and 10.77.0.2), so they are two hosts with their own
addresses; without it, both use loopback. Prints throughput with the
leader's workers only and with the workers split between leader and member,
the round trip of a one-item batch on a local worker against a member's
worker, a store read in a worker on each host, and what a member's replica
adds to an acknowledged write.

    .venv/bin/python bench/bench_cluster.py [--netns]
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
from slither import PoolSpec, Store, Table  # noqa: E402
from slither.cluster import Convention  # noqa: E402


class KV(Store):
    tables = [Table("t")]

    def load(self, tables):
        for i in range(1000):
            tables["t"].put(i, {"value": i, "name": f"key-{i}"})


def timed_reads(xs):
    n = 20000
    t0 = time.perf_counter()
    for i in range(n):
        KV.get("t", i % 1000)
    return [(time.perf_counter() - t0) / n for _ in xs]


def put_latency(n=300):
    lat = []
    for i in range(n):
        t0 = time.perf_counter()
        KV.put("t", "w", i)
        lat.append(time.perf_counter() - t0)
    return statistics.median(lat)


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


def run(host: str, member_prefix: list, member_listen: str | None, where: str) -> None:
    secret = secrets.token_hex(32)
    with socket.socket() as s:
        s.bind((host, 0))
        port = s.getsockname()[1]
    rt = slither.Runtime(pools={"default": 2}, stores=[KV], convention=Convention(f"{host}:{port}", secret)).start()
    node = [sys.executable, "-m", "slither.cli", "node", "--join", f"{host}:{port}", "--name", "m1", "--network-only"]
    if member_listen:
        node += ["--listen", member_listen]
    member = subprocess.Popen(
        member_prefix + node, env={**os.environ, "SLITHER_SECRET": secret}, stdout=subprocess.PIPE, text=True
    )
    try:
        member.stdout.readline()
        print(f"leader and member: {where}")
        put_alone = put_latency()  # no replica yet
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
        read_local = statistics.median(i.payload for i in rt.dispatch([0, 1, 2], timed_reads, pool="local1", batch_size=1))
        read_remote = statistics.median(i.payload for i in rt.dispatch([0, 1, 2], timed_reads, pool="remote1", batch_size=1))
        print(
            f"store read in a worker (median of 3 x 20,000): leader's host {read_local * 1e6:.2f} µs, "
            f"member's replica {read_remote * 1e6:.2f} µs ({read_remote / read_local:.2f}x)"
        )
        put_replicated = put_latency()  # the member's replica now acknowledges every write
        print(
            f"acknowledged put (median of 300): no replica {put_alone * 1e6:,.0f} µs, "
            f"with the member's replica {put_replicated * 1e6:,.0f} µs (+{(put_replicated - put_alone) * 1e6:,.0f} µs)"
        )
    finally:
        rt.shutdown()
        member.terminate()
        member.wait(30)
        member.stdout.close()


def with_namespaces() -> None:
    from slither.testing.netns import Unavailable, two_hosts

    try:
        with two_hosts("slbench") as (a, b):
            subprocess.run(
                ["ip", "netns", "exec", a.name, sys.executable, os.path.abspath(__file__), "--inside", b.name], check=True
            )
    except Unavailable as exc:
        sys.exit(f"--netns: {exc}")


def main():
    if "--inside" in sys.argv:
        ns_b = sys.argv[sys.argv.index("--inside") + 1]
        run(
            "10.77.0.1",
            ["ip", "netns", "exec", ns_b],
            "10.77.0.2",
            "two network namespaces (10.77.0.1, 10.77.0.2) on a veth pair",
        )
    elif "--netns" in sys.argv:
        with_namespaces()
    else:
        run("127.0.0.1", [], None, "one network namespace, loopback")


if __name__ == "__main__":
    main()
