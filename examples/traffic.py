"""Route choice as a dgpg_jax task, written only against the public interface.

N commuters each step: those who travel (a daily demand curve) pick one of k = 3 routes
over 4 links with BPR latency t(x) = t0 (1 + 0.15 (x / c)^4); routes 0 and 1 share link 3.
The team's cost is the total travel time. The analytical model is the system optimum:
the potential is minus the total latency of the link loads, and the reference assigns a
step's travellers in turn to the route of least marginal total latency.

    dgpg train --task examples.traffic:TrafficConfig --num-agents 100 --episodes 10 --out runs/traffic
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from dgpg_jax import EpisodeCost, Task, scan_episode

FREE_FLOW = (1.0, 1.2, 2.0, 0.5)  # t0 of each link
CAPACITY = (0.25, 0.3, 0.5, 0.4)  # c of each link, a fraction of N
ROUTES = ((1, 0, 0, 1), (0, 1, 0, 1), (0, 0, 1, 0))  # links of each route


@dataclasses.dataclass(frozen=True)
class TrafficConfig:
    num_agents: int = 100
    """Commuters N."""
    horizon: int = 24
    """Steps of a day T."""
    peak_demand: float = 0.9
    """Probability that a commuter travels at the day's peak (half of it at night)."""

    def validate(self):
        if not (isinstance(self.num_agents, int) and 2 <= self.num_agents <= 100_000):
            raise ValueError(f"num_agents={self.num_agents!r} is invalid: allowed an integer in [2, 100000]")
        if not (isinstance(self.horizon, int) and 2 <= self.horizon <= 10_000):
            raise ValueError(f"horizon={self.horizon!r} is invalid: allowed an integer in [2, 10000]")
        if not 0 < self.peak_demand <= 1:
            raise ValueError(f"peak_demand={self.peak_demand!r} is invalid: allowed (0, 1]")
        return self

    def make_task(self) -> Task:
        self.validate()
        return Task(name="traffic", params=make_params(self), reset=reset, step=step, observe=observe,
                    valid=lambda state: state.travelling, aggregates=aggregates,
                    potentials={"total_latency": total_latency}, reference=optimum, reference_name="optimum",
                    baselines={"random": random_routes, "shortest": shortest_route, "optimum": marginal_routes},
                    peak_rate=self.peak_demand)


@struct.dataclass
class Params:
    num_agents: int = struct.field(pytree_node=False)
    horizon: int = struct.field(pytree_node=False)
    free_flow: jax.Array  # (L,)
    capacity: jax.Array  # (L,) vehicles
    routes: jax.Array  # (k, L) 0/1
    demand: jax.Array  # (T,) probability of travelling at each step


@struct.dataclass
class State:
    time: jax.Array  # () int32
    travelling: jax.Array  # (N,) bool


def make_params(config: TrafficConfig) -> Params:
    hours = jnp.arange(config.horizon) / config.horizon
    demand = config.peak_demand * (0.75 - 0.25 * jnp.cos(2 * jnp.pi * hours))
    return Params(config.num_agents, config.horizon, jnp.array(FREE_FLOW), config.num_agents * jnp.array(CAPACITY),
                  jnp.array(ROUTES, jnp.float32), demand)


def latency(load: jax.Array, params: Params) -> jax.Array:
    """(L,) BPR travel time of each link at `load` vehicles."""
    return params.free_flow * (1 + 0.15 * (load / params.capacity) ** 4)


def total_latency(load: jax.Array, params: Params) -> jax.Array:
    """The potential: minus the total travel time of the link loads (ascended)."""
    return -jnp.sum(load * latency(load, params))


def _start(key: jax.Array, time: jax.Array, params: Params) -> State:
    return State(time, jax.random.bernoulli(key, params.demand[time], (params.num_agents,)))


def observe(state: State, params: Params) -> jax.Array:
    """(N, k, 4) per route: free-flow time, bottleneck capacity per commuter, the step's
    demand, and whether this commuter travels."""
    free_flow = params.routes @ params.free_flow
    bottleneck = jnp.min(jnp.where(params.routes > 0, params.capacity, jnp.inf), axis=1) / params.num_agents
    route = jnp.stack([free_flow, bottleneck, jnp.full_like(free_flow, params.demand[state.time])], axis=-1)
    travels = jnp.broadcast_to(state.travelling[:, None, None], (params.num_agents, 3, 1))
    return jnp.concatenate([jnp.broadcast_to(route, (params.num_agents, 3, 3)), travels], axis=-1)


def reset(key: jax.Array, params: Params):
    state = _start(key, jnp.zeros((), jnp.int32), params)
    return observe(state, params), state


def link_loads(state: State, routes: jax.Array, params: Params) -> jax.Array:
    return jnp.where(state.travelling, 1.0, 0.0) @ params.routes[routes]


def step(key: jax.Array, state: State, actions: jax.Array, params: Params):
    load = link_loads(state, actions, params)
    reward = total_latency(load, params) / params.num_agents
    done = state.time + 1 >= params.horizon
    next_state = _start(key, jnp.where(done, 0, state.time + 1), params)
    return observe(next_state, params), next_state, reward, done, {"truncated": done}


def aggregates(state: State, params: Params):
    """Link loads without this step's travellers (none) and what each adds on each route."""
    contribution = jnp.broadcast_to(params.routes, (params.num_agents,) + params.routes.shape)
    return jnp.zeros_like(params.free_flow), contribution


def random_routes(key, state, params):
    return jax.random.randint(key, (params.num_agents,), 0, 3)


def shortest_route(key, state, params):
    return jnp.full((params.num_agents,), jnp.argmin(params.routes @ params.free_flow))


def marginal_routes(key, state, params):
    """Travellers in turn, each on the route that adds least to the total travel time."""
    def one(load, travels):
        added = jax.vmap(lambda r: total_latency(load, params) - total_latency(load + r, params))(params.routes)
        route = jnp.argmin(added)
        return load + jnp.where(travels, params.routes[route], 0.0), route

    return jax.lax.scan(one, jnp.zeros_like(params.free_flow), state.travelling)[1]


def optimum(params: Params, episode_key: jax.Array) -> EpisodeCost:
    """The system optimum's metrics on the same episode (the reference)."""
    _, rewards = scan_episode(reset, step, lambda state, actions, reward, info: reward, marginal_routes, params,
                              episode_key)
    return EpisodeCost(cost=-rewards.sum(), episode_return=rewards.sum())
