"""The day's EVs: when each arrives and leaves, what it needs, its charger; and the
packing of each step's arrivals into the J decision rows.

Everything is drawn at reset from the day's key, never from the actions, so every policy
sees the same day (common random numbers). The fleet is sorted by arrival slot, so the
EVs of step t are one contiguous run found by binary search: O(J + log N) per step.
"""

import jax
import jax.numpy as jnp
from jax.scipy.special import ndtr

from dgpg_jax.tasks.ev.base_load import base_forecast, sample_base_load
from dgpg_jax.tasks.ev.types import Arrivals, Day, EVParams
from dgpg_jax.tasks.ev.valley import valley_load
from dgpg_jax.tasks.ev.windows import candidate_starts, charging_plan


def arrival_slot_probabilities(params: EVParams) -> jax.Array:
    """(T,) probability that an EV arrives in each slot (the formula of
    `types.arrival_slot_probabilities_host`); sums to 1."""
    edges = jnp.arange(params.horizon - 1, dtype=jnp.float32) * params.slot_hours
    cdf = ndtr((edges - params.arrival_mean) / params.arrival_sd)
    return jnp.concatenate([cdf[:1], jnp.diff(cdf), 1 - cdf[-1:]])


def sample_fleet(key: jax.Array, params: EVParams):
    """(N,) arrival slot, departure slot (exclusive), energy need (kWh) and power limit (kW)
    of each EV, sorted by arrival slot.

    Arrival x ~ N(arrival_mean, arrival_sd) hours after the day's start, slot ceil(x / dt)
    clipped to [0, T - 1]; departure y ~ N(departure_mean, departure_sd), slot floor(y / dt)
    clipped to [arrival + 1, T] (the last slot that ends by y, at least one slot of stay);
    energy energy_mean exp(sigma Z - sigma^2 / 2) (mean energy_mean), capped at energy_max;
    power limit from `power_levels` with `power_probabilities`.
    """
    arrival_key, departure_key, energy_key, power_key = jax.random.split(key, 4)
    n, t, dt = params.num_agents, params.horizon, params.slot_hours
    x = params.arrival_mean + params.arrival_sd * jax.random.normal(arrival_key, (n,))
    arrival = jnp.clip(jnp.ceil(x / dt), 0, t - 1).astype(jnp.int32)
    y = params.departure_mean + params.departure_sd * jax.random.normal(departure_key, (n,))
    departure = jnp.clip(jnp.floor(y / dt).astype(jnp.int32), arrival + 1, t)
    sigma = params.energy_sigma
    energy = jnp.minimum(params.energy_mean * jnp.exp(sigma * jax.random.normal(energy_key, (n,)) - sigma**2 / 2),
                         params.energy_max)
    kind = jax.random.categorical(power_key, jnp.log(params.power_probabilities), shape=(n,))
    order = jnp.argsort(arrival, stable=True)
    return arrival[order], departure[order], energy[order], params.power_levels[kind][order]


def overflow_plan(arrival, departure, energy, power_limit, params: EVParams):
    """Charge-on-arrival commitments of the EVs beyond the J rows of their arrival step.

    Returns the (T, T) kW load profile of each arrival step's overflow (row t), the (T,)
    count, demanded and delivered kWh of the overflow per arrival step, and the (N,) kWh
    every EV's window delivers (overflow or not). O(N + T^2), once per day.
    """
    t = params.horizon
    first = jnp.searchsorted(arrival, arrival, side="left")  # start of each EV's arrival run
    overflow = jnp.arange(arrival.shape[0]) - first >= params.num_rows
    length, power, delivered = charging_plan(energy, power_limit, departure - arrival, params.slot_hours)
    p = jnp.where(overflow, power, 0.0)
    delta = jnp.zeros((t, t + 1), jnp.float32).at[arrival, arrival].add(p).at[arrival, arrival + length].add(-p)
    load = jnp.maximum(jnp.cumsum(delta, axis=1)[:, :t], 0.0)  # the maximum removes float32 rounding
    per_step = lambda v: jax.ops.segment_sum(jnp.where(overflow, v, 0), arrival, num_segments=t)  # noqa: E731
    return load, per_step(overflow.astype(jnp.int32)), per_step(energy), per_step(delivered), delivered


def sample_day(key: jax.Array, params: EVParams) -> Day:
    """The day's EVs, realised base load, valley target and overflow commitments."""
    fleet_key, base_key = jax.random.split(key)
    arrival, departure, energy, power_limit = sample_fleet(fleet_key, params)
    load, count, demanded, delivered, delivered_each = overflow_plan(arrival, departure, energy, power_limit, params)
    return Day(arrival=arrival, departure=departure, energy=energy, power_limit=power_limit,
               base_load=sample_base_load(base_key, params),
               valley_load=valley_load(base_forecast(params), delivered_each.sum(), params),
               overflow_load=load, overflow_count=count, overflow_energy=demanded, overflow_delivered=delivered)


def pack_arrivals(day: Day, time: jax.Array, params: EVParams) -> Arrivals:
    """The first J EVs arriving at slot `time`, one per row, with their candidate windows.
    `time` may be T (after the day's last step): then every row is empty."""
    n, j = params.num_agents, params.num_rows
    first = jnp.searchsorted(day.arrival, time, side="left")
    count = jnp.searchsorted(day.arrival, time, side="right") - first
    row = jnp.arange(j)
    valid = row < count
    agent = jnp.where(valid, first + row, n).astype(jnp.int32)
    safe = jnp.minimum(agent, n - 1)  # gathers read a real EV; results are masked by `valid`
    departure = jnp.where(valid, day.departure[safe], time)
    energy = jnp.where(valid, day.energy[safe], 0.0)
    length, power, _ = charging_plan(energy, day.power_limit[safe], jnp.maximum(departure - time, 1),
                                     params.slot_hours)
    length = jnp.where(valid, length, 0)
    power = jnp.where(valid, power, 0.0)
    start = candidate_starts(jnp.broadcast_to(time, (j,)).astype(jnp.int32), departure, length, params.num_candidates)
    return Arrivals(valid=valid, agent=agent, departure=departure.astype(jnp.int32), energy=energy, power=power,
                    length=length, candidate_start=start.astype(jnp.int32),
                    num_overflow=jnp.maximum(count - j, 0).astype(jnp.int32))
