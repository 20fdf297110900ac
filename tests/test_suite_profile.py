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
