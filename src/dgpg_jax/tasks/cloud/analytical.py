"""The analytical model: delay-optimal static split of a work rate over servers, and the
water level that equalises finish times for one step's work.

Both are pure, jittable, vmappable and differentiable in the rate / work; O(M log M).
"""

import jax
import jax.numpy as jnp
import numpy as np


def check_inputs(**arrays) -> None:
    """Raise ValueError for an empty fleet, a non-positive service rate, or a negative or
    NaN rate / backlog / work. Runs on concrete values only: under jit it is a no-op, so
    call the functions once eagerly (or validate upstream) to get the message."""
    for name, value in arrays.items():
        if isinstance(value, jax.core.Tracer):
            continue
        x = np.asarray(value, dtype=np.float64)
        if name == "service_rate":
            if x.ndim != 1 or x.size == 0:
                raise ValueError(f"service_rate has shape {x.shape}: allowed a non-empty 1-d array (M,)")
            if not np.all(np.isfinite(x) & (x > 0)):
                raise ValueError(f"service_rate={x.tolist()!r} is invalid: allowed finite values > 0")
        elif not np.all(np.isfinite(x) & (x >= 0)):
            raise ValueError(f"{name}={x.tolist()!r} is invalid: allowed finite values >= 0")


def _leading_true(mask: jax.Array) -> jax.Array:
    """Length of the run of True at the start of a 1-d boolean array."""
    return jnp.cumprod(mask.astype(jnp.int32)).sum()


def reference_split(service_rate: jax.Array, rate: jax.Array) -> jax.Array:
    """Delay-optimal split of the work rate `rate` over servers of rates `service_rate`.

    Minimises sum_j x_j / (mu_j - x_j) (M/M/1 mean number in system) subject to
    sum_j x_j = rate and 0 <= x_j < mu_j. The solution is the square-root rule with water
    filling: x_j = mu_j - sqrt(mu_j) * nu over the active set (the fastest servers with
    sqrt(mu_j) > nu), zero elsewhere, nu = (sum_A mu - rate) / sum_A sqrt(mu).

    A zero rate gives zeros. At or above total capacity there is no finite optimum: the
    answer is saturation, x = mu (every server full), never NaN.

    Args:
      service_rate: (M,) positive work per step of each server.
      rate: () arriving work per step.
    Returns:
      (M,) work per step sent to each server.
    """
    check_inputs(service_rate=service_rate, rate=rate)
    mu = service_rate
    order = jnp.argsort(-mu)
    mu_sorted = mu[order]
    root_sorted = jnp.sqrt(mu_sorted)
    level = (jnp.cumsum(mu_sorted) - rate) / jnp.cumsum(root_sorted)  # nu for each prefix
    num_active = _leading_true(root_sorted > level)
    nu = level[jnp.maximum(num_active - 1, 0)]
    # Clipping to [0, mu] guards float32 rounding: the overload test and the prefix sums add
    # mu in different orders, so one ulp below capacity nu can come out slightly negative.
    split = jnp.clip(mu - jnp.sqrt(mu) * nu, 0.0, mu)
    split = jnp.where((num_active > 0) & (rate > 0), split, 0.0)
    return jnp.where(rate >= mu.sum(), mu, split)


def reference_share(service_rate: jax.Array, rate: jax.Array) -> jax.Array:
    """(M,) utilisation x_j / mu_j of each server under the reference split."""
    return reference_split(service_rate, rate) / service_rate


def water_level(backlog: jax.Array, service_rate: jax.Array, work: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Finish-time level L and allocation x_j = max(0, L mu_j - W_j) with sum_j x_j = work.

    Pouring `work` into servers holding `backlog` so that every server that receives work
    finishes at the same time L (in steps), the earliest such time.

    Args:
      backlog: (M,) work already queued.
      service_rate: (M,) positive work per step.
      work: () non-negative work to place.
    Returns:
      level: () finish time in steps; allocation: (M,) work placed at each server.
    """
    check_inputs(service_rate=service_rate, backlog=backlog, work=work)
    finish = backlog / service_rate
    order = jnp.argsort(finish)
    finish_sorted = finish[order]
    level = (work + jnp.cumsum(backlog[order])) / jnp.cumsum(service_rate[order])
    num_active = _leading_true(finish_sorted < level)
    level_star = jnp.where(num_active > 0, level[jnp.maximum(num_active - 1, 0)], finish_sorted[0])
    return level_star, jnp.maximum(level_star * service_rate - backlog, 0.0)
