"""A user's task written in the test suite against the public interface only, with every
default: N agents each step choose one of 2 identical links of latency 1 + x / N (the
team's cost is the total latency; no reference, so ratios are absolute costs)."""

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from dgpg_jax import Task


@struct.dataclass
class LinkParams:
    num_agents: int = struct.field(pytree_node=False)
    horizon: int = struct.field(pytree_node=False)


@struct.dataclass
class LinkState:
    time: jax.Array


def total_latency(load, params):
    """Minus the total latency of the link loads (ascended)."""
    return -jnp.sum(load * (1.0 + load / params.num_agents))


def observe(state, params):
    return jnp.broadcast_to(jnp.array([[1.0], [1.0]]), (params.num_agents, 2, 1))


def reset(key, params):
    state = LinkState(jnp.zeros((), jnp.int32))
    return observe(state, params), state


def step(key, state, actions, params):
    load = jnp.stack([jnp.sum(actions == 0), jnp.sum(actions == 1)]).astype(jnp.float32)
    done = state.time + 1 >= params.horizon
    state = LinkState(jnp.where(done, 0, state.time + 1))
    return observe(state, params), state, total_latency(load, params) / params.num_agents, done, {"truncated": done}


def aggregates(state, params):
    return jnp.zeros(2), jnp.broadcast_to(jnp.eye(2), (params.num_agents, 2, 2))


@dataclasses.dataclass(frozen=True)
class LinkConfig:
    num_agents: int = 4
    horizon: int = 4

    def validate(self):
        if not (isinstance(self.num_agents, int) and self.num_agents >= 1):
            raise ValueError(f"num_agents={self.num_agents!r} is invalid: allowed an integer >= 1")
        if not (isinstance(self.horizon, int) and self.horizon >= 1):
            raise ValueError(f"horizon={self.horizon!r} is invalid: allowed an integer >= 1")
        return self

    def make_task(self):
        self.validate()
        return Task(name="links", params=LinkParams(self.num_agents, self.horizon), reset=reset, step=step,
                    observe=observe, aggregates=aggregates, potentials={"total_latency": total_latency})
