"""Episode metrics of cloud scheduling: what each step records, the per-episode
summary in mean job times, and pooling over episodes and seeds.

Response times are kept in a log-spaced histogram per episode, so that percentiles pool
over any set of episodes and seeds without keeping every job.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from dgpg_jax.tasks.cloud.types import MAX_RESPONSE_TIME, CloudParams, CloudState

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
    valid: jax.Array  # (J,) bool, row held a job
    num_arrived: jax.Array  # () int32, row overflow included
    num_overflow: jax.Array  # () int32, arrivals beyond the J rows (rejected at the penalty)
    num_rejected: jax.Array  # () int32, row overflow included
    response_time_sum: jax.Array  # () steps, row overflow at the penalty
    served_work: jax.Array  # ()
    capacity_work: jax.Array  # ()


@struct.dataclass
class EpisodeMetrics:
    """Per-episode metrics; every response time in mean job times. The counts and the
    histogram make metrics poolable over episodes and seeds (`pool`). Every arrived job
    counts, row overflow included, at the rejection penalty."""

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


def make_record(state: CloudState, reward: jax.Array, info: dict) -> StepRecord:
    """The record of the step that dispatched `state.jobs`."""
    return StepRecord(reward=reward, response_time=info["response_time"], valid=state.jobs.valid,
                      num_arrived=info["num_arrived"], num_overflow=info["num_overflow"],
                      num_rejected=info["num_rejected"], response_time_sum=info["response_time_sum"],
                      served_work=info["served_work"], capacity_work=info["capacity_work"])


def summarise(records: StepRecord, params: CloudParams) -> EpisodeMetrics:
    """Episode metrics from time-stacked records ((T, ...) leaves), in mean job times.
    Every arrived job counts, the row overflow at the rejection penalty."""
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
