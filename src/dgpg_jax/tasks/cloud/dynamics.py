"""Queue dynamics: FIFO dispatch with a finite buffer (tail drop), then Lindley service.

Jobs sent to one server in one step join its queue in agent order. A job's response time
is (work ahead of it + its size) / service rate. Cost O(J log J + M): jobs are sorted by
server and per-server prefix sums give the work ahead, no (J, M) tensor.
"""

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class Dispatch:
    """Outcome of sending one step's jobs to their servers."""

    response_time: jax.Array  # (J,) float32, steps; the penalty for a rejected job, 0 for empty rows
    accepted: jax.Array  # (J,) bool
    rejected: jax.Array  # (J,) bool, buffer full or invalid server
    invalid: jax.Array  # (J,) bool, server index outside [0, M) (also counted as rejected)
    arriving_work: jax.Array  # (M,) float32, accepted work joining each server


def work_ahead(server: jax.Array, size: jax.Array, num_servers: int) -> jax.Array:
    """(J,) work sent to the same server by earlier rows of this step (exclusive prefix sum).

    `server` may hold `num_servers` for empty rows. The segment start is read from the
    same cumulative sum, so the first job at a server gets exactly 0.
    """
    order = jnp.argsort(server, stable=True)
    sorted_server = server[order]
    sorted_size = size[order]
    before = jnp.cumsum(sorted_size) - sorted_size  # exclusive prefix over all sorted rows
    first = jnp.searchsorted(sorted_server, sorted_server, side="left")  # start of each row's segment
    return jnp.zeros_like(size).at[order].set(before - before[first])


def earlier_work(server: jax.Array, size: jax.Array, valid: jax.Array, candidates: jax.Array) -> jax.Array:
    """(J, k) work sent to server `candidates[i, b]` by the valid rows before i this step.

    Rows are sorted by (server, row); a query (candidates[i, b], i) finds by binary
    search the sorted rows before it, and prefix sums of their sizes give the work of
    that server's segment. O((J k + J) log J), no (J, M) tensor.
    """
    j = server.shape[0]
    row = jnp.arange(j)
    key = jnp.where(valid, server, jnp.iinfo(jnp.int32).max // (j + 1)) * j + row  # invalid rows sort last
    order = jnp.argsort(key)
    sorted_key = key[order]
    prefix = jnp.concatenate([jnp.zeros(1), jnp.cumsum(jnp.where(valid, size, 0.0)[order])])
    before = jnp.searchsorted(sorted_key, candidates * j + row[:, None], side="left")
    start = jnp.searchsorted(sorted_key, candidates * j, side="left")
    return prefix[before] - prefix[start]


def finish_score(backlog: jax.Array, size: jax.Array, service_rate: jax.Array, beta: float = 0.0) -> jax.Array:
    """(W + (1 + beta) w) / mu, in steps: at beta = 0 the finish time of work w joining a
    server that holds W; beta < 0 is the congestion-aware score of the greedies."""
    return (backlog + (1 + beta) * size) / service_rate


def server_totals(server: jax.Array, amount: jax.Array, include: jax.Array, num_servers: int) -> jax.Array:
    """(M,) sum of `amount` (J,) over the jobs with `include` (J,), per `server` (J,). Excluded
    jobs go to a sentinel segment M that is cut off, so they add to no server."""
    target = jnp.where(include, server, num_servers)
    return jax.ops.segment_sum(jnp.where(include, amount, 0.0), target, num_segments=num_servers + 1)[:num_servers]


def dispatch(backlog: jax.Array, service_rate: jax.Array, buffer_work: jax.Array, penalty_steps: jax.Array,
             server: jax.Array, size: jax.Array, valid: jax.Array) -> Dispatch:
    """Send job i (size[i], where valid[i]) to server[i].

    A job is accepted if its server's backlog plus the work ahead of it and its own size
    fit in the buffer; once a job is rejected, all later jobs at that server in this step
    are too (tail drop: the work ahead counts rejected jobs, so the test is monotone).
    A job whose server is outside [0, M) is rejected at the penalty and takes no place in
    any queue.

    Args:
      backlog: (M,) work queued at the start of the step.
      service_rate: (M,) work per step.
      buffer_work: (M,) most work a server may hold.
      penalty_steps: () response time charged for a rejected job.
      server: (J,) int32 server index per job, in [0, M).
      size: (J,) job work.
      valid: (J,) bool, row holds a job.
    """
    m = backlog.shape[0]
    invalid = valid & ((server < 0) | (server >= m))
    queued = valid & ~invalid
    target = jnp.where(queued, server, m)
    ahead = work_ahead(target, jnp.where(queued, size, 0.0), m)
    safe = jnp.where(queued, server, 0)  # gathers read a real server; the result is masked by `queued`
    finish_work = backlog[safe] + ahead + size
    accepted = queued & (finish_work <= buffer_work[safe])
    rejected = valid & ~accepted
    response_time = jnp.where(accepted, finish_work / service_rate[safe], jnp.where(rejected, penalty_steps, 0.0))
    arriving_work = server_totals(server, size, accepted, m)
    return Dispatch(response_time=response_time, accepted=accepted, rejected=rejected, invalid=invalid,
                    arriving_work=arriving_work)


def serve(backlog: jax.Array, arriving_work: jax.Array, service_rate: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Lindley recursion for one step: W' = max(0, W + A - mu). Returns (W', served work)."""
    total = backlog + arriving_work
    served = jnp.minimum(total, service_rate)
    return total - served, served
