"""Rolling out a policy for whole episodes on common random numbers, and episode metrics.

Every episode's traces (arrivals, sizes, candidates) come from `env_keys(episode_key)`,
and a policy's own randomness from a separate stream, so every policy, baseline or
learned, sees the same jobs in episode e of seed s.
"""

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from dgpg_jax import memory
from dgpg_jax.baselines import BASELINES
from dgpg_jax.env.core import reset, step
from dgpg_jax.env.types import MAX_RESPONSE_TIME, EnvParams, EnvState

Act = Callable[[jax.Array, EnvState, EnvParams], jax.Array]


# Response times are binned in a log-spaced histogram (in mean job times) so that
# percentiles can be pooled over any set of episodes and seeds without keeping every job:
# 64 bins per decade from 1e-4 to MAX_RESPONSE_TIME = 1e4 (each bin spans a factor
# 10^(1/64) = 1.037; values inside a bin are placed geometrically). No response time
# exceeds the top edge (buffer_time and rejection_penalty are validated below it); a job
# faster than 1e-4 mean job times falls in the first bin.
HISTOGRAM_BOTTOM = 1e-4
HISTOGRAM_TOP = MAX_RESPONSE_TIME
BINS_PER_DECADE = 64
NUM_BINS = round(math.log10(HISTOGRAM_TOP / HISTOGRAM_BOTTOM) * BINS_PER_DECADE)
PERCENTILES = (95.0, 99.0)


@struct.dataclass
class StepRecord:
    """What one step contributes to the episode metrics."""

    reward: jax.Array  # ()
    response_time: jax.Array  # (J,) steps
    valid: jax.Array  # (J,) bool, slot held a job
    num_arrived: jax.Array  # () int32, slot overflow included
    num_overflow: jax.Array  # () int32, arrivals beyond the J slots (rejected at the penalty)
    num_rejected: jax.Array  # () int32, slot overflow included
    response_time_sum: jax.Array  # () steps, slot overflow at the penalty
    served_work: jax.Array  # ()
    capacity_work: jax.Array  # ()


@struct.dataclass
class EpisodeMetrics:
    """Per-episode metrics; every response time in mean job times. The counts and the
    histogram make metrics poolable over episodes and seeds (`pool`). Every arrived job
    counts, slot overflow included, at the rejection penalty."""

    episode_return: jax.Array  # ()
    num_jobs: jax.Array  # () int32, jobs arrived
    num_rejected: jax.Array  # () int32
    response_time_sum: jax.Array  # () float32
    mean_response_time: jax.Array  # ()
    p95_response_time: jax.Array  # ()
    p99_response_time: jax.Array  # ()
    rejection_rate: jax.Array  # ()
    utilisation: jax.Array  # () served work / capacity
    response_time_histogram: jax.Array  # (NUM_BINS,) int32 jobs per log-spaced bin


def histogram_edges() -> np.ndarray:
    """(NUM_BINS + 1,) bin edges of the response-time histogram, in mean job times."""
    return HISTOGRAM_BOTTOM * 10.0 ** (np.arange(NUM_BINS + 1) / BINS_PER_DECADE)


def response_time_histogram(times: jax.Array, counts: jax.Array) -> jax.Array:
    """(NUM_BINS,) int32 histogram of `times` (any shape, mean job times), each entry
    counted `counts` times (same shape; 0 leaves it out)."""
    position = (jnp.log10(jnp.maximum(times, HISTOGRAM_BOTTOM)) - math.log10(HISTOGRAM_BOTTOM)) * BINS_PER_DECADE
    index = jnp.clip(jnp.floor(position).astype(jnp.int32), 0, NUM_BINS - 1)
    return jax.ops.segment_sum(counts.reshape(-1).astype(jnp.int32), index.reshape(-1), num_segments=NUM_BINS)


