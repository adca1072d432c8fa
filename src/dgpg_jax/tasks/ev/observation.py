"""What the agents and the centralised critic see.

Per decision row and candidate window (size independent of N): the window's start
relative to now and its length (fractions of the day), the mean committed total load over
the window (per agent, kW, the forecast base plus the EV windows committed so far), that
mean minus the lowest among the row's candidates, the mean deviation from the valley
target over the window; then per EV its slack (stay minus window length), its charging
power relative to the largest charger, the fraction of the day left and the time of day.
Loads use the base-load forecast: the noise is not known in advance.

For the centralised critic: per slot (T rows) the committed total and EV loads, the
valley target and the slot's position relative to now; and global features.
"""

import jax
import jax.numpy as jnp

from dgpg_jax.tasks.ev.arrivals import arrival_slot_probabilities
from dgpg_jax.tasks.ev.base_load import base_forecast
from dgpg_jax.tasks.ev.cost import per_agent_load
from dgpg_jax.tasks.ev.types import HOURS_PER_DAY, EVParams, EVState
from dgpg_jax.tasks.ev.windows import window_sums

NUM_CANDIDATE_FEATURES = 10
NUM_SLOT_FEATURES = 4
NUM_GLOBAL_FEATURES = 5


def time_features(params: EVParams, time: jax.Array) -> jax.Array:
    """(2,) sine and cosine of the clock hour at the start of slot `time`."""
    phase = 2 * jnp.pi * (params.day_start_hour + time * params.slot_hours) / HOURS_PER_DAY
    return jnp.stack([jnp.sin(phase), jnp.cos(phase)])


def day_left(params: EVParams, time: jax.Array) -> jax.Array:
    """() fraction of the day still to come, 1 at step 0 and 1/T at the last step."""
    return 1.0 - time / params.horizon


def committed_load(state: EVState, params: EVParams) -> jax.Array:
    """(T,) kW forecast base load plus the EV windows committed so far."""
    return base_forecast(params) + state.ev_load


def candidate_observation(state: EVState, params: EVParams) -> jax.Array:
    """(J, k, F) features of every candidate window of every row (zeros for empty rows)."""
    rows = state.arrivals
    j, k = rows.candidate_start.shape
    horizon = params.horizon
    length = jnp.maximum(rows.length, 1)[:, None]
    mean_load = window_sums(per_agent_load(committed_load(state, params), params), rows.candidate_start,
                            rows.length) / length
    deviation = per_agent_load(committed_load(state, params) - state.day.valley_load, params)
    mean_deviation = window_sums(deviation, rows.candidate_start, rows.length) / length
    stay = rows.departure - state.time
    per_candidate = jnp.stack([
        (rows.candidate_start - state.time) / horizon,
        jnp.broadcast_to(rows.length[:, None] / horizon, (j, k)),
        mean_load,
        mean_load - mean_load.min(axis=1, keepdims=True),
        mean_deviation,
    ], axis=-1)
    per_row = jnp.concatenate([
        ((stay - rows.length) / horizon)[:, None],
        (rows.power / params.power_levels.max())[:, None],
        jnp.broadcast_to(day_left(params, state.time), (j, 1)),
        jnp.broadcast_to(time_features(params, state.time), (j, 2)),
    ], axis=-1)
    obs = jnp.concatenate([per_candidate, jnp.broadcast_to(per_row[:, None, :], (j, k, 5))], axis=-1)
    return jnp.where(rows.valid[:, None, None], obs, 0.0)


def slot_observation(state: EVState, params: EVParams) -> tuple[jax.Array, jax.Array]:
    """Centralised-critic input: (T, 4) per-slot features (committed total and EV load per
    agent, valley target per agent, slot minus now over T) and (5,) global features (time
    of day, log(1 + arrivals this step over their expectation), fraction of the day left,
    EV energy committed so far over the day's expected demand N x energy_mean)."""
    slots = jnp.arange(params.horizon)
    per_slot = jnp.stack([
        per_agent_load(committed_load(state, params), params),
        per_agent_load(state.ev_load, params),
        per_agent_load(state.day.valley_load, params),
        (slots - state.time) / params.horizon,
    ], axis=-1)
    rows = state.arrivals
    expected = params.num_agents * arrival_slot_probabilities(params)[jnp.minimum(state.time, params.horizon - 1)]
    arrived = rows.valid.sum() + rows.num_overflow
    committed = state.ev_load.sum() * params.slot_hours / (params.num_agents * params.energy_mean)
    return per_slot, jnp.concatenate([time_features(params, state.time),
                                      jnp.log1p(arrived / jnp.maximum(expected, 1e-6))[None],
                                      day_left(params, state.time)[None], committed[None]])
