"""Every ```python block of the README and docs/, and every script in examples/, runs."""

import os
import pathlib
import re
import signal
import subprocess
import sys

import pytest

from slither.testing import wait_pids_gone

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SCRIPTS = sorted((ROOT / "examples").glob("*.py"))

pytestmark = pytest.mark.timeout(120)


def python_blocks(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def _session_members(sid):
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat[stat.rindex(b")") + 2 :].split()
            if int(fields[3]) == sid and fields[0] not in (b"Z", b"X"):
                pids.append(int(entry))
    return pids


def run(code_or_path, cwd):
    """Run a script in its own session, output to files (a leaked process holding a pipe would hang us).

    Fails if any process of that session outlives the script by more than 5 s,
    and kills those (they are ours: the session was created for this run).
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, str(code_or_path)] if isinstance(code_or_path, pathlib.Path) else [sys.executable, "-c", code_or_path]
    out, err = pathlib.Path(cwd, "stdout.txt"), pathlib.Path(cwd, "stderr.txt")
    with out.open("w") as fo, err.open("w") as fe:
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=fo, stderr=fe, start_new_session=True)
        try:
            proc.wait(timeout=100)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            left = wait_pids_gone(_session_members(proc.pid), timeout=5)
            for pid in left:
                os.kill(pid, signal.SIGKILL)
    result = subprocess.CompletedProcess(args, proc.returncode, out.read_text(), err.read_text())
    assert not left, f"processes outlived the script: {left}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.parametrize("doc", [d for d in DOCS if python_blocks(d)], ids=lambda p: p.name)
def test_doc_code_blocks_run(doc, tmp_path):
    code = "\n".join(python_blocks(doc))  # blocks of one page build on each other
    r = run(code, tmp_path)
    assert r.returncode == 0, f"{doc.name} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_example_scripts_run(script, tmp_path):
    r = run(script, tmp_path)
    assert r.returncode == 0, f"{script.name} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    assert r.stdout.strip()


def test_every_test_the_reliability_table_cites_exists():
    """docs/reliability.md proves each guarantee by naming a test: the names must be real."""
    text = (ROOT / "docs" / "reliability.md").read_text()
    cited = re.findall(r"`(test_\w+\.py)(?:::(\w+))?", text)
    assert len(cited) > 20
    last_file = None
    for file, name in cited:
        path = ROOT / "tests" / file
        assert path.exists(), f"docs/reliability.md cites {file}, which does not exist"
        if name:
            assert re.search(rf"^def {name}\(", path.read_text(), flags=re.M), f"{file}::{name} is cited but not defined"
        last_file = file
    assert last_file
    for follow_on in re.findall(r"`::(\w+)`", text):  # "`a.py::x`, `::y`" names y in the same file as x
        assert any(re.search(rf"^def {follow_on}\(", p.read_text(), flags=re.M) for p in (ROOT / "tests").glob("test_*.py")), (
            follow_on
        )
