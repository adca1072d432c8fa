"""Day metrics of EV charging, their pooling, the valley-filling reference as metrics,
and a rollout that keeps every step.

The key scheme is the generic one (`dgpg_jax.evaluate.env_keys` / `policy_keys`): the
day comes from the environment stream, a policy's randomness from a disjoint one, so
every policy sees the same EVs and base load in episode e of seed s; whole-day metrics of
a policy come from `dgpg_jax.evaluate.run_episode(act, task, key)` on the EV `Task`.
"""

from typing import Callable

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from dgpg_jax.evaluate import env_keys, scan_episode
from dgpg_jax.tasks.ev.core import reset, step
from dgpg_jax.tasks.ev.types import EVParams, EVState
from dgpg_jax.tasks.ev.cost import slot_cost, undelivered_cost
from dgpg_jax.tasks.ev.valley import reference_cost, valley_load
from dgpg_jax.tasks.ev.windows import charging_plan

Act = Callable[[jax.Array, EVState, EVParams], jax.Array]


@struct.dataclass
class StepRecord:
    """What one step contributes to the day's metrics (all scalars)."""

    reward: jax.Array
    cost: jax.Array
    load_cost: jax.Array
    penalty_cost: jax.Array
    load: jax.Array  # kW, slot t's realised total load
    base_load: jax.Array  # kW
    ev_load: jax.Array  # kW
    demanded_energy: jax.Array  # kWh
    delivered_energy: jax.Array  # kWh
    undelivered_energy: jax.Array  # kWh
    num_arrived: jax.Array  # int32
    num_overflow: jax.Array  # int32
    num_invalid: jax.Array  # int32


@struct.dataclass
class EpisodeMetrics:
    """Per-day metrics. Costs are in the units of `cost.py`; `cost_ratio` is the day's cost
    over the valley-filling lower bound on the same realised day (>= 1)."""

    episode_return: jax.Array  # () minus the day's cost per agent
    total_cost: jax.Array  # () load cost + penalty
    load_cost: jax.Array  # ()
    penalty_cost: jax.Array  # ()
    reference_cost: jax.Array  # () valley filling of the delivered energy on the realised base load
    cost_ratio: jax.Array  # () total_cost / reference_cost
    peak_load: jax.Array  # () kW, largest slot load
    min_load: jax.Array  # () kW, smallest slot load
    peak_to_average: jax.Array  # () peak load over mean load
    demanded_energy: jax.Array  # () kWh asked for by the day's EVs
    delivered_energy: jax.Array  # () kWh their windows deliver (per-EV accounting)
    charged_energy: jax.Array  # () kWh sum_t EV load_t dt (from the slot loads)
    undelivered_energy: jax.Array  # () kWh
    num_arrived: jax.Array  # () int32
    num_overflow: jax.Array  # () int32, EVs beyond the J rows, charged on arrival
    num_invalid: jax.Array  # () int32, out-of-range actions, charged on arrival


def make_record(reward: jax.Array, info: dict) -> StepRecord:
    return StepRecord(reward=reward, **{f.name: info[f.name] for f in StepRecord.__dataclass_fields__.values()
                                        if f.name != "reward"})


def summarise(records: StepRecord, params: EVParams) -> EpisodeMetrics:
    """Day metrics from time-stacked records ((T,) leaves of one whole day)."""
    delivered = records.delivered_energy.sum()
    undelivered = records.undelivered_energy.sum()
    total = records.cost.sum()
    reference = reference_cost(records.base_load, delivered, undelivered, params)
    return EpisodeMetrics(
        episode_return=records.reward.sum(),
        total_cost=total,
        load_cost=records.load_cost.sum(),
        penalty_cost=records.penalty_cost.sum(),
        reference_cost=reference,
        cost_ratio=total / reference,
        peak_load=records.load.max(),
        min_load=records.load.min(),
        peak_to_average=records.load.max() / records.load.mean(),
        demanded_energy=records.demanded_energy.sum(),
        delivered_energy=delivered,
        charged_energy=records.ev_load.sum() * params.slot_hours,
        undelivered_energy=undelivered,
        num_arrived=records.num_arrived.sum().astype(jnp.int32),
        num_overflow=records.num_overflow.sum().astype(jnp.int32),
        num_invalid=records.num_invalid.sum().astype(jnp.int32),
    )


def rollout(act: Act, params: EVParams, episode_key: jax.Array):
    """One day under `act(key, state, params) -> (J,) candidates`. Returns the day it ran on
    and the (T,)-stacked arrivals each step decided on, actions taken and step records."""
    state, (arrivals, actions, records) = scan_episode(
        reset, step, lambda state, actions, reward, info: (state.arrivals, actions, make_record(reward, info)), act,
        params, episode_key)
    return state.day, arrivals, actions, records


def reference_metrics(params: EVParams, episode_key: jax.Array) -> EpisodeMetrics:
    """The valley-filling bound of one day as that day's metrics (the reference of the
    ratio): the day's deliverable energy (every EV's window delivers the same whatever its
    candidate) poured into the valleys of the realised base load, plus the penalty on the
    energy no window can deliver."""
    _, state = reset(env_keys(episode_key, params.horizon)[0], params)
    day = state.day
    _, _, delivered_each = charging_plan(day.energy, day.power_limit, day.departure - day.arrival, params.slot_hours)
    delivered, demanded = delivered_each.sum(), day.energy.sum()
    undelivered = jnp.maximum(day.energy - delivered_each, 0.0).sum()
    load = valley_load(day.base_load, delivered, params)
    load_cost = slot_cost(load, params).sum()
    penalty = undelivered_cost(undelivered, params)
    total = load_cost + penalty
    return EpisodeMetrics(
        episode_return=-total / params.num_agents, total_cost=total, load_cost=load_cost, penalty_cost=penalty,
        reference_cost=total, cost_ratio=jnp.ones(()), peak_load=load.max(), min_load=load.min(),
        peak_to_average=load.max() / load.mean(), demanded_energy=demanded, delivered_energy=delivered,
        charged_energy=(load - day.base_load).sum() * params.slot_hours, undelivered_energy=undelivered,
        num_arrived=jnp.asarray(params.num_agents, jnp.int32), num_overflow=day.overflow_count.sum(),
        num_invalid=jnp.zeros((), jnp.int32))


def pool(metrics: EpisodeMetrics) -> dict[str, float]:
    """Metrics of all days in `metrics` (any leading shape) taken together, host-side in
    float64: the mean of every field over the days, and `cost_ratio` as the ratio of the
    mean cost to the mean reference cost (a ratio of sums, as the cloud task's pool)."""
    out = {f.name: float(np.mean(np.asarray(getattr(metrics, f.name), np.float64)))
           for f in dataclasses.fields(EpisodeMetrics)}
    out["cost_ratio"] = out["total_cost"] / out["reference_cost"]
    return out
