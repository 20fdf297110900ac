"""Scaling out with JAX's own runtime: meshes, pair-sharded and mask-sharded saliency, sharded batches.

- ``make_mesh(num_devices, masks=1)``: a mesh over the local (or global, after
  ``initialize_distributed``) devices with the axis ``"pairs"``, and with ``masks > 1`` a second
  axis ``"masks"`` over which RISE splits each query's masks (partial maps summed with ``psum``).
- ``sharded_queries(fn, mesh)``: runs ``fn`` (one query's work) for a stack of queries, split
  over the mesh with ``shard_map``; the stack is padded to a multiple of the device count (no
  recompilation for ragged sizes beyond the padded shape) and the padding dropped.
- ``rise_split_masks``: one pair's masks split over a mesh axis.
- ``shard_batch(batch, mesh)``: puts a batch's leading axis across the mesh, for data-parallel
  train steps (the jitted step is then partitioned by XLA over the global batch); the state is
  ``replicate``d or, FSDP-style, ``fully_shard``ed (``place_state`` picks by name).
- ``read_pair_shard(queries, references, pairs)``: this process's share of a pair list, read
  through grain's sharding (only the images its pairs need); ``gather_rows`` assembles per-pair
  results from every process; ``explain_pairs_distributed`` is the two around ``explain_pairs``.
- ``initialize_distributed(...)``: multi-host start-up (``jax.distributed.initialize``), with CPU
  collectives (gloo) when the platform is the CPU.

Results depend on the configuration and keys only, not on the number of devices (to float
rounding): each query's computation is the same program whatever device runs it.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "pairs"
MASKS = "masks"


def make_mesh(num_devices: Optional[int] = None, axis: str = AXIS, local: bool = False, masks: int = 1) -> Mesh:
    """A mesh over the first ``num_devices`` devices (default: all of them; with ``local``, this
    process's devices only): 1-D ``(axis,)``, or with ``masks > 1`` 2-D ``(axis, "masks")`` of
    shape ``(num_devices // masks, masks)``, where RISE splits each query's masks over the
    ``"masks"`` axis (the other methods spread queries over every device)."""
    devices = jax.local_devices() if local else jax.devices()
    if num_devices is None:
        num_devices = len(devices)
    if not 1 <= num_devices <= len(devices):
        raise ValueError(f"num_devices must be in [1, {len(devices)}], got {num_devices}")
    if masks < 1 or num_devices % masks:
        raise ValueError(f"masks (devices on the masks axis) must be >= 1 and divide num_devices={num_devices}, "
                         f"got {masks}")
    shape, names = ((num_devices,), (axis,)) if masks == 1 else ((num_devices // masks, masks), (axis, MASKS))
    if num_devices == len(devices):  # jax.make_mesh orders the devices by the hardware's topology
        return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(shape), devices=devices)
    return Mesh(np.asarray(devices[:num_devices]).reshape(shape), names)


def pad_leading(x: np.ndarray, multiple: int) -> np.ndarray:
    """Pads axis 0 to a multiple of ``multiple`` by repeating the last row (valid inputs, dropped later)."""
    extra = (-len(x)) % multiple
    return np.concatenate([x, np.repeat(x[-1:], extra, axis=0)]) if extra else x


def sharded_queries(fn: Callable, mesh: Mesh, axis: str = AXIS, split_masks: bool = False) -> Callable:
    """``run(shared, *stacked) -> stacked outputs``: ``fn(shared, *one_query_args)`` vmapped over
    the leading axis of ``stacked`` and split over ``mesh``; ``shared`` (e.g. the embed_fn with its
    parameters) is replicated. The stack is split over every device of the mesh, or with
    ``split_masks`` over ``axis`` only: ``fn`` then divides its own work over the ``"masks"`` axis
    and sums it with ``psum``."""
    stack_axes = axis if split_masks else tuple(mesh.axis_names)
    size = mesh.shape[axis] if split_masks else mesh.devices.size

    def per_device(shared, *stacked):
        return jax.vmap(lambda *args: fn(shared, *args))(*stacked)

    @jax.jit
    def run_padded(shared, *stacked):
        specs = (P(),) + (P(stack_axes),) * len(stacked)
        return jax.shard_map(per_device, mesh=mesh, in_specs=specs, out_specs=P(stack_axes), check_vma=False)(
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
    """``step(state, batch)`` with every batch split over ``mesh`` (pass a state placed by
    ``place_state``: replicated or fully sharded); the jitted step is partitioned by XLA over the
    global batch, so it computes what one device would."""

    def sharded_step(state, batch):
        return step(state, shard_batch(batch, mesh, axis))

    return sharded_step


def replicate(tree, mesh: Mesh):
    return jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, P())), tree)


PARAM_SHARDINGS = ("replicated", "fully_sharded")


def fully_shard(tree, mesh: Mesh, axis: str = AXIS, min_size: int = 1024):
    """Places each array of ``tree`` (a train state: parameters and optimizer moments) split over
    ``mesh`` along its largest dimension that the axis size divides, FSDP-style: each device holds
    1/n of it and XLA gathers what a step needs. Arrays under ``min_size`` elements, and those with
    no such dimension, are replicated. A data-parallel step over such a state computes what one
    device would, and keeps the state split."""
    size = mesh.shape[axis]

    def place(x):
        x = jnp.asarray(x)
        dims = [d for d in np.argsort(x.shape, kind="stable")[::-1] if x.shape[d] % size == 0]
        if x.size < min_size or not dims:
            return jax.device_put(x, NamedSharding(mesh, P()))
        spec = [None] * x.ndim
        spec[dims[0]] = axis
        return jax.device_put(x, NamedSharding(mesh, P(*spec)))

    return jax.tree.map(place, tree)


def check_data_parallel(mesh_devices: int, batch_size: int, param_sharding: str = "replicated") -> None:
    """Fails fast on data-parallel settings that cannot run (the training configs' ``mesh_devices``
    and ``param_sharding``)."""
    if mesh_devices < 1 or batch_size % mesh_devices:
        raise ValueError(f"mesh_devices must be >= 1 and divide batch_size={batch_size}, got {mesh_devices}")
    if param_sharding not in PARAM_SHARDINGS:
        raise ValueError(f"param_sharding must be one of {PARAM_SHARDINGS}, got {param_sharding!r}")


def place_state(state, mesh: Mesh, param_sharding: str = "replicated", axis: str = AXIS):
    """``replicate`` or ``fully_shard`` a train state, by name (the configs' ``param_sharding``)."""
    check_data_parallel(1, 1, param_sharding)
    return replicate(state, mesh) if param_sharding == "replicated" else fully_shard(state, mesh, axis)


def initialize_distributed(coordinator_address: str = "auto", num_processes: Optional[int] = None,
                           process_id: Optional[int] = None, local_device_ids=None) -> None:
    """Joins a multi-process run (one call per process, before any other JAX call).

    ``coordinator_address="auto"``: JAX discovers the coordinator, the process count and this
    process's index itself (TPU pods, SLURM, Open MPI, Kubernetes; ``JAX_COORDINATOR_ADDRESS`` and
    ``JAX_LOCAL_DEVICE_IDS`` are read from the environment). Otherwise give all three. On CPU the
    collectives go through gloo.
    """
    if jax.config.jax_platforms in (None, "", "cpu") or "cpu" in str(jax.config.jax_platforms):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator_address == "auto":
        jax.distributed.initialize(local_device_ids=local_device_ids)
        return
    if not coordinator_address or num_processes is None or process_id is None:
        raise ValueError("give coordinator_address ('host:port'), num_processes and process_id, or "
                         "coordinator_address='auto' on a cluster JAX can detect")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, local_device_ids=local_device_ids)


def rise_split_masks(embed_fn, query, reference_embeddings, *, key, mesh: Mesh, num_masks: int = 2000,
                     grid_size: int = 8, p: float = 0.5, batch_size: int = 256, normalize: str = "per_pixel",
                     axis: str = AXIS):
    """RISE for one pair with its N masks split over the devices along mesh ``axis`` (partial maps
    summed with ``psum``): equals ``sx.saliency.rise(..., key=key)`` to float rounding. ``[K, H, W]``
    or ``[H, W]``."""
    from simexplain_jax import masks as _masks
    from simexplain_jax.saliency import _common
    from simexplain_jax.saliency.rise import _rise_maps_share
    from simexplain_jax.similarity import cosine

    embed_fn = _common.as_pytree_fn(embed_fn)
    query = _common.check_image(query, "query")
    refs, single = _common.check_reference_embeddings(reference_embeddings)
    _masks.check_rise_options(num_masks, grid_size, p)

    def local(embed, q, r, key_data):
        return _rise_maps_share(embed, q, r, jax.random.wrap_key_data(key_data), num_masks, grid_size, p, batch_size,
                                normalize, cosine, axis, mesh.shape[axis])

    run = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P(), P()), out_specs=P(), check_vma=False))
    maps = run(embed_fn, query, refs, jax.random.key_data(key))
    return maps[0] if single else maps


