"""benchmarks/suite_profile.py: each compilation, tracing and lowering is counted for the test that
runs and named by its program, and the summary adds up the workers' files."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import suite_profile


def test_events_go_to_the_running_test_and_the_summary_adds_up_the_workers(tmp_path):
    recorder = suite_profile._Recorder(str(tmp_path))

    def profiled_program(x):
        return jnp.sin(x) * 3.0

    jitted = jax.jit(profiled_program)
    jax.monitoring.register_event_duration_secs_listener(recorder.listen)
    try:
        recorder.current = "tests/test_a.py::test_one"
        jitted(np.arange(7.0, dtype=np.float32)).block_until_ready()  # traced, lowered and compiled
        recorder.current = "tests/test_a.py::test_two"
        jitted(np.arange(7.0, dtype=np.float32)).block_until_ready()  # the same shapes: nothing new
        jitted(np.arange(5.0, dtype=np.float32)).block_until_ready()  # new shapes: compiled again
    finally:
        jax.monitoring.unregister_event_duration_listener(recorder.listen)
    one, two = recorder.tests["tests/test_a.py::test_one"], recorder.tests["tests/test_a.py::test_two"]
    assert one["compiles"] == two["compiles"] == 1 and recorder.programs["jit(profiled_program)"]["compiles"] == 2
    assert one["compile_s"] > 0 and one["trace_s"] > 0 and one["lower_s"] > 0
    recorder.write()
    # a second worker's file, written by hand
    other = {"tests": {"tests/test_b.py::test_three": dict(wall_s=2.0, compile_s=1.0, compiles=4, cache_hits=1,
                                                            trace_s=0.5, lower_s=0.25)},
             "programs": {"jit(profiled_program)": {"compiles": 3, "compile_s": 1.0}}}
    (tmp_path / "worker-0.json").write_text(json.dumps(other))
    records = suite_profile.summarize(str(tmp_path))
    assert [r["kind"] for r in records] == ["worker", "worker", "module", "module", "program", "total"]
    modules = {r["module"]: r for r in records if r["kind"] == "module"}
    assert modules["tests/test_a.py"]["compiles"] == 2 and modules["tests/test_b.py"]["compiles"] == 4
    (program,) = [r for r in records if r["kind"] == "program"]
    assert program["program"] == "jit(profiled_program)" and program["compiles"] == 5
    total = records[-1]
    assert total["compiles"] == 6 and total["cache_hits"] == 1 + one["cache_hits"] + two["cache_hits"]
    assert total["compile_s"] == pytest.approx(1.0 + one["compile_s"] + two["compile_s"], abs=0.01)


def test_the_summary_of_an_empty_folder_says_how_to_fill_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="-p benchmarks.suite_profile --suite-profile="):
        suite_profile.summarize(str(tmp_path))


def test_programs_compiled_at_one_signature_into_several_programs_are_grouped(tmp_path):
    """``--suite-profile-programs``: one jitted function at two static values (same input types) is one
    ``same_signature`` group of two programs; other input types are another signature; the same
    program compiled again (after ``jax.clear_caches``) is a cache read or a repeat, not a new program."""
    import random

    recorder = suite_profile._Recorder(str(tmp_path))
    nonce = random.random()  # programs no earlier run left in the persistent cache

    def grouped_program(x, scale):
        return jnp.cos(x) * (scale + nonce)

    from jax._src import compiler

    jitted = jax.jit(grouped_program, static_argnums=1)
    before = compiler.compile_or_get_cached  # jax's, or the plugin's wrapper when the suite is profiled
    jax.monitoring.register_event_duration_secs_listener(recorder.listen)
    undo = recorder.record_programs()
    try:
        recorder.current = "tests/test_a.py::test_one"
        jitted(np.arange(6.0, dtype=np.float32), 2.0).block_until_ready()
        recorder.current = "tests/test_a.py::test_two"
        jitted(np.arange(6.0, dtype=np.float32), 3.0).block_until_ready()  # same input types, another program
        jitted(np.arange(4.0, dtype=np.float32), 3.0).block_until_ready()  # other input types
        jax.clear_caches()
        jitted(np.arange(6.0, dtype=np.float32), 2.0).block_until_ready()  # test_one's program again
    finally:
        undo()
        jax.monitoring.unregister_event_duration_listener(recorder.listen)
    assert compiler.compile_or_get_cached is before  # put back
    mine = [c for c in recorder.compilations if c[1] == "jit_grouped_program"]
    assert [c[0] for c in mine] == ["tests/test_a.py::test_one"] + ["tests/test_a.py::test_two"] * 3
    assert mine[0][4] != mine[1][4] and mine[0][2] == mine[1][2] != mine[2][2] and mine[3][4] == mine[0][4]
    recorder.write()
    records = suite_profile.summarize(str(tmp_path))
    (counts,) = [r for r in records if r["kind"] == "compilations"]
    assert counts["recorded"] == len(recorder.compilations) and counts["cache_reads"] + counts["repeats"] >= 1
    (group,) = [r for r in records if r["kind"] == "same_signature" and r["program"] == "jit_grouped_program"]
    assert group["programs"] == 2 and group["devices"] == 1 and group["input_types"] == mine[0][2]
    assert group["tests"] == ["tests/test_a.py::test_one", "tests/test_a.py::test_two"] and group["compile_s"] > 0
