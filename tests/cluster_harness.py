"""`slither node` members as processes of the test, for the cluster tests."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

from slither.supervision import pid_alive
from slither.testing import wait_pids_gone

SECRET = "cluster-test-secret-0123456789"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Member:
    """`slither node` in a process of ours."""

    def __init__(self, leader, name, secret=SECRET, *extra):
        # Its replicas go in a directory of ours: a member SIGKILLed whole cannot remove them itself.
        self.dir = tempfile.mkdtemp(prefix="slither-test-member-")
        env = {**os.environ, "SLITHER_SECRET": secret, "PYTHONPATH": os.pathsep.join(sys.path)}
        args = [sys.executable, "-m", "slither.cli", "node", "--join", leader, "--name", name, "--network-only"]
        args += ["--replica-dir", self.dir, *extra]
        self.proc = subprocess.Popen(
            args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        self.line = self.proc.stdout.readline()  # printed once it has joined
        assert "joined" in self.line, self.line + self.proc.stdout.read()

    def pids(self):
        """The member's processes: forks of it (Thespian's admin detaches into a session of its
        own, so they are found by their command line, unique per member name)."""
        with open(f"/proc/{self.proc.pid}/cmdline", "rb") as f:
            mine = f.read()
        out = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/cmdline", "rb") as f:
                        if f.read() == mine and pid_alive(int(entry)):
                            out.append(int(entry))
                except OSError:
                    pass
        return out

    def kill(self):
        """SIGKILL every process of the member at once, as a host that dies would."""
        pids = self.pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)
        self.proc.stdout.close()
        assert not wait_pids_gone(pids, timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def stop(self):
        if self.proc.returncode is not None:  # killed already
            shutil.rmtree(self.dir, ignore_errors=True)
            return
        pids = self.pids()
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            pass
        self.proc.stdout.close()
        left = wait_pids_gone(pids, timeout=10)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        assert not left, f"member processes outlived SIGTERM: {left}"
        assert os.listdir(self.dir) == [], "the member left its replica directory behind"
        os.rmdir(self.dir)