@dataclasses.dataclass
class PairShard:
    """One process's share of a pair list (``read_pair_shard``): its pairs, as rows of its own
    ``queries`` / ``references`` arrays, with each row's index in the sources."""

    positions: np.ndarray  # [p] ascending: which pairs of the full list are here
    pairs: np.ndarray  # [p, 2] (row of queries, row of references)
    queries: np.ndarray  # [Q, H, W, C] model-ready
    query_ids: np.ndarray  # [Q] index of each query in the query source
    references: np.ndarray  # [R, H, W, C]
    reference_ids: np.ndarray  # [R]
    query_fields: dict  # {key: [Q, ...]}: the query records' fields asked for (e.g. key_mask)
    image_shape: tuple  # (H, W, C), known even where this process holds no pair


def read_pair_shard(queries, references, pairs, *, preprocess=None, query_keys: Sequence[str] = (),
                    shard_index: Optional[int] = None, shard_count: Optional[int] = None,
                    batch_size: int = 64) -> PairShard:
    """Reads this process's share of ``pairs [P, 2]`` through grain, and nothing else.

    ``queries`` / ``references``: random-access sources whose records hold ``"image"`` (e.g.
    ``tfds.data_source``, ``InMemorySource``), or image arrays ``[N, H, W, C]``. The distinct
    queries of ``pairs`` (sorted) are split into ``shard_count`` contiguous pieces by grain's
    ``ShardOptions`` (the list is padded to a multiple of ``shard_count`` so that no query is
    dropped); this process reads its queries, then the references its queries' pairs name. All
    pairs of a query land on one process, so work shared by a query's references is done once.

    ``preprocess``: a ``data.pipeline.Preprocess`` making a record's ``image`` model-ready (e.g.
    ``Preprocess(image_size=112)``; its ``keys`` are replaced by what is needed); None: the images
    are used as they are. Padding records (at most ``shard_count - 1`` over the whole run) are read
    and dropped. ``shard_index`` / ``shard_count`` default to this process and the
    process count.
    """
    from simexplain_jax.data.pipeline import SelectKeys, make_loader
    from simexplain_jax.data.sources import InMemorySource, SubsetSource

    pairs = np.asarray(pairs)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or len(pairs) == 0 or not np.issubdtype(pairs.dtype, np.integer):
        raise ValueError(f"pairs must be a non-empty integer [P, 2] array, got {pairs.dtype} {pairs.shape}")
    if shard_index is None or shard_count is None:
        shard_index, shard_count = jax.process_index(), jax.process_count()
    queries = InMemorySource({"image": queries}) if isinstance(queries, (np.ndarray, jax.Array)) else queries
    references = (InMemorySource({"image": references}) if isinstance(references, (np.ndarray, jax.Array))
                  else references)

    if pairs.min() < 0 or pairs[:, 0].max() >= len(queries) or pairs[:, 1].max() >= len(references):
        raise ValueError(f"pairs index outside the sources ({len(queries)} queries, {len(references)} references)")

    def read(source, ids, valid, keys, index, count):
        keys = ("image", "index", "valid", *keys)
        transform = SelectKeys(keys) if preprocess is None else dataclasses.replace(preprocess, image_keys=("image",),
                                                                            keys=keys[1:])
        batches = list(make_loader(SubsetSource(source, ids, valid), batch_size=batch_size, preprocess=transform,
                                   shuffle=False, num_epochs=1, shard_index=index, shard_count=count))
        arrays = {k: np.concatenate([b[k] for b in batches]) for k in keys}
        keep = arrays.pop("valid").astype(bool)
        return {k: v[keep] for k, v in arrays.items()}, arrays["image"].shape[1:]

    query_ids = np.unique(pairs[:, 0])
    padded = pad_leading(query_ids, shard_count)
    mine, image_shape = read(queries, padded, np.arange(len(padded)) < len(query_ids), tuple(query_keys),
                             shard_index, shard_count)
    positions = np.flatnonzero(np.isin(pairs[:, 0], mine["index"]))
    reference_ids = np.unique(pairs[positions, 1])
    if len(reference_ids):
        refs, _ = read(references, reference_ids, None, (), 0, 1)
    else:
        refs = {"image": np.zeros((0, *image_shape), np.float32), "index": reference_ids}
    local = np.stack([np.searchsorted(mine["index"], pairs[positions, 0]),
                      np.searchsorted(refs["index"], pairs[positions, 1])], axis=1)
    return PairShard(positions, local, mine["image"], mine["index"], refs["image"], refs["index"],
                     {k: mine[k] for k in query_keys}, tuple(image_shape))


