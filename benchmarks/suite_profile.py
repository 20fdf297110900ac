"""Where the test suite's time goes: XLA compilation, tracing and lowering, per test and per program.

A pytest plugin that listens to ``jax.monitoring`` in each test process (each pytest-xdist worker
writes its own file), and a summary of what they wrote:

  .venv/bin/python -m pytest -n 2 -p benchmarks.suite_profile --suite-profile=/tmp/prof
  .venv/bin/python -m benchmarks.suite_profile /tmp/prof

The summary prints JSON lines: one per worker, one per test module (slowest first), the programs
that took the most compilation time (``jit(NAME)``, summed over their compilations) and the totals.
``compile_s`` is XLA's backend compilation, persistent-cache reads included (``cache_hits`` of the
``compiles`` were read back); ``trace_s`` and ``lower_s`` are JAX's tracing to a jaxpr and its
lowering to StableHLO; ``wall_s`` is each test's setup, call and teardown. What remains of the wall
time is running the programs, Python, and the tests' subprocesses (not profiled: another process).
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import time

import pytest

COMPILE = "/jax/core/compile/backend_compile_duration"
CACHE_HIT = "/jax/compilation_cache/cache_retrieval_time_sec"
TRACE = "/jax/core/compile/jaxpr_trace_duration"
LOWER = "/jax/core/compile/jaxpr_to_mlir_module_duration"
FIELDS = ("wall_s", "compile_s", "compiles", "cache_hits", "trace_s", "lower_s")


class _Recorder:
    """Per-test and per-program sums of the compilation events of this process."""

    def __init__(self, folder: str):
        self.folder = folder
        self.current = "(outside tests)"
        self.tests = collections.defaultdict(lambda: dict.fromkeys(FIELDS, 0.0))
        self.programs = collections.defaultdict(lambda: {"compiles": 0, "compile_s": 0.0})

    def listen(self, event, duration, **kwargs):
        row = self.tests[self.current]
        if event == COMPILE:
            row["compile_s"] += duration
            row["compiles"] += 1
            program = self.programs[kwargs.get("fun_name", "?")]
            program["compiles"] += 1
            program["compile_s"] += duration
        elif event == CACHE_HIT:
            row["cache_hits"] += 1
        elif event == TRACE:
            row["trace_s"] += duration
        elif event == LOWER:
            row["lower_s"] += duration

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        self.current = item.nodeid
        start = time.perf_counter()
        yield
        self.tests[item.nodeid]["wall_s"] += time.perf_counter() - start
        self.current = "(outside tests)"

    def write(self):
        if not any(name != "(outside tests)" for name in self.tests):
            return  # the xdist controller: its workers ran the tests
        os.makedirs(self.folder, exist_ok=True)
        with open(os.path.join(self.folder, f"worker-{os.getpid()}.json"), "w") as f:
            json.dump({"tests": self.tests, "programs": self.programs}, f)


def pytest_addoption(parser):
    parser.addoption("--suite-profile", metavar="DIR", default=None,
                     help="write each test process's compile/trace/lower times to DIR (benchmarks/suite_profile.py)")


def pytest_configure(config):
    folder = config.getoption("--suite-profile")
    if not folder:
        return
    import jax.monitoring

    recorder = _Recorder(os.path.abspath(folder))
    jax.monitoring.register_event_duration_secs_listener(recorder.listen)
    config.pluginmanager.register(recorder, "suite_profile_recorder")
    config._suite_profile_recorder = recorder


def pytest_unconfigure(config):
    recorder = getattr(config, "_suite_profile_recorder", None)
    if recorder is not None:
        import jax.monitoring

        jax.monitoring.unregister_event_duration_listener(recorder.listen)
        recorder.write()


def _rounded(row: dict) -> dict:
    return {k: int(v) if k in ("compiles", "cache_hits") else round(v, 2) for k, v in row.items()}


def summarize(folder: str, top: int = 15) -> list[dict]:
    """The JSON-line records of the summary (worker, module, program and total rows)."""
    files = sorted(glob.glob(os.path.join(folder, "worker-*.json")))
    if not files:
        raise FileNotFoundError(f"no worker-*.json in {folder}: run pytest with -p benchmarks.suite_profile "
                                f"--suite-profile={folder} first")
    records, modules = [], collections.defaultdict(lambda: dict.fromkeys(FIELDS, 0.0))
    programs = collections.defaultdict(lambda: {"compiles": 0, "compile_s": 0.0})
    total = dict.fromkeys(FIELDS, 0.0)
    for path in files:
        with open(path) as f:
            data = json.load(f)
        worker = dict.fromkeys(FIELDS, 0.0)
        for nodeid, row in data["tests"].items():
            module = nodeid.split("::")[0]
            for k in FIELDS:
                modules[module][k] += row[k]
                worker[k] += row[k]
                total[k] += row[k]
        for name, row in data["programs"].items():
            programs[name]["compiles"] += row["compiles"]
            programs[name]["compile_s"] += row["compile_s"]
        records.append({"kind": "worker", "file": os.path.basename(path), "tests": len(data["tests"]),
                        **_rounded(worker)})
    for module, row in sorted(modules.items(), key=lambda kv: -kv[1]["wall_s"]):
        records.append({"kind": "module", "module": module, **_rounded(row)})
    for name, row in sorted(programs.items(), key=lambda kv: -kv[1]["compile_s"])[:top]:
        records.append({"kind": "program", "program": name, **_rounded(row)})
    records.append({"kind": "total", "programs": len(programs), **_rounded(total)})
    return records


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="the --suite-profile folder of a pytest run")
    parser.add_argument("--top", type=int, default=15, help="how many programs to list (most compilation time)")
    args = parser.parse_args()
    for record in summarize(args.folder, args.top):
        print(json.dumps(record))


if __name__ == "__main__":
    main()
