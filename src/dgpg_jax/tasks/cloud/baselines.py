"""Heuristic and analytical dispatch policies, all pure functions of one signature:

    policy(key, state, params) -> (J,) int32 server index per job row

They read the jobs of this step and the server aggregates from the state; jittable and
vmappable. Together they separate the cost of information (own k candidates vs all M
servers) from that of simultaneity (all agents at once vs in turn).
"""

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from dgpg_jax.tasks.cloud.arrivals import sample_proportional
from dgpg_jax.tasks.cloud.dynamics import finish_score
from dgpg_jax.tasks.cloud.observation import current_reference_share
from dgpg_jax.tasks.cloud.types import CloudParams, CloudState, service_rate

Policy = Callable[[jax.Array, CloudState, CloudParams], jax.Array]


def pick_candidate(candidates: jax.Array, index: jax.Array) -> jax.Array:
    """(J,) server of candidate column `index` (J,) of each job."""
    return jnp.take_along_axis(candidates, index[:, None], axis=1)[:, 0]


def _candidate_score(state: CloudState, params: CloudParams, beta: float = 0.0) -> jax.Array:
    """(J, k) finish score (W_b + (1 + beta) w) / mu_b of each candidate, in steps."""
    cand = state.jobs.candidates
    return finish_score(state.backlog[cand], state.jobs.size[:, None], service_rate(params)[cand], beta)


def random_policy(key, state, params):
    """Uniform over the job's own candidates."""
    index = jax.random.randint(key, (params.num_rows,), 0, params.num_candidates)
    return pick_candidate(state.jobs.candidates, index)


def capacity_policy(key, state, params):
    """Global split in proportion to capacity, ignoring the state."""
    return sample_proportional(key, params.capacity, (params.num_rows,))


def static_split_policy(key, state, params):
    """Global split in proportion to the reference split x~ of the expected rate."""
    share = current_reference_share(state, params)
    weights = share * service_rate(params)
    weights = jnp.where(weights.sum() > 0, weights, params.capacity)  # zero rate: fall back to capacity
    return sample_proportional(key, weights, (params.num_rows,))


def softmin_policy(key, state, params, temperature: float = 1.0):
    """Softmin-k: candidate b with probability proportional to exp(-finish_b / temperature),
    finish in mean job times."""
    logits = -_candidate_score(state, params) / (params.mean_job_steps * temperature)
    return pick_candidate(state.jobs.candidates, jax.random.categorical(key, logits, axis=1))


def power_of_d_policy(key, state, params, d: int = 2):
    """Power of d choices: d of the own candidates at random, the earlier finish wins."""
    index = jax.random.randint(key, (params.num_rows, d), 0, params.num_candidates)
    finish = jnp.take_along_axis(_candidate_score(state, params), index, axis=1)
    winner = jnp.take_along_axis(index, jnp.argmin(finish, axis=1)[:, None], axis=1)[:, 0]
    return pick_candidate(state.jobs.candidates, winner)


def sequential_greedy_policy(key, state, params, beta: float = 0.0, global_scope: bool = True):
    """Agents in turn (row order), each job to the lowest (W_b + (1 + beta) w) / mu_b given
    the jobs placed before it this step, over all servers or among its own candidates.

    beta = 0 is Best-Fit (earliest finish). beta < 0 is the congestion-aware greedy: it
    also charges a job for the delay it imposes on later jobs (beta = -1/2 is the `area`
    potential's marginal (W + w/2) w / mu divided by w).
    """
    mu = service_rate(params)
    jobs = state.jobs

    def place(load, job):
        size, candidates, valid = job
        servers = jnp.arange(params.num_servers) if global_scope else candidates
        score = finish_score(load[servers], size, mu[servers], beta)
        server = servers[jnp.argmin(score)]
        return load.at[server].add(jnp.where(valid, size, 0.0)), server

    _, servers = jax.lax.scan(place, state.backlog, (jobs.size, jobs.candidates, jobs.valid))
    return servers.astype(jnp.int32)


def simultaneous_greedy_policy(key, state, params, beta: float = 0.0):
    """All agents at once, each to the lowest (W_b + (1 + beta) w) / mu_b among its own
    candidates; beta = 0 is JSQ-k (join the candidate that finishes the job first)."""
    return pick_candidate(state.jobs.candidates, jnp.argmin(_candidate_score(state, params, beta), axis=1))


BASELINES: dict[str, Policy] = {
    "random": random_policy,
    "capacity": capacity_policy,
    "jsq": functools.partial(simultaneous_greedy_policy, beta=0.0),
    "softmin": softmin_policy,
    "power_of_d": power_of_d_policy,
    "bestfit_k": functools.partial(sequential_greedy_policy, beta=0.0, global_scope=False),
    "best_fit": functools.partial(sequential_greedy_policy, beta=0.0, global_scope=True),
    "static_split": static_split_policy,
    "greedy": functools.partial(sequential_greedy_policy, beta=-0.5, global_scope=True),
    "greedy_k": functools.partial(sequential_greedy_policy, beta=-0.5, global_scope=False),
    "greedy_k_simultaneous": functools.partial(simultaneous_greedy_policy, beta=-0.5),
}
GREEDY_POLICIES = ("greedy", "greedy_k", "greedy_k_simultaneous")


def get_policy(name: str, beta: float | None = None) -> Policy:
    """A policy by name; `beta` overrides the congestion-aware greedies' default -1/2."""
    if name not in BASELINES:
        raise ValueError(f"policy={name!r} is invalid: allowed one of {tuple(BASELINES)}")
    if beta is None or name not in GREEDY_POLICIES:
        return BASELINES[name]
    if not (-1.0 <= beta <= 0.0):
        raise ValueError(f"beta={beta!r} is invalid: allowed [-1, 0]")
    return functools.partial(BASELINES[name], beta=beta)
