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

A user potential is any function of `LoadAggregates` (its `target` is then the valley
profile, the analytical model) returning (T,) terms, elementwise over slots. Its guidance
is first order, g_i(b) = p sum_{t in w_b} dG/dL_t (`jax.grad`, prefix sums): exact
leave-one-out would need every row's own shifted window, O(J k d). The scale of a
potential does not matter: the learner normalises the guidance to unit RMS.
"""

import dataclasses
from typing import Callable

import chex
import jax
import jax.numpy as jnp
from flax import struct

from dgpg_jax.tasks.ev.core import commit_step, resolve_actions
from dgpg_jax.tasks.ev.observation import committed_load
from dgpg_jax.tasks.ev.types import EVParams, EVState
from dgpg_jax.tasks.ev.windows import window_overlap, window_sums

@struct.dataclass
class LoadAggregates:
    """Per-slot quantities the potential reads; both (T,) kW."""

    load: jax.Array  # (T,) committed total load (forecast base + EV windows, this step's included)
    target: jax.Array  # (T,) tracking target r


@dataclasses.dataclass(frozen=True)
class TrackingPotential:
    """The quadratic tracking potential with a named target ("valley" or "load", the
    latter r = 0): terms -(L_t - r_t)^2 / 2, up to the scale dt / N of
    `tracking_potential`; its exact guidance is closed-form (`window_guidance`)."""

    target: str

    def __call__(self, agg: LoadAggregates) -> jax.Array:
        return -0.5 * (agg.load - agg.target) ** 2


POTENTIALS: dict[str, TrackingPotential] = {"valley": TrackingPotential("valley"), "load": TrackingPotential("load")}


def check_potential(potential: str) -> str:
    if potential not in POTENTIALS:
        raise ValueError(f"potential={potential!r} is invalid: allowed one of {tuple(POTENTIALS)}")
    return potential


def tracking_potential(agg: LoadAggregates, params: EVParams) -> jax.Array:
    """(T,) terms of G: -(dt / (2 N)) (L_t - r_t)^2; G is their sum."""
    return params.slot_hours / params.num_agents * TrackingPotential("valley")(agg)


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


def first_order_guidance(potential: Callable, agg: LoadAggregates, start: jax.Array, length: jax.Array,
                         power: jax.Array, valid: jax.Array) -> jax.Array:
    """(J, k) first-order change of G = sum_t potential(agg)_t when row i's window is
    candidate b: p_i sum_{t in w_b} dG/dL_t, the gradient from `jax.grad`. O(J k + T)."""
    gradient = jax.grad(lambda load: potential(agg.replace(load=load)).sum())(agg.load)
    return jnp.where(valid[:, None], power[:, None] * window_sums(gradient, start, length), 0.0)


def task_guidance(potential: Callable, state: EVState, choice: jax.Array, params: EVParams,
                  exact: bool = True) -> jax.Array:
    """(J, k) guidance of the Task interface: closed-form exact for a `TrackingPotential`,
    first order otherwise (a user potential reads the valley profile as `agg.target`)."""
    tracking = isinstance(potential, TrackingPotential)
    if exact and not tracking:
        raise ValueError(f"potential={potential!r} is invalid with exact guidance on EV charging: allowed a named "
                         "potential, or first_order=True")
    agg, start = step_aggregates(state, choice, params, potential.target if tracking else "valley")
    rows = state.arrivals
    if exact:
        return window_guidance(agg, rows.candidate_start, rows.length, rows.power, start, rows.valid, params)
    return first_order_guidance(potential, agg, rows.candidate_start, rows.length, rows.power, rows.valid)
