"""The long soak of a served pipe (run by hand; about ten minutes by default).

``slither serve`` on an endless source, a worker SIGKILLed every second and the
runner every minute; at the end: every input delivered exactly once, the resident
memory of every long-lived process flat (under 20 MB of growth after warm-up), no
growth of the service's file descriptors or threads. Prints throughput per minute.

Run: ``.venv/bin/python bench/soak_serve.py [--minutes 10]``.
"""

from __future__ import annotations

import argparse

from slither.testing.soak import soak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--worker-kill-every", type=float, default=1.0)
    ap.add_argument("--runner-kill-every", type=float, default=60.0)
    args = ap.parse_args()
    r = soak(args.minutes * 60, worker_kill_every=args.worker_kill_every, runner_kill_every=args.runner_kill_every)
    print(f"soak of {args.minutes:g} min: {r.submitted:,} inputs, {r.delivered:,} results delivered")
    print(f"  killed {r.worker_kills} workers and {r.runner_kills} runners")
    for k, n in enumerate(r.per_minute, 1):
        print(f"  minute {k:>2}: {n:>9,} results ({n / 60:,.0f}/s)")
    print(f"  missing {r.missing}, duplicates {r.duplicates}, exit code {r.exit_code}")
    print("  RSS growth after warm-up (MB): " + ", ".join(f"{k} {v:+.1f}" for k, v in sorted(r.rss_growth_mb.items())))
    print(f"  service fds {r.fds[0]} -> {r.fds[1]}, threads {r.threads[0]} -> {r.threads[1]}")
    try:
        r.check()
        print("SOAK PASSED")
    except AssertionError as exc:
        print(f"SOAK FAILED: {exc}")


if __name__ == "__main__":
    main()
