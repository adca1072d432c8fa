"""What a sweep runs: the `Sweep` spec (algorithms x N x a grid of traced values x seeds),
its validation, the arguments sweep.json records, and the names of its configurations.

Configurations are algo x N x the cartesian product of the grids. The grid names are the
traced `train.Hyper` fields (`alpha` sets alpha_start and alpha_end).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from typing import Mapping, Sequence

from dgpg_jax import registry, train
from dgpg_jax.configs import flatten
from dgpg_jax.validation import check, check_seeds, is_integer, is_number

GRID_NAMES = ("alpha", "alpha_start", "alpha_end", "learning_rate", "utilisation")
"""Traced values a grid may cover (`train.Hyper`); `alpha` sets alpha_start and alpha_end,
`utilisation` the task's traced load (a config field of that name)."""
FORMAT_VERSION = 2

# Config fields added since format 2, with the value that a sweep.json written before them meant.
ADDED_FIELDS = {"env.decisions": "simultaneous", "env.fleet": "catalog"}


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
        config = flatten(dataclasses.asdict(self.base))
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


def _group_name(algo: str, n: int) -> str:
    return f"{algo}-n{n}"
