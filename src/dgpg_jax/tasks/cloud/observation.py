"""What the agents and the centralised critic see.

Per job and candidate (size independent of N): log-scaled expected wait, own service
time, finish time, finish minus the best finish among the job's candidates (all in mean
job times), log relative capacity, recent utilisation, reference share; then the job's
log size and the time of day. With in-turn decisions (`CloudConfig.decisions`) a job's
queues include the work sent by the earlier jobs of its step (`decide_in_turn`); with
tentative ones, the other jobs' first picks (`decide_tentative`). Per server, for the
centralised critic: log-scaled wait, log capacity, recent utilisation, reference share;
and global features, among them the fraction of the day left, which the critics need
because the day ends by truncation (the time of day alone is periodic: its last step
looks like its first).
"""

import jax
import jax.numpy as jnp

from dgpg_jax.tasks.cloud.analytical import reference_share
from dgpg_jax.tasks.cloud.arrivals import expected_work_rate
from dgpg_jax.tasks.cloud.dynamics import server_totals
from dgpg_jax.tasks.cloud.types import CloudParams, CloudState, service_rate

NUM_JOB_FEATURES = 10
NUM_SERVER_FEATURES = 4
NUM_GLOBAL_FEATURES = 5


def time_features(params: CloudParams, time: jax.Array) -> jax.Array:
    """(2,) sine and cosine of the time of day."""
    phase = 2 * jnp.pi * time / params.horizon
    return jnp.stack([jnp.sin(phase), jnp.cos(phase)])


def day_left(params: CloudParams, time: jax.Array) -> jax.Array:
    """() fraction of the day still to come, 1 at step 0 and 1/T at the last step."""
    return 1.0 - time / params.horizon


def current_reference_share(state: CloudState, params: CloudParams) -> jax.Array:
    """(M,) reference split of the expected work rate at this step, as utilisations."""
    rate = expected_work_rate(params, state.time, state.burst_steps_left > 0)
    return reference_share(service_rate(params), rate)


def _candidate_features(state: CloudState, params: CloudParams, share: jax.Array, size: jax.Array,
                        candidates: jax.Array, valid: jax.Array, queued: jax.Array) -> jax.Array:
    """(..., k, F) features of jobs of `size` (...) at `candidates` (..., k) holding `queued`
    work (..., k); `share` (M,) is the step's reference share."""
    mu = service_rate(params)
    scale = params.mean_job_steps
    cand_mu = mu[candidates]
    wait = queued / cand_mu / scale
    service = size[..., None] / cand_mu / scale
    finish = wait + service
    regret = finish - finish.min(axis=-1, keepdims=True)
    per_candidate = jnp.stack([
        jnp.log1p(wait), jnp.log1p(service), jnp.log1p(finish), jnp.log1p(regret),
        jnp.log(params.capacity[candidates]), state.recent_utilisation[candidates], share[candidates],
    ], axis=-1)
    per_job = jnp.concatenate([jnp.log(jnp.maximum(size, 1e-6))[..., None],
                               jnp.broadcast_to(time_features(params, state.time), size.shape + (2,))], axis=-1)
    obs = jnp.concatenate([per_candidate, jnp.broadcast_to(per_job[..., None, :], per_candidate.shape[:-1] + (3,))],
                          axis=-1)
    return jnp.where(valid[..., None, None], obs, 0.0)


def job_observation(state: CloudState, params: CloudParams) -> jax.Array:
    """(J, k, F) features of every candidate of every job of this step, on the step-start
    queues (zeros for empty rows). With in-turn decisions it is what the first job sees."""
    jobs = state.jobs
    return _candidate_features(state, params, current_reference_share(state, params), jobs.size, jobs.candidates,
                               jobs.valid, state.backlog[jobs.candidates])


def decide_in_turn(state: CloudState, params: CloudParams, choose, keys: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The step's jobs decide in agent (row) order, a `lax.scan` over the J rows: each
    job's features read the queues with the work of the earlier jobs of this step added,
    then `choose(key, obs (k, F)) -> ()` int32 picks its candidate. `keys` is (J,).

    Returns (obs (J, k, F), candidate index (J,) int32). The loads are accumulated in the
    same order as `baselines.sequential_greedy_policy`, so a `choose` scoring the
    greedy's criterion from the features reproduces it.
    """
    jobs = state.jobs
    share = current_reference_share(state, params)

    def row(load, x):
        size, candidates, valid, key = x
        obs = _candidate_features(state, params, share, size, candidates, valid, load[candidates])
        choice = jnp.asarray(choose(key, obs), jnp.int32)
        return load.at[candidates[choice]].add(jnp.where(valid, size, 0.0)), (obs, choice)

    _, (obs, choice) = jax.lax.scan(row, state.backlog, (jobs.size, jobs.candidates, jobs.valid, keys))
    return obs, choice


def decide_tentative(state: CloudState, params: CloudParams, choose, keys: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One round of tentative choices, then the commitment: every job picks a candidate on
    the step-start queues (`choose(key, obs (k, F))`, vmapped over jobs), then again on
    the queues with the other jobs' first picks added; the second pick is the decision.
    `keys` is (J,). Returns (obs (J, k, F) of the second pick, candidate index (J,))."""
    jobs = state.jobs
    share = current_reference_share(state, params)
    first_keys, second_keys = jnp.moveaxis(jax.vmap(jax.random.split)(keys), 1, 0)
    obs = _candidate_features(state, params, share, jobs.size, jobs.candidates, jobs.valid,
                              state.backlog[jobs.candidates])
    first = jnp.take_along_axis(jobs.candidates, jax.vmap(choose)(first_keys, obs)[:, None], axis=1)[:, 0]
    own = jnp.where(jobs.valid[:, None] & (jobs.candidates == first[:, None]), jobs.size[:, None], 0.0)
    others = server_totals(first, jobs.size, jobs.valid, params.num_servers)[jobs.candidates] - own
    obs = _candidate_features(state, params, share, jobs.size, jobs.candidates, jobs.valid,
                              state.backlog[jobs.candidates] + others)
    return obs, jnp.asarray(jax.vmap(choose)(second_keys, obs), jnp.int32)


DECIDE = {"in_turn": decide_in_turn, "tentative": decide_tentative}
"""`Task.decide` of each `CloudConfig.decisions` that is not simultaneous."""


def server_observation(state: CloudState, params: CloudParams) -> tuple[jax.Array, jax.Array]:
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
