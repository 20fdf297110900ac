"""Issue 14: each case a careful user or a hostile tester found, reproduced as it was, with the
clear error or the right result it now gets. (The experiment-level cases, the kill test and the
explain command's are in tests/test_experiments.py; the importers' path checks in
tests/test_data_real.py.)"""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import simexplain_jax as sx
from simexplain_jax import io
from simexplain_jax.data.pairs import read_pairs
from simexplain_jax.saliency.cache import SaliencyCache

from conftest import SALIENCY_CONFIGS

RISE = SALIENCY_CONFIGS["rise"]  # and the shared model: the programs of test_explain_pairs


@pytest.fixture
def small(saliency_problem):
    embed, images, _ = saliency_problem
    pairs = np.array([[0, 1], [2, 3], [1, 2]])  # one reference per query: one compiled program
    return embed, images[:4], pairs


# ---- input validation at the public boundary ------------------------------------------------------

def test_integer_images_are_refused_naming_the_conversion(small):
    embed, images, pairs = small
    as_uint8 = np.clip(images * 40 + 128, 0, 255).astype(np.uint8)
    ref = np.asarray(embed(images[:1]))[0]
    with pytest.raises(TypeError, match="query must be a floating-point image.*normalize_images"):
        sx.saliency.rise(embed, as_uint8[0], ref, key=jax.random.key(0), **RISE)
    with pytest.raises(TypeError, match="queries must be a floating-point image"):
        sx.saliency.explain_pairs("rise", embed, as_uint8.astype(np.int64), images, key=jax.random.key(0),
                                  pairs=pairs, config=RISE)
    with pytest.raises(TypeError, match="queries must be a floating-point image"):
        sx.metrics.insertion_deletion_batch(embed, as_uint8[:1], ref[None], np.ones((1, 16, 16)), background=0.0)


@pytest.mark.parametrize("where", ["query", "reference_image", "reference_embedding"])
def test_non_finite_inputs_raise_naming_the_argument(small, where):
    """They used to give all-zero maps (and AUC 0.5) without a word."""
    embed, images, pairs = small
    bad = images.copy()
    bad[2, 3, 4, 0] = np.nan if where != "reference_image" else np.inf
    ref = np.asarray(embed(images[1:2]))[0]
    if where == "query":
        with pytest.raises(ValueError, match="query holds NaN or infinite pixels"):
            sx.saliency.rise(embed, bad[2], ref, key=jax.random.key(0), **RISE)
        with pytest.raises(ValueError, match=r"queries holds NaN or infinite pixels \(rows \[2\]\)"):
            sx.saliency.explain_pairs("rise", embed, bad, images, key=jax.random.key(0), pairs=pairs, config=RISE)
    elif where == "reference_image":
        with pytest.raises(ValueError, match=r"references holds NaN or infinite pixels \(rows \[2\]\)"):
            sx.saliency.explain_pairs("rise_variable", embed, images, bad, key=jax.random.key(0), pairs=pairs,
                                      config=dict(RISE, num_reference_masks=2))
    else:
        with pytest.raises(ValueError, match="reference_embeddings holds NaN"):
            sx.saliency.rise(embed, images[0], ref * np.nan, key=jax.random.key(0), **RISE)
        with pytest.raises(ValueError, match="reference_embeddings holds NaN"):
            sx.metrics.insertion_deletion_batch(embed, images[:1], ref[None] * np.nan, np.ones((1, 16, 16)),
                                                background=0.0)


