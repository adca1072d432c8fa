"""Rolling out a policy for whole episodes on common random numbers, and episode metrics.

Every episode's traces (arrivals, sizes, candidates) come from `env_keys(episode_key)`,
and a policy's own randomness from a separate stream, so every policy, baseline or
learned, sees the same jobs in episode e of seed s.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from dgpg_jax.env.core import reset, step
from dgpg_jax.env.types import EnvParams, EnvState

Act = Callable[[jax.Array, EnvState, EnvParams], jax.Array]


@struct.dataclass
class StepRecord:
    """What one step contributes to the episode metrics."""

    reward: jax.Array  # ()
    response_time: jax.Array  # (J,) steps
    valid: jax.Array  # (J,) bool, slot held a job
    num_arrived: jax.Array  # () int32, slot overflow included
    num_rejected: jax.Array  # () int32, slot overflow included
    response_time_sum: jax.Array  # () steps, slot overflow at the penalty
    served_work: jax.Array  # ()
    capacity_work: jax.Array  # ()


@struct.dataclass
class EpisodeMetrics:
    """Per-episode summary; response times in steps unless named `_in_jobs`."""

    episode_return: jax.Array
    mean_response_time: jax.Array
    mean_response_time_in_jobs: jax.Array
    p95_response_time: jax.Array
    p99_response_time: jax.Array
    rejection_rate: jax.Array
    utilisation: jax.Array


def env_keys(episode_key: jax.Array, horizon: int) -> tuple[jax.Array, jax.Array]:
    """Reset key and (T,) step keys of one episode's environment stream."""
    reset_key, steps_key = jax.random.split(jax.random.fold_in(episode_key, 0))
    return reset_key, jax.random.split(steps_key, horizon)


def policy_keys(episode_key: jax.Array, horizon: int) -> jax.Array:
    """(T,) keys of one episode's policy stream, disjoint from the environment's."""
    return jax.random.split(jax.random.fold_in(episode_key, 1), horizon)


def make_record(state: EnvState, reward: jax.Array, info: dict) -> StepRecord:
    """The record of the step that dispatched `state.jobs`."""
    return StepRecord(reward=reward, response_time=info["response_time"], valid=state.jobs.valid,
                      num_arrived=info["num_arrived"], num_rejected=info["num_rejected"],
                      response_time_sum=info["response_time_sum"], served_work=info["served_work"],
                      capacity_work=info["capacity_work"])


def summarise(records: StepRecord, params: EnvParams) -> EpisodeMetrics:
    """Episode metrics from time-stacked records ((T, ...) leaves). Percentiles are over
    the materialised jobs (slot overflow, rare by construction, only in the mean)."""
    arrived = jnp.maximum(records.num_arrived.sum(), 1)
    mean = records.response_time_sum.sum() / arrived
    times = jnp.where(records.valid, records.response_time, jnp.nan).reshape(-1)
    p95, p99 = jnp.nanpercentile(times, jnp.array([95.0, 99.0]))
    return EpisodeMetrics(
        episode_return=records.reward.sum(),
        mean_response_time=mean,
        mean_response_time_in_jobs=mean / params.mean_job_steps,
        p95_response_time=p95,
        p99_response_time=p99,
        rejection_rate=records.num_rejected.sum() / arrived,
        utilisation=records.served_work.sum() / records.capacity_work.sum(),
    )


def run_episode(act: Act, params: EnvParams, episode_key: jax.Array) -> EpisodeMetrics:
    """One day from empty queues under `act(key, state, params) -> servers`."""
    reset_key, step_keys = env_keys(episode_key, params.horizon)
    _, state = reset(reset_key, params)

    def one_step(state, keys):
        env_key, act_key = keys
        actions = act(act_key, state, params)
        _, next_state, reward, _, info = step(env_key, state, actions, params)
        return next_state, make_record(state, reward, info)

    _, records = jax.lax.scan(one_step, state, (step_keys, policy_keys(episode_key, params.horizon)))
    return summarise(records, params)


def seed_keys(seed: int, num_seeds: int) -> jax.Array:
    """(S,) run keys of seeds 0..S-1 of master seed `seed`."""
    return jax.random.split(jax.random.key(seed), num_seeds)


def episode_key(run_key: jax.Array, episode: jax.Array) -> jax.Array:
    """Key of episode `episode` of a run (the same for every policy)."""
    return jax.random.fold_in(run_key, episode)


def evaluate(act: Act, params: EnvParams, run_keys: jax.Array, num_episodes: int,
             first_episode: int = 0) -> EpisodeMetrics:
    """Metrics of shape [S, E] for `act` on episodes first..first+E-1 of each run key (S,)."""

    def one_run(run_key):
        episodes = first_episode + jnp.arange(num_episodes)
        return jax.lax.map(lambda e: run_episode(act, params, episode_key(run_key, e)), episodes)

    return jax.vmap(one_run)(run_keys)


def episodes_to_converge(ratio: np.ndarray, window: int = 3, tolerance: float = 0.05) -> np.ndarray:
    """Episodes a run needs to converge, per run: the first episode (1-based) after which the
    `window`-episode moving average of the ratio to Best-Fit (on the same traces) stays
    within `tolerance` (relative) of its final value. The raw response time is too noisy
    under heavy-tailed sizes, hence the ratio and the average. A run that never settles
    returns its length; shorter windows are used for the first episodes.

    Args:
      ratio: [..., E] ratio to Best-Fit per episode.
    Returns:
      [...] int, in 1..E.
    """
    ratio = np.asarray(ratio, dtype=np.float64)
    cumulative = np.cumsum(ratio, axis=-1)
    shifted = np.concatenate([np.zeros_like(cumulative[..., :window]), cumulative[..., :-window]], axis=-1)
    counts = np.minimum(np.arange(1, ratio.shape[-1] + 1), window)
    moving = (cumulative - shifted[..., : ratio.shape[-1]]) / counts
    final = moving[..., -1:]
    outside = np.abs(moving - final) > tolerance * np.abs(final)
    # last episode (0-based) whose average is outside the band; the run has converged from the next one
    last_outside = np.where(outside.any(axis=-1), ratio.shape[-1] - 1 - np.argmax(outside[..., ::-1], axis=-1), -1)
    return last_outside + 2  # the final episode is always inside, so this is at most E
