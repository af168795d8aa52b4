"""The single-host runtime must accept connections only from this machine."""

import os
import socket

import pytest

pytestmark = pytest.mark.timeout(60)


def _inodes_of(pid):
    out = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                out.add(target[8:-1])
    except OSError:
        pass
    return out


def _listening_tcp():
    """(local_ip, port, inode) for every listening TCP socket on the machine."""
    rows = []
    for path, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = open(path).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            local, state, inode = f[1], f[3], f[9]
            if state != "0A":  # LISTEN
                continue
            addr_hex, port_hex = local.split(":")
            if v6:
                ip = socket.inet_ntop(socket.AF_INET6, bytes.fromhex(addr_hex))
            else:
                ip = socket.inet_ntoa(bytes.fromhex(addr_hex)[::-1])
            rows.append((ip, int(port_hex, 16), inode))
    return rows


def _runtime_ports(rt):
    """The TCP ports the runtime's processes listen on (at least one)."""
    inodes = set()
    for pid in rt.pids():
        inodes |= _inodes_of(pid)
    ports = [port for _, port, inode in _listening_tcp() if inode in inodes]
    assert ports, "expected the runtime's Thespian processes to listen on TCP"
    return ports


def test_every_listening_socket_of_the_runtime_is_loopback(rt):
    inodes = set()
    for pid in rt.pids():
        inodes |= _inodes_of(pid)
    listening = [(ip, port) for ip, port, inode in _listening_tcp() if inode in inodes]
    assert listening, "expected the runtime's Thespian processes to listen on TCP"
    for ip, port in listening:
        assert ip.startswith("127.") or ip == "::1", f"runtime listens on {ip}:{port}, reachable from other hosts"


def test_non_loopback_address_is_refused(rt):
    # Connect to every listening port of the runtime from a non-loopback address of this machine.
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("10.255.255.255", 9))  # no packet is sent: this only picks the outbound interface
        my_ip = s.getsockname()[0]
    except OSError:
        pytest.skip("this machine has no non-loopback IPv4 address")
    finally:
        s.close()
    if my_ip.startswith("127."):
        pytest.skip("this machine has no non-loopback IPv4 address")
    ports = _runtime_ports(rt)
    for port in ports:
        c = socket.socket()
        c.settimeout(2)
        with pytest.raises(OSError):
            c.connect((my_ip, port))
        c.close()


def test_private_directory_is_owner_only(rt):
    mode = os.stat(rt._dir).st_mode & 0o777
    assert mode == 0o700


class _Evil:
    """Unpickling this runs a command: what anyone who can reach a pickle-reading port can send."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _thespian_packet(payload: bytes) -> bytes:
    return b"%d>" % len(payload) + payload  # Thespian's TCP framing


@pytest.mark.parametrize("forged", ["plain pickle", "forged tag"])
def test_thespian_ports_never_unpickle_an_unsigned_message(rt, tmp_path, forged):
    """Every Thespian port of the runtime (admin, logger, actors) refuses a message
    that is not signed with the runtime's key, before unpickling it."""
    import pickle

    marker = tmp_path / "pwned"
    body = pickle.dumps(_Evil(str(marker)))
    payload = body if forged == "plain pickle" else bytes([1]) + os.urandom(32) + body
    for port in _runtime_ports(rt):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.sendall(_thespian_packet(payload))
            c.settimeout(5)
            try:
                while c.recv(4096):  # Thespian answers with a NAK and closes
                    pass
            except OSError:
                pass
    # The runtime still works (a round trip through the admin and the workers), and nothing ran.
    assert rt.dispatch([1, 2], lambda xs: [x + 1 for x in xs], batch_size=1)[1].payload == 3
    assert rt.pool().wait_ready(10)
    assert not marker.exists(), "an unsigned pickle was executed by a Thespian process"
