"""Guidance potentials on per-slot loads and each EV's exact leave-one-out guidance.

The potentials are quadratic tracking forms on the committed total load L (T,) kW,

    G(L) = -(dt / (2 N)) sum_t (L_t - r_t)^2,

with target r = the valley profile V (`valley`: track the centralised optimum) or r = 0
(`load`: then G is minus half the quadratic load cost, exactly aligned with it). The
valley target is exogenous: one EV's choice does not move it.

Guidance of row i at candidate b: the change of G when i's window w_b (power p, d slots)
is added to the load without i's own window, the other rows' choices of this step held
fixed. With L^{-i} = L - p 1[w_{a_i}] and |w_b n w_{a_i}| the overlap of the candidate
with the chosen window,

    g_i(b) = -(dt p / N) [ sum_{t in w_b} (L_t - r_t) - p |w_b n w_{a_i}| + d p / 2 ],

a difference of two prefix sums: O(J k + T) for all rows, no (J, T) tensor.
"""

import chex
import jax
import jax.numpy as jnp
from flax import struct

from dgpg_jax.ev.core import commit_step, resolve_actions
from dgpg_jax.ev.observation import committed_load
from dgpg_jax.ev.types import EVParams, EVState
from dgpg_jax.ev.windows import window_overlap, window_sums

POTENTIALS = ("valley", "load")


@struct.dataclass
class LoadAggregates:
    """Per-slot quantities the potential reads; both (T,) kW."""

    load: jax.Array  # (T,) committed total load (forecast base + EV windows, this step's included)
    target: jax.Array  # (T,) tracking target r


def check_potential(potential: str) -> str:
    if potential not in POTENTIALS:
        raise ValueError(f"potential={potential!r} is invalid: allowed one of {POTENTIALS}")
    return potential


def tracking_potential(agg: LoadAggregates, params: EVParams) -> jax.Array:
    """(T,) terms of G: -(dt / (2 N)) (L_t - r_t)^2; G is their sum."""
    return -0.5 * params.slot_hours / params.num_agents * (agg.load - agg.target) ** 2


def potential_target(potential: str, state: EVState, params: EVParams) -> jax.Array:
    """(T,) kW target of the named potential: the day's valley profile, or zeros."""
    if check_potential(potential) == "valley":
        return state.day.valley_load
    return jnp.zeros((params.horizon,), jnp.float32)


def window_guidance(agg: LoadAggregates, start: jax.Array, length: jax.Array, power: jax.Array,
                    chosen_start: jax.Array, valid: jax.Array, params: EVParams) -> jax.Array:
    """(J, k) exact leave-one-out change of G when row i's window is candidate b.

    Args:
      agg: loads with every row's chosen window committed.
      start: (J, k) candidate window starts; length: (J,) slots d; power: (J,) kW;
      chosen_start: (J,) start of the committed window; valid: (J,) bool (0 on empty rows).
    """
    j, _ = start.shape
    chex.assert_shape([length, power, chosen_start, valid], (j,))
    chex.assert_equal_shape([agg.load, agg.target])
    deviation = window_sums(agg.load - agg.target, start, length)  # (J, k) kW-slots
    own = power[:, None] * window_overlap(start, chosen_start[:, None], length[:, None])
    change = -(params.slot_hours / params.num_agents) * power[:, None] * (
        deviation - own + length[:, None] * power[:, None] / 2)
    return jnp.where(valid[:, None], change, 0.0)


def step_aggregates(state: EVState, actions: jax.Array, params: EVParams, potential: str = "valley"):
    """Aggregates after this step's rows take `actions` (J,) and the overflow is committed;
    also returns the (J,) committed window starts."""
    _, start, _ = resolve_actions(state.arrivals, actions, params.num_candidates)
    ev_load = commit_step(state, start)
    load = committed_load(state.replace(ev_load=ev_load), params)
    return LoadAggregates(load=load, target=potential_target(potential, state, params)), start


def step_guidance(state: EVState, actions: jax.Array, params: EVParams, potential: str = "valley") -> jax.Array:
    """(J, k) guidance of every row at every candidate for the step about to be taken with
    `actions` (an out-of-range action counts as candidate 0, as in `core.step`)."""
    agg, start = step_aggregates(state, actions, params, potential)
    rows = state.arrivals
    return window_guidance(agg, rows.candidate_start, rows.length, rows.power, start, rows.valid, params)
