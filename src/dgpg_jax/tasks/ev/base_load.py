"""The non-EV (household) load: a diurnal forecast and its realisation with noise.

The forecast has two harmonics: a daily one peaking in the evening and a half-day one
(a morning and an evening bump), so it has an evening peak near 19:00 and a night valley
near 03:00-04:00 at the defaults; its mean over the day is exactly `base_load_per_agent`
per agent. The realised load multiplies each slot by an i.i.d. factor max(0, 1 + s Z),
so it is never negative.
"""

import jax
import jax.numpy as jnp

from dgpg_jax.tasks.ev.types import HOURS_PER_DAY, EVParams


def slot_clock_hours(params: EVParams) -> jax.Array:
    """(T,) clock hour of the middle of each slot."""
    t = jnp.arange(params.horizon, dtype=jnp.float32)
    return (params.day_start_hour + (t + 0.5) * params.slot_hours) % HOURS_PER_DAY


def base_shape(params: EVParams) -> jax.Array:
    """(T,) base load relative to its daily mean, > 0."""
    hours = slot_clock_hours(params)
    daily = jnp.cos(2 * jnp.pi * (hours - params.base_peak_hour) / HOURS_PER_DAY)
    half_day = jnp.cos(4 * jnp.pi * (hours - params.base_second_peak_hour) / HOURS_PER_DAY)
    return 1 + params.base_amplitude * daily + params.base_second_amplitude * half_day


def base_forecast(params: EVParams) -> jax.Array:
    """(T,) expected non-EV load of all N agents, kW. What agents and guidance see."""
    return params.num_agents * params.base_load_per_agent * base_shape(params)


def sample_base_load(key: jax.Array, params: EVParams) -> jax.Array:
    """(T,) realised non-EV load, kW: the forecast times max(0, 1 + base_noise Z_t)."""
    noise = jax.random.normal(key, (params.horizon,))
    return base_forecast(params) * jnp.maximum(0.0, 1 + params.base_noise * noise)
