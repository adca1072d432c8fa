"""Sweeps: many seeds x a grid of traced hyperparameters x algorithms x N, in memory-sized
chunks over every device (of every process), streamed to a directory and resumable.

    sweep = Sweep(TrainConfig(num_episodes=20), algos=("dgpg", "mappo"), num_agents=(20, 200),
                  grid={"alpha": (0.2, 0.6)}, seeds=64)
    result = run_sweep(sweep, Path("runs/sweep"))

Configurations are algo x N x the cartesian product of the grids. The grid names are the
traced `train.Hyper` fields (`alpha` sets alpha_start and alpha_end): for one (algo, N)
every (grid point, seed) pair is one item of a flat axis, run in chunks of C items by
one compiled program, `jit(vmap((key, hyper, reference) -> train_episodes(...)))`, whose
chunk axis is sharded over a 1-D mesh of all devices. Shapes (the job slots J and the
packed update rows) are sized for the largest `utilisation` of the grid; each point's
value enters as `Hyper.utilisation`. The task's reference (Best-Fit for cloud
scheduling, the valley-filling bound for EV charging) depends on the traces only, that is
on (N, utilisation, seed): a second program per N computes it once per such triple, and
every algorithm and grid point on those traces reuses it (groups run N by N, so the host
keeps the references of one N). Any task of `dgpg_jax.registry` can be swept; the summary
pools each configuration's final episodes with the task's own `pool`.

Seed s is the run key `evaluate.seed_keys(s, 1)[0]`: the run of `dgpg train --seed s
--seeds 1` with the same flags (and the grid point's values), whatever the chunk size and
the device count. A sweep's seeds are seed, seed + 1, ..., seed + seeds - 1.

The directory holds sweep.json (the arguments, and the chunk size chosen per (algo, N)),
chunks/<algo>-n<N>-<index>.json (one per finished chunk, written atomically, its items
in order), rows.jsonl (every chunk's rows:
`pandas.read_json(DIR / "rows.jsonl", lines=True, precise_float=True)`), summary.json and
final_ratio.png. Each chunk file describes itself: a header line with the hash of the
configuration that decides its rows (`chunk_hash`) and a checksum of the file, then its
content. A restarted sweep skips every chunk whose file matches both; it moves every
other chunk file (damaged, edited, of an earlier version or of another configuration)
into chunks/stale/, names it, and runs that chunk again. DIR is locked while a sweep
runs in it (`rundir.hold_lock`): a second sweep into it is refused, naming the first's PID.

Several processes (`distributed.initialize`, one per host) run one sweep: the mesh spans
every process's devices, each process writes the items on its own devices as
chunks/<algo>-n<N>-<index>.p<k>of<P>.json, and a chunk is done when all P parts exist.
Process 0 writes sweep.json, rows.jsonl, summary.json and the plot; DIR must be on a
filesystem every process sees.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import re
import time
import warnings
from pathlib import Path
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dgpg_jax import distributed, evaluate, memory, rundir, registry, trackers, train
from dgpg_jax.rundir import write_atomic
from dgpg_jax.runner import FINAL_WINDOW, json_safe, log_columns, metric_columns, metrics_from_columns
from dgpg_jax.validation import check, check_integer, check_seeds, is_integer, is_number

GRID_NAMES = ("alpha", "alpha_start", "alpha_end", "learning_rate", "utilisation")
"""Traced values a grid may cover (`train.Hyper`); `alpha` sets alpha_start and alpha_end,
`utilisation` the task's traced load (a config field of that name)."""
PROBE_ITEMS_PER_DEVICE = 4
"""Items per device of the program compiled to read its memory analysis."""
MEMORY_FRACTION = 0.5
"""Share of the available memory a chunk may take."""
FORMAT_VERSION = 2

_PROGRAMS: dict[tuple, jax.stages.Compiled] = {}  # compiled chunk programs, reused within a process


# ----------------------------------------------------------------------------- the sweep