def test_an_embed_fn_giving_nan_raises_and_caches_nothing(small, tmp_path):
    embed, images, pairs = small

    def broken(batch):  # NaN whenever pixel (0, 0) of channel 0 is masked to exactly 0
        out = embed(batch)
        return jnp.where((batch[:, 0, 0, 0] == 0)[:, None], jnp.nan, out)

    with pytest.raises(ValueError, match=r"rise gave NaN or infinite maps for queries \[0\]"):
        sx.saliency.explain_pairs("rise", broken, images, images, key=jax.random.key(0), pairs=pairs,
                                  config=dict(RISE, p=0.5), cache_dir=str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json"]
    every = lambda batch: embed(batch) * jnp.nan  # noqa: E731
    with pytest.raises(ValueError, match=r"embed_fn returned NaN or infinite embeddings for references \[1, 2, 3\]"):
        sx.saliency.explain_pairs("rise", every, images, images, key=jax.random.key(0), pairs=pairs, config=RISE)
    ref = np.asarray(embed(images[1:2]))
    with pytest.raises(ValueError, match=r"insertion/deletion curves of pairs \[0\]"):
        sx.metrics.insertion_deletion_batch(broken, images[:1], ref, np.ones((1, 16, 16)), background=0.0,
                                            num_steps=3)


def test_cosine_is_right_at_any_scale_and_never_hides_nan():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 8)).astype(np.float32), rng.normal(size=(3, 8)).astype(np.float32)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    unit = a64 @ b64.T / np.outer(np.linalg.norm(a64, axis=-1), np.linalg.norm(b64, axis=-1))
    for scale in (1e-30, 1.0, 1e20, 1e30):  # |x|^2 of a 1e20-norm vector is beyond float32: it gave 0
        scaled = (a64 * scale).astype(np.float32)
        np.testing.assert_allclose(sx.similarity.cosine(scaled, b * np.float32(1e20)), np.diag(unit), rtol=1e-5)
        np.testing.assert_allclose(sx.similarity.pairwise_cosine(scaled, b), unit, rtol=1e-5, atol=1e-6)
    assert float(sx.similarity.cosine(np.zeros(4), np.ones(4))) == 0.0  # a zero vector still gives 0
    assert np.isnan(float(sx.similarity.cosine(np.array([1.0, np.nan]), np.ones(2))))
    assert np.isnan(float(sx.similarity.cosine(np.array([1.0, np.inf]), np.ones(2))))
    grad = jax.grad(lambda x: sx.similarity.cosine(x, jnp.ones(4)))(jnp.array([1e20, 0.0, 0.0, 0.0]))
    assert np.all(np.isfinite(grad))


def test_numpy_and_jax_scalars_are_accepted_as_numbers():
    """``p=jnp.float32(0.5)`` and ``num_reference_masks=np.int64(4)`` were refused as invalid; now they
    are the same options (so the same compiled program) as the Python numbers."""
    plain = sx.saliency.options_for("rise_variable", num_masks=16, num_reference_masks=4, p=0.5)
    typed = sx.saliency.options_for("rise_variable", num_masks=np.int64(16), num_reference_masks=np.int64(4),
                                    p=jnp.float32(0.5))
    assert typed == plain and type(typed.num_reference_masks) is int and type(typed.p) is float
    with pytest.raises(ValueError, match="num_reference_masks must be"):
        sx.saliency.options_for("rise_variable", num_reference_masks=np.float64(4.0))


@pytest.mark.parametrize("call,error,message", [
    (lambda e, x, r: sx.metrics.insertion_deletion_batch(e, x[:1], r, np.ones((1, 16, 16)), background=None),
     ValueError, "background is required"),
    (lambda e, x, r: sx.metrics.insertion_deletion_batch(e, x[:1], r, np.ones((1, 16, 16)), background=0.0,
                                                         num_steps=1), ValueError, "num_steps must be an integer >= 2"),
    (lambda e, x, r: sx.metrics.insertion_deletion_batch(e, x[:1], r, np.ones((1, 16, 16)), background=0.0,
                                                         pair_group=0), ValueError, "pair_group must be"),
    (lambda e, x, r: sx.saliency.perturbation(e, x[0], r[0], key=jax.random.key(0), blur_size=101).maps, ValueError,
     "blur_size"),
    (lambda e, x, r: sx.saliency.lime(e, x[0], r[0], key=jax.random.key(0), num_samples=8, num_segments=0).maps,
     ValueError, "num_segments must be an integer >= 1"),
    (lambda e, x, r: sx.imageops.normalized_color(300), ValueError, r"in \[0, 255\], got 300"),
    (lambda e, x, r: sx.imageops.normalized_color([0, 255]), ValueError, "3 values"),
])
def test_bad_options_get_a_named_error(small, call, error, message):
    embed, images, _ = small
    with pytest.raises(error, match=message):
        call(embed, images, np.asarray(embed(images[1:2])))


def test_lime_segment_labels_far_apart_are_made_consecutive(small):
    """Labels {0, 10^6} once tried to allocate a 10^6-column problem (8 TB for the Gram matrix)."""
    embed, images, _ = small
    far, near = np.zeros((16, 16), np.int64), np.zeros((16, 16), np.int64)
    far[8:], near[8:] = 10**6, 1
    ref = np.asarray(embed(images[1:2]))[0]
    args = dict(key=jax.random.key(0), num_samples=8)
    np.testing.assert_array_equal(sx.saliency.lime(embed, images[0], ref, segments=far, **args).maps,
                                  sx.saliency.lime(embed, images[0], ref, segments=near, **args).maps)