def gather_rows(positions, rows, total: int) -> np.ndarray:
    """``[total, ...]`` on every process: each process's ``rows`` put at its ``positions`` (rows no
    process holds are zero; every process receives every row). With one process, no collective is
    run. Any dtype: rows travel as raw 32-bit words, so 64-bit values arrive intact although JAX
    runs without x64."""
    positions = np.asarray(positions, np.int64)
    rows = np.asarray(rows)
    if len(rows) != len(positions):
        raise ValueError(f"{len(rows)} rows for {len(positions)} positions")
    out = np.zeros((total, *rows.shape[1:]), rows.dtype)
    if jax.process_count() == 1:
        out[positions] = rows
        return out
    from jax.experimental import multihost_utils

    if total >= 2 ** 31:
        raise ValueError(f"total must be < 2**31, got {total}")
    # each row as 32-bit words (64-bit values would be cast by JAX without x64); padded to a multiple of 4 bytes
    raw = np.ascontiguousarray(rows).reshape(len(rows), int(np.prod(rows.shape[1:]))).view(np.uint8)
    width = raw.shape[1]
    words = np.zeros((len(rows), -(-width // 4) * 4), np.uint8)
    words[:, :width] = raw
    words = words.view(np.uint32)
    longest = int(np.max(multihost_utils.process_allgather(np.array([len(positions)], np.int32))))
    padded_words = np.zeros((longest, words.shape[1]), np.uint32)
    padded_words[: len(words)] = words
    padded_positions = np.full(longest, -1, np.int32)
    padded_positions[: len(positions)] = positions
    all_words = np.asarray(multihost_utils.process_allgather(padded_words), np.uint32).reshape(-1, words.shape[1])
    all_positions = np.asarray(multihost_utils.process_allgather(padded_positions)).reshape(-1)
    held = all_positions >= 0
    decoded = all_words[held].view(np.uint8)[:, :width].copy().view(rows.dtype).reshape(int(held.sum()),
                                                                                     *rows.shape[1:])
    out[all_positions[held]] = decoded
    return out


def explain_pairs_distributed(method: str, embed_fn, queries, references, *, key, pairs, config=None,
                              preprocess=None, batch_size: int = 64, **options) -> np.ndarray:
    """``explain_pairs`` over every process of a multi-process run (after ``initialize_distributed``),
    each process reading only its share of the images (``read_pair_shard``: ``queries`` /
    ``references`` are sources or arrays, ``preprocess`` as there) and explaining it on a mesh of
    its local devices. The maps are gathered with JAX's collectives: every process returns all
    ``[P, H, W]`` maps, equal to a single-process run (randomness is keyed by each query's index in
    the source, not by process).
    """
    from simexplain_jax.saliency.pairs import explain_pairs

    shard = read_pair_shard(queries, references, pairs, preprocess=preprocess, batch_size=batch_size)
    local = np.zeros((len(shard.positions), *shard.image_shape[:2]), np.float32)
    if len(shard.positions):
        local = explain_pairs(method, embed_fn, shard.queries, shard.references, key=key, pairs=shard.pairs,
                              config=config, mesh=make_mesh(local=True), query_ids=shard.query_ids,
                              reference_ids=shard.reference_ids, **options)
    return gather_rows(shard.positions, local, len(np.asarray(pairs)))
