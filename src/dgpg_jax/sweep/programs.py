"""The compiled programs of a sweep and their memory: a 1-D mesh `seed` over every device,
one training program and one reference program per (algo, N), their sharded inputs, and
the chunk size chosen from the training program's memory analysis.

For one (algo, N) every (grid point, seed) pair is one item of a flat axis, run in chunks
of C items by one compiled program, `jit(vmap((key, hyper, reference) -> train_episodes(...)))`,
whose chunk axis is sharded over the mesh. Shapes (the job slots J and the packed update
rows) are sized for the largest `utilisation` of the grid; each point's value enters as
`Hyper.utilisation`. The task's reference (Best-Fit for cloud scheduling, the
valley-filling bound for EV charging) depends on the traces only, that is on
(N, utilisation, seed): the second program computes it once per such triple.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from dgpg_jax import memory, train

PROBE_ITEMS_PER_DEVICE = 4
"""Items per device of the program compiled to read its memory analysis."""
MEMORY_FRACTION = 0.5
"""Share of the available memory a chunk may take."""

_PROGRAMS: dict[tuple, jax.stages.Compiled] = {}  # compiled chunk programs, reused within a process


def make_mesh() -> jax.sharding.Mesh:
    """A 1-D mesh `seed` over every device (of every process, when distributed)."""
    devices = jax.devices()
    return jax.make_mesh((len(devices),), ("seed",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def _reference(learner: train.Learner, episodes: int, key_data: jax.Array, hyper: train.Hyper):
    return train.reference_metrics(learner, jax.random.wrap_key_data(key_data), hyper, jnp.int32(0), episodes)


def _input_shapes(learner: train.Learner, episodes: int, batch: int, sharding, with_reference: bool) -> tuple:
    key_shape = jax.random.key_data(jax.random.key(0)).shape
    keys = jax.ShapeDtypeStruct((batch,) + key_shape, jnp.uint32, sharding=sharding)
    hyper = train.Hyper(*[jax.ShapeDtypeStruct((batch,), jnp.float32, sharding=sharding)] * len(train.Hyper._fields))
    if not with_reference:
        return keys, hyper
    reference = jax.eval_shape(jax.vmap(lambda k, h: _reference(learner, episodes, k, h)), keys, hyper)
    return keys, hyper, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), reference)


def chunk_program(learner: train.Learner, episodes: int, batch: int, mesh: jax.sharding.Mesh):
    """The compiled `(key data [B, 2], Hyper of [B], reference metrics [B, E]) ->
    EpisodeLog [B, E]` of one (algo, N), the batch axis sharded over `mesh` (raw key data,
    so that every process can build its part of the input). The reference comes from
    `reference_program`: it depends on the traces only, so runs on the same traces share
    it. Cached per (config, episodes, batch, devices)."""
    cache_key = ("train", learner.config, episodes, batch, tuple(mesh.devices.flat))
    if cache_key not in _PROGRAMS:
        sharding = _batch_sharding(mesh)

        def one(key_data, hyper, reference):
            key = jax.random.wrap_key_data(key_data)
            runner = train.init_runner(learner, key, hyper)
            return train.train_episodes(learner, runner, key, hyper, episodes, reference)[1]

        program = jax.jit(jax.vmap(one), in_shardings=(sharding,) * 3, out_shardings=sharding)
        _PROGRAMS[cache_key] = program.lower(*_input_shapes(learner, episodes, batch, sharding, True)).compile()
    return _PROGRAMS[cache_key]


def reference_program(learner: train.Learner, episodes: int, batch: int, mesh: jax.sharding.Mesh):
    """The compiled `(key data [B, 2], Hyper of [B]) -> reference metrics [B, E]` on the
    traces of episodes 0..E-1 of each run (only `Hyper.utilisation` matters)."""
    cache_key = ("reference", learner.config.env, episodes, batch, tuple(mesh.devices.flat))
    if cache_key not in _PROGRAMS:
        sharding = _batch_sharding(mesh)
        program = jax.jit(jax.vmap(lambda k, h: _reference(learner, episodes, k, h)),
                          in_shardings=(sharding,) * 2, out_shardings=sharding)
        _PROGRAMS[cache_key] = program.lower(*_input_shapes(learner, episodes, batch, sharding, False)).compile()
    return _PROGRAMS[cache_key]


def _batch_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("seed"))


def _global_array(host: np.ndarray, sharding: jax.sharding.NamedSharding) -> jax.Array:
    """`host` (the same on every process) as an array sharded by `sharding`; each process
    places only the parts on its own devices."""
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _inputs(key_data: np.ndarray, seeds: np.ndarray, hyper_rows: np.ndarray, sharding) -> tuple:
    """The (key data [B, 2], Hyper of [B]) arrays of a batch: seed indices and Hyper rows."""
    return (_global_array(key_data[seeds], sharding),
            train.Hyper(*(_global_array(np.ascontiguousarray(hyper_rows[:, i]), sharding)
                          for i in range(len(train.Hyper._fields)))))


def _local_part(tree, size: int) -> tuple[list[int], object]:
    """The batch positions below `size` held by this process's devices, and the leaves of
    `tree` ([B, ...] arrays sharded on the batch axis) at those positions, as numpy."""
    def local(leaf):
        shards = sorted(leaf.addressable_shards, key=lambda s: s.index[0].indices(leaf.shape[0])[0])
        starts = [s.index[0].indices(leaf.shape[0])[0] for s in shards]
        keep = [i for i, start in enumerate(starts) if i == 0 or start != starts[i - 1]]  # drop replicas
        return ([p for i in keep for p in range(*shards[i].index[0].indices(leaf.shape[0]))],
                np.concatenate([np.asarray(shards[i].data) for i in keep]))

    positions = local(jax.tree.leaves(tree)[0])[0]
    owned = [i for i, p in enumerate(positions) if p < size]
    return [positions[i] for i in owned], jax.tree.map(lambda leaf: local(leaf)[1][owned], tree)


def available_bytes() -> tuple[int, str]:
    """Free memory of one local device (`memory.available_bytes`) and where the figure comes from."""
    device = jax.local_devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    source = f"{device.platform} bytes_limit" if stats and "bytes_limit" in stats else \
        f"host available memory / {jax.local_device_count()} host devices"
    return memory.available_bytes(device), source


def choose_chunk_size(learner: train.Learner, episodes: int, total_items: int,
                      mesh: jax.sharding.Mesh) -> tuple[int, dict]:
    """The largest chunk (a multiple of the device count, at most the items rounded up)
    whose estimate fits MEMORY_FRACTION of a device's memory; chunks are then evened out.
    The estimate: the program compiled at PROBE_ITEMS_PER_DEVICE items per device, its
    memory analysis divided by those items. Raises ValueError when one item per device
    cannot fit even the whole memory."""
    devices = mesh.devices.size
    probe = PROBE_ITEMS_PER_DEVICE * devices
    probe_bytes = memory.program_bytes(chunk_program(learner, episodes, probe, mesh))
    per_item = probe_bytes / PROBE_ITEMS_PER_DEVICE
    available, source = available_bytes()
    per_device = max(1, int(available * MEMORY_FRACTION // per_item)) if per_item > 0 else total_items
    if per_item > available:
        raise ValueError(f"one run of algo {learner.config.algo} at N={learner.config.env.num_agents} needs about "
                         f"{per_item / 2**30:.2f} GiB per device ({source}: {available / 2**30:.2f} GiB available): "
                         "allowed a smaller N, horizon or network")
    largest = min(per_device * devices, _round_up(total_items, devices))
    chunks = math.ceil(total_items / largest)
    chunk = _round_up(math.ceil(total_items / chunks), devices)
    return chunk, {"probe_items": probe, "probe_bytes": probe_bytes, "bytes_per_item": per_item,
                   "available_bytes": available, "available_source": source,
                   "memory_fraction": MEMORY_FRACTION, "largest_chunk": per_device * devices}


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple
