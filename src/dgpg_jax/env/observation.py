"""What the agents and the centralised critic see.

Per job and candidate (size independent of N): log-scaled expected wait, own service
time, finish time, finish minus the best finish among the job's candidates (all in mean
job times), log relative capacity, recent utilisation, reference share; then the job's
log size and the time of day. Per server, for the centralised critic: log-scaled wait,
log capacity, recent utilisation, reference share; and global features, among them the
fraction of the day left, which the critics need because the day ends by truncation
(the time of day alone is periodic: its last step looks like its first).
"""

import jax
import jax.numpy as jnp

from dgpg_jax.analytical import reference_share
from dgpg_jax.env.arrivals import expected_work_rate
from dgpg_jax.env.types import EnvParams, EnvState, service_rate

NUM_JOB_FEATURES = 10
NUM_SERVER_FEATURES = 4
NUM_GLOBAL_FEATURES = 5


def time_features(params: EnvParams, time: jax.Array) -> jax.Array:
    """(2,) sine and cosine of the time of day."""
    phase = 2 * jnp.pi * time / params.horizon
    return jnp.stack([jnp.sin(phase), jnp.cos(phase)])


def day_left(params: EnvParams, time: jax.Array) -> jax.Array:
    """() fraction of the day still to come, 1 at step 0 and 1/T at the last step."""
    return 1.0 - time / params.horizon


def current_reference_share(state: EnvState, params: EnvParams) -> jax.Array:
    """(M,) reference split of the expected work rate at this step, as utilisations."""
    rate = expected_work_rate(params, state.time, state.burst_steps_left > 0)
    return reference_share(service_rate(params), rate)


def job_observation(state: EnvState, params: EnvParams) -> jax.Array:
    """(J, k, F) features of every candidate of every job of this step (zeros for empty slots)."""
    mu = service_rate(params)
    jobs = state.jobs
    scale = params.mean_job_steps
    cand_mu = mu[jobs.candidates]  # (J, k)
    wait = state.backlog[jobs.candidates] / cand_mu / scale
    service = jobs.size[:, None] / cand_mu / scale
    finish = wait + service
    regret = finish - finish.min(axis=1, keepdims=True)
    share = current_reference_share(state, params)
    j, k = jobs.candidates.shape
    per_candidate = jnp.stack([
        jnp.log1p(wait), jnp.log1p(service), jnp.log1p(finish), jnp.log1p(regret),
        jnp.log(params.capacity[jobs.candidates]), state.recent_utilisation[jobs.candidates],
        share[jobs.candidates],
    ], axis=-1)
    per_job = jnp.concatenate([jnp.log(jnp.maximum(jobs.size, 1e-6))[:, None],
                               jnp.broadcast_to(time_features(params, state.time), (j, 2))], axis=-1)
    obs = jnp.concatenate([per_candidate, jnp.broadcast_to(per_job[:, None, :], (j, k, 3))], axis=-1)
    return jnp.where(jobs.valid[:, None, None], obs, 0.0)


def server_observation(state: EnvState, params: EnvParams) -> tuple[jax.Array, jax.Array]:
    """Centralised-critic input: (M, 4) per-server features and (5,) global features
    (time of day, jobs and work arriving this step relative to the expected, fraction of
    the day left)."""
    mu = service_rate(params)
    wait = state.backlog / mu / params.mean_job_steps
    per_server = jnp.stack([jnp.log1p(wait), jnp.log(params.capacity), state.recent_utilisation,
                            current_reference_share(state, params)], axis=-1)
    expected = expected_work_rate(params, state.time, state.burst_steps_left > 0)
    jobs = state.jobs
    work = jnp.where(jobs.valid, jobs.size, 0.0).sum()
    arriving = jnp.stack([jobs.valid.sum() + jobs.num_overflow, work]) / jnp.maximum(expected, 1e-6)
    return per_server, jnp.concatenate([time_features(params, state.time), jnp.log1p(arriving),
                                        day_left(params, state.time)[None]])
