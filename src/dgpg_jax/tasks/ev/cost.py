"""The cost of a day: a convex cost of each slot's total load plus a price on energy not
delivered by departure.

Loads are normalised per agent in a fixed unit of 1 kW, l = L / (N x 1 kW), so that
rewards are O(1) at every N. A slot of dt hours costs N dt c(l), with the convex

    c(l) = l^2 + overload_weight * max(0, l - capacity_per_agent)^2

(quadratic by default; the second term is an optional feeder-capacity charge), and each
kWh not delivered costs `undelivered_penalty`. The step reward is -(step cost) / N, so
an episode's return is minus the day's cost per agent.
"""

import jax
import jax.numpy as jnp

from dgpg_jax.tasks.ev.types import EVParams

LOAD_UNIT_KW = 1.0


def per_agent_load(load: jax.Array, params: EVParams) -> jax.Array:
    """Load in the normalised unit l = L / (N x 1 kW)."""
    return load / (params.num_agents * LOAD_UNIT_KW)


def slot_cost(load: jax.Array, params: EVParams) -> jax.Array:
    """Cost N dt c(L / N) of slots with total load `load` (any shape, kW); convex in the load."""
    level = per_agent_load(load, params)
    excess = jnp.maximum(0.0, level - params.capacity_per_agent)
    return params.num_agents * params.slot_hours * (level**2 + params.overload_weight * excess**2)


def undelivered_cost(undelivered_energy: jax.Array, params: EVParams) -> jax.Array:
    """Penalty for `undelivered_energy` kWh not delivered by departure."""
    return params.undelivered_penalty * undelivered_energy
