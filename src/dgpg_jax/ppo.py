"""The PPO core shared by IPPO, MAPPO and DG-PG: GAE, the clipped surrogate, a running
normaliser for value targets, masked means. Pure functions of arrays."""

from typing import NamedTuple

import jax
import jax.numpy as jnp


def gae(rewards: jax.Array, values: jax.Array, next_values: jax.Array, trace_cut: jax.Array,
        gamma: float, lam: float) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation over one time-major chunk.

    delta_t = r_t + gamma * next_values_t - values_t and
    A_t = delta_t + gamma * lam * (1 - trace_cut_t) * A_{t+1}.

    Truncation is handled by the caller on purpose: `next_values_t` is the value the step
    bootstraps from (the critic's value of the next state, or what the caller chooses at a
    time limit) and `trace_cut_t` stops the lambda-trace at an episode boundary.

    Args:
      rewards, values, next_values: (T,) float32; trace_cut: (T,) bool.
    Returns:
      advantages (T,) and value targets advantages + values (T,).
    """
    deltas = rewards + gamma * next_values - values
    decay = gamma * lam * (1.0 - trace_cut.astype(deltas.dtype))

    def backward(carry, x):
        delta, d = x
        advantage = delta + d * carry
        return advantage, advantage

    _, advantages = jax.lax.scan(backward, jnp.zeros_like(deltas[0]), (deltas, decay), reverse=True)
    return advantages, advantages + values


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of x over the entries where mask is True (0 if none)."""
    return jnp.where(mask, x, 0.0).sum() / jnp.maximum(mask.sum(), 1)


def clipped_surrogate(log_prob: jax.Array, old_log_prob: jax.Array, advantage: jax.Array, mask: jax.Array,
                      clip: float) -> jax.Array:
    """PPO's clipped policy loss (to minimise), averaged over the masked jobs."""
    ratio = jnp.exp(log_prob - old_log_prob)
    unclipped = ratio * advantage
    clipped = jnp.clip(ratio, 1 - clip, 1 + clip) * advantage
    return -masked_mean(jnp.minimum(unclipped, clipped), mask)


class RunningNorm(NamedTuple):
    """Running mean and variance of a stream of values (value targets)."""

    mean: jax.Array
    var: jax.Array
    count: jax.Array


def running_norm_init() -> RunningNorm:
    return RunningNorm(mean=jnp.zeros(()), var=jnp.ones(()), count=jnp.zeros(()))


def running_norm_update(state: RunningNorm, x: jax.Array, mask: jax.Array) -> RunningNorm:
    """Merge the masked entries of x into the running moments (parallel Welford)."""
    n = mask.sum().astype(jnp.float32)
    batch_mean = masked_mean(x, mask)
    batch_var = masked_mean((x - batch_mean) ** 2, mask)
    total = state.count + n
    weight = n / jnp.maximum(total, 1.0)
    delta = batch_mean - state.mean
    mean = state.mean + weight * delta
    var = (state.count * state.var + n * batch_var + delta**2 * state.count * weight) / jnp.maximum(total, 1.0)
    first = state.count == 0
    return RunningNorm(mean=jnp.where(first, batch_mean, mean), var=jnp.where(first, batch_var, var), count=total)


def standardise(state: RunningNorm, x: jax.Array) -> jax.Array:
    return (x - state.mean) / jnp.sqrt(state.var + 1e-8)


def unstandardise(state: RunningNorm, x: jax.Array) -> jax.Array:
    return x * jnp.sqrt(state.var + 1e-8) + state.mean
