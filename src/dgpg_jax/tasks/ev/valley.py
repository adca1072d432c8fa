"""The analytical model: valley filling, the centralised optimum of the aggregate load.

Pouring energy into the lowest slots of the base load until they share one level is
the minimiser of sum_t (b_t + x_t)^2 over x >= 0 with sum_t x_t = E; it also minimises
sum_t c(b_t + x_t) for every convex c that is the same in every slot (its profile is
majorised by every feasible one), so it bounds from below any schedule that delivers
E, whatever the EVs' windows and power limits: that is the reference cost.
Pure, jittable, vmappable, differentiable in the base load and the energy; O(T log T).
"""

import jax
import jax.numpy as jnp

from dgpg_jax.tasks.cloud.analytical import check_inputs
from dgpg_jax.tasks.ev.cost import slot_cost, undelivered_cost
from dgpg_jax.tasks.ev.types import EVParams


def _leading_true(mask: jax.Array) -> jax.Array:
    """Length of the run of True at the start of a 1-d boolean array."""
    return jnp.cumprod(mask.astype(jnp.int32)).sum()


def valley_fill(base_load: jax.Array, total_energy: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Level and profile x_t = max(0, level - b_t) with sum_t x_t = total_energy.

    With the base sorted, the level of the k lowest slots is (E + sum of them) / k; the
    active slots are the longest prefix whose largest base is below its level (the
    condition holds for a prefix only). E = 0 gives zeros, at the lowest base's level.

    Args:
      base_load: (T,) non-negative load per slot.
      total_energy: () non-negative sum of the profile (kWh / dt for kW loads).
    Returns:
      level: () filled level; profile: (T,) added load, >= 0, summing to total_energy.
    """
    check_inputs(base_load=base_load, total_energy=total_energy)
    base_sorted = jnp.sort(base_load)
    count = jnp.arange(1, base_load.shape[0] + 1, dtype=base_load.dtype)
    levels = (total_energy + jnp.cumsum(base_sorted)) / count
    num_active = _leading_true(base_sorted < levels)
    level = jnp.where(num_active > 0, levels[jnp.maximum(num_active - 1, 0)], base_sorted[0])
    return level, jnp.maximum(level - base_load, 0.0)


def valley_load(base_load: jax.Array, energy: jax.Array, params: EVParams) -> jax.Array:
    """(T,) kW total load of the valley-filling schedule of `energy` kWh on `base_load` (T,) kW."""
    _, profile = valley_fill(base_load, energy / params.slot_hours)
    return base_load + profile


def reference_cost(base_load: jax.Array, delivered_energy: jax.Array, undelivered_energy: jax.Array,
                   params: EVParams) -> jax.Array:
    """() lower bound on a day's cost: the valley-filling schedule of the day's delivered
    energy (kWh) on its realised base load (T,) kW, plus the penalty on the undelivered
    energy, which no choice of windows changes."""
    load = valley_load(base_load, delivered_energy, params)
    return slot_cost(load, params).sum() + undelivered_cost(undelivered_energy, params)