def histogram_percentiles(histogram, q=PERCENTILES):
    """Percentiles `q` (in [0, 100]) of the jobs in `histogram` (..., NUM_BINS): the value
    below which q% of the jobs lie, placed geometrically inside its bin. Works on jax and
    numpy arrays; an empty histogram gives 0."""
    xp = jnp if isinstance(histogram, jax.Array) else np
    histogram = histogram.astype(xp.float32 if xp is jnp else np.float64)
    cumulative = xp.cumsum(histogram, axis=-1)
    total = cumulative[..., -1:]
    out = []
    for quantile in q:
        target = total * (quantile / 100.0)
        index = xp.minimum((cumulative < target).sum(axis=-1, keepdims=True), NUM_BINS - 1)
        before = xp.take_along_axis(cumulative, index, axis=-1) - xp.take_along_axis(histogram, index, axis=-1)
        inside = xp.take_along_axis(histogram, index, axis=-1)
        fraction = xp.clip((target - before) / xp.maximum(inside, 1), 0.0, 1.0)
        value = HISTOGRAM_BOTTOM * 10.0 ** ((index + fraction) / BINS_PER_DECADE)
        out.append(xp.where(total > 0, value, 0.0)[..., 0])
    return out


def pool(metrics: EpisodeMetrics) -> dict[str, float]:
    """Metrics of all jobs of all episodes in `metrics` (any leading shape) taken together:
    the mean response time is total response time over total jobs (a ratio of sums, not a
    mean of episode means), the percentiles are those of the pooled jobs, and the
    rejection rate is rejected over arrived. Host-side (numpy, float64)."""
    jobs = float(np.sum(np.asarray(metrics.num_jobs, np.float64)))
    histogram = np.asarray(metrics.response_time_histogram, np.float64).reshape(-1, NUM_BINS).sum(axis=0)
    p95, p99 = histogram_percentiles(histogram)
    return {
        "num_jobs": jobs,
        "mean_response_time": float(np.sum(np.asarray(metrics.response_time_sum, np.float64))) / max(jobs, 1.0),
        "p95_response_time": float(p95),
        "p99_response_time": float(p99),
        "rejection_rate": float(np.sum(np.asarray(metrics.num_rejected, np.float64))) / max(jobs, 1.0),
        "utilisation": float(np.mean(np.asarray(metrics.utilisation, np.float64))),
        "mean_return": float(np.mean(np.asarray(metrics.episode_return, np.float64))),
    }


def ratio_of_means(metrics: EpisodeMetrics, reference: EpisodeMetrics) -> float:
    """Pooled mean response time of `metrics` over that of `reference` on the same episodes."""
    return pool(metrics)["mean_response_time"] / pool(reference)["mean_response_time"]


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
                      num_arrived=info["num_arrived"], num_overflow=info["num_overflow"],
                      num_rejected=info["num_rejected"], response_time_sum=info["response_time_sum"],
                      served_work=info["served_work"], capacity_work=info["capacity_work"])


def summarise(records: StepRecord, params: EnvParams) -> EpisodeMetrics:
    """Episode metrics from time-stacked records ((T, ...) leaves), in mean job times.
    Every arrived job counts, the slot overflow at the rejection penalty."""
    scale = params.mean_job_steps
    arrived = records.num_arrived.sum()
    response_sum = records.response_time_sum.sum() / scale
    histogram = response_time_histogram(records.response_time / scale, records.valid)
    overflow = records.num_overflow.sum()
    histogram = histogram + response_time_histogram(params.rejection_penalty, overflow)
    p95, p99 = histogram_percentiles(histogram)
    return EpisodeMetrics(
        episode_return=records.reward.sum(),
        num_jobs=arrived.astype(jnp.int32),
        num_rejected=records.num_rejected.sum().astype(jnp.int32),
        response_time_sum=response_sum,
        mean_response_time=response_sum / jnp.maximum(arrived, 1),
        p95_response_time=p95,
        p99_response_time=p99,
        rejection_rate=records.num_rejected.sum() / jnp.maximum(arrived, 1),
        utilisation=records.served_work.sum() / records.capacity_work.sum(),
        response_time_histogram=histogram,
    )


def scan_episode(reset_fn: Callable, step_fn: Callable, record: Callable, act: Callable, params,
                 episode_key: jax.Array):
    """One day of any Gymnax-style system under `act(key, state, params) -> actions`, on
    the episode's environment and policy streams (`env_keys`, `policy_keys`). Returns the
    day's first state and the (T,)-stacked `record(state, actions, reward, info)` of every
    step; `params.horizon` is the day's length."""
    reset_key, step_keys = env_keys(episode_key, params.horizon)
    _, state = reset_fn(reset_key, params)

    def one_step(state, keys):
        env_key, act_key = keys
        actions = act(act_key, state, params)
        _, next_state, reward, _, info = step_fn(env_key, state, actions, params)
        return next_state, record(state, actions, reward, info)

    return state, jax.lax.scan(one_step, state, (step_keys, policy_keys(episode_key, params.horizon)))[1]


