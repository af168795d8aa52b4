"""Operating-system helpers, each written once: processes (Linux ``/proc``), ports,
private directories, accept loops, and the cheap repr every actor message uses."""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable


def _stat_fields(pid) -> list[bytes] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(b")") + 2 :].split()


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (Linux /proc; kill(0) elsewhere)."""
    if os.path.isdir("/proc/self"):
        fields = _stat_fields(pid)
        return fields is not None and fields[0] not in (b"Z", b"X")
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def pids_in_group(pgid: int) -> list[int]:
    """Live (non-zombie) pids whose process group is ``pgid`` (Linux /proc)."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat_fields(name)
            if fields is not None and fields[0] not in (b"Z", b"X") and int(fields[2]) == pgid:
                out.append(int(name))
    return out


def descendants(pid: int) -> list[int]:
    """Live (non-zombie) descendants of ``pid``, children first (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat_fields(name)
            if fields is not None and fields[0] not in (b"Z", b"X"):
                children.setdefault(int(fields[1]), []).append(int(name))
    out, todo = [], list(children.get(pid, ()))
    while todo:
        p = todo.pop(0)
        out.append(p)
        todo += children.get(p, ())
    return out


def vm_size() -> int:
    """This process's address space in bytes (0 when unknown)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class ResidentMemory:
    """This process's resident set size (VmRSS), read cheaply and often: ``/proc/self/statm``
    kept open (one ``pread`` a read); where there is none, the peak (``ru_maxrss``)."""

    def __init__(self):
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        try:
            self._fd: int | None = os.open("/proc/self/statm", os.O_RDONLY)
        except OSError:
            self._fd = None

    def bytes(self) -> int:
        if self._fd is not None:
            return int(os.pread(self._fd, 128, 0).split()[1]) * self._page
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


_NODE: str | None = None


def node_key() -> str:
    """Identifies this machine and pid namespace: pids compare only between equal keys."""
    global _NODE
    if _NODE is None:
        try:
            with open("/proc/sys/kernel/random/boot_id") as f:
                boot = f.read().strip()
            ns = os.stat("/proc/self/ns/pid").st_ino
        except OSError:
            boot, ns = socket.gethostname(), 0
        _NODE = f"{boot}/{ns}"
    return _NODE


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def private_dir(prefix: str, base: str | None = None) -> str:
    """A new 0700 directory, on /dev/shm where it is writable (sockets and ephemeral stores are memory)."""
    if base is None and os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        base = "/dev/shm"
    d = tempfile.mkdtemp(prefix=prefix, dir=base)
    os.chmod(d, 0o700)
    return d


def serve_forever(listener: socket.socket, handle: Callable, name: str, closed: Callable[[], bool] = lambda: False) -> None:
    """Accept on ``listener`` until it is closed, handling each connection on a thread of its own."""
    while not closed():
        try:
            conn, peer = listener.accept()
        except OSError:
            return
        threading.Thread(target=handle, args=(conn, peer), name=name, daemon=True).start()


def link_to_parent(parent: int) -> None:
    """SIGKILL this process when ``parent`` dies, as a linked Erlang process does
    (Linux ``PR_SET_PDEATHSIG``; elsewhere nothing changes). Exits at once if the
    parent is already gone."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os._exit(0)


def cheap_repr(self) -> str:
    """An O(1) repr for messages: Thespian formats every message it sends or receives."""
    return f"<{type(self).__name__}>"
