"""The ``slither`` command: run the examples and their pure-Python baselines.

::

    slither example                     list the examples
    slither example NAME [--no-baseline] [--workers N] [--threads N] [--json PATH]
    slither example --all [--no-baseline] [--workers N] [--threads N] [--json PATH]
    slither baseline NAME|--all [--mode unsafe|safe|both] [--threads N]
    slither serve mod:Pipe --source mod:fn --sink [OUTPUT=]mod:fn [--workers N] [--status-port P]
    slither status PORT|HOST:PORT|URL [--json]
    slither node --join HOST:PORT ...   (docs/cluster.md)

``serve`` runs a long-lived pipe as a service (see ``slither._serve``).
Each example prints a table: its wall time, Slither's speedup on each
threaded baseline, and whether each one's checks passed; ``--all`` closes
with a summary line, and ``--json`` writes the same figures for scripts.
Exit status: 0 when every check of every example (and of the safe
baselines) passed, 1 otherwise, 2 for usage errors. Unsafe baselines show
the races the examples avoid; their failing checks are reported, not fatal.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import sys

from slither import cluster
from slither.examples import DESCRIPTIONS, EXAMPLES
from slither.examples._common import MissingExtra, Outcome, gil_status, progress_wanted


def _module(name: str):
    return importlib.import_module(f"slither.examples.{name}")


def _names(name: str | None, all_: bool, parser) -> list[str]:
    if all_:
        return list(EXAMPLES)
    if name not in EXAMPLES:
        parser.error(f"unknown example {name!r}; choose one of: {', '.join(EXAMPLES)}")
    return [name]


def _run_baseline(name: str, modes: list[str], threads: int) -> dict[str, Outcome]:
    outcomes = {}
    for mode in modes:
        print(f"\n--- baseline {name} ({mode}, {gil_status()}) ---", flush=True)
        outcomes[mode] = _module(name).baseline(mode=mode, threads=threads)
        if mode == "unsafe" and not outcomes[mode]:
            print(f"unsafe baseline of {name}: a check failed, as races allow; slither avoids this by isolation")
    return outcomes


def _table(name: str, workers: int, ours: Outcome, theirs: dict[str, Outcome]) -> None:
    """The comparison of one example: wall time, Slither's speedup on each baseline, checks."""
    print(f"\ncomparison for {name} (wall seconds; Slither's include starting its runtime, no one's include the checks)")
    print(f"  {'contender':<24}{'seconds':>9}{'slither is':>14}  checks")
    print(f"  {f'slither, {workers} workers':<24}{ours.seconds:>9.2f}{'':>14}  {_passed(ours)}")
    for mode, o in theirs.items():
        label = f"threads ({mode}), {o.threads}"
        print(f"  {label:<24}{o.seconds:>9.2f}{_speedup(o.seconds / ours.seconds):>14}  {_passed(o, mode)}")
    for o in (ours, *theirs.values()):
        for finding in o.findings:
            print(f"  {finding}")
    safe = theirs.get("safe")
    why = getattr(_module(name), "THREADS_WIN", None)
    if safe is not None and safe.seconds < ours.seconds and why:
        print(f"  threads win on time here: {why}")


def _forget(name: str) -> None:
    """Drop an example's cached inputs once it is done: the next example's runtime forks from
    this process, and its workers would inherit (and their collector walk) those objects."""
    for value in vars(_module(name)).values():
        if callable(getattr(value, "cache_clear", None)):
            value.cache_clear()
    gc.collect()


def _speedup(ratio: float) -> str:
    return f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"


def _passed(o: Outcome, mode: str = "") -> str:
    if o:
        return "passed"
    return "FAILED (races, as expected without isolation)" if mode == "unsafe" else "FAILED"


def _summary(rows: list[dict]) -> str:
    parts = []
    for r in rows:
        safe = next((b for b in r["baselines"] if b["mode"] == "safe"), None)
        if safe is None:
            parts.append(f"{r['name']} {r['slither_s']:.2f}s")
            continue
        ratio = safe["seconds"] / r["slither_s"]
        win = " (threads win: the work releases the GIL)" if ratio < 1 else ""
        parts.append(f"{r['name']} {_speedup(ratio)}{win}")
    return "summary, slither against safe threads: " + "; ".join(parts)


