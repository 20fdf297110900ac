"""Scaling out with JAX's own runtime: meshes, pair-sharded and mask-sharded saliency, sharded batches.

- ``make_mesh(num_devices)``: a 1-D mesh over the local (or global, after
  ``initialize_distributed``) devices with the axis ``"pairs"``.
- ``sharded_queries(fn, mesh)``: runs ``fn`` (one query's work) for a stack of queries, split
  over the mesh with ``shard_map``; the stack is padded to a multiple of the device count (no
  recompilation for ragged sizes beyond the padded shape) and the padding dropped.
- ``shard_batch(batch, mesh)``: puts a batch's leading axis across the mesh, for data-parallel
  train steps (the jitted step is then partitioned by XLA over the global batch).
- ``initialize_distributed(...)``: multi-host start-up (``jax.distributed.initialize``), with CPU
  collectives (gloo) when the platform is the CPU.

Results depend on the configuration and keys only, not on the number of devices (to float
rounding): each query's computation is the same program whatever device runs it.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "pairs"


def make_mesh(num_devices: Optional[int] = None, axis: str = AXIS, local: bool = False) -> Mesh:
    """A 1-D mesh over the first ``num_devices`` devices (default: all of them; with ``local``,
    this process's devices only)."""
    devices = jax.local_devices() if local else jax.devices()
    if num_devices is None:
        num_devices = len(devices)
    if not 1 <= num_devices <= len(devices):
        raise ValueError(f"num_devices must be in [1, {len(devices)}], got {num_devices}")
    return Mesh(np.asarray(devices[:num_devices]), (axis,))


def pad_leading(x: np.ndarray, multiple: int) -> np.ndarray:
    """Pads axis 0 to a multiple of ``multiple`` by repeating the last row (valid inputs, dropped later)."""
    extra = (-len(x)) % multiple
    return np.concatenate([x, np.repeat(x[-1:], extra, axis=0)]) if extra else x


def sharded_queries(fn: Callable, mesh: Mesh, axis: str = AXIS) -> Callable:
    """``run(shared, *stacked) -> stacked outputs``: ``fn(shared, *one_query_args)`` vmapped over
    the leading axis of ``stacked`` and split over ``mesh``; ``shared`` (e.g. the embed_fn with its
    parameters) is replicated."""
    size = mesh.shape[axis]

    def per_device(shared, *stacked):
        return jax.vmap(lambda *args: fn(shared, *args))(*stacked)

    @jax.jit
    def run_padded(shared, *stacked):
        specs = (P(),) + (P(axis),) * len(stacked)
        return jax.shard_map(per_device, mesh=mesh, in_specs=specs, out_specs=P(axis), check_vma=False)(
            shared, *stacked)

    def run(shared, *stacked):
        n = len(stacked[0])
        padded = [jnp.asarray(pad_leading(np.asarray(s), size)) for s in stacked]
        # parameters restored onto one device (e.g. by orbax) are copied to every device of the mesh
        return np.asarray(run_padded(replicate(shared, mesh), *padded))[:n]

    return run


def shard_batch(batch, mesh: Mesh, axis: str = AXIS):
    """Places every array of ``batch`` with its leading axis split over ``mesh``."""
    sharding = NamedSharding(mesh, P(axis))
    return jax.tree.map(lambda x: jax.device_put(x, sharding), batch)


def data_parallel(step: Callable, mesh: Mesh, axis: str = AXIS) -> Callable:
    """``step(state, batch)`` with every batch split over ``mesh`` (pass a replicated state); the
    jitted step is partitioned by XLA over the global batch, so it computes what one device would."""

    def sharded_step(state, batch):
        return step(state, shard_batch(batch, mesh, axis))

    return sharded_step


def replicate(tree, mesh: Mesh):
    return jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, P())), tree)


def initialize_distributed(coordinator_address: str, num_processes: int, process_id: int,
                           local_device_ids=None) -> None:
    """Joins a multi-process run (one call per process, before any other JAX call).

    On CPU the collectives go through gloo. On a TPU pod or a GPU cluster managed by SLURM,
    ``jax.distributed.initialize()`` with no arguments discovers everything itself.
    """
    if jax.config.jax_platforms in (None, "", "cpu") or "cpu" in str(jax.config.jax_platforms):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, local_device_ids=local_device_ids)


def rise_split_masks(embed_fn, query, reference_embeddings, *, key, mesh: Mesh, num_masks: int = 2000,
                     grid_size: int = 8, p: float = 0.5, batch_size: int = 256, normalize: str = "per_pixel",
                     axis: str = AXIS):
    """RISE for one pair with its N masks split over the devices of ``mesh`` (partial maps summed
    with ``psum``): equals ``sx.saliency.rise(..., key=key)`` to float rounding. ``[K, H, W]`` or ``[H, W]``."""
    from simexplain_jax import masks as _masks
    from simexplain_jax.saliency import _common, engine
    from simexplain_jax.saliency.rise import _normalize_maps
    from simexplain_jax.similarity import cosine

    embed_fn = _common.as_pytree_fn(embed_fn)
    query = _common.check_image(query, "query")
    refs, single = _common.check_reference_embeddings(reference_embeddings)
    _masks.check_rise_options(num_masks, grid_size, p)
    size = mesh.shape[axis]
    per_device = -(-num_masks // size)

    def local(embed, q, r, key_data):
        offset = jax.lax.axis_index(axis) * per_device
        masks_for = _masks.rise_mask_fn(jax.random.wrap_key_data(key_data), grid_size, p, q.shape)
        result = engine.run(embed, r, engine.masked_perturbation(q, masks_for), num_masks, batch_size, cosine,
                            index_offset=offset, num_local=per_device)
        weighted = jax.lax.psum(result.weighted, axis)
        mask_sum = jax.lax.psum(result.mask_sum, axis)
        return _normalize_maps(weighted, mask_sum, num_masks, p, normalize)

    run = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P(), P()), out_specs=P(), check_vma=False))
    maps = run(embed_fn, query, refs, jax.random.key_data(key))
    return maps[0] if single else maps


def explain_pairs_distributed(method: str, embed_fn, queries, references, *, key, pairs, config=None, **options):
    """``explain_pairs`` over every process of a multi-process run (after ``initialize_distributed``).

    Process i explains the pairs ``i, i + P, i + 2P, ...`` (its shard, whole query groups stay
    together when pairs are grouped by query beforehand) on a mesh of its local devices; the maps
    are gathered with JAX's collectives, so every process returns all ``[num_pairs, H, W]`` maps,
    equal to a single-process run (randomness is keyed by query index, not by process).
    """
    from jax.experimental import multihost_utils

    from simexplain_jax.saliency.pairs import explain_pairs

    pairs = np.asarray(pairs)
    count, index = jax.process_count(), jax.process_index()
    positions = np.arange(index, len(pairs), count)
    per_process = -(-len(pairs) // count)
    local = np.zeros((per_process, *np.shape(queries)[1:3]), np.float32)
    if len(positions):
        local[: len(positions)] = explain_pairs(method, embed_fn, queries, references, key=key, pairs=pairs[positions],
                                                config=config, mesh=make_mesh(local=True), **options)
    gathered = np.asarray(multihost_utils.process_allgather(local))  # [count, per_process, H, W]
    out = np.zeros((len(pairs), *local.shape[1:]), np.float32)
    for process in range(count):
        mine = np.arange(process, len(pairs), count)
        out[mine] = gathered[process, : len(mine)]
    return out
