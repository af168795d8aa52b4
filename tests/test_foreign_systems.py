"""``import slither`` leaves Thespian alone for the systems Slither does not manage.

Each script runs in a real subprocess with real multiprocTCPBase systems; a
Thespian admin that never imported Slither runs in a process of its own.
"""

import os
import socket
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(120)
HERE = os.path.dirname(os.path.abspath(__file__))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(code: str, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": HERE + os.pathsep + os.environ.get("PYTHONPATH", ""), **env}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=90, env=full_env)


PIDS = """
def thespian_pids(port):
    import os
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit() and int(p) != os.getpid():
            try:
                env = open(f"/proc/{p}/environ", "rb").read()
            except OSError:
                continue
            if f"MARK={port}".encode() in env:
                out.append(int(p))
    return out
"""


def test_a_system_made_before_import_slither_still_answers_and_shuts_down():
    port = _free_port()
    p = _run(
        f"""
        import os, time
        os.environ["MARK"] = "{port}"
        from thespian.actors import ActorSystem
        from thespian_echo import Echo
        asys = ActorSystem("multiprocTCPBase", {{"Admin Port": {port}}}, transientUnique=True)
        echo = asys.createActor(Echo)
        import slither  # after the system exists
        assert asys.ask(echo, "hi", 10) == "echo:hi"
        asys.shutdown()
        {PIDS.strip().replace(chr(10), chr(10) + " " * 8)}
        deadline = time.monotonic() + 5
        while thespian_pids({port}) and time.monotonic() < deadline:
            time.sleep(0.05)
        print("left", thespian_pids({port}))
        """
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "left []" in p.stdout


def test_a_process_that_imported_slither_talks_to_a_thespian_admin_that_never_did():
    port = _free_port()
    admin = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys
                from thespian.actors import ActorSystem
                asys = ActorSystem("multiprocTCPBase", {{"Admin Port": {port}}})
                assert "slither" not in sys.modules
                print("ready", flush=True)
                sys.stdin.read()  # until the test closes it
                asys.shutdown()
                """
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": HERE},
    )
    try:
        assert admin.stdout.readline().strip() == "ready"
        p = _run(
            f"""
            import slither
            from thespian.actors import ActorSystem
            from thespian_echo import Echo
            with slither.Runtime(pools={{"default": 1}}) as rt:  # Slither's own, signed system beside it
                asys = ActorSystem("multiprocTCPBase", {{"Admin Port": {port}}})
                echo = asys.createActor(Echo)
                print(asys.ask(echo, "from a slither process", 10))
                print([i.payload for i in rt.dispatch([1, 2], lambda b: [x + 1 for x in b])])
                asys.tell(echo, __import__("thespian.actors").actors.ActorExitRequest())
            """
        )
        assert p.returncode == 0, p.stderr[-3000:]
        assert "echo:from a slither process" in p.stdout and "[2, 3]" in p.stdout
    finally:
        admin.stdin.close()
        admin.wait(30)
    assert admin.returncode == 0


def test_processes_sharing_slither_secret_sign_with_the_same_key():
    code = "from slither import _thespian; print(_thespian._KEYS[0].hex())"
    a = _run(code, SLITHER_SECRET="s3cret").stdout.strip()
    b = _run(code, SLITHER_SECRET="s3cret").stdout.strip()
    c = _run(code, SLITHER_SECRET="").stdout.strip()
    assert a == b == b"s3cret".hex() and c != a