def cmd_example(args, parser) -> int:
    if not args.name and not args.all:
        print("Slither examples (run one with: slither example NAME, or all with --all):\n")
        for n in EXAMPLES:
            print(f"  {n:<16} {DESCRIPTIONS[n]}")
        return 0
    threads = args.threads or args.workers
    failed, rows = [], []
    for name in _names(args.name, args.all, parser):
        print(f"\n=== {name}: {DESCRIPTIONS[name]} ===", flush=True)
        try:
            ours = _module(name).run(workers=args.workers, progress=progress_wanted())
            theirs = {} if args.no_baseline else _run_baseline(name, ["unsafe", "safe"], threads)
        except MissingExtra as exc:
            print(f"skipped {name}: {exc}")
            continue
        _forget(name)
        if not ours:
            failed.append(name)
        if "safe" in theirs and not theirs["safe"]:
            failed.append(f"{name} (safe baseline)")
        if theirs:
            _table(name, args.workers, ours, theirs)
        rows.append(
            {
                "name": name,
                "slither_s": round(ours.seconds, 4),
                "checks_passed": ours.checks_passed,
                "baselines": [
                    {"mode": m, "threads": o.threads, "seconds": round(o.seconds, 4), "checks_passed": o.checks_passed}
                    for m, o in theirs.items()
                ],
            }
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"examples": rows}, f, indent=2)
    if rows and not args.no_baseline:
        print("\n" + _summary(rows))
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
            outcomes = _run_baseline(name, modes, args.threads or 2)
        except MissingExtra as exc:
            print(f"skipped {name}: {exc}")
            continue
        if any(not o for m, o in outcomes.items() if m != "unsafe"):
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
    ex.add_argument("--threads", type=int, default=None, help="threads for the baselines (default: as many as --workers)")
    ex.add_argument("--json", metavar="PATH", help="also write the figures to PATH as JSON")
    bl = sub.add_parser("baseline", help="run the pure-Python threaded baselines")
    bl.add_argument("name", nargs="?")
    bl.add_argument("--all", action="store_true")
    bl.add_argument("--mode", choices=["unsafe", "safe", "both"], default="both")
    bl.add_argument("--threads", type=int, default=None, help="threads (default 2)")
    sv = sub.add_parser("serve", help="run a long-lived pipe as a service (see docs/operations.md)")
    sv.add_argument("pipe", help="module:PipeClass")
    sv.add_argument("--source", required=True, help="module:callable returning the payloads (or a resumable Source)")
    sv.add_argument("--sink", action="append", required=True, help="module:fn, or OUTPUT=module:fn; called as fn(output, item)")
    sv.add_argument("--workers", type=int, default=2, help="size of the default pool (default 2)")
    sv.add_argument("--pool", action="append", help="another pool, NAME=SIZE")
    sv.add_argument("--max-pending", type=int, default=1000, help="inputs in the pipe at most (default 1000)")
    sv.add_argument("--restart", default="3,5", help="the runner's restart intensity, MAX_RESTARTS,SECONDS (default 3,5)")
    sv.add_argument("--pool-restart", default="3,5", help="the pools' restart intensity, MAX_RESTARTS,SECONDS (default 3,5)")
    sv.add_argument("--drain-timeout", type=float, default=30.0, help="seconds a drain may take (default 30)")
    sv.add_argument("--status-port", type=int, help="serve /status and /metrics on 127.0.0.1:PORT (0: any free port)")
    stt = sub.add_parser("status", help="show a served pipe's status (its --status-port)")
    stt.add_argument("address", help="PORT, HOST:PORT or a URL")
    stt.add_argument("--json", action="store_true", help="the raw JSON")
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
    if args.command in ("serve", "status"):
        from slither import _serve
        from slither.errors import ConfigurationError

        if args.command == "status":
            return _serve.status_main(args)
        if args.workers < 1 or args.max_pending < 1:
            parser.error("--workers and --max-pending must be at least 1")
        try:
            return _serve.serve_main(args)
        except ConfigurationError as exc:
            parser.error(str(exc))
    if args.command == "node":
        if args.workers is not None and args.workers < 1:
            parser.error("--workers must be at least 1")
        return cmd_node(args, parser)
    if getattr(args, "workers", 1) < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--workers and --threads must be at least 1")
    if args.command == "example":
        return cmd_example(args, parser)
    if not args.name and not args.all:
        parser.error("baseline needs NAME or --all")
    return cmd_baseline(args, parser)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
