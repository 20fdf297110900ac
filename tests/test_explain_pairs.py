import dataclasses
import inspect

import jax
import numpy as np
import pytest

import simexplain_jax as sx
from conftest import SALIENCY_CONFIGS
from simexplain_jax.saliency import OPTIONS, _dispatch
from simexplain_jax.saliency.cache import describe

CONFIGS = SALIENCY_CONFIGS
FIRST_ORDER = sorted(set(CONFIGS) - set(sx.saliency.SECOND_ORDER))
# a program with a counting callback in it may round the last bit otherwise than the same program without
LAST_BITS = 4 * np.finfo(np.float32).eps


def counting(embed, sizes: list):
    """``embed`` that appends each batch's size to ``sizes`` when it runs. A Partial over ``embed``, so
    the weights stay arguments of the programs, as in a run with ``embed`` itself (closed over, they
    would be constants, which XLA may round otherwise)."""

    def count(fn, batch):
        jax.debug.callback(lambda n: sizes.append(int(n)), batch.shape[0])
        return fn(batch)

    return jax.tree_util.Partial(count, embed)


@pytest.fixture
def setup(saliency_problem):
    embed, images, _ = saliency_problem
    pairs = np.array([[0, 1], [2, 3], [0, 4], [1, 2], [2, 0]])  # queries 0 and 2 have two references, 1 one
    return embed, images[:5], pairs


def test_registry_covers_every_method_and_the_defaults_live_only_in_the_options_class():
    assert set(OPTIONS) == set(CONFIGS)
    for name, cls in OPTIONS.items():
        assert cls.method == name and sx.saliency.options_for(name) == cls()
        fields = {f.name for f in dataclasses.fields(cls)}
        parameters = inspect.signature(getattr(sx.saliency, name)).parameters
        assert not fields & set(parameters), name  # the function keeps no second copy of the defaults
        assert parameters["options"].default is None  # None: the class's defaults
        options = cls(**CONFIGS[name])
        assert hash(options) == hash(cls(**CONFIGS[name])) and options.replace() == options


@pytest.mark.parametrize("method", FIRST_ORDER)
def test_explain_pairs_equals_single_pair_calls(setup, method):
    """Each pair's map is the single-pair function's map for the query's key, whatever else is in the list."""
    embed, images, pairs = setup
    key, config = jax.random.key(3), CONFIGS[method]
    finished = []
    maps = sx.saliency.explain_pairs(method, embed, images, images, key=key, pairs=pairs, config=config,
                                     progress=finished.append)
    assert maps.shape == (5, 16, 16) and sum(finished) == 5
    function = getattr(sx.saliency, method)
    variable = OPTIONS[method].references == "images"
    for q in np.unique(pairs[:, 0]):
        rows = np.flatnonzero(pairs[:, 0] == q)
        refs = images[pairs[rows, 1]] if variable else np.asarray(embed(images[pairs[rows, 1]]))
        single = np.asarray(function(embed, images[q], refs, key=jax.random.fold_in(key, int(q)), **config).maps)
        np.testing.assert_allclose(maps[rows], single, rtol=1e-4, atol=1e-5 * float(np.abs(single).max()) + 1e-7,
                                   err_msg=method)


@pytest.fixture(scope="module")
def pooled_setup():
    """A small pooled-embedding CNN (the exact method applies), its PooledModel and plain embed_fn."""
    from simexplain_jax.models import EmbeddingNet, SmallCNN, embed_fn

    model = EmbeddingNet(SmallCNN(features=(4, 8)), dim=8)
    variables = model.init(jax.random.key(0), np.zeros((1, 16, 16, 3), np.float32))
    images = np.random.default_rng(1).normal(size=(5, 16, 16, 3)).astype(np.float32)
    pairs = np.array([[0, 1], [2, 3], [0, 4], [1, 0], [0, 2]])  # query 0 has three references
    return model, variables, embed_fn(model, variables), sx.saliency.pooled_model(model, variables), images, pairs


def _single_pair(method, model, variables, embed, query, reference, key, config):
    if method == "pooled_pair":
        return sx.saliency.pooled_pair(model, variables, query, reference, **config)
    if method == "rise_pair":
        return sx.saliency.rise_pair(embed, query, reference, key=key, **config)
    return sx.saliency.integrated_cross_jacobian(embed, query, reference, **config)


