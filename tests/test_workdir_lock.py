"""One writer per workdir: an exclusive OS lock (fcntl.flock), released however its holder ends."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import ROOT


def test_one_writer_per_workdir(tmp_path):
    from experiments.workdir_lock import WorkdirLock

    with WorkdirLock(str(tmp_path)):
        held = json.loads((tmp_path / ".lock").read_text())
        assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
        with pytest.raises(RuntimeError, match=f"in use by process {os.getpid()} on this host.*one run per workdir"):
            WorkdirLock(str(tmp_path)).acquire()  # as a second run on the same workdir
    assert not (tmp_path / ".lock").exists()
    # a killed run's file holds no lock any more (the OS released it): whatever it says, it is taken
    (tmp_path / ".lock").write_text(json.dumps({"pid": 1, "host": "another-machine"}))
    with WorkdirLock(str(tmp_path)):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {ROOT!r})
        from experiments.workdir_lock import WorkdirLock
        WorkdirLock({str(tmp_path)!r}).acquire()
        print("held", flush=True)
        time.sleep(60)""")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RuntimeError, match=f"in use by process {holder.pid} on this host"):
            WorkdirLock(str(tmp_path)).acquire()
    finally:
        holder.kill()
        holder.wait()
    with WorkdirLock(str(tmp_path)):  # killed: the OS released its lock at once
        pass


CONTENDER = """
import os, sys, time
sys.path.insert(0, sys.argv[1])
from experiments.workdir_lock import WorkdirLock
assert "jax" not in sys.modules  # the lock's module is the standard library only: these processes start at once
workdir, inside = sys.argv[2], os.path.join(sys.argv[2], "inside")
while time.time() < float(sys.argv[3]):  # all start together
    time.sleep(0.001)
held, deadline = 0, time.time() + 120
while held < 5 and time.time() < deadline:  # each takes it five times, retrying when refused
    try:
        lock = WorkdirLock(workdir).acquire()
    except RuntimeError:
        time.sleep(0.001)
        continue
    fd = os.open(inside, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # fails if another holder is inside
    os.close(fd)
    time.sleep(0.002)
    os.remove(inside)
    lock.release()
    held += 1
print(held)
"""


def test_many_processes_never_hold_the_lock_together(tmp_path):
    """Six processes taking and releasing the same workdir's lock five times each, all at once and
    retrying when refused, starting from a killed run's lock file: never two holders (each holder
    creates a marker file exclusively; a second holder would fail to), and every process got its turns."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / ".lock").write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))  # stale
    start = time.time() + 1.0  # each process imports the standard library only: all are up well within a second
    procs = [subprocess.Popen([sys.executable, "-c", CONTENDER, ROOT, str(tmp_path), str(start)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(6)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-1500:] for _, err in outputs]
    assert [int(out) for out, _ in outputs] == [5] * 6  # every process held it five times, in turn
