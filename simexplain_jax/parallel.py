"""Meshes and shardings on JAX's own runtime (a leaf module: it imports nothing of the project).

- ``make_mesh(num_devices, masks=1)``: a mesh over the local (or global, after
  ``initialize_distributed``) devices with the axis ``"pairs"``, and with ``masks > 1`` a second
  axis ``"masks"`` over which RISE splits each query's masks (partial maps summed with ``psum``).
- ``map_queries(fn, mesh, shared, *stacked)``: ``fn`` (one query's work) vmapped over a stack
  of queries and split over the mesh with ``shard_map``. The compiled program is cached at module
  level, keyed by ``fn`` (hashable, compared by value), the mesh and the shapes: a second call
  with the same shapes compiles nothing. ``replicated_call`` is the same for one work item whose
  ``fn`` divides its own work over a mesh axis.
- ``shard_batch``, ``data_parallel``, ``replicate``, ``fully_shard``, ``place_state``: data-parallel
  train steps (batch split over the mesh) with a replicated or FSDP-style split state.
- ``gather_rows``: per-pair rows from every process assembled on every process.
- ``initialize_distributed(...)``: multi-host start-up (``jax.distributed.initialize``), with CPU
  collectives (gloo) when the platform is the CPU.

Results depend on the configuration and keys only, not on the number of devices (to float
rounding): each query's computation is the same program whatever device runs it.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "pairs"
MASKS = "masks"
PARAM_SHARDINGS = ("replicated", "fully_sharded")


def make_mesh(num_devices: Optional[int] = None, axis: str = AXIS, local: bool = False, masks: int = 1) -> Mesh:
    """A mesh over the first ``num_devices`` devices (default: all of them; with ``local``, this
    process's devices only): 1-D ``(axis,)``, or with ``masks > 1`` 2-D ``(axis, "masks")`` of
    shape ``(num_devices // masks, masks)``, where RISE splits each query's masks over the
    ``"masks"`` axis (the other methods spread queries over every device)."""
    devices = jax.local_devices() if local else jax.devices()
    if num_devices is None:
        num_devices = len(devices)
    if isinstance(num_devices, bool) or not 1 <= int(num_devices) <= len(devices):
        raise ValueError(f"num_devices must be in [1, {len(devices)}], got {num_devices!r}")
    num_devices = int(num_devices)
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


def replicate(tree, mesh: Mesh):
    """Every array of ``tree`` copied to every device of ``mesh``."""
    return jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, P())), tree)


def stack_size(mesh: Mesh, split_masks: bool = False) -> int:
    """How many stacked queries one ``map_queries`` step spreads over ``mesh``: every device, or
    with ``split_masks`` the ``"pairs"`` axis only (the ``"masks"`` axis divides each query's work)."""
    return mesh.shape[AXIS] if split_masks else mesh.devices.size


@functools.partial(jax.jit, static_argnames=("fn", "mesh", "stack_axes"))
def _map_queries_jit(shared, stacked, *, fn, mesh, stack_axes):
    def per_device(shared, *stacked):
        return jax.vmap(lambda *args: fn(shared, *args))(*stacked)

    specs = (P(),) + (P(stack_axes),) * len(stacked)
    return jax.shard_map(per_device, mesh=mesh, in_specs=specs, out_specs=P(stack_axes), check_vma=False)(
        shared, *stacked)


def map_queries(fn: Callable, mesh: Mesh, shared, *stacked, split_masks: bool = False):
    """``[fn(shared, *row) for row in zip(*stacked)]`` stacked, computed on ``mesh`` (numpy out).

    ``fn`` must be hashable and compared by value (a module-level function or a frozen dataclass)
    so that the compiled program is reused across calls. ``shared`` (e.g. the embed_fn with its
    parameters) is replicated; the stacks are padded to a multiple of ``stack_size(mesh,
    split_masks)`` (repeating the last row) and split over the mesh; the padding is dropped.
    """
    n = len(stacked[0])
    size = stack_size(mesh, split_masks)
    padded = tuple(jnp.asarray(pad_leading(np.asarray(s), size)) for s in stacked)
    stack_axes = AXIS if split_masks else tuple(mesh.axis_names)
    out = _map_queries_jit(replicate(shared, mesh), padded, fn=fn, mesh=mesh, stack_axes=stack_axes)
    return jax.tree.map(lambda x: np.asarray(x)[:n], out)


@functools.partial(jax.jit, static_argnames=("fn", "mesh"))
def _replicated_call_jit(args, *, fn, mesh):
    return jax.shard_map(lambda a: fn(*a), mesh=mesh, in_specs=(P(),), out_specs=P(), check_vma=False)(args)


def replicated_call(fn: Callable, mesh: Mesh, *args):
    """``fn(*args)`` run on every device of ``mesh`` (inputs and output replicated); ``fn`` divides
    its own work over a mesh axis (``lax.axis_index``) and combines it with ``psum``. Cached like
    ``map_queries``."""
    return _replicated_call_jit(replicate(args, mesh), fn=fn, mesh=mesh)


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
