"""Guidance potentials and the per-agent guidance of DG-PG.

A potential is a pure differentiable function of per-server aggregates that returns one
term per server; G is the sum of the terms, and ascending G improves the true objective
where the potential is aligned. Potentials must be elementwise over servers (each term a
function of that server's own aggregates), so they can be evaluated at any gather of
servers: that is what makes the exact leave-one-out guidance O(J k + M).

Guidance of job i at candidate b: the change of G when i's job goes to b, the other
jobs' work this step held fixed (with in-turn decisions: the earlier jobs' work). Exact
(a difference of two potential terms), or first order (w_i dG/dA_b from `jax.grad` of the potential alone, so a user potential needs no
hand-written derivative).
"""

from typing import Callable

import jax
import jax.numpy as jnp
from flax import struct

from dgpg_jax.tasks.cloud.analytical import reference_split, water_level


@struct.dataclass
class Aggregates:
    """Per-server quantities a potential may read; every field has the same shape."""

    backlog: jax.Array  # (M,) work queued at the start of the step (W)
    arriving_work: jax.Array  # (M,) work sent to the server this step (A)
    service_rate: jax.Array  # (M,) work per step (mu)
    reference_work: jax.Array  # (M,) reference split of the expected work rate (x~)
    level_work: jax.Array  # (M,) water-level allocation of this step's work


Potential = Callable[[Aggregates], jax.Array]


def area_potential(agg: Aggregates) -> jax.Array:
    """Fluid delay area of the backlog: -(W + A)^2 / (2 mu). Aligned with mean response
    time when backlog carries over; its marginal (W + A + w/2) w / mu charges each job for
    the delay it imposes on later jobs."""
    return -0.5 * (agg.backlog + agg.arriving_work) ** 2 / agg.service_rate


def split_potential(agg: Aggregates) -> jax.Array:
    """The paper's tracking form: -1/2 (A/mu - x~/mu)^2, x~ the reference split. Aligned
    only when backlog does not carry over (the `memoryless` setting)."""
    return -0.5 * ((agg.arriving_work - agg.reference_work) / agg.service_rate) ** 2


def level_potential(agg: Aggregates) -> jax.Array:
    """Tracking of the water level that equalises finish times of this step's work:
    -1/2 (A - x_level)^2 / mu. An ablation: works at coarse time scales only."""
    return -0.5 * (agg.arriving_work - agg.level_work) ** 2 / agg.service_rate


def make_congestion_potential(discount: float) -> Potential:
    """The area potential with this step's own arrivals discounted:
    -((W + A)^2 - discount A^2) / (2 mu). Job i's leave-one-out guidance at b is
    -(W_b + (1 - discount)(A_b^{-i} + w_i/2)) w_i / mu_b: per unit of work, the score of the
    congestion-aware greedy with beta = -(1 + discount)/2 (0.6 -> beta = -0.8, the best
    greedy measured; 0 is `area`)."""

    def congestion_potential(agg: Aggregates) -> jax.Array:
        return -0.5 * ((agg.backlog + agg.arriving_work) ** 2 - discount * agg.arriving_work**2) / agg.service_rate

    return congestion_potential


POTENTIALS: dict[str, Potential] = {"area": area_potential, "split": split_potential, "level": level_potential,
                                    "congestion": make_congestion_potential(0.6),
                                    "light_congestion": make_congestion_potential(0.3)}


def make_aggregates(backlog: jax.Array, arriving_work: jax.Array, service_rate: jax.Array,
                    expected_rate: jax.Array) -> Aggregates:
    """Aggregates of one step; `expected_rate` () is the expected arriving work per step."""
    _, level_work = water_level(backlog, service_rate, arriving_work.sum())
    return Aggregates(backlog=backlog, arriving_work=arriving_work, service_rate=service_rate,
                      reference_work=reference_split(service_rate, expected_rate), level_work=level_work)


def candidate_guidance(potential: Potential, agg: Aggregates, size: jax.Array, candidates: jax.Array,
                       server: jax.Array, valid: jax.Array, exact: bool = True,
                       before: jax.Array | None = None) -> jax.Array:
    """(J, k) guidance g_i(b): change of G when job i goes to candidate b.

    Args:
      potential: elementwise potential (see module docstring).
      agg: (M,) aggregates, `arriving_work` including every job's chosen server.
      size: (J,) job work; candidates: (J, k) server indices; server: (J,) chosen server;
      valid: (J,) bool. Empty rows get 0.
      exact: leave-one-out difference (True) or first order w_i dG/dA_b (False).
      before: (J, k) work at each candidate that job i's change starts from. None: every
        other job's work of this step (leave-one-out, for simultaneous decisions). With
        in-turn decisions, the earlier jobs' work only: job i's guidance is then the
        change its own job makes given what it saw, and the guidance of a step's jobs
        sums to the step's change of G.
    """
    if before is None and not exact:
        gradient = jax.grad(lambda a: potential(agg.replace(arriving_work=a)).sum())(agg.arriving_work)
        return jnp.where(valid[:, None], gradient[candidates] * size[:, None], 0.0)
    at = jax.tree.map(lambda x: x[candidates], agg)
    if before is None:
        own = jnp.where(valid[:, None] & (candidates == server[:, None]), size[:, None], 0.0)  # (J, k) own work at b
        before = at.arriving_work - own
    if exact:
        without = at.replace(arriving_work=before)
        change = potential(without.replace(arriving_work=before + size[:, None])) - potential(without)
    else:  # first order at the work the job finds
        change = jax.grad(lambda a: potential(at.replace(arriving_work=a)).sum())(before) * size[:, None]
    return jnp.where(valid[:, None], change, 0.0)