@pytest.mark.parametrize("method", sorted(sx.saliency.SECOND_ORDER))
def test_pair_methods_through_explain_pairs_equal_their_single_pair_calls(pooled_setup, method):
    """The pair methods run through the same registry path: each pair's correspondence, both
    first-order maps, similarity and passes are the single-pair function's for the query's key,
    whatever else is in the list; without correspondences=True the map is the query map."""
    model, variables, embed, pooled, images, pairs = pooled_setup
    key, config = jax.random.key(3), CONFIGS[method]
    fn = pooled if method == "pooled_pair" else embed
    out = sx.saliency.explain_pairs(method, fn, images, images, key=key, pairs=pairs, config=config,
                                    correspondences=True)
    maps = sx.saliency.explain_pairs(method, fn, images, images, key=key, pairs=pairs, config=config)
    np.testing.assert_array_equal(maps, out.query_map)
    for i, (q, r) in enumerate(pairs):
        single = _single_pair(method, model, variables, embed, images[q], images[r], jax.random.fold_in(key, int(q)),
                              config)
        for field in ("correspondence", "query_map", "reference_map", "similarity"):
            expected = np.asarray(getattr(single, field))
            np.testing.assert_allclose(getattr(out, field)[i], expected, rtol=1e-4,
                                       atol=1e-5 * float(np.abs(expected).max()) + 1e-7, err_msg=f"{method} {field}")
        assert out.passes == single.passes
    if method == "pooled_pair":  # exact: every pair's contributions sum to its similarity
        np.testing.assert_allclose(out.correspondence.sum(axis=(1, 2, 3, 4)), out.similarity, rtol=1e-5, atol=1e-6)


def test_pair_methods_cache_their_correspondences(pooled_setup, tmp_path):
    model, variables, embed, pooled, images, pairs = pooled_setup
    config = CONFIGS["rise_pair"]
    run = lambda fn, **kw: sx.saliency.explain_pairs("rise_pair", fn, images, images, key=jax.random.key(0),  # noqa: E731
                                                     pairs=pairs, config=config, cache_dir=str(tmp_path), **kw)
    first = run(embed, correspondences=True)
    with np.load(tmp_path / "q0.npz") as stored:
        assert stored["correspondence"].shape == (3, 4, 4, 4, 4)
    masked = []  # a pass over more than the two intact images of a pair is mask work
    again = run(counting(embed, masked), correspondences=True,
                cache_meta={"model": sx.saliency.cache.fingerprint(embed)})
    for a, b in zip(first[:3], again[:3]):  # read back from the cache
        np.testing.assert_array_equal(a, b)
    # the similarities are recomputed, by a program with the callback in it: equal to the last bit or so
    np.testing.assert_allclose(again.similarity, first.similarity, rtol=LAST_BITS, atol=0)
    assert 0 < sum(masked) <= 2 * len(images)  # only the intact images, for the similarities: nothing recomputed


def test_correspondences_need_a_pair_method_and_pooled_pair_a_pooled_model(pooled_setup):
    model, variables, embed, pooled, images, pairs = pooled_setup
    with pytest.raises(ValueError, match="correspondences=True needs a pair method"):
        sx.saliency.explain_pairs("rise", embed, images, images, key=jax.random.key(0), pairs=pairs,
                                  correspondences=True)
    with pytest.raises(TypeError, match="pooled_model"):
        sx.saliency.explain_pairs("pooled_pair", embed, images, images, key=jax.random.key(0), pairs=pairs)
    with pytest.raises(ValueError, match="float32"):
        sx.saliency.PooledPair(compute_dtype="bfloat16")


def test_explain_pairs_takes_an_options_object(setup):
    """``Rise(...)`` says which method it is; a method name with ``config`` builds the same object."""
    embed, images, pairs = setup
    key = jax.random.key(3)
    by_name = sx.saliency.explain_pairs("rise", embed, images, images, key=key, pairs=pairs, config=CONFIGS["rise"])
    options = sx.saliency.Rise(**CONFIGS["rise"])
    by_object = sx.saliency.explain_pairs(options, embed, images, images, key=key, pairs=pairs)
    np.testing.assert_array_equal(by_object, by_name)
    with pytest.raises(TypeError, match="method"):
        sx.saliency.explain_pairs(dict(CONFIGS["rise"]), embed, images, images, key=key, pairs=pairs)


def test_options_are_described_the_same_in_every_process():
    """A cache records options by value (functions by name, never an address), as a dict or as the object."""
    options = sx.saliency.Rise(num_masks=40, p=0.25)
    assert options.to_dict()["similarity"] == "simexplain_jax.similarity.cosine"
    assert describe(options) == {"class": "simexplain_jax.saliency._rise.Rise", **options.to_dict()}
    assert "0x" not in repr(describe({"options": options}))


def test_a_sweep_over_traced_options_compiles_once(setup):
    """p and tolerance are traced leaves of the options, not static: explain_pairs over several
    values reuses one compiled program, and the values do change the maps."""
    embed, images, pairs = setup
    key = jax.random.key(3)
    cache_size = sx.parallel._map_queries_jit._cache_size
    base = sx.saliency.Rise(num_masks=24, grid_size=4, batch_size=8, tolerance=0.5)
    first = sx.saliency.explain_pairs(base, embed, images, images, key=key, pairs=pairs)
    compiled = cache_size()
    for p, tolerance in ((0.3, 0.2), (0.7, 0.05), (0.9, 0.1)):
        maps = sx.saliency.explain_pairs(base.replace(p=p, tolerance=tolerance), embed, images, images, key=key,
                                         pairs=pairs)
        assert not np.allclose(maps, first)
    assert cache_size() == compiled


