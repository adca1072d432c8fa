"""The arrival process: which agents receive a job, its size, and its candidate servers.

Everything here is a function of the key, the time and the params only, never of the
actions, so every policy can be evaluated on the same traces (common random numbers).
"""

import jax
import jax.numpy as jnp

from dgpg_jax.tasks.cloud.types import CloudParams, Jobs


def mean_arrival_probability(params: CloudParams) -> jax.Array:
    """Per-agent job probability p0 giving the target utilisation (mean job size is 1)."""
    return params.utilisation * params.capacity.sum() / (params.num_agents * params.mean_job_steps)


def arrival_probability(params: CloudParams, time: jax.Array, burst: jax.Array) -> jax.Array:
    """Per-agent job probability at step `time`: a daily sine (lowest at step 0), raised
    by `burst_factor` while a burst is on."""
    phase = 2 * jnp.pi * time / params.horizon
    p = mean_arrival_probability(params) * (1 - params.diurnal_amplitude * jnp.cos(phase))
    return p * jnp.where(burst, params.burst_factor, 1.0)


def expected_work_rate(params: CloudParams, time: jax.Array, burst: jax.Array) -> jax.Array:
    """Expected arriving work per step (all agents); the rate the reference split divides."""
    return params.num_agents * arrival_probability(params, time, burst)


def _raw_mean_size(params: CloudParams) -> jax.Array:
    """Mean of the unscaled bimodal size: lognormal(0, sigma) and a Pareto clipped at
    xm * clip. E[min(X, xm c)] = xm (1 + int_1^c y^-a dy) = xm (1 + (c^(1-a) - 1) / (1 - a)),
    written with xm factored out so that no power of xm is formed (xm^a overflows float32
    for large shapes); the a = 1 case is the limit xm (1 + log c)."""
    small = jnp.exp(params.small_sigma**2 / 2)
    a, clip = params.large_shape, params.large_clip
    near_one = jnp.abs(a - 1) < 1e-6
    safe_a = jnp.where(near_one, 2.0, a)
    tail = jnp.where(near_one, jnp.log(clip), (clip ** (1 - safe_a) - 1) / (1 - safe_a))
    large = params.large_scale * (1 + tail)
    return (1 - params.large_fraction) * small + params.large_fraction * large


def sample_proportional(key: jax.Array, weights: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Indices into `weights` (M,) drawn in proportion to them, by inverse CDF: O(log M) each.
    The `minimum` guards a uniform that rounds past the last cumulative weight."""
    cumulative = jnp.cumsum(weights) / weights.sum()
    u = jax.random.uniform(key, shape)
    return jnp.minimum(jnp.searchsorted(cumulative, u, side="right"), weights.shape[0] - 1).astype(jnp.int32)


def sample_sizes(key: jax.Array, params: CloudParams, shape: tuple[int, ...]) -> jax.Array:
    """Bimodal heavy-tailed job sizes with mean 1: mostly lognormal, some clipped Pareto."""
    mode_key, small_key, large_key = jax.random.split(key, 3)
    small = jnp.exp(params.small_sigma * jax.random.normal(small_key, shape))
    u = jax.random.uniform(large_key, shape, minval=1e-7, maxval=1.0)  # > 0: u^(-1/a) stays finite or inf
    large = jnp.minimum(params.large_scale * u ** (-1 / params.large_shape), params.large_scale * params.large_clip)
    is_large = jax.random.uniform(mode_key, shape) < params.large_fraction
    return jnp.where(is_large, large, small) / _raw_mean_size(params)


def sample_candidates(key: jax.Array, params: CloudParams, num_jobs: int) -> jax.Array:
    """(J, k) candidate servers per job, with replacement, by capacity or uniformly."""
    m, k = params.num_servers, params.num_candidates
    if params.all_candidates:
        return jnp.broadcast_to(jnp.arange(m, dtype=jnp.int32), (num_jobs, m))
    if params.capacity_weighted:
        return sample_proportional(key, params.capacity, (num_jobs, k))
    return jax.random.randint(key, (num_jobs, k), 0, m, dtype=jnp.int32)


def sample_jobs(key: jax.Array, params: CloudParams, time: jax.Array, burst: jax.Array) -> Jobs:
    """The jobs arriving at step `time`: at most one per agent, the first J in agent order."""
    arrival_key, size_key, candidate_key = jax.random.split(key, 3)
    n, j = params.num_agents, params.num_rows
    arrives = jax.random.uniform(arrival_key, (n,)) < arrival_probability(params, time, burst)
    (agent,) = jnp.nonzero(arrives, size=j, fill_value=n)
    valid = agent < n
    size = jnp.where(valid, sample_sizes(size_key, params, (j,)), 0.0)
    return Jobs(
        size=size,
        candidates=sample_candidates(candidate_key, params, j),
        valid=valid,
        num_overflow=(arrives.sum() - valid.sum()).astype(jnp.int32),
        agent=agent.astype(jnp.int32),
    )


def next_burst(key: jax.Array, params: CloudParams, steps_left: jax.Array) -> jax.Array:
    """Steps left in the burst after this one; a new burst starts at rate `burst_rate`."""
    start_probability = params.burst_rate / params.mean_job_steps
    starts = (steps_left <= 0) & (jax.random.uniform(key) < start_probability)
    length = jnp.ceil(params.burst_duration * params.mean_job_steps).astype(jnp.int32)
    return jnp.where(starts, length, jnp.maximum(steps_left - 1, 0))
