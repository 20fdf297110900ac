"""Two processes on localhost (gloo CPU collectives), 4 fake devices each, explain one pair list:
the same maps as one process (this one), each process reading (through grain) and explaining only
its shard."""

import json
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import ROOT, subprocess_env

WORKER = textwrap.dedent("""
    import json, sys, jax, numpy as np
    from simexplain_jax import parallel
    process, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    if process >= 0:
        parallel.initialize_distributed(f"localhost:{port}", 2, process)
    import jax.numpy as jnp
    import simexplain_jax as sx
    from simexplain_jax.data.pipeline import Preprocess
    from simexplain_jax.data.preprocess import normalize_images
    from simexplain_jax.data.sources import InMemorySource

    class Logged(InMemorySource):  # remembers which images were read
        read = set()
        def __getitem__(self, index):
            Logged.read.add(int(index))
            return super().__getitem__(index)

    w = jax.random.normal(jax.random.key(0), (16 * 16 * 3, 8)) / 30 + 0.05
    embed = jax.tree_util.Partial(lambda w, x: jnp.tanh(x.reshape(x.shape[0], -1) @ w), w)
    images = np.random.default_rng(0).integers(0, 256, size=(16, 16, 16, 3), dtype=np.uint8)
    pairs = np.array([[q, (q + 1) % 16] for q in range(15)] + [[3, 9]])  # 15 queries, ragged
    config = dict(num_masks=40, grid_size=4, sampler="iid")  # conftest's SALIENCY_CONFIGS["rise"], its model
    if process >= 0:
        source = Logged({"image": images})
        maps = sx.saliency.explain_pairs_distributed("rise", embed, source, source, key=jax.random.key(2), pairs=pairs,
                                                  config=config, preprocess=Preprocess())
        assert jax.process_count() == 2 and len(jax.local_devices()) == 4 and len(jax.devices()) == 8
        # gather_rows: 64-bit values intact, a process that holds no rows, rows of any shape
        held = [0] if process == 0 else []
        big = parallel.gather_rows(held, np.array([2 ** 40 + 7], np.int64)[: len(held)], 2)
        assert big.dtype == np.int64 and big.tolist() == [2 ** 40 + 7, 0], big
        mixed = parallel.gather_rows([1 - process], np.array([[1234.5678901 + process, -1e300, 3.0]]), 2)
        assert mixed.tolist() == [[1235.5678901, -1e300, 3.0], [1234.5678901, -1e300, 3.0]], mixed
        flags = parallel.gather_rows([process], np.array([[process == 0, True, False]]), 2)
        assert flags.tolist() == [[True, True, False], [False, True, False]], flags
        with open(out + ".json", "w") as f:
            json.dump(sorted(Logged.read), f)
    else:
        normalized = normalize_images(images)
        maps = sx.saliency.explain_pairs("rise", embed, normalized, normalized, key=jax.random.key(2), pairs=pairs,
                                         config=config)
    np.save(out, maps)
""")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(tmp_path, monkeypatch):
    env = subprocess_env(devices=4)
    port = str(free_port())
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(i), port, str(tmp_path / f"p{i}.npy")], cwd=ROOT,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    outputs = [w.communicate(timeout=300) for w in workers]
    if any(w.returncode for w in workers) and any("gloo" in err.lower() and "not" in err.lower() for _, err in outputs):
        pytest.skip("this jaxlib has no gloo CPU collectives: " + outputs[0][1][-300:])
    for w, (_, err) in zip(workers, outputs):
        assert w.returncode == 0, err[-3000:]
    # the same pair list explained by this process alone (the worker's branch for process -1)
    monkeypatch.setattr(sys, "argv", ["WORKER", "-1", port, str(tmp_path / "single.npy")])
    exec(compile(WORKER, "WORKER", "exec"), {"__name__": "worker"})
    expected = np.load(tmp_path / "single.npy")
    for i in (0, 1):
        np.testing.assert_allclose(np.load(tmp_path / f"p{i}.npy"), expected, rtol=1e-5,
                                   atol=1e-5 * float(np.abs(expected).max()))
    # each process read only the images of its pairs: queries 0-7 (+ references 1-8, 9) and 8-14 (+ 9-15)
    reads = [set(json.loads((tmp_path / f"p{i}.npy.json").read_text())) for i in (0, 1)]
    assert reads[0] == set(range(9)) | {9}
    assert reads[1] == set(range(8, 16))
