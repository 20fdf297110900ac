"""What ``make test`` sets up around the suite: jemalloc preloaded where ``.ci/find_jemalloc`` finds it."""

import os
import subprocess

import pytest
from conftest import ROOT


def find_jemalloc() -> str:
    return subprocess.run([os.path.join(ROOT, ".ci", "find_jemalloc")], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_find_jemalloc_prints_the_library_or_nothing():
    found = find_jemalloc()
    assert found == "" or (os.path.basename(found) == "libjemalloc.so.2" and os.path.isfile(found)), found


def test_the_suite_runs_on_the_library_make_test_preloads():
    """Under ``make test`` the preload takes effect in the test processes (a wrong path or a library
    the dynamic linker refuses would leave them on the system's malloc, and say so only on stderr)."""
    found = find_jemalloc()
    if not found or found not in os.environ.get("LD_PRELOAD", "").split():
        pytest.skip("not run by `make test` on a machine with jemalloc installed")
    with open("/proc/self/maps") as maps:
        assert os.path.realpath(found) in maps.read()  # the kernel names the file behind any symlink
