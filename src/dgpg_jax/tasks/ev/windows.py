"""Charging windows: how long an EV charges, where its k candidate windows start, and the
per-slot sums over windows that commitments, observations and guidance need.

A window is the contiguous interval of slots [start, start + d) at constant power p.
Committing windows uses a difference array (+p at start, -p at the end, one cumulative
sum) and sums over windows use prefix sums, so a step costs O(J k + T): no (J, T) tensor.
"""

import jax
import jax.numpy as jnp

# Slack on ceil(E / (P dt)): a need of exactly d slots' energy, rounded up by an ulp in
# float32, must not cost a whole extra slot.
CEIL_TOLERANCE = 1e-5


def charging_plan(energy: jax.Array, power_limit: jax.Array, stay: jax.Array, slot_hours: float):
    """Window length, power and delivered energy of EVs with the given needs.

    d = ceil(E / (P dt)) slots, at most the stay; the window runs at the constant power
    p = min(P, E / (d dt)) <= P, which delivers E exactly when the stay is long enough and
    P d dt < E otherwise (the shortfall is undelivered energy).

    Args (same shape, any): energy kWh, power_limit kW (> 0), stay slots (int32 >= 1);
      slot_hours: dt.
    Returns: (length int32, power kW, delivered kWh).
    """
    needed = jnp.ceil(energy / (power_limit * slot_hours) * (1 - CEIL_TOLERANCE)).astype(jnp.int32)
    length = jnp.clip(needed, 1, stay)
    power = jnp.minimum(power_limit, energy / (length * slot_hours))
    return length, power, power * length * slot_hours


def candidate_starts(arrival: jax.Array, departure: jax.Array, length: jax.Array, num_candidates: int) -> jax.Array:
    """(..., k) first slot of each candidate window: candidate 0 on arrival, the others
    spread evenly (rounded half up) up to the latest start, departure - d. With no slack
    (stay == d) every candidate is the whole stay."""
    slack = departure - length - arrival  # (...,) >= 0
    b = jnp.arange(num_candidates, dtype=jnp.int32)
    if num_candidates == 1:
        return arrival[..., None] + 0 * b
    spread = (2 * b * slack[..., None] + num_candidates - 1) // (2 * (num_candidates - 1))
    return arrival[..., None] + spread


def commit_windows(ev_load: jax.Array, start: jax.Array, length: jax.Array, power: jax.Array,
                   include: jax.Array) -> jax.Array:
    """(T,) `ev_load` plus the windows [start, start + length) at `power` where `include`.

    Difference array: +p at start, -p at start + length (<= T), one cumsum; O(W + T) for W
    windows of any shape (`start`, `length`, `power`, `include` broadcast together). The
    `maximum` only removes float32 rounding below zero left where windows end.
    """
    horizon = ev_load.shape[0]
    p = jnp.where(include, power, 0.0)
    start, length, p = jnp.broadcast_arrays(start, length, p)
    delta = jnp.zeros((horizon + 1,), ev_load.dtype).at[start.ravel()].add(p.ravel())
    delta = delta.at[(start + length).ravel()].add(-p.ravel())
    return jnp.maximum(ev_load + jnp.cumsum(delta)[:horizon], 0.0)


def prefix_sums(x: jax.Array) -> jax.Array:
    """(T + 1,) [0, x_0, x_0 + x_1, ...]: the sum over [s, s + d) is P[s + d] - P[s]."""
    return jnp.concatenate([jnp.zeros((1,), x.dtype), jnp.cumsum(x)])


def window_sums(x: jax.Array, start: jax.Array, length: jax.Array) -> jax.Array:
    """Sum of `x` (T,) over each window [start, start + length); `start` (J, k) and
    `length` (J,) or (J, k). O(T + J k)."""
    prefix = prefix_sums(x)
    length = length if length.ndim == start.ndim else length[..., None]
    return prefix[start + length] - prefix[start]


def window_overlap(start_a: jax.Array, start_b: jax.Array, length: jax.Array) -> jax.Array:
    """Slots shared by [start_a, start_a + d) and [start_b, start_b + d) (broadcasting)."""
    return jnp.maximum(0, jnp.minimum(start_a, start_b) + length - jnp.maximum(start_a, start_b))
