"""Rolling out a charging policy for whole days on common random numbers, and day metrics.

The key scheme is the cloud env's (`dgpg_jax.evaluate.env_keys` / `policy_keys`): the day
comes from the environment stream, a policy's randomness from a disjoint one, so every
policy sees the same EVs and base load in episode e of seed s.
"""

from typing import Callable

import jax
import jax.numpy as jnp
from flax import struct

from dgpg_jax.evaluate import scan_episode
from dgpg_jax.ev.core import reset, step
from dgpg_jax.ev.types import EVParams, EVState
from dgpg_jax.ev.valley import reference_cost

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


def run_episode(act: Act, params: EVParams, episode_key: jax.Array) -> EpisodeMetrics:
    """Metrics of one day under `act`."""
    records = rollout(act, params, episode_key)[-1]
    return summarise(records, params)


def evaluate(act: Act, params: EVParams, episode_keys: jax.Array) -> EpisodeMetrics:
    """Metrics with a leading axis over `episode_keys` (S,), one day each (vmapped)."""
    return jax.vmap(lambda key: run_episode(act, params, key))(episode_keys)
