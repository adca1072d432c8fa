"""Guidance of any system whose potential is a function of per-entity aggregates.

A system with E aggregates (loads of links, servers or time slots) says what its rows add
to them: `base` (E,) without this step's rows and `contribution` (J, k, E), row i's part
if it takes candidate b. The guidance of row i at b is the change of the potential
G(load, params) when row i moves from its chosen candidate to b, the other rows held at
theirs: exact leave-one-out, or first order ((c_ib - c_i,chosen) . dG/dload, from
`jax.grad`). G is ascended (a cost enters as its negative).
"""

from typing import Callable

import jax
import jax.numpy as jnp


def leave_one_out(potential: Callable, base: jax.Array, contribution: jax.Array, choice: jax.Array,
                  valid: jax.Array, params, exact: bool = True) -> jax.Array:
    """(J, k) change of `potential(load, params)` when row i takes candidate b instead of
    `choice[i]`; 0 on rows that are not `valid`. Costs J k evaluations of G (exact)."""
    taken = jnp.take_along_axis(contribution, choice[:, None, None], axis=1)[:, 0]  # (J, E)
    taken = jnp.where(valid[:, None], taken, 0.0)
    load = base + taken.sum(axis=0)
    moved = contribution - taken[:, None, :]  # (J, k, E) change of the load
    if exact:
        at = jax.vmap(jax.vmap(lambda change: potential(load + change, params)))(moved)
        change = at - potential(load, params)
    else:
        change = moved @ jax.grad(lambda x: potential(x, params))(load)
    return jnp.where(valid[:, None], change, 0.0)


def from_aggregates(aggregates: Callable, valid: Callable) -> Callable:
    """A Task's `guidance(potential, state, choice, params, exact)` from its
    `aggregates(state, params) -> (base, contribution)` and `valid(state)`."""

    def guidance(potential, state, choice, params, exact=True):
        base, contribution = aggregates(state, params)
        return leave_one_out(potential, base, contribution, choice, valid(state), params, exact)

    return guidance