@dataclasses.dataclass(frozen=True)
class Sweep:
    """What a sweep runs. `base` gives every setting but the algorithm and N (its
    `num_episodes` is the episodes per run); `grid` maps names of GRID_NAMES to values."""

    base: train.TrainConfig
    algos: tuple[str, ...] = ("dgpg",)
    num_agents: tuple[int, ...] = (20,)
    grid: tuple[tuple[str, tuple[float, ...]], ...] | Mapping[str, Sequence[float]] = ()
    seeds: int = 8
    seed: int = 0
    """First seed; the sweep runs seeds seed .. seed + seeds - 1."""

    def __post_init__(self):
        grid = self.grid.items() if isinstance(self.grid, Mapping) else self.grid
        object.__setattr__(self, "grid", tuple((str(name), tuple(values)) for name, values in grid))
        object.__setattr__(self, "algos", tuple(self.algos))
        object.__setattr__(self, "num_agents", tuple(self.num_agents))

    @property
    def grid_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.grid)

    @property
    def episodes(self) -> int:
        return self.base.num_episodes

    @property
    def seed_values(self) -> range:
        return range(self.seed, self.seed + self.seeds)

    def points(self) -> list[dict[str, float]]:
        """The grid points, {name: value}, in the cartesian order of the grid."""
        values = [[float(v) for v in vs] for _, vs in self.grid]
        return [dict(zip(self.grid_names, combo)) for combo in itertools.product(*values)]

    def groups(self) -> list[tuple[str, int]]:
        """(algo, N) pairs: one compiled program each."""
        return [(algo, n) for algo in self.algos for n in self.num_agents]

    def configurations(self) -> list[dict]:
        """Every configuration: algo, num_agents and grid_<name> values."""
        return [configuration(algo, n, point) for algo, n in self.groups() for point in self.points()]

    def group_config(self, algo: str, num_agents: int) -> train.TrainConfig:
        """The config whose shapes the (algo, N) program has: utilisation at the grid's largest."""
        env = dataclasses.replace(self.base.env, num_agents=num_agents)
        if "utilisation" in self.grid_names:
            env = dataclasses.replace(env, utilisation=max(float(v) for v in dict(self.grid)["utilisation"]))
        return dataclasses.replace(self.base, algo=algo, env=env)

    def point_config(self, algo: str, num_agents: int, point: Mapping[str, float]) -> train.TrainConfig:
        """The config of one grid point: `train.default_hyper` of it is the point's Hyper, and
        `dgpg train` with it runs the point (its shapes sized for its own utilisation)."""
        config = dataclasses.replace(self.base, algo=algo, env=dataclasses.replace(self.base.env,
                                                                                    num_agents=num_agents))
        return _apply(config, point)

    def validate(self) -> "Sweep":
        """Raise ValueError naming the first invalid setting or grid value; nothing is traced."""
        check("algos", self.algos, len(self.algos) >= 1 and len(set(self.algos)) == len(self.algos),
              "a non-empty list of distinct algorithm names")
        check("num_agents", self.num_agents,
              len(self.num_agents) >= 1 and len(set(self.num_agents)) == len(self.num_agents)
              and all(is_integer(n) for n in self.num_agents), "a non-empty list of distinct integers")
        check_seeds(self.seeds, self.seed)  # a chunk holds as many runs as fit: no bound on their product
        if callable(self.base.potential):
            raise ValueError("potential is a function: a sweep saves its arguments; allowed a named potential")
        names = self.grid_names
        for name, values in self.grid:
            check("grid", name, name in GRID_NAMES, f"one of {GRID_NAMES}")
            if name == "utilisation" and not hasattr(self.base.env, "utilisation"):
                raise ValueError(f"grid utilisation is invalid for the {registry.task_name(self.base.env)} task: "
                                 f"it has no traced load; allowed one of {GRID_NAMES[:-1]}")
            check(f"grid {name}", list(values), len(values) >= 1, "at least one value")
            check(f"grid {name}", list(values), all(is_number(v) for v in values), "numbers, finite in float32")
            check(f"grid {name}", list(values), len({float(v) for v in values}) == len(values),
                  "each value at most once")
        check("grid", list(names), len(set(names)) == len(names), "each name at most once")
        if "alpha" in names and ({"alpha_start", "alpha_end"} & set(names)):
            raise ValueError("grid alpha is invalid with grid alpha_start or alpha_end: alpha sets both; "
                             "allowed alpha alone, or alpha_start and/or alpha_end")
        for algo, n in self.groups():
            base = dataclasses.replace(self.base, algo=algo, env=dataclasses.replace(self.base.env, num_agents=n))
            base.validate()
            for name, values in self.grid:
                for value in values:
                    try:
                        _apply(base, {name: float(value)}).validate()
                    except ValueError as error:
                        raise ValueError(f"grid {name}={value!r} (algo {algo}, N={n}): {error}") from None
            self.group_config(algo, n).validate()
        return self

    def arguments(self, chunk_seeds: int | None) -> dict:
        """What sweep.json records; a restart must give the same."""
        config = _flatten(dataclasses.asdict(self.base))
        for name in ("algo", "env.num_agents"):
            config.pop(name)
        out = {"format": FORMAT_VERSION, "task": registry.task_name(self.base.env), "algos": list(self.algos), "num_agents": list(self.num_agents),
               "grid": [[name, [float(v) for v in values]] for name, values in self.grid],
               "seeds": self.seeds, "seed": self.seed, "episodes": self.episodes, "chunk_seeds": chunk_seeds,
               "config": config}
        return json.loads(json.dumps(out))


def run_name(sweep: Sweep, algo: str, num_agents: int, point_index: int) -> str:
    """A configuration's name: "dgpg-n200" and its grid values, "dgpg-n200-alpha0.4"."""
    point = sweep.points()[point_index]
    return "-".join([_group_name(algo, num_agents)] + [f"{name}{value:g}" for name, value in point.items()])


