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

With ``--suite-profile-programs`` (added to ``--suite-profile=DIR``) each compilation is also
recorded with its program's name, input types, device count and a hash of its StableHLO (debug
information left out). The summary then adds a ``compilations`` record (how many were read from the
cache, compiled, and compiled again) and ``same_signature`` rows: each jitted function compiled at
the same input types and devices into several different programs (other static options or
closed-over values), with the compilation time they took and the tests that compiled them; these
are programs the tests could share. It wraps ``jax._src.compiler.compile_or_get_cached`` (JAX's
internals: it may need updating with JAX).
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import time

import numpy as np
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
        self.cache_reads = 0
        self.compilations = []  # with record_programs(): [test, name, input types, devices, hash, seconds, read]

    def record_programs(self):
        """Records each compilation's program (``--suite-profile-programs``); returns the undo."""
        import hashlib

        from jax._src import compiler

        original = compiler.compile_or_get_cached

        def recorded(backend, computation, devices, *args, **kwargs):
            text = computation.operation.get_asm(enable_debug_info=False)
            name = computation.operation.attributes["sym_name"].value
            main = next(op for op in computation.body.operations if op.attributes["sym_name"].value == "main")
            reads, start = self.cache_reads, time.perf_counter()
            executable = original(backend, computation, devices, *args, **kwargs)
            self.compilations.append([self.current, name, str(main.attributes["function_type"].value),
                                      int(np.size(devices)), hashlib.sha1(text.encode()).hexdigest()[:16],
                                      time.perf_counter() - start, self.cache_reads > reads])
            return executable

        compiler.compile_or_get_cached = recorded
        return lambda: setattr(compiler, "compile_or_get_cached", original)

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
            self.cache_reads += 1
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
            json.dump({"tests": self.tests, "programs": self.programs, "compilations": self.compilations}, f)


def pytest_addoption(parser):
    parser.addoption("--suite-profile", metavar="DIR", default=None,
                     help="write each test process's compile/trace/lower times to DIR (benchmarks/suite_profile.py)")
    parser.addoption("--suite-profile-programs", action="store_true",
                     help="with --suite-profile: also record each compilation's program (name, input types, hash)")


def pytest_configure(config):
    folder = config.getoption("--suite-profile")
    if not folder:
        return
    import jax.monitoring

    recorder = _Recorder(os.path.abspath(folder))
    jax.monitoring.register_event_duration_secs_listener(recorder.listen)
    config.pluginmanager.register(recorder, "suite_profile_recorder")
    config._suite_profile_recorder = recorder
    config._suite_profile_undo = recorder.record_programs() if config.getoption("--suite-profile-programs") else None


def pytest_unconfigure(config):
    recorder = getattr(config, "_suite_profile_recorder", None)
    if recorder is not None:
        import jax.monitoring

        jax.monitoring.unregister_event_duration_listener(recorder.listen)
        if config._suite_profile_undo is not None:
            config._suite_profile_undo()
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
    total, compilations = dict.fromkeys(FIELDS, 0.0), []
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
        compilations += data.get("compilations", [])
        records.append({"kind": "worker", "file": os.path.basename(path), "tests": len(data["tests"]),
                        **_rounded(worker)})
    for module, row in sorted(modules.items(), key=lambda kv: -kv[1]["wall_s"]):
        records.append({"kind": "module", "module": module, **_rounded(row)})
    for name, row in sorted(programs.items(), key=lambda kv: -kv[1]["compile_s"])[:top]:
        records.append({"kind": "program", "program": name, **_rounded(row)})
    if compilations:
        records += _shareable(compilations, top)
    records.append({"kind": "total", "programs": len(programs), **_rounded(total)})
    return records


def _shareable(compilations: list, top: int) -> list[dict]:
    """The ``compilations`` record (how many were read from the cache, compiled, compiled again) and
    the ``same_signature`` rows: one jitted function compiled at the same input types and devices into
    several different programs, most compilation time first."""
    compiled = [c for c in compilations if not c[6]]
    seen, repeats, repeat_s = set(), 0, 0.0
    groups = collections.defaultdict(lambda: {"hashes": set(), "compile_s": 0.0, "tests": set()})
    for test, name, types, devices, digest, seconds, _ in compiled:
        if digest in seen:
            repeats, repeat_s = repeats + 1, repeat_s + seconds
        seen.add(digest)
        group = groups[(name, types, devices)]
        group["hashes"].add(digest)
        group["compile_s"] += seconds
        group["tests"].add(test)
    shared = {k: g for k, g in groups.items() if len(g["hashes"]) > 1}
    reads = [c for c in compilations if c[6]]
    records = [{"kind": "compilations", "recorded": len(compilations), "cache_reads": len(reads),
                "cache_read_s": round(sum(c[5] for c in reads), 2), "compiled": len(compiled),
                "compile_s": round(sum(c[5] for c in compiled), 2), "repeats": repeats, "repeat_s": round(repeat_s, 2),
                "same_signature_groups": len(shared),
                "same_signature_s": round(sum(g["compile_s"] for g in shared.values()), 2)}]
    for (name, types, devices), group in sorted(shared.items(), key=lambda kv: -kv[1]["compile_s"])[:top]:
        records.append({"kind": "same_signature", "program": name, "input_types": types[:200], "devices": devices,
                        "programs": len(group["hashes"]), "compile_s": round(group["compile_s"], 2),
                        "tests": sorted(group["tests"])})
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