def test_cache_is_reused_and_resumes(setup, tmp_path):
    embed, images, pairs = setup
    config = CONFIGS["rise"]
    same_model = {"model": "the tanh embedding"}  # the counting wrapper below is the same model under another name
    first = sx.saliency.explain_pairs("rise", embed, images, images, key=jax.random.key(0), pairs=pairs,
                                      config=config, cache_dir=str(tmp_path), cache_meta=same_model)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["meta.json", "q0.npz", "q1.npz", "q2.npz"]
    (tmp_path / "q2.npz").unlink()  # as if killed before the last query
    run = lambda fn: sx.saliency.explain_pairs("rise", fn, images, images, key=jax.random.key(0),  # noqa: E731
                                               pairs=pairs, config=config, cache_dir=str(tmp_path),
                                               cache_meta=same_model)
    kept = {name: (tmp_path / name).stat().st_mtime_ns for name in ("q0.npz", "q1.npz")}
    resumed = run(embed)
    np.testing.assert_array_equal(resumed, first)  # bit for bit: the same program and inputs as the first run
    assert (tmp_path / "q2.npz").exists() and kept == {n: (tmp_path / n).stat().st_mtime_ns for n in kept}
    (tmp_path / "q2.npz").unlink()
    embedded = []  # the images embedded at run time
    counted = counting(embed, embedded)
    again = run(counted)
    np.testing.assert_allclose(again, first, rtol=LAST_BITS, atol=0)  # the callback makes it another program
    # only query 2 was recomputed: the list's 5 references embedded (once each), then its 40 masked copies
    assert sum(embedded) == 5 + 40, embedded
    embedded.clear()
    complete = run(counted)
    np.testing.assert_array_equal(complete, again)
    assert embedded == []  # everything cached: nothing embedded, no crash on an empty work list
    with pytest.raises(ValueError, match=r"written with other settings(.|\n)*options.num_masks: 40 -> 20"):
        sx.saliency.explain_pairs("rise", embed, images, images, key=jax.random.key(0), pairs=pairs,
                                  config=dict(num_masks=20, grid_size=4), cache_dir=str(tmp_path), cache_meta=same_model)


@pytest.mark.parametrize("change,error,message", [
    (dict(method="shap"), ValueError, "method must be one of"),
    (dict(pairs=np.zeros((0, 2), int)), ValueError, "pairs"),
    (dict(pairs=[[0, 9]]), ValueError, "outside"),
    (dict(pairs=[[0.0, 1.5]]), ValueError, "integer"),
    (dict(config={"num_maks": 10}), ValueError, r"unknown option\(s\) \['num_maks'\].*num_masks"),
    (dict(config={"p": 0.0}), ValueError, "p must be"),
    (dict(key=None), ValueError, "key"),
    (dict(query_batch=0), ValueError, "query_batch"),
    (dict(mesh="cpu"), TypeError, "mesh"),
    (dict(segment_threads=-1), ValueError, "segment_threads must be an integer >= 0"),
])
def test_bad_arguments(setup, change, error, message):
    embed, images, pairs = setup
    args = dict(method="rise", embed_fn=embed, queries=images, references=images, key=jax.random.key(0), pairs=pairs)
    args.update(change)
    with pytest.raises(error, match=message):
        sx.saliency.explain_pairs(**args)


def test_lime_segmentation_threads_give_the_serial_maps(linear_model):
    """SLIC in host threads, overlapped with the device work, changes nothing: the same device steps
    (queries grouped by superpixel capacity, query_batch at a time) and the same maps as segmenting
    each query in the calling thread. Queries whose superpixel counts differ share one program."""
    embed, _ = linear_model
    rng = np.random.default_rng(0)
    images = np.stack([np.repeat(np.repeat(rng.normal(size=(2, 2, 3)), 8, 0), 8, 1) for _ in range(5)])
    images = images.astype(np.float32)  # 2 x 2 blocks of 8 px
    counts = [int(sx.saliency.superpixels(sx.saliency.denormalize(x), 8).max()) + 1 for x in images]
    assert counts[0] not in counts[1:] and max(counts) <= 8  # two counts, one capacity: steps of 2, 2 and 1
    pairs = np.array([[q, (q + 1) % 5] for q in range(5)] + [[0, 3]])
    run = lambda threads: sx.saliency.explain_pairs(  # noqa: E731
        "lime", embed, images, images, key=jax.random.key(1), pairs=pairs, query_batch=2,
        config=dict(num_samples=40, num_segments=8), segment_threads=threads)
    steps = list(_dispatch.steps(sx.saliency.Lime(num_segments=8), images, list(range(5)), 2, 0, {}))
    assert steps == [(8, [0, 1]), (8, [2, 3]), (8, [4])]  # full steps across the counts
    serial = run(0)
    np.testing.assert_array_equal(run(3), serial)
    single = sx.saliency.lime(embed, images[0], np.asarray(embed(images[:4])), key=jax.random.fold_in(
        jax.random.key(1), 0), num_samples=40, num_segments=8).maps  # query 0's references: 1 and 3
    np.testing.assert_allclose(serial[[0, 5]], np.asarray(single)[[1, 3]], rtol=1e-4, atol=1e-6)