def configuration(algo: str, num_agents: int, point: Mapping[str, float]) -> dict:
    return {"algo": algo, "num_agents": num_agents, **{f"grid_{name}": float(v) for name, v in point.items()}}


def _apply(config: train.TrainConfig, point: Mapping[str, float]) -> train.TrainConfig:
    fields: dict = {}
    for name, value in point.items():
        if name == "alpha":
            fields["alpha_start"] = fields["alpha_end"] = float(value)
        elif name == "utilisation":
            fields["env"] = dataclasses.replace(fields.get("env", config.env), utilisation=float(value))
        else:
            fields[name] = float(value)
    return dataclasses.replace(config, **fields)


def _flatten(fields: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in fields.items():
        out.update(_flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


# ----------------------------------------------------------------------------- programs and memory

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


# ----------------------------------------------------------------------------- files

def _group_name(algo: str, n: int) -> str:
    return f"{algo}-n{n}"


def chunk_path(out_dir: Path, algo: str, n: int, index: int, process: int = 0, processes: int = 1) -> Path:
    """One chunk's file, or process `process`'s part of it when the sweep runs in `processes`."""
    part = "" if processes == 1 else f".p{process}of{processes}"
    return Path(out_dir) / "chunks" / f"{_group_name(algo, n)}-{index}{part}.json"


_CHUNK_FILE = re.compile(r"^(?P<group>.+-n\d+)-(?P<index>\d+)(?:\.p(?P<part>\d+)of(?P<parts>\d+))?\.json$")
STALE = "stale"
"""Subdirectory of chunks/ where a restart moves the chunk files it cannot use."""


def chunk_hash(sweep: Sweep, algo: str, num_agents: int, chunk_seeds: int) -> str:
    """The hash of everything that decides a chunk's rows: the task, the config, the grid,
    the seeds, the episodes, the (algo, N) and the chunk size (which items chunk i holds)."""
    return arguments_hash(sweep.arguments(None), algo, num_agents, chunk_seeds)


def arguments_hash(arguments: dict, algo: str, num_agents: int, chunk_seeds: int) -> str:
    """`chunk_hash` from a sweep's recorded arguments (`Sweep.arguments`, as in sweep.json)."""
    fields = {key: arguments[key] for key in ("task", "grid", "seeds", "seed", "episodes", "config")}
    text = json.dumps({**fields, "algo": algo, "num_agents": num_agents, "chunk_seeds": chunk_seeds}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _checksum(config_hash: str, body: str) -> str:
    return hashlib.sha256(f"{config_hash}\n{body}".encode()).hexdigest()


def write_chunk(path: Path, config_hash: str, doc: dict) -> None:
    """A chunk file: a header line {"config_hash", "sha256"} (the checksum covers the hash
    and the content), then the content line; written atomically."""
    body = json.dumps(doc)
    header = json.dumps({"config_hash": config_hash, "sha256": _checksum(config_hash, body)})
    write_atomic(path, f"{header}\n{body}\n")


def read_chunk(path: Path, config_hash: str | None = None) -> dict:
    """The content of a chunk file; ValueError naming the file when it has no header (an
    earlier version's or a damaged file), when its content does not match its checksum
    (truncated or edited), or when it was written for another configuration than
    `config_hash`."""
    header_line, _, body = Path(path).read_text().partition("\n")
    try:
        header = json.loads(header_line)
    except json.JSONDecodeError:
        header = None
    if not (isinstance(header, dict) and isinstance(header.get("config_hash"), str) and "sha256" in header):
        raise ValueError(f"chunk {path} has no checksum header: it is damaged or was written by an earlier version")
    body = body.removesuffix("\n")
    if _checksum(header["config_hash"], body) != header["sha256"]:
        raise ValueError(f"chunk {path} does not match its checksum: it is truncated or was edited")
    if config_hash is not None and header["config_hash"] != config_hash:
        raise ValueError(f"chunk {path} was written by another configuration (hash {header['config_hash']}, "
                         f"this sweep's {config_hash})")
    return json.loads(body)


def _chunk_files(out_dir: Path) -> dict[tuple[str, int], dict[int, list[Path]]]:
    """(group, index) -> {processes P: the part files of that layout, by part}."""
    files: dict[tuple[str, int], dict[int, dict[int, Path]]] = {}
    for path in (Path(out_dir) / "chunks").glob("*.json"):
        match = _CHUNK_FILE.match(path.name)
        if match:
            layout = files.setdefault((match["group"], int(match["index"])), {})
            layout.setdefault(int(match["parts"] or 1), {})[int(match["part"] or 0)] = path
    return {key: {total: [parts[p] for p in sorted(parts)] for total, parts in layouts.items()}
            for key, layouts in files.items()}


def _usable(files: list[Path], config_hash: str) -> str | None:
    """None if every part file is a sound chunk of `config_hash`, else why not."""
    for path in files:
        try:
            read_chunk(path, config_hash)
        except ValueError as error:
            return str(error)
    return None


def _classify(out_dir: Path, expected: dict[str, tuple[str, int]]) -> tuple[dict, list[tuple[Path, str]]]:
    """The chunks of DIR this sweep can use, (group, index) -> part files (every part of
    one process layout, part 0 first), and every other chunk file with the reason: damaged,
    of an earlier version, of another configuration, or no chunk of this sweep.
    `expected`: group -> (its config hash, its chunk count)."""
    usable, unusable = {}, []
    for (group, index), layouts in sorted(_chunk_files(out_dir).items()):
        for total, files in sorted(layouts.items()):
            if group not in expected or index >= expected[group][1]:
                reason = f"chunk {files[0]} is no chunk of this sweep"
            elif len(files) != total:
                continue  # parts still being written by other processes, or a killed run's: redone in place
            else:
                reason = _usable(files, expected[group][0])
            if reason is None and (group, index) not in usable:
                usable[(group, index)] = files
            elif reason is not None:
                unusable += [(path, reason) for path in files]
    return usable, unusable


def _set_aside(out_dir: Path, unusable: list[tuple[Path, str]]) -> list[tuple[Path, str]]:
    """Move each unusable chunk file into chunks/stale/ (kept, never read again), a
    counter added to a name already there; returns (new path, reason) pairs."""
    moved = []
    for path, reason in unusable:
        target = Path(out_dir) / "chunks" / STALE / path.name
        target.parent.mkdir(exist_ok=True)
        count = 1
        while target.exists():
            target = target.with_name(f"{path.stem}.{count}{path.suffix}")
            count += 1
        path.rename(target)
        moved.append((target, reason))
    return moved


def _expected(sweep: Sweep, plans: dict) -> dict[str, tuple[str, int]]:
    """group -> (config hash, chunk count) of the groups planned in sweep.json."""
    total_items = len(sweep.points()) * sweep.seeds
    out = {}
    for algo, n in sweep.groups():
        plan = plans.get(_group_name(algo, n))
        if plan:
            size = int(plan["chunk_seeds"])
            out[_group_name(algo, n)] = (chunk_hash(sweep, algo, n, size), math.ceil(total_items / size))
    return out


# Config fields added since format 2, with the value that a sweep.json written before them meant.
ADDED_FIELDS = {"env.decisions": "simultaneous", "env.fleet": "catalog"}


def _with_added_fields(old: dict, new: dict) -> dict:
    """`old` arguments with the fields added since they were written (ADDED_FIELDS) at the
    value they meant, where the new arguments have them."""
    added = {k: v for k, v in ADDED_FIELDS.items() if k in new["config"] and k not in old.get("config", {})}
    return {**old, "config": {**old.get("config", {}), **added}} if added else old


def _open_dir(sweep: Sweep, out_dir: Path, chunk_seeds: int | None) -> tuple[dict, bool]:
    """Create or reopen DIR; refuse other arguments. Returns sweep.json's content and
    whether this call created it."""
    (out_dir / "chunks").mkdir(exist_ok=True)
    if distributed.is_main():  # another process's file may be in flight otherwise
        for stale in (out_dir / "chunks").glob(".*.tmp"):
            stale.unlink(missing_ok=True)
    arguments = sweep.arguments(chunk_seeds)
    path = out_dir / "sweep.json"
    if path.exists():
        try:
            saved = json.loads(path.read_text())
            old = _with_added_fields(saved["arguments"], arguments)
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise ValueError(f"out={str(out_dir)!r} holds a sweep.json not written by `dgpg sweep`: "
                             "allowed another directory") from None
        if old != arguments:
            flat_old, flat_new = _flatten(old), _flatten(arguments)
            name = next(k for k in list(flat_new) + list(flat_old) if flat_new.get(k) != flat_old.get(k))
            raise ValueError(f"out={str(out_dir)!r} holds a sweep with other arguments: {name}="
                             f"{flat_new.get(name)!r} differs from its {flat_old.get(name)!r}; allowed the same "
                             "arguments (to continue it) or another directory")
        return saved, False
    saved = {"arguments": arguments, "plans": {}}
    if distributed.is_main():
        write_atomic(path, json.dumps(saved, indent=2) + "\n")
    return saved, True


def read_chunks(out_dir: Path, sweep: Sweep | None = None) -> list[dict]:
    """Every finished chunk of DIR (parts joined in process order, which is the mesh's and so
    the items' order), in group order then index order. Each file is checked against its
    checksum and, given the `sweep` that DIR holds, against the configuration hash of its
    group (only that sweep's chunks are read): ValueError naming the first that fails."""
    complete = {}
    for key, layouts in _chunk_files(out_dir).items():
        layout = next((files for total, files in sorted(layouts.items()) if len(files) == total), None)
        if layout is not None:
            complete[key] = layout
    hashes: dict[str, str] = {}
    if sweep is not None:
        expected = _expected(sweep, json.loads((Path(out_dir) / "sweep.json").read_text())["plans"])
        complete = {key: files for key, files in complete.items()
                    if key[0] in expected and key[1] < expected[key[0]][1]}
        hashes = {group: value[0] for group, value in expected.items()}
    docs = []
    for (group, _), files in sorted(complete.items()):
        parts = [read_chunk(path, hashes.get(group)) for path in files]
        doc = dict(parts[0])
        for key in ("items", "rows", "final_metrics"):
            doc[key] = [x for part in parts for x in part[key]]
        docs.append(doc)
    return sorted(docs, key=lambda d: (d["group_index"], d["index"]))


def _write_rows(out_dir: Path, docs: list[dict]) -> None:
    lines = [json.dumps(row, allow_nan=False) for doc in docs for row in doc["rows"]]
    write_atomic(Path(out_dir) / "rows.jsonl", "".join(line + "\n" for line in lines))


# ----------------------------------------------------------------------------- running

def _chunk_doc(sweep: Sweep, group_index: int, algo: str, n: int, index: int, items: list[tuple[int, int]],
               logs: train.EpisodeLog) -> dict:
    """The rows of one chunk (one per item and episode, the scalar columns of
    `runner.log_columns`) and, per item, every metric column (arrays such as histograms
    included) of its final FINAL_WINDOW episodes, which `summarise` pools."""
    points, seeds = sweep.points(), sweep.seed_values
    task = sweep.base.env.make_task()
    columns = log_columns(logs, task)
    scalars = {k: v for k, v in columns.items() if np.ndim(v) == 2}
    metric_names = list(metric_columns(logs.metrics, logs.reference, task))
    window = min(FINAL_WINDOW, sweep.episodes)
    rows, finals = [], []
    for b, (p, s) in enumerate(items):
        config = configuration(algo, n, points[p])
        for e in range(sweep.episodes):
            values = {k: _json_number(np.asarray(v[b, e]).item()) for k, v in scalars.items()}
            rows.append({**config, "seed": seeds[s], "episode": e + 1, **values})
        finals.append({**config, "seed": seeds[s],
                       "columns": {k: np.asarray(columns[k][b, -window:]).tolist() for k in metric_names}})
    return {"group": _group_name(algo, n), "group_index": group_index, "index": index,
            "items": [list(item) for item in items], "rows": rows, "final_metrics": finals}


def _json_number(x):
    return None if isinstance(x, float) and not math.isfinite(x) else x


def run_sweep(sweep: Sweep, out_dir: Path, chunk_seeds: int | None = None, max_chunks: int | None = None,
              on_progress: Callable[[dict], None] | None = None, bootstrap_reps: int = 2000,
              log: str = "none") -> dict:
    """Run (or continue) `sweep` into `out_dir`; returns the result (also summary.json).

    chunk_seeds: items per chunk (rounded up to a multiple of the device count); None
    chooses it from the compiled program's memory analysis (`choose_chunk_size`). The
    choice is saved in sweep.json and reused by a restart. max_chunks: stop after running
    that many chunks (the rest stay to do). on_progress(event): called with
    {"event": "planned", "total", "skipped"} once, {"event": "compiling", "group"} before
    each compile, {"event": "stale", "path", "reason"} for each chunk file set aside to be
    run again, and {"event": "chunk", "group", "index", "done", "total"} after each chunk
    (this process's part of it) is written; groups run sorted by N. log: one of
    `trackers.TRACKERS`; each finished chunk's runs also go to TensorBoard or W&B under
    DIR/logs, one tracker run per (configuration, seed), named like
    "dgpg-n200-alpha0.4/seed_3", before the chunk file is written (a crash repeats
    points rather than losing them). Raises ValueError, before anything runs, for invalid
    settings and for chunks whose programs cannot fit the free memory. With several
    processes, only process 0 writes the shared files."""
    sweep.validate()
    trackers.check_tracker(log)
    if chunk_seeds is not None:
        check_integer("chunk_seeds", chunk_seeds)
    if max_chunks is not None:
        check_integer("max_chunks", max_chunks, minimum=0)
    check_integer("bootstrap_reps", bootstrap_reps)
    with rundir.open_run(out_dir, "sweep", continues=True, lock=distributed.is_main()) as out_dir:
        return _run(sweep, out_dir, chunk_seeds, max_chunks, on_progress or (lambda event: None), bootstrap_reps,
                    log)


def _run(sweep: Sweep, out_dir: Path, chunk_seeds: int | None, max_chunks: int | None,
         notify: Callable[[dict], None], bootstrap_reps: int, log: str) -> dict:
    """`run_sweep` in its checked and locked directory."""
    saved, fresh = _open_dir(sweep, out_dir, chunk_seeds)
    distributed.check_shared(out_dir)
    mesh = make_mesh()
    devices = mesh.devices.size
    process, processes = jax.process_index(), jax.process_count()
    total_items = len(sweep.points()) * sweep.seeds

    groups = []
    for g, (algo, n) in enumerate(sweep.groups()):
        learner = train.make_learner(sweep.group_config(algo, n))
        name = _group_name(algo, n)
        plan = saved["plans"].get(name)
        saved_size = int(distributed.from_main(plan["chunk_seeds"] if plan else 0))  # process 0's sweep.json decides
        if saved_size:
            plan = plan or {"chunk_seeds": saved_size, "source": "sweep.json of process 0"}
        elif chunk_seeds is not None:
            plan = {"chunk_seeds": _round_up(chunk_seeds, devices), "source": "--chunk-seeds"}
        else:
            notify({"event": "compiling", "group": name})
            size, estimate, error = 0, None, None
            try:
                size, estimate = choose_chunk_size(learner, sweep.episodes, total_items, mesh)
            except ValueError as refused:
                error = refused
            distributed.agree(error)
            # every process must run the same chunks: the size that fits them all
            plan = {"chunk_seeds": int(distributed.gather(size).min()), "source": "memory analysis",
                    "memory": estimate}
        size = int(plan["chunk_seeds"])
        count = math.ceil(total_items / size)
        config_hash = chunk_hash(sweep, algo, n, size)
        done = {key for key in _classify(out_dir, {name: (config_hash, count)})[0] if key[0] == name}
        # a chunk is left to do if any process misses it (they must all run the same programs)
        missing_chunks = distributed.gather(np.array([(name, i) not in done for i in range(count)])).any(axis=0)
        group = {"algo": algo, "num_agents": n, "learner": learner, "index": g, "chunk_seeds": size, "hash": config_hash,
                 "batch": _round_up(size, devices), "chunks": count,
                 "todo": [i for i in range(count) if missing_chunks[i]], "plan": plan}
        if group["todo"]:  # refuse what cannot fit before anything runs (and before the plan is saved)
            notify({"event": "compiling", "group": name})
            t0 = time.perf_counter()
            programs = (chunk_program(learner, sweep.episodes, group["batch"], mesh),
                        reference_program(learner, sweep.episodes, group["batch"], mesh))
            group["compile_seconds"] = time.perf_counter() - t0
            error = None
            try:
                group["program_bytes"] = [memory.check_fits(
                    program, f"a chunk of {group['batch']} {what} of {name} ({group['batch'] // devices} per device)",
                    "a smaller --chunk-seeds (in another --out), or none to size chunks from memory")
                    for program, what in zip(programs, ("runs", f"{learner.task.reference_name} references"))]
            except ValueError as refused:
                error = refused
            if error is not None and fresh and distributed.is_main():
                (out_dir / "sweep.json").unlink(missing_ok=True)  # nothing ran: the same DIR may be retried
            distributed.agree(error)
        if name not in saved["plans"]:
            saved["plans"][name] = plan
            if distributed.is_main():
                write_atomic(out_dir / "sweep.json", json.dumps(saved, indent=2) + "\n")
        groups.append(group)
    stale = _set_aside(out_dir, _classify(out_dir, _expected(sweep, saved["plans"]))[1]) if distributed.is_main() else []
    for path, reason in stale:
        notify({"event": "stale", "path": str(path), "reason": reason})
    skipped = sum(group["chunks"] - len(group["todo"]) for group in groups)
    total = sum(group["chunks"] for group in groups)
    notify({"event": "planned", "total": total, "skipped": skipped})

    run, finished, start = 0, skipped, time.perf_counter()
    key_data = np.asarray(jax.jit(jax.vmap(lambda s: jax.random.key_data(evaluate.seed_keys(s, 1)[0])))(
        np.arange(sweep.seed, sweep.seed + sweep.seeds, dtype=np.uint32)))  # seed s's run key, in one program
    sharding = _batch_sharding(mesh)
    reports = [None] * len(groups)
    references: dict[tuple[float, int], object] = {}  # (utilisation, seed index) -> reference metrics [E], one N
    last_n = None
    for group in sorted(groups, key=lambda group: group["num_agents"]):  # N by N: the references are per N
        if group["num_agents"] != last_n:
            references.clear()
        last_n = group["num_agents"]
        hypers = np.array([[np.asarray(leaf) for leaf in train.default_hyper(
            sweep.point_config(group["algo"], group["num_agents"], p))] for p in sweep.points()], np.float32)
        name = _group_name(group["algo"], group["num_agents"])
        report = {"algo": group["algo"], "num_agents": group["num_agents"], "chunk_seeds": group["chunk_seeds"],
                  "batch": group["batch"], "devices": devices, "processes": processes, "chunks": group["chunks"],
                  "chunks_skipped": group["chunks"] - len(group["todo"]), "chunks_run": 0, "plan": group["plan"],
                  "compile_seconds": 0.0, "run_seconds": 0.0, "references_run": 0}
        reports[group["index"]] = report
        if not group["todo"] or (max_chunks is not None and run >= max_chunks):
            continue
        report["compile_seconds"] = group["compile_seconds"]
        report["program_bytes"], report["reference_program_bytes"] = group["program_bytes"]
        program = chunk_program(group["learner"], sweep.episodes, group["batch"], mesh)
        references_program = reference_program(group["learner"], sweep.episodes, group["batch"], mesh)
        for index in group["todo"]:
            if max_chunks is not None and run >= max_chunks:
                break
            t0 = time.perf_counter()
            first = index * group["chunk_seeds"]
            items = [divmod(i, sweep.seeds) for i in range(first, min(first + group["chunk_seeds"], total_items))]
            padded = items + [items[-1]] * (group["batch"] - len(items))  # repeats, dropped below
            points, seeds = (np.array(column) for column in zip(*padded))
            table = hypers[points]
            traces = [(float(u), int(s)) for u, s in zip(table[:, train.Hyper._fields.index("utilisation")], seeds)]
            first_of = {}
            for position, trace in enumerate(traces):
                first_of.setdefault(trace, position)
            new_traces = [trace for trace in first_of if trace not in references]
            if new_traces:  # the reference on the traces no earlier chunk (of any algo at this N) has seen
                report["references_run"] += len(new_traces)
                rows = [first_of[trace] for trace in new_traces]
                rows += [rows[-1]] * (group["batch"] - len(rows))
                computed = distributed.to_host(references_program(*_inputs(key_data, seeds[rows], table[rows], sharding)))
                for i, trace in enumerate(new_traces):
                    references[trace] = jax.tree.map(lambda x, i=i: x[i], computed)
            reference = jax.tree.map(lambda *xs: _global_array(np.stack(xs), sharding),
                                     *[references[trace] for trace in traces])
            positions, logs = _local_part(program(*_inputs(key_data, seeds, table, sharding), reference), len(items))
            doc = _chunk_doc(sweep, group["index"], group["algo"], group["num_agents"], index,
                             [items[p] for p in positions], logs)
            doc["run_seconds"] = time.perf_counter() - t0  # this chunk, its references included
            if log != "none" and positions:
                runs = [(f"{run_name(sweep, group['algo'], group['num_agents'], p)}/seed_{sweep.seed_values[s]}",
                         {**configuration(group["algo"], group["num_agents"], sweep.points()[p]),
                          "seed": sweep.seed_values[s]}) for p, s in (items[q] for q in positions)]
                task = group["learner"].task
                trackers.log_episodes(log, out_dir / "logs", log_columns(logs, task), 0, runs, task.reference_name)
            write_chunk(chunk_path(out_dir, group["algo"], group["num_agents"], index, process, processes),
                        group["hash"], doc)
            if distributed.is_main():
                _write_rows(out_dir, read_chunks(out_dir, sweep))
            run += 1
            finished += 1
            report["chunks_run"] += 1
            report["run_seconds"] += time.perf_counter() - t0
            notify({"event": "chunk", "group": name, "index": index, "done": finished, "total": total})

    distributed.barrier("dgpg-sweep-done")  # every part written before the summary reads them
    docs = read_chunks(out_dir, sweep)
    done_chunks = len(docs)
    configurations = summarise(sweep, docs, bootstrap_reps)
    result = {"out": str(out_dir), "task": registry.task_name(sweep.base.env),
              "reference": groups[0]["learner"].task.reference_name, "chunks_run": run, "chunks_skipped": skipped, "chunks_total": total,
              "complete": done_chunks == total, "seeds": sweep.seeds, "episodes": sweep.episodes,
              "final_window": min(FINAL_WINDOW, sweep.episodes), "grid": list(sweep.grid_names),
              "processes": processes, "wall_seconds": time.perf_counter() - start, "groups": reports,
              "stale_chunks": [{"path": str(path), "reason": reason} for path, reason in stale],
              "configurations": configurations}
    result = json_safe(result)
    if distributed.is_main():
        _write_rows(out_dir, docs)
        write_atomic(out_dir / "summary.json", json.dumps(result, indent=2, allow_nan=False) + "\n")
        plot_final_ratio(configurations, sweep.grid_names, out_dir / "final_ratio.png",
                         groups[0]["learner"].task.reference_name)
    return result


def summarise(sweep: Sweep, docs: list[dict], bootstrap_reps: int = 2000) -> list[dict]:
    """Per configuration, from the chunk files: seeds done; the mean and the interquartile
    mean over seeds of the per-seed final ratio to the reference (the ratio of the pooled
    costs of the final FINAL_WINDOW episodes, as RunResult.summary's per-seed ratio) with
    95% stratified-bootstrap CIs (rliable, seeded with 0, `bootstrap_reps` replications)
    as `final_ratio_to_reference_{mean,ci95,iqm,iqm_ci95,per_seed}`; every metric of
    `task.pool` over the final episodes of all seeds as `final_<metric>` (for cloud
    scheduling the mean and p99 response time of those jobs), the reference's as
    `<reference>_final_<metric>`; the mean episodes to converge."""
    from rliable import library, metrics

    task = sweep.base.env.make_task()
    ratio_column = f"ratio_to_{task.reference_name}"
    rows_of: dict[tuple, dict[int, list[dict]]] = {}
    finals_of: dict[tuple, dict[int, dict]] = {}
    names = ["algo", "num_agents"] + [f"grid_{name}" for name in sweep.grid_names]
    for doc in docs:
        for row in doc["rows"]:
            rows_of.setdefault(tuple(row[k] for k in names), {}).setdefault(row["seed"], []).append(row)
        for final in doc["final_metrics"]:
            finals_of.setdefault(tuple(final[k] for k in names), {})[final["seed"]] = final["columns"]
    out = []
    for config in sweep.configurations():
        key = tuple(config[k] for k in names)
        per_seed = {s: sorted(rows, key=lambda r: r["episode"]) for s, rows in sorted(rows_of.get(key, {}).items())}
        entry = {**config, "seeds_done": len(per_seed)}
        if not per_seed:
            out.append({**entry, "final_ratio_to_reference_mean": None, "final_ratio_to_reference_ci95": [None, None],
                        "final_ratio_to_reference_iqm": None, "final_ratio_to_reference_iqm_ci95": [None, None],
                        "episodes_to_converge_mean": None})
            continue
        # (seeds, window, ...) metrics of the learner and of the reference
        metrics_all, reference_all = metrics_from_columns(
            {name: np.stack([np.asarray(finals_of[key][s][name]) for s in per_seed])
             for name in finals_of[key][next(iter(per_seed))]}, task)
        ratios = np.array([evaluate.ratio_of_means(task, jax.tree.map(lambda x, i=i: x[i], metrics_all),
                                                   jax.tree.map(lambda x, i=i: x[i], reference_all))
                           for i in range(len(per_seed))])
        ratio_curves = np.array([[r[ratio_column] for r in rows] for rows in per_seed.values()], np.float64)
        scores = ratios[:, None]  # (runs, tasks = 1)
        # rliable 1.2's StratifiedBootstrap draws its indices from numpy's global generator
        # (np.random.choice), not from random_state: seed that too, and put it back after.
        global_state = np.random.get_state()
        try:
            np.random.seed(0)
            with warnings.catch_warnings():  # arch's notice that random_state will become `generator`
                warnings.filterwarnings("ignore", "random_state is deprecated", FutureWarning)
                point, interval = library.get_interval_estimates(
                    {"x": scores}, lambda x: np.array([metrics.aggregate_mean(x), metrics.aggregate_iqm(x)]),
                    reps=bootstrap_reps, random_state=np.random.RandomState(0))
        finally:
            np.random.set_state(global_state)
        mean, iqm = (float(v) for v in point["x"])
        (mean_low, iqm_low), (mean_high, iqm_high) = (np.asarray(interval["x"], np.float64)).tolist()
        out.append({**entry,
                    "final_ratio_to_reference_mean": mean, "final_ratio_to_reference_ci95": [mean_low, mean_high],
                    "final_ratio_to_reference_iqm": iqm, "final_ratio_to_reference_iqm_ci95": [iqm_low, iqm_high],
                    "final_ratio_to_reference_per_seed": ratios.tolist(), "seeds": list(per_seed),
                    **{f"final_{k}": v for k, v in task.pool(metrics_all).items()},
                    **{f"{task.reference_name}_final_{k}": v for k, v in task.pool(reference_all).items()},
                    "episodes_to_converge_mean": float(evaluate.episodes_to_converge(ratio_curves).mean())})
    return out


def plot_final_ratio(configurations: list[dict], grid_names: Sequence[str], path: Path,
                     reference: str = "best_fit") -> None:
    """Final ratio to the reference (mean over seeds, 95% CI band) against the first grid value,
    or against N without a grid: one line per algo (and per N and other grid values)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_name = f"grid_{grid_names[0]}" if grid_names else "num_agents"
    label_names = ["algo"] + (["num_agents"] if grid_names else []) + [f"grid_{n}" for n in grid_names[1:]]
    lines: dict[str, list] = {}
    for c in configurations:
        if c.get("final_ratio_to_reference_mean") is None:
            continue
        label = ", ".join(str(c[k]) if k == "algo" else f"{k.removeprefix('grid_')}={c[k]:g}" for k in label_names)
        low, high = c["final_ratio_to_reference_ci95"]
        lines.setdefault(label, []).append((c[x_name], c["final_ratio_to_reference_mean"], low, high))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, points in lines.items():
        x, mean, low, high = (np.array(v, np.float64) for v in zip(*sorted(points)))
        (line,) = ax.plot(x, mean, marker="o", ms=4, label=label)
        ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2)
    ax.axhline(1.0, color="black", lw=1.2, label=reference)
    if x_name == "num_agents":
        ax.set_xscale("log")
    ax.set_xlabel(x_name.removeprefix("grid_"))
    ax.set_ylabel(f"final cost / {reference}")
    ax.set_title("sweep: mean over seeds, 95% bootstrap CI")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
