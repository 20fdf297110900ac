"""Sharded execution on the 8 fake CPU devices that conftest.py sets up, in-process."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import simexplain_jax as sx
from conftest import SALIENCY_CONFIGS
from simexplain_jax import parallel

CONFIGS = {name: config for name, config in SALIENCY_CONFIGS.items() if name not in sx.saliency.SECOND_ORDER}


def test_eight_fake_devices():
    """The 8 fake devices are real to JAX: a mesh over them places one shard on each, and a
    collective over the mesh axis sums the 8 shards."""
    mesh = parallel.make_mesh(8)
    assert mesh.devices.size == 8 and len({d.id for d in mesh.devices.flat}) == 8
    spec = jax.sharding.PartitionSpec(parallel.AXIS)
    x = jax.device_put(np.arange(8.0, dtype=np.float32), jax.sharding.NamedSharding(mesh, spec))
    assert {s.device.id for s in x.addressable_shards} == {d.id for d in mesh.devices.flat}
    total = jax.shard_map(lambda v: jax.lax.psum(v, parallel.AXIS), mesh=mesh, in_specs=spec,
                          out_specs=jax.sharding.PartitionSpec())(x)
    assert float(total[0]) == 28.0


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_every_method_gives_the_same_maps_on_any_mesh(saliency_problem, method):
    embed, images, pairs = saliency_problem
    config, key = CONFIGS[method], jax.random.key(1)

    def run(mesh, chosen=pairs):
        return sx.saliency.explain_pairs(method, embed, images, images, key=key, pairs=chosen, config=config,
                                         mesh=mesh)

    plain = run(None)  # one local device
    scale = float(np.abs(plain).max())
    for mesh in (parallel.make_mesh(8), parallel.make_mesh(8, masks=4)):
        np.testing.assert_allclose(run(mesh), plain, rtol=1e-5, atol=1e-5 * scale, err_msg=str(mesh.shape))
    # a query's maps do not depend on the other queries of the call (one process's shard)
    np.testing.assert_allclose(run(parallel.make_mesh(8), pairs[-3:]), plain[-3:], rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("method,config", [("pooled_pair", {}), ("rise_pair", dict(num_masks=16, grid_size=4)),
                                           ("integrated_cross_jacobian", dict(num_steps=2, grid_size=4))])
def test_pair_methods_give_the_same_correspondences_on_any_mesh(method, config):
    from simexplain_jax.models import EmbeddingNet, SmallCNN, embed_fn

    model = EmbeddingNet(SmallCNN(features=(4, 8)), dim=8)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    fn = sx.saliency.pooled_model(model, variables) if method == "pooled_pair" else embed_fn(model, variables)
    images = np.random.default_rng(2).normal(size=(6, 16, 16, 3)).astype(np.float32)
    pairs = np.array([[q, (q + 1 + k) % 6] for q in range(5) for k in range(1 + q % 2)])

    def run(mesh):
        return sx.saliency.explain_pairs(method, fn, images, images, key=jax.random.key(1), pairs=pairs,
                                         config=config, mesh=mesh, correspondences=True)

    plain = run(None)
    sharded = run(parallel.make_mesh(8))
    scale = float(np.abs(plain.correspondence).max())
    np.testing.assert_allclose(sharded.correspondence, plain.correspondence, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(sharded.query_map, plain.query_map, rtol=1e-5, atol=1e-5 * scale)


def test_make_mesh_checks_its_arguments():
    grid = parallel.make_mesh(8, masks=4)
    assert dict(grid.shape) == {"pairs": 2, "masks": 4}
    for bad in (3, 0):
        with pytest.raises(ValueError, match="divide num_devices=8"):
            parallel.make_mesh(8, masks=bad)
    with pytest.raises(ValueError, match="num_devices"):
        parallel.make_mesh(9)


def test_one_pair_masks_split_over_devices(saliency_problem):
    embed, images, _ = saliency_problem
    ref = embed(images[1:2])[0]
    single = sx.saliency.rise(embed, images[0], ref, key=jax.random.key(3), num_masks=101, grid_size=4, batch_size=16).maps
    tolerance = dict(rtol=1e-5, atol=1e-5 * float(np.abs(single).max()))
    split = sx.saliency.rise_split_masks(embed, images[0], ref, key=jax.random.key(3), mesh=parallel.make_mesh(8),
                                         num_masks=101, grid_size=4, batch_size=16).maps  # N not a multiple of 8
    np.testing.assert_allclose(split, single, **tolerance)
    split = sx.saliency.rise_split_masks(embed, images[0], ref, key=jax.random.key(3), mesh=parallel.make_mesh(8, masks=4),
                                         num_masks=101, grid_size=4, batch_size=16, axis="masks").maps
    np.testing.assert_allclose(split, single, **tolerance)


def test_insertion_deletion_on_a_mesh_equals_per_pair_calls(saliency_problem):
    embed, images, _ = saliency_problem
    rng = np.random.default_rng(1)
    maps = rng.normal(size=(11, 16, 16)).astype(np.float32)
    refs = np.asarray(embed(images[1:12]))
    batch = sx.metrics.insertion_deletion_batch(embed, images[:11], refs, maps, background=0.0, num_steps=11,
                                                mesh=parallel.make_mesh(8))
    on_grid = sx.metrics.insertion_deletion_batch(embed, images[:11], refs, maps, background=0.0, num_steps=11,
                                                  mesh=parallel.make_mesh(8, masks=4), pair_group=3)
    np.testing.assert_allclose(on_grid.insertion_curve, batch.insertion_curve, atol=1e-5)
    for i in (0, 5, 10):
        one = sx.metrics.insertion_deletion(embed, images[i], refs[i], maps[i], background=0.0, num_steps=11)
        np.testing.assert_allclose(batch.insertion_curve[i], one.insertion_curve, atol=1e-5)
        np.testing.assert_allclose(batch.deletion_curve[i], one.deletion_curve, atol=1e-5)
        np.testing.assert_allclose(batch.insertion_auc[i], one.insertion_auc, atol=1e-6)


class CompileCounter:
    """Counts XLA compilations inside a ``with`` block: jax.monitoring's backend-compile events, and
    programs read from the persistent compilation cache instead (conftest turns it on)."""

    def __enter__(self):
        self.count = 0
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def _listen(self, name, duration, **kwargs):
        if name in ("/jax/core/compile/backend_compile_duration", "/jax/compilation_cache/cache_retrieval_time_sec"):
            self.count += 1

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._listen)


def test_second_call_with_the_same_shapes_compiles_nothing(saliency_problem):
    embed, images, pairs = saliency_problem
    mesh = parallel.make_mesh(8)
    maps = rng_maps = np.random.default_rng(2).normal(size=(len(pairs), 16, 16)).astype(np.float32)
    refs = np.asarray(embed(images[pairs[:, 1]]))

    def both(key):
        out = sx.saliency.explain_pairs("rise", embed, images, images, key=key, pairs=pairs, config=CONFIGS["rise"],
                                        mesh=mesh)
        sx.metrics.insertion_deletion_batch(embed, images[pairs[:, 0]], refs, rng_maps, background=0.0, num_steps=11,
                                            mesh=mesh)
        return out

    with CompileCounter() as first:
        a = both(jax.random.key(5))
    with CompileCounter() as second:
        b = both(jax.random.key(6))  # another key, new weights would be the same: arguments, not constants
    assert first.count > 0, "the counter saw no compilation at all"
    assert second.count == 0
    assert not np.allclose(a, b) and maps.shape == a.shape


def test_data_parallel_train_step_equals_one_device():
    from simexplain_jax.models import EmbeddingNet, SmallCNN
    from simexplain_jax.train import similarity as sim

    eight = parallel.make_mesh(8)
    rng = np.random.default_rng(0)
    model = EmbeddingNet(SmallCNN(features=(8, 16, 16)), dim=8)
    optimizer = sim.make_optimizer(1e-2)
    batch = {"image": jnp.asarray(rng.normal(size=(16, 16, 16, 3)), jnp.float32),
             "label": jnp.asarray(np.repeat(np.arange(4), 4))}
    results = []
    for mode in (None, "replicated", "fully_sharded"):
        state = sim.create_train_state(model, optimizer, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
        step = sim.make_train_step(model)
        if mode is not None:
            state = parallel.place_state(state, eight, mode)
            step = parallel.data_parallel(step, eight)
        for _ in range(3):
            state, metrics = step(state, batch)
        if mode == "fully_sharded":  # the big kernels and their Adam moments stay split over the 8 devices
            kernel = state.params["backbone"]["conv2"]["kernel"]
            assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, None, None, "pairs"), kernel.sharding
            assert kernel.addressable_shards[0].data.shape == (3, 3, 16, 2)
            moment = state.opt_state[0].mu["backbone"]["conv2"]["kernel"]
            assert moment.sharding.spec == kernel.sharding.spec
        results.append((jax.device_get(state.params), float(metrics["loss"])))
    for params, loss in results[1:]:
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5), results[0][0], params)
        assert abs(results[0][1] - loss) < 1e-5
    with pytest.raises(ValueError, match="param_sharding must be one of"):
        parallel.place_state(state, eight, "zero3")