def run_episode(act: Act, params: EnvParams, episode_key: jax.Array) -> EpisodeMetrics:
    """One day from empty queues under `act(key, state, params) -> servers`."""
    _, records = scan_episode(reset, step, lambda state, _, reward, info: make_record(state, reward, info), act,
                              params, episode_key)
    return summarise(records, params)


def seed_keys(seed: int, num_seeds: int) -> jax.Array:
    """(S,) run keys of seeds 0..S-1 of master seed `seed`."""
    return jax.random.split(jax.random.key(seed), num_seeds)


def episode_key(run_key: jax.Array, episode: jax.Array) -> jax.Array:
    """Key of episode `episode` of a run (the same for every policy)."""
    return jax.random.fold_in(run_key, episode)


def evaluate(act: Act, params: EnvParams, run_keys: jax.Array, num_episodes: int,
             first_episode: int = 0, seeds_per_batch: int | None = None) -> EpisodeMetrics:
    """Metrics of shape [S, E] for `act` on episodes first..first+E-1 of each run key (S,).
    Seeds run `seeds_per_batch` at a time (a `lax.map` over batches of a `vmap`), all at
    once by default; the results do not depend on it (up to float32 rounding)."""

    def one_run(run_key):
        episodes = first_episode + jnp.arange(num_episodes)
        return jax.lax.map(lambda e: run_episode(act, params, episode_key(run_key, e)), episodes)

    if seeds_per_batch is None or seeds_per_batch >= run_keys.shape[0]:
        return jax.vmap(one_run)(run_keys)
    return jax.lax.map(one_run, run_keys, batch_size=seeds_per_batch)


def evaluate_policies(policies: list[tuple[str, Act]], params: EnvParams, run_keys: jax.Array, num_episodes: int,
                      first_episode: int = 0) -> list[dict]:
    """One row per (name, act) of metrics pooled over the seeds and episodes (`pool`), all
    on the same traces, with `ratio_to_best_fit`: the pooled mean over Best-Fit's on those
    traces (Best-Fit is evaluated too when it is not in the list).

    All policies run in one compiled program: a `lax.map` over the policy index whose
    body picks the policy with `lax.switch` (a real branch, since the index is not
    vmapped), so the environment and the episode loop are compiled once, not per policy."""
    names = [name for name, _ in policies]
    acts = [act for _, act in policies]
    if "best_fit" not in names:
        acts.append(BASELINES["best_fit"])

    def program(seeds_per_batch):
        def one_policy(index):
            def act(key, state, env_params):
                return jax.lax.switch(index, acts, key, state, env_params)
            return evaluate(act, params, run_keys, num_episodes, first_episode, seeds_per_batch)

        return jax.jit(lambda: jax.lax.map(one_policy, jnp.arange(len(acts)))).lower().compile()

    # Too many seeds for the free memory: the same program over batches of seeds that fit;
    # what does not fit even one seed at a time is refused.
    compiled, seeds = program(None), int(run_keys.shape[0])
    if seeds > 1 and memory.program_bytes(compiled) > memory.FRACTION * memory.available_bytes():
        compiled = program(max(1, memory.seeds_that_fit(memory.program_bytes(compiled) / seeds)))
    memory.check_fits(compiled, f"evaluating {seeds} seeds at N={params.num_agents}", "fewer --num-agents")
    everything = compiled()
    metrics = [jax.tree.map(lambda x, i=i: np.asarray(x[i]), everything) for i in range(len(acts))]
    best_fit = metrics[names.index("best_fit")] if "best_fit" in names else metrics[-1]
    best_fit_mean = pool(best_fit)["mean_response_time"]
    rows = []
    for name, m in zip(names, metrics):
        pooled = pool(m)
        rows.append({"policy": name, "num_agents": params.num_agents, "num_servers": params.num_servers,
                     "episodes": num_episodes, "seeds": int(run_keys.shape[0]), **pooled,
                     "ratio_to_best_fit": pooled["mean_response_time"] / best_fit_mean})
    return rows


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
