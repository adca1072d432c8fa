"""Heuristic charging policies, all pure functions of one signature (as the cloud env's):

    policy(key, state, params) -> (J,) int32 candidate index per decision row

Charge on arrival is the uncontrolled baseline; random spreads blindly; the greedy picks
the window with the lowest committed load, all rows of a step at once on the same state,
so it herds; the sequential greedy lets the rows of a step choose in turn (a coordinated
upper reference for simultaneous agents). The valley-filling lower bound on a day's cost
is `valley.reference_cost`, reported by `evaluate.summarise`.
"""

from typing import Callable

import jax
import jax.numpy as jnp

from dgpg_jax.tasks.ev.observation import committed_load
from dgpg_jax.tasks.ev.types import EVParams, EVState
from dgpg_jax.tasks.ev.windows import commit_windows, window_sums

Policy = Callable[[jax.Array, EVState, EVParams], jax.Array]


def arrival_policy(key, state, params):
    """Candidate 0: start charging on arrival."""
    return jnp.zeros((params.num_rows,), jnp.int32)


def random_policy(key, state, params):
    """Uniform over the k candidate windows."""
    return jax.random.randint(key, (params.num_rows,), 0, params.num_candidates, dtype=jnp.int32)


def greedy_policy(key, state, params):
    """Lowest mean committed load (forecast base + EV windows so far) over the window;
    every row sees the same state. Ties go to the earliest candidate."""
    rows = state.arrivals
    load = window_sums(committed_load(state, params), rows.candidate_start, rows.length)
    return jnp.argmin(load, axis=1).astype(jnp.int32)


def sequential_greedy_policy(key, state, params):
    """The greedy with rows in turn, each seeing the windows chosen before it this step.
    O(J T) per step (a scan over rows)."""
    rows = state.arrivals
    base = committed_load(state, params) - state.ev_load

    def place(ev_load, row):
        start, length, power, valid = row
        load = window_sums(base + ev_load, start[None], length[None])[0]
        choice = jnp.argmin(load)
        return commit_windows(ev_load, start[choice], length, power, valid), choice

    _, choice = jax.lax.scan(place, state.ev_load, (rows.candidate_start, rows.length, rows.power, rows.valid))
    return choice.astype(jnp.int32)


BASELINES: dict[str, Policy] = {
    "arrival": arrival_policy,
    "random": random_policy,
    "greedy": greedy_policy,
    "greedy_sequential": sequential_greedy_policy,
}


def get_policy(name: str) -> Policy:
    """A baseline by name, checked before tracing."""
    if name not in BASELINES:
        raise ValueError(f"policy={name!r} is invalid: allowed one of {tuple(BASELINES)}")
    return BASELINES[name]
