"""`reset` and `step` of the cloud-scheduling environment (Gymnax-style, auto-reset).

Each step, the jobs of this step (in `state.jobs`) are sent to the servers named by
`actions`, the queues serve one step of work, and the next step's jobs are drawn from the
key. At the horizon the day ends by truncation: backlog and clock are reset and the next
day's first jobs come from the same key.
"""

import jax
import jax.numpy as jnp

from dgpg_jax.tasks.cloud import arrivals
from dgpg_jax.tasks.cloud.dynamics import dispatch, serve
from dgpg_jax.tasks.cloud.observation import job_observation
from dgpg_jax.tasks.cloud.types import CloudParams, CloudState, service_rate
from dgpg_jax.validation import check


def _initial_state(key: jax.Array, params: CloudParams) -> CloudState:
    burst_key, jobs_key = jax.random.split(key)
    burst_left = arrivals.next_burst(burst_key, params, jnp.zeros((), jnp.int32))
    time = jnp.zeros((), jnp.int32)
    zeros = jnp.zeros((params.num_servers,), jnp.float32)
    return CloudState(backlog=zeros, recent_utilisation=zeros, burst_steps_left=burst_left, time=time,
                    jobs=arrivals.sample_jobs(jobs_key, params, time, burst_left > 0))


def reset(key: jax.Array, params: CloudParams) -> tuple[jax.Array, CloudState]:
    """Start a day with empty queues. Returns (obs (J, k, F), state)."""
    state = _initial_state(key, params)
    return job_observation(state, params), state


def step(key: jax.Array, state: CloudState, actions: jax.Array, params: CloudParams):
    """Dispatch this step's jobs to servers `actions` ((J,) int32 in [0, M), ignored on
    empty rows), serve one step, draw the next jobs from `key`. An action outside
    [0, M) rejects its job at the penalty (counted in `info["num_invalid"]`).

    Returns (obs, state, reward, done, info). `reward` is minus the summed response time
    (in mean job times) of this step's jobs over N, rejected jobs at the penalty. `done`
    is True at the horizon, which is a truncation: `info["truncated"]` is True and
    `info["terminated"]` always False. Actions of a shape other than (J,) raise ValueError
    when traced.
    """
    j = params.num_rows
    check("actions.shape", jnp.shape(actions), jnp.shape(actions) == (j,),
          f"(J,) = ({j},), one server index per job row")
    mu = service_rate(params)
    jobs = state.jobs
    scale = params.mean_job_steps
    buffer_work = params.buffer_time * mu * scale
    penalty_steps = params.rejection_penalty * scale
    out = dispatch(state.backlog, mu, buffer_work, penalty_steps, actions, jobs.size, jobs.valid)
    backlog, served = serve(state.backlog, out.arriving_work, mu)
    busy = jnp.minimum((state.backlog + out.arriving_work) / mu, 1.0)
    blend = jnp.minimum(1.0, 1.0 / (params.utilisation_average_time * scale))
    recent_utilisation = state.recent_utilisation + blend * (busy - state.recent_utilisation)
    served_backlog = backlog.sum()  # after service, before any drop or reset
    dropped_work = served_backlog if params.memoryless else jnp.zeros(())
    if params.memoryless:
        backlog = jnp.zeros_like(backlog)

    response_sum = out.response_time.sum() + jobs.num_overflow * penalty_steps
    reward = -response_sum / scale / params.num_agents
    time = state.time + 1
    truncated = time >= params.horizon
    time = jnp.where(truncated, 0, time)
    backlog = jnp.where(truncated, 0.0, backlog)
    recent_utilisation = jnp.where(truncated, 0.0, recent_utilisation)

    burst_key, jobs_key = jax.random.split(key)
    burst_left = arrivals.next_burst(burst_key, params, jnp.where(truncated, 0, state.burst_steps_left))
    next_jobs = arrivals.sample_jobs(jobs_key, params, time, burst_left > 0)
    new_state = CloudState(backlog=backlog, recent_utilisation=recent_utilisation, burst_steps_left=burst_left,
                         time=time, jobs=next_jobs)
    info = {
        "response_time": out.response_time,  # (J,) steps
        "accepted": out.accepted,  # (J,)
        "rejected": out.rejected,  # (J,), buffer full or invalid action; row overflow not included
        "num_arrived": jobs.valid.sum() + jobs.num_overflow,
        "num_rejected": out.rejected.sum() + jobs.num_overflow,
        "num_overflow": jobs.num_overflow,
        "num_invalid": out.invalid.sum(),  # jobs sent to a server index outside [0, M)
        "response_time_sum": response_sum,  # steps, overflow at the penalty
        "arrived_work": jnp.where(jobs.valid, jobs.size, 0.0).sum(),
        "rejected_work": jnp.where(out.rejected, jobs.size, 0.0).sum(),
        "served_work": served.sum(),
        "dropped_work": dropped_work,  # memoryless only
        "backlog_before": state.backlog.sum(),
        "backlog_after": served_backlog,  # after service, before the memoryless drop and the horizon reset
        "capacity_work": mu.sum(),
        "truncated": truncated,
        "terminated": jnp.zeros((), bool),
    }
    return job_observation(new_state, params), new_state, reward, truncated, info
