"""Two "hosts" on one Linux machine: network namespaces joined by a veth pair.

::

    from slither.testing.netns import two_hosts, Unavailable

    try:
        with two_hosts() as (a, b):
            # run the leader with `ip netns exec a.name ...` listening on a.address,
            # a member with `ip netns exec b.name ...` on b.address;
            # b.cut() / b.restore() take its link down and up again
            ...
    except Unavailable as exc:
        print("skipped:", exc)

Needs root and iproute2 (``ip``). Both namespaces (and with them the veth
pair) are removed on exit, whatever happened inside.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import attrs


class Unavailable(RuntimeError):
    """Network namespaces cannot be made here (not root, no ``ip``, or the kernel refused)."""


@attrs.frozen
class Host:
    """One of the two "hosts": a network namespace with its end of the veth pair."""

    name: str  # the namespace: ``ip netns exec NAME cmd ...`` runs cmd on this host
    address: str  # its IPv4 address on the link
    link: str  # its end of the veth pair

    def cut(self) -> None:
        """Take this host's link down: its peer sees silence (no FIN, no RST)."""
        _ip("-n", self.name, "link", "set", self.link, "down")

    def restore(self) -> None:
        """Bring this host's link up again."""
        _ip("-n", self.name, "link", "set", self.link, "up")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextmanager
def two_hosts(prefix: str = "slither", addresses: tuple[str, str] = ("10.77.0.1", "10.77.0.2")) -> Iterator[tuple[Host, Host]]:
    """Create two namespaces joined by a veth pair (a /24 between ``addresses``); remove them on exit.

    Raises:
        Unavailable: before anything is left behind, when they cannot be made.
    """
    if os.geteuid() != 0 or shutil.which("ip") is None:
        raise Unavailable("network namespaces need root and iproute2 (`ip`)")
    tag = str(os.getpid())
    a = Host(f"{prefix}-a{tag}", addresses[0], f"{prefix[:3]}a{tag}"[:15])
    b = Host(f"{prefix}-b{tag}", addresses[1], f"{prefix[:3]}b{tag}"[:15])
    made: list[str] = []
    try:
        try:
            for host in (a, b):
                _ip("netns", "add", host.name)
                made.append(host.name)
            _ip("link", "add", a.link, "type", "veth", "peer", "name", b.link)
            for host in (a, b):
                _ip("link", "set", host.link, "netns", host.name)
                _ip("-n", host.name, "addr", "add", f"{host.address}/24", "dev", host.link)
                _ip("-n", host.name, "link", "set", host.link, "up")
                _ip("-n", host.name, "link", "set", "lo", "up")
        except (subprocess.CalledProcessError, OSError) as exc:
            detail = getattr(exc, "stderr", b"") or exc
            raise Unavailable(f"cannot create network namespaces here: {detail!r}") from exc
        yield a, b
    finally:
        for name in made:  # deleting a namespace removes its end of the veth pair
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


__all__ = ["two_hosts", "Host", "Unavailable"]
