"""The ``slither`` command: run the examples and their pure-Python baselines.

::

    slither example                     list the examples
    slither example NAME [--no-baseline] [--workers N]
    slither example --all [--no-baseline] [--workers N]
    slither baseline NAME|--all [--mode unsafe|safe|both] [--threads N]

Exit status: 0 when every check of every example (and of the safe
baselines) passed, 1 otherwise, 2 for usage errors. Unsafe baselines show
the races the examples avoid; their failing checks are reported, not fatal.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

from slither import cluster
from slither.examples import DESCRIPTIONS, EXAMPLES
from slither.examples._common import MissingExtra, gil_status, progress_wanted


def _module(name: str):
    return importlib.import_module(f"slither.examples.{name}")


def _names(name: str | None, all_: bool, parser) -> list[str]:
    if all_:
        return list(EXAMPLES)
    if name not in EXAMPLES:
        parser.error(f"unknown example {name!r}; choose one of: {', '.join(EXAMPLES)}")
    return [name]


def _run_baseline(name: str, modes: list[str], threads: int) -> tuple[bool, dict]:
    ok = True
    times = {}
    for mode in modes:
        print(f"\n--- baseline {name} ({mode}, {threads} threads, {gil_status()}) ---", flush=True)
        t0 = time.perf_counter()
        passed = _module(name).baseline(mode=mode, threads=threads)
        times[mode] = time.perf_counter() - t0
        if mode == "unsafe" and not passed:
            print(f"unsafe baseline of {name}: a check failed, as races allow; slither avoids this by isolation")
        elif not passed:
            ok = False
    return ok, times


def cmd_example(args, parser) -> int:
    if not args.name and not args.all:
        print("Slither examples (run one with: slither example NAME, or all with --all):\n")
        for n in EXAMPLES:
            print(f"  {n:<16} {DESCRIPTIONS[n]}")
        return 0
    failed = []
    for name in _names(args.name, args.all, parser):
        print(f"\n=== {name}: {DESCRIPTIONS[name]} ===", flush=True)
        t0 = time.perf_counter()
        try:
            ok = _module(name).run(workers=args.workers, progress=progress_wanted())
        except MissingExtra as exc:
            print(f"skipped {name}: {exc}")
            continue
        elapsed = time.perf_counter() - t0
        if not ok:
            failed.append(name)
        if not args.no_baseline:
            try:
                bok, times = _run_baseline(name, ["unsafe", "safe"], args.threads)
            except MissingExtra as exc:
                print(f"skipped baseline of {name}: {exc}")
                continue
            if not bok:
                failed.append(f"{name} (safe baseline)")
            print(
                f"\ncomparison for {name}: slither {elapsed:.2f}s (checks {'passed' if ok else 'FAILED'}); "
                + ", ".join(f"threads/{m} {t:.2f}s" for m, t in times.items())
            )
    if failed:
        print(f"\nFAILED: {', '.join(failed)}")
        return 1
    print("\nall checks passed")
    return 0


def cmd_baseline(args, parser) -> int:
    modes = ["unsafe", "safe"] if args.mode == "both" else [args.mode]
    failed = []
    for name in _names(args.name, args.all, parser):
        try:
            ok, _ = _run_baseline(name, modes, args.threads)
        except MissingExtra as exc:
            print(f"skipped {name}: {exc}")
            continue
        if not ok:
            failed.append(name)
    return 1 if failed else 0


def cmd_node(args, parser) -> int:
    import os

    secret = None
    if args.secret_file:
        try:
            with open(args.secret_file, "rb") as f:
                secret = f.read().strip()
        except OSError as exc:
            parser.error(f"--secret-file: {exc}")
    else:
        secret = os.environ.get("SLITHER_SECRET", "").encode() or None
    if not secret:
        parser.error("node needs the convention secret: --secret-file PATH, or SLITHER_SECRET in the environment")
    caps = {}
    for cap in args.capability:
        key, sep, value = cap.partition("=")
        if not sep or not key:
            parser.error(f"--capability: expected key=value, got {cap!r}")
        caps[key] = value
    if args.workers is not None:
        caps["workers"] = str(args.workers)
    try:
        cluster.run_node(
            args.join,
            secret,
            caps,
            name=args.name,
            admin_port=args.admin_port,
            host=args.listen,
            network_only=args.network_only,
            ready=lambda c: print(f"slither node {c['node']} joined {args.join} with {c}", flush=True),
            join_timeout=args.join_timeout,
            replica_dir=args.replica_dir,
            waiting=lambda t: print(
                f"slither node: no answer from the leader at {args.join} after {t:.0f}s "
                "(is it running, reachable, and using the same secret?)",
                file=sys.stderr,
                flush=True,
            ),
        )
    except Exception as exc:  # noqa: BLE001 - a clear one-line error for the operator
        print(f"slither node: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slither", description="Slither: examples, baselines, cluster members")
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("example", help="list or run the examples")
    ex.add_argument("name", nargs="?")
    ex.add_argument("--all", action="store_true", help="run every example")
    ex.add_argument("--no-baseline", action="store_true", help="skip the threaded baselines")
    ex.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    ex.add_argument("--threads", type=int, default=4, help="threads for the baselines (default 4)")
    bl = sub.add_parser("baseline", help="run the pure-Python threaded baselines")
    bl.add_argument("name", nargs="?")
    bl.add_argument("--all", action="store_true")
    bl.add_argument("--mode", choices=["unsafe", "safe", "both"], default="both")
    bl.add_argument("--threads", type=int, default=4)
    nd = sub.add_parser("node", help="run a member that joins a leader's convention (see docs/cluster.md)")
    nd.add_argument("--join", required=True, metavar="HOST:PORT", help="the leader's Convention.address")
    nd.add_argument("--secret-file", help="file holding the convention secret (default: $SLITHER_SECRET)")
    nd.add_argument("--capability", action="append", default=[], metavar="KEY=VALUE", help="offered to PoolSpec(where=...)")
    nd.add_argument("--workers", type=int, default=None, help="advertised as the capability workers=N")
    nd.add_argument("--name", help="this member's capability node= (default HOSTNAME:ADMINPORT)")
    nd.add_argument("--listen", help="address to listen on (default: the one that reaches the leader)")
    nd.add_argument("--admin-port", type=int, default=0, help="Thespian admin port (default: a free one)")
    nd.add_argument("--network-only", action="store_true", help="workers use TCP even when the leader is local")
    nd.add_argument(
        "--replica-dir",
        metavar="DIR",
        help="where store replicas live (default /dev/shm, else the system temp dir); a private directory is made inside",
    )
    nd.add_argument(
        "--join-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="exit with an error if the leader has not accepted this member by then",
    )
    args = parser.parse_args(argv)
    if args.command == "node":
        if args.workers is not None and args.workers < 1:
            parser.error("--workers must be at least 1")
        return cmd_node(args, parser)
    if getattr(args, "workers", 1) < 1 or args.threads < 1:
        parser.error("--workers and --threads must be at least 1")
    if args.command == "example":
        return cmd_example(args, parser)
    if not args.name and not args.all:
        parser.error("baseline needs NAME or --all")
    return cmd_baseline(args, parser)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
