"""Sharded execution on 8 fake CPU devices (in a subprocess, since XLA_FLAGS must be set before jax loads)."""

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    import simexplain_jax as sx
    from simexplain_jax import parallel
    assert len(jax.devices()) == 8, jax.devices()
    w = jax.random.normal(jax.random.key(0), (16 * 16 * 3, 8)) / 30 + 0.05
    embed = jax.tree_util.Partial(lambda w, x: jnp.tanh(x.reshape(x.shape[0], -1) @ w), w)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(12, 16, 16, 3)).astype(np.float32)
    pairs = np.array([[q, (q + 1 + k) % 12] for q in range(11) for k in range(1 + q % 2)])  # 11 queries, ragged
    configs = {"rise": dict(num_masks=60, grid_size=4), "sliding_window": dict(window=6, stride=4, padding=2),
               "lime": dict(num_samples=60, num_segments=8)}
    one, eight = parallel.make_mesh(1), parallel.make_mesh(8)
    for method, config in configs.items():
        a = sx.saliency.explain_pairs(method, embed, images, images, key=jax.random.key(1), pairs=pairs,
                                      config=config, mesh=one)
        b = sx.saliency.explain_pairs(method, embed, images, images, key=jax.random.key(1), pairs=pairs,
                                      config=config, mesh=eight)
        scale = float(np.abs(a).max())
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * scale, err_msg=method)
        c = sx.saliency.explain_pairs(method, embed, images, images, key=jax.random.key(1), pairs=pairs,
                                      config=config)  # the unsharded path
        np.testing.assert_allclose(c, a, rtol=1e-5, atol=1e-5 * scale, err_msg=method)
        # a query's map does not depend on the other queries of the call (one process's shard)
        d = sx.saliency.explain_pairs(method, embed, images, images, key=jax.random.key(1), pairs=pairs[-3:],
                                      config=config, mesh=eight)
        np.testing.assert_allclose(d, a[-3:], rtol=1e-5, atol=1e-5 * scale, err_msg=method)
    # a 2-D mesh: queries over 2 "pairs" devices, each query's RISE masks over 4 "masks" devices
    # (sliding window and LIME spread queries over all 8); the same maps as one device
    grid = parallel.make_mesh(8, masks=4)
    assert dict(grid.shape) == {"pairs": 2, "masks": 4}
    for method, config in configs.items():
        a = sx.saliency.explain_pairs(method, embed, images, images, key=jax.random.key(1), pairs=pairs,
                                      config=config, mesh=one)
        b = sx.saliency.explain_pairs(method, embed, images, images, key=jax.random.key(1), pairs=pairs,
                                      config=config, mesh=grid)
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * float(np.abs(a).max()), err_msg="2-D " + method)
    for bad in (3, 0):
        try:
            parallel.make_mesh(8, masks=bad)
            raise AssertionError("accepted masks=%d" % bad)
        except ValueError as e:
            assert "divide num_devices=8" in str(e)
    # one pair's masks split over 8 devices, N not a multiple of 8
    ref = embed(images[1:2])[0]
    single = sx.saliency.rise(embed, images[0], ref, key=jax.random.key(3), num_masks=101, grid_size=4, batch_size=16)
    split = parallel.rise_split_masks(embed, images[0], ref, key=jax.random.key(3), mesh=eight, num_masks=101,
                                      grid_size=4, batch_size=16)
    np.testing.assert_allclose(split, single, rtol=1e-5, atol=1e-5 * float(np.abs(single).max()))
    split = parallel.rise_split_masks(embed, images[0], ref, key=jax.random.key(3), mesh=grid, num_masks=101,
                                      grid_size=4, batch_size=16, axis="masks")
    np.testing.assert_allclose(split, single, rtol=1e-5, atol=1e-5 * float(np.abs(single).max()))
    # insertion/deletion over 8 devices equals per-pair calls
    maps = rng.normal(size=(11, 16, 16)).astype(np.float32)
    refs = np.asarray(embed(images[1:12]))
    batch = sx.metrics.insertion_deletion_batch(embed, images[:11], refs, maps, background=0.0, num_steps=11, mesh=eight)
    on_grid = sx.metrics.insertion_deletion_batch(embed, images[:11], refs, maps, background=0.0, num_steps=11,
                                                  mesh=grid)
    np.testing.assert_allclose(on_grid.insertion_curve, batch.insertion_curve, atol=1e-5)
    for i in (0, 5, 10):
        one = sx.metrics.insertion_deletion(embed, images[i], refs[i], maps[i], background=0.0, num_steps=11)
        np.testing.assert_allclose(batch.insertion_curve[i], one.insertion_curve, atol=1e-5)
        np.testing.assert_allclose(batch.deletion_curve[i], one.deletion_curve, atol=1e-5)
    # a data-parallel train step equals the single-device step on the same global batch
    from simexplain_jax.models import EmbeddingNet, SmallCNN
    from simexplain_jax.train import similarity as sim
    model = EmbeddingNet(SmallCNN(features=(8, 16, 16)), dim=8)
    optimizer = sim.make_optimizer(1e-2)
    batch = {"image": jnp.asarray(rng.normal(size=(16, 16, 16, 3)), jnp.float32),
             "label": jnp.asarray(np.repeat(np.arange(4), 4))}
    results = []
    for mode in (None, "replicated", "fully_sharded"):
        state = sim.create_train_state(model, optimizer, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
        step = sim.make_train_step(model, optimizer)
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
    try:
        parallel.place_state(state, eight, "zero3")
        raise AssertionError("accepted a bad param_sharding")
    except ValueError as e:
        assert "param_sharding must be one of" in str(e)
    print("OK")
""")


def test_eight_devices_equal_one():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-4000:]