def test_read_pairs_takes_a_bom_and_names_the_file_on_bad_bytes(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_bytes("\ufeffa b 1\nc d 0\n".encode("utf-8"))
    assert [p.query for p in read_pairs(path)] == ["a", "c"]  # the BOM used to become part of "a"
    path.write_bytes("caf\xe9 b 1\n".encode("latin-1"))
    with pytest.raises(ValueError, match=f"{path}: not UTF-8 text.*offset 3"):
        read_pairs(path)


# ---- outside data ---------------------------------------------------------------------------------

def test_path_inside_rejects_names_that_leave_the_folder(tmp_path):
    assert io.path_inside(tmp_path, "a/../b.jpg") == os.path.join(tmp_path, "a/../b.jpg")
    for name in ("../../secret/x.jpg", "a/../../x", "/etc/passwd", ".."):
        with pytest.raises(ValueError, match="leaves its folder|absolute path"):
            io.path_inside(tmp_path, name, what="item id")


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_get_the_users_umask(tmp_path, umask, mode):
    """mkstemp's temporary files are 0600: results were unreadable to the other users of a workdir."""
    old = os.umask(umask)
    try:
        io.write_json_atomic(tmp_path / "results.json", {"a": 1})
        SaliencyCache(str(tmp_path / "cache"), {"method": "x"}).put(0, [1], np.zeros((1, 2, 2)))
    finally:
        os.umask(old)
    for path in (tmp_path / "results.json", tmp_path / "cache" / "meta.json", tmp_path / "cache" / "q0.npz"):
        assert path.stat().st_mode & 0o777 == mode, path


# ---- the saliency cache cannot serve stale maps --------------------------------------------------

def explain(embed, images, pairs, cache, **kw):
    return sx.saliency.explain_pairs("rise", embed, images, images, pairs=pairs, cache_dir=str(cache),
                                     **{"key": jax.random.key(0), "config": RISE, **kw})


def test_the_cache_records_model_key_options_and_images(small, tmp_path):
    embed, images, pairs = small
    first = explain(embed, images, pairs, tmp_path, cache_meta={"dataset": "shapes"})
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert set(meta) == {"method", "options", "key", "model", "dataset"}
    assert meta["options"]["num_masks"] == RISE["num_masks"]
    assert meta["options"]["similarity"] == "simexplain_jax.similarity.cosine"
    other_weights = lambda x: embed(x) * 2.0 + 1.0  # noqa: E731  (another model: new function, new name)
    for change, named in [(dict(embed=other_weights), "model:"), (dict(key=jax.random.key(1)), "key:"),
                          (dict(config=dict(RISE, p=0.3)), "options.p: 0.5 -> 0.3"),
                          (dict(cache_meta={"dataset": "awa2"}), 'dataset: "shapes" -> "awa2"')]:
        args = dict(embed=embed, cache_meta={"dataset": "shapes"})
        args.update(change)
        with pytest.raises(ValueError, match=f"written with other settings(.|\\n)*{named}"):
            explain(args.pop("embed"), images, pairs, tmp_path, **args)
    # the same ids with other images behind them: the file is named
    moved = images.copy()
    moved[2] += 1.0
    with pytest.raises(ValueError, match=r"q2.npz holds maps of other images for the same ids \(query 2 changed"):
        explain(embed, moved, pairs, tmp_path, cache_meta={"dataset": "shapes"})
    # explicitly fresh: the old cache moved aside, the maps recomputed for the new settings
    with pytest.warns(UserWarning, match="moved to .*stale-"):
        fresh = explain(embed, images, pairs, tmp_path, key=jax.random.key(1), cache_meta={"dataset": "shapes"},
                        replace_stale=True)
    assert not np.allclose(fresh, first)
    assert len(list(tmp_path.parent.glob(tmp_path.name + ".stale-*"))) == 1


def test_a_corrupt_cache_file_is_named_moved_aside_and_recomputed(small, tmp_path):
    embed, images, pairs = small
    first = explain(embed, images, pairs, tmp_path)
    data = (tmp_path / "q2.npz").read_bytes()
    (tmp_path / "q2.npz").write_bytes(data[: len(data) // 2])  # truncated (a full disk, a copy cut short)
    with pytest.warns(UserWarning, match=r"q2.npz is unreadable \(BadZipFile.*moved to .*q2.npz.corrupt"):
        again = explain(embed, images, pairs, tmp_path)
    np.testing.assert_array_equal(again, first)
    assert (tmp_path / "q2.npz.corrupt").exists() and np.load(tmp_path / "q2.npz")["maps"].shape == (1, 16, 16)


def test_the_training_saliency_cache_is_tied_to_its_model_and_survives_a_corrupt_shard(small, tmp_path):
    from simexplain_jax.attributes.saliency_cache import training_saliency

    embed, images, _ = small
    args = dict(key=jax.random.key(0), config={}, grid=4, max_references=1, directory=str(tmp_path), shard_size=2)
    references = [[1], [0], [3], [2]]
    maps, valid = training_saliency("random", embed, images, references, **args)
    assert valid.all() and sorted(p.name for p in tmp_path.glob("shard_*")) == ["shard_0000000.npz",
                                                                                 "shard_0000002.npz"]
    with pytest.raises(ValueError, match="written with other settings(.|\n)*model:"):
        training_saliency("random", lambda x: embed(x) + 1.0, images, references, **args)
    with pytest.raises(ValueError, match="written with other settings(.|\n)*images:"):
        training_saliency("random", embed, images + 1.0, references, **args)
    (tmp_path / "shard_0000002.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.warns(UserWarning, match="shard_0000002.npz is unreadable.*moved to"):
        again, _ = training_saliency("random", embed, images, references, **args)
    np.testing.assert_array_equal(again, maps)


# ---- experiment configs, checked at start --------------------------------------------------------

def config_of(name, **changes):
    import importlib

    config = importlib.import_module(f"experiments.configs.{name}").get_config("runlocal")
    for field, value in changes.items():
        node = config
        *parents, last = field.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    return config


@pytest.mark.parametrize("name,check,changes,message", [
    ("similarity_shapes", "check_similarity_config", {"learning_rate": float("nan")}, "learning_rate must be a finite"),
    ("similarity_shapes", "check_similarity_config", {"margin": -0.2}, "margin must be a finite number in"),
    ("saliency_shapes", "check_saliency_config", {"rows": ()}, "config.rows names no row"),
    ("saliency_shapes", "check_saliency_config", {"test_pairs": "/nonexistent"}, "test_pairs '/nonexistent' does not"),
    ("saliency_shapes", "check_saliency_config", {"gallery_pairs": 0}, "gallery_pairs must be an integer >= 1"),
    ("saliency_shapes", "check_saliency_config", {"background": 300}, r"background: .*\[0, 255\], got 300"),
    ("saliency_shapes", "check_saliency_config", {"methods.rise.p": 1.5}, "config.methods.rise: p must be"),
    ("saliency_shapes", "check_saliency_config", {"methods.lime.num_segments": 0}, "config.methods.lime: num_segments"),
    ("attributes_shapes", "check_attributes_config", {"lambdas": (0.0, -1.0)}, "lambdas must be non-negative"),
    ("attributes_shapes", "check_attributes_config", {"learning_rate": float("inf")}, "learning_rate must be a finite"),
    ("explain_attributes_shapes", "check_explain_attributes_config", {"weights": (0.0, 2.0)}, r"weights must be numbers in"),
    ("explain_attributes_shapes", "check_explain_attributes_config", {"concept_methods": ("ridge", "cav")},
     r"concept_methods must name distinct fits of \('ridge', 'fastcav', 'pattern', 'mlp', 'edits'\)"),
    ("explain_attributes_shapes", "check_explain_attributes_config", {"concept_scorers": ("shap",)},
     "concept_scorers must name scorers of"),
    ("explain_attributes_shapes", "check_explain_attributes_config", {"cell_fraction": 0.0}, "cell_fraction must be"),
    ("similarity_shapes", "check_similarity_config", {"seed": -1}, "config.seed must be an integer >= 0, got -1"),
    ("saliency_shapes", "check_saliency_config", {"mesh_devices": 64}, r"config.mesh_devices=64 but this process sees 8"),
    ("attributes_shapes", "check_attributes_config", {"seed": -3}, "config.seed must be an integer >= 0"),
])
def test_experiment_configs_are_checked_before_anything_is_built(name, check, changes, message):
    from experiments import validation

    getattr(validation, check)(config_of(name))  # the shipped config passes
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        getattr(validation, check)(config_of(name, **changes))


def test_saliency_config_names_unknown_methods():
    from experiments import validation

    config = config_of("saliency_shapes")
    config.methods = ml_collections.ConfigDict(dict(config.methods.to_dict(), shap={}))
    with pytest.raises(ValueError, match=r"unknown method\(s\) \['shap'\]"):
        validation.check_saliency_config(config)


# ---- one writer per workdir; stages die with their parent ----------------------------------------

def test_a_stage_runs_in_its_parents_process_and_only_when_not_done(tmp_path):
    """Stages run in the process of the experiment that needs them (killing it ends them: no child
    process can outlive it, which the subprocess stages once did), with real nested overrides; a
    done stage is skipped, and a misspelt override fails even then."""

    from experiments.stages import ensure_stage

    calls = []

    def run(config, workdir):
        calls.append((os.getpid(), config.to_dict(), workdir))
        (tmp_path / "results.json").write_text("{}")

    config = ml_collections.ConfigDict(dict(rows=("a:fixed",), methods=dict(rise=dict(p=0.5, num_masks=10)), name=""))
    config.lock()
    assert ensure_stage(run, config, str(tmp_path), {"rows": ["b:fixed", "c:fixed"], "name": "",
                                                     "methods": {"rise": {"p": 0.25}}}) == str(tmp_path)
    assert calls == [(os.getpid(), dict(rows=("b:fixed", "c:fixed"), methods=dict(rise=dict(p=0.25, num_masks=10)),
                                        name=""), str(tmp_path))]  # the empty override is set, not dropped
    assert config.rows == ("a:fixed",) and config.methods.rise.p == 0.5  # the caller's config is left as it was
    ensure_stage(run, config, str(tmp_path), {"rows": ["b:fixed", "c:fixed"], "methods": {"rise": {"p": 0.25}}})
    assert len(calls) == 1  # done with these settings: skipped
    with pytest.raises(KeyError, match=r"config.methods.rise.pp: the config has no such field"):
        ensure_stage(run, config, str(tmp_path), {"methods": {"rise": {"pp": 0.1}}})
    # a finished stage is not silently reused with other settings: refused, naming each difference
    with pytest.raises(ValueError, match=r"ran with other settings \(methods.rise.p: 0.25 -> 0.5\)"):
        ensure_stage(run, config, str(tmp_path), {"rows": ["b:fixed", "c:fixed"], "methods": {"rise": {"p": 0.5}}})
    assert len(calls) == 1
    # a folder the user names must exist: a mistyped similarity_workdir is not a new run there
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'typo'} does not exist"):
        ensure_stage(run, config, str(tmp_path / "typo"), {}, given=True)
    assert len(calls) == 1 and not (tmp_path / "typo").exists()
    ensure_stage(run, config, str(tmp_path), {"methods": {"rise": {"p": 0.5}}}, given=True)  # used as it is
    assert len(calls) == 1


# ---- the explain command's images ----------------------------------------------------------------

def test_explain_scales_16_bit_images_and_names_unusable_ones(tmp_path):
    import struct
    import zlib

    from PIL import Image

    from experiments.explain import load_image, to_rgb8

    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as image:
        assert image.mode.startswith("I;16")
        rgb = to_rgb8(image)  # PIL's convert("RGB") clipped 99.6% of these pixels to 255
    np.testing.assert_array_equal(rgb, np.repeat(np.round(ramp / 257.0).astype(np.uint8)[..., None], 3, -1))
    assert (rgb == 255).mean() < 0.01

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    (tmp_path / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2,
                                                                                            0, 0, 0)) + chunk(b"IEND", b""))
    with pytest.raises(ValueError, match=f"cannot use image {tmp_path / 'bomb.png'}: DecompressionBombError"):
        load_image(str(tmp_path / "bomb.png"), 32)


# ---- outputs never follow links -------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:saliency cache file")  # the planted link is read as a corrupt cache file first
def test_every_writer_replaces_a_planted_symlink_instead_of_writing_through_it(tmp_path):
    """``explain --out=DIR`` with ``DIR/pair_0000.png`` a link planted by someone else overwrote the
    link's target."""
    from simexplain_jax import viz
    from simexplain_jax.checkpoint import Checkpointer
    from simexplain_jax.saliency import strongest_pairs

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    images = np.full((1, 8, 8, 3), 100, np.uint8)
    maps = np.random.default_rng(0).random((1, 8, 8))
    pairs = [strongest_pairs(np.ones((2, 2, 2, 2)), (8, 8), (8, 8), k=1)]
    writers = {
        "pair.png": lambda p: viz.pair_gallery(p, images, images, {"m": maps}),
        "corr.png": lambda p: viz.correspondence_figure(p, images, images, pairs, maps, maps),
        "curves.png": lambda p: viz.curves(p, {"m": (np.linspace(0, 1, 3), np.linspace(1, 0, 3))}),
        "report.html": lambda p: viz.write_report(p, "t", [("s", "<p>x</p>")]),
        "results.json": lambda p: io.write_json_atomic(p, {"a": 1}),
        "q0.npz": lambda p: SaliencyCache(str(out), {"m": 1}).put(0, [1], np.zeros((1, 8, 8))),
    }
    for name, write in writers.items():
        (out / name).symlink_to(victim)
        write(str(out / name))
        assert not (out / name).is_symlink() and (out / name).stat().st_size > 0, name
        assert victim.read_text() == "precious", name
    folder = tmp_path / "ckpt"
    (folder / "digests").mkdir(parents=True)
    for name in ("config.json", "checkpointer.json", "digests/1.json"):
        (folder / name).symlink_to(victim)
    import optax

    from simexplain_jax.train import similarity as sim

    train_state = sim.TrainState.create(apply_fn=None, params={"w": jnp.ones(2)}, tx=optax.sgd(0.1), batch_stats={})
    writer = Checkpointer(str(folder), metric="val_auc", config={"a": 1})
    writer.save(1, train_state, {"step": 1}, {"val_auc": 0.5})
    writer.close()
    assert victim.read_text() == "precious"
    assert not any((folder / name).is_symlink() for name in ("config.json", "checkpointer.json", "digests/1.json"))


def test_a_key_that_is_not_a_prng_key_is_refused_by_name(small):
    """A Python int as ``key`` failed deep inside JAX ("invalid PRNG key data ... ndim=0")."""
    embed, images, pairs = small
    reference = np.asarray(embed(images[1:2]))[0]
    with pytest.raises(TypeError, match=r"key must be a PRNG key, e.g. jax.random.key\(0\), got int 3"):
        sx.saliency.rise(embed, images[0], reference, key=3, **RISE)
    with pytest.raises(TypeError, match="key must be a PRNG key"):
        sx.saliency.explain_pairs("rise", embed, images, images, key=3, pairs=pairs, config=RISE)
    with pytest.raises(TypeError, match="key must be a PRNG key"):
        sx.saliency.rise_pair(embed, images[0], images[1], key=np.int64(3), num_masks=8, grid_size=4)
    with pytest.raises(TypeError, match="one PRNG key, got a batch"):
        sx.saliency.lime_variable(embed, images[0], images[1], key=jax.random.split(jax.random.key(0)))
    sx.saliency.rise(embed, images[0], reference, key=jax.random.PRNGKey(0), **RISE)  # raw key data: accepted


def test_a_cache_file_of_the_wrong_map_size_is_named(small, tmp_path):
    embed, images, pairs = small
    explain(embed, images, pairs, str(tmp_path))
    with np.load(tmp_path / "q0.npz") as data:
        stored = {k: data[k] for k in data.files}
    stored["maps"] = stored["maps"][:, :8, :8]  # as if written for other images, digests kept
    np.savez(tmp_path / "q0.npz", **stored)
    with pytest.raises(ValueError, match=f"saliency cache file {tmp_path / 'q0.npz'} holds maps of size \\(8, 8\\), "
                                         "but these images give \\(16, 16\\)"):
        explain(embed, images, pairs, str(tmp_path))


def test_a_malformed_test_pairs_file_is_refused_before_training(tmp_path):
    """It used to be read, and refused, only after a similarity model had been trained."""
    from experiments import validation

    bad = tmp_path / "pairs.txt"
    bad.write_text("a.jpg b.jpg 1\na.jpg c.jpg maybe\n")
    for name, check in (("similarity_shapes", "check_similarity_config"), ("saliency_shapes", "check_saliency_config")):
        with pytest.raises(ValueError, match=f"config.test_pairs: {bad}:2: expected 'img1 img2 label'"):
            getattr(validation, check)(config_of(name, test_pairs=str(bad)))
