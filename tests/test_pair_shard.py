"""``data.shards.read_pair_shard``: each shard reads only the images its pairs need, the shards
partition the pair list, and explaining every shard with its ids gives the whole list's maps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import simexplain_jax as sx
from simexplain_jax import parallel
from simexplain_jax.data import shards
from simexplain_jax.data.pipeline import Preprocess
from simexplain_jax.data.preprocess import normalize_images
from simexplain_jax.data.sources import InMemorySource

CONFIG = dict(num_masks=48, grid_size=4, batch_size=16)


class LoggedSource(InMemorySource):
    """Remembers which records were read."""

    def __init__(self, arrays):
        super().__init__(arrays)
        self.read = set()

    def __getitem__(self, index):
        self.read.add(int(index))
        return super().__getitem__(index)


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(16, 16, 16, 3), dtype=np.uint8)
    # ragged: query 3 and 12 have two references, query 7 none, one query far from its reference
    pairs = np.array([[q, (q + 1) % 16] for q in range(16) if q != 7] + [[3, 9], [12, 0]])
    w = jax.random.normal(jax.random.key(0), (16 * 16 * 3, 8)) / 30 + 0.05
    embed = jax.tree_util.Partial(lambda w, x: jnp.tanh(x.reshape(x.shape[0], -1) @ w), w)
    return images, pairs, embed


@pytest.mark.parametrize("count", [1, 3, 5, 20])
def test_shards_partition_pairs_read_only_their_images_and_reproduce_maps(setup, count):
    images, pairs, embed = setup
    normalized = normalize_images(images)
    expected = {m: sx.saliency.explain_pairs(m, embed, normalized, normalized, key=jax.random.key(2), pairs=pairs,
                                             config=CONFIG if m == "rise" else {}) for m in ("rise", "random")}
    got = {m: np.full_like(e, np.nan) for m, e in expected.items()}
    held = []
    for index in range(count):
        query_source = LoggedSource({"image": images, "label": np.arange(16)})
        reference_source = LoggedSource({"image": images})
        shard = shards.read_pair_shard(query_source, reference_source, pairs, preprocess=Preprocess(),
                                         query_keys=("label",), shard_index=index, shard_count=count)
        held += list(shard.positions)
        mine = pairs[shard.positions]
        # reads: its pairs' queries (plus at most one padding record when the queries do not divide
        # evenly) and exactly the references they name
        assert set(mine[:, 0]) <= query_source.read and len(query_source.read - set(mine[:, 0])) <= 1
        assert reference_source.read == set(mine[:, 1])
        if count > 1:
            assert len(query_source.read | reference_source.read) < len(images)
        np.testing.assert_array_equal(shard.query_ids[shard.pairs[:, 0]], mine[:, 0])
        np.testing.assert_array_equal(shard.reference_ids[shard.pairs[:, 1]], mine[:, 1])
        np.testing.assert_array_equal(shard.query_fields["label"], shard.query_ids)
        np.testing.assert_allclose(shard.queries, normalized[shard.query_ids])
        assert shard.image_shape == (16, 16, 3)
        if not len(shard.positions):
            continue
        for method in expected:
            got[method][shard.positions] = sx.saliency.explain_pairs(
                method, embed, shard.queries, shard.references, key=jax.random.key(2), pairs=shard.pairs,
                config=CONFIG if method == "rise" else {}, query_ids=shard.query_ids,
                reference_ids=shard.reference_ids)
    assert sorted(held) == list(range(len(pairs)))  # every pair exactly once
    for method in expected:
        np.testing.assert_allclose(got[method], expected[method], rtol=1e-6, atol=1e-6, err_msg=method)


def test_pairs_of_a_query_stay_together(setup):
    images, pairs, _ = setup
    owner = {}
    for index in range(4):
        shard = shards.read_pair_shard(images, images, pairs, shard_index=index, shard_count=4)
        for q in pairs[shard.positions, 0]:
            assert owner.setdefault(int(q), index) == index


def test_cache_files_are_named_by_source_ids(setup, tmp_path):
    images, pairs, embed = setup
    normalized = normalize_images(images)
    shard = shards.read_pair_shard(normalized, normalized, pairs, shard_index=2, shard_count=3)
    sx.saliency.explain_pairs("rise", embed, shard.queries, shard.references, key=jax.random.key(2),
                              pairs=shard.pairs, config=CONFIG, query_ids=shard.query_ids,
                              reference_ids=shard.reference_ids, cache_dir=str(tmp_path))
    files = sorted(tmp_path.glob("q*.npz"))
    assert sorted(p.name for p in files) == sorted(f"q{q}.npz" for q in shard.query_ids)
    stamps = {p: p.stat().st_mtime_ns for p in files}
    whole = sx.saliency.explain_pairs("rise", embed, normalized, normalized, key=jax.random.key(2), pairs=pairs,
                                      config=CONFIG, cache_dir=str(tmp_path))
    assert {p: p.stat().st_mtime_ns for p in files} == stamps  # the shard's files were reused, not rewritten
    fresh = sx.saliency.explain_pairs("rise", embed, normalized, normalized, key=jax.random.key(2), pairs=pairs,
                                      config=CONFIG)
    np.testing.assert_allclose(whole, fresh, rtol=1e-6, atol=1e-6)


def test_gather_rows_single_process():
    out = parallel.gather_rows([2, 0], np.array([[1.0, 2.0], [3.0, 4.0]]), 3)
    np.testing.assert_array_equal(out, [[3.0, 4.0], [0.0, 0.0], [1.0, 2.0]])
    with pytest.raises(ValueError, match="rows for"):
        parallel.gather_rows([0], np.zeros((2, 1)), 3)


def test_bad_inputs(setup):
    images, pairs, embed = setup
    with pytest.raises(ValueError, match="pairs must be"):
        shards.read_pair_shard(images, images, pairs[:, :1])
    with pytest.raises(ValueError, match="query_ids must be 16 integer ids"):
        sx.saliency.explain_pairs("random", embed, normalize_images(images), normalize_images(images),
                                  key=jax.random.key(0), pairs=pairs, query_ids=np.arange(3))
    with pytest.raises(ValueError, match="pairs index outside the sources"):
        shards.read_pair_shard(images, images, np.array([[0, 99]]))


def test_initialize_distributed_arguments(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(jax.config, "update", lambda *args: None)  # keep this process's settings
    parallel.initialize_distributed("auto")  # the cluster (TPU pod, SLURM, ...) is detected by JAX
    parallel.initialize_distributed("host0:1234", 4, 2)
    assert calls == [{"local_device_ids": None},
                     {"coordinator_address": "host0:1234", "num_processes": 4, "process_id": 2,
                      "local_device_ids": None}]
    with pytest.raises(ValueError, match="give coordinator_address"):
        parallel.initialize_distributed("host0:1234", 4)
