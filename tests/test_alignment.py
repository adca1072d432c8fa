"""The alignment check `evaluate.potential_greedy` on a system of identical agents.

N agents each step choose one of 2 parallel links of latency t_e(x) = a_e + s_e x (x the
link's load); the cost is the total latency sum_e x_e t_e(x_e), and the potential is
G = minus that total, so the guidance (the exact leave-one-out change of G, larger is
better) is exactly aligned with the cost. With identical links (a = 1, s = 1/N) the
optimum splits the agents evenly, at cost 1.5 N; scoring every row at once against the
others parked on candidate 0 (the rule before sequential best response) sends every agent
to link 1, at cost 2 N. Sequential best response is coordinate ascent on G, so it ends at
a Nash equilibrium of the potential game, here the optimum.

Two of the J = N + 2 rows are empty (invalid): they neither load a link nor move.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from dgpg_jax import evaluate
from dgpg_jax.task import Task

N = 10  # agents
K = 2  # links (candidates)
EMPTY_ROWS = (3, 8)  # invalid rows, among the J = N + 2
J = N + len(EMPTY_ROWS)
VALID = np.array([row not in EMPTY_ROWS for row in range(J)])


@struct.dataclass
class Params:
    free: jax.Array  # (K,) free-flow latency a_e
    slope: jax.Array  # (K,) latency per agent s_e
    num_agents: int = struct.field(pytree_node=False, default=N)
    horizon: int = struct.field(pytree_node=False, default=1)


@struct.dataclass
class State:
    valid: jax.Array  # (J,) bool
    time: jax.Array  # () int32


IDENTICAL = Params(free=jnp.array([1.0, 1.0]), slope=jnp.array([1.0, 1.0]) / N)
UNEQUAL = Params(free=jnp.array([1.0, 1.5]), slope=jnp.array([2.0, 1.0]) / N)


def link_loads(choice, valid):
    """(K,) agents on each link."""
    return (jax.nn.one_hot(choice, K) * valid[:, None]).sum(axis=0)


def total_latency(load, params):
    return jnp.sum(load * (params.free + params.slope * load))


def minus_total_latency(load, params):
    """G of the link loads: minus the cost."""
    return -total_latency(load, params)


def link_guidance(potential, state, choice, params, exact=True):
    """(J, k): G with row i on link b minus G without row i, the others at `choice`."""
    mine = jax.nn.one_hot(choice, K) * state.valid[:, None]  # (J, K) row i's own load
    without = link_loads(choice, state.valid)[None, :] - mine  # (J, K) loads without row i
    g = lambda load: potential(load, params)  # noqa: E731
    change = (jax.vmap(lambda w: jax.vmap(lambda b: g(w + jax.nn.one_hot(b, K)))(jnp.arange(K)))(without)
              - jax.vmap(g)(without)[:, None])
    return jnp.where(state.valid[:, None], change, 0.0)


def observe(state, params):
    return jnp.zeros((J, K, 1), jnp.float32)


def reset(key, params):
    state = State(valid=jnp.asarray(VALID), time=jnp.int32(0))
    return observe(state, params), state


def step(key, state, actions, params):
    reward = -total_latency(link_loads(actions, state.valid), params)
    return observe(state, params), state, reward, jnp.bool_(True), {"truncated": jnp.bool_(True)}


TASK = Task(name="parallel-links", params=IDENTICAL, reset=reset, step=step, observe=observe,
            valid=lambda state: state.valid, guidance=link_guidance,
            potentials={"total_latency": minus_total_latency})


@jax.jit
def both_rules(params):
    """(new choice, old choice) of one step: sequential best response (2 passes) and the
    old rule, every row's argmax at once against the others at candidate 0."""
    _, state = reset(jax.random.key(0), params)
    new = evaluate.potential_greedy(TASK)(jax.random.key(1), state, params)
    potential = TASK.get_potential(None)
    at_once = jnp.argmax(TASK.guidance(potential, state, jnp.zeros((J,), jnp.int32), params, True), axis=-1)
    return new, at_once


def cost(choice, params) -> float:
    return float(total_latency(link_loads(jnp.asarray(choice), jnp.asarray(VALID)), params))


def best_cost(params) -> float:
    """The optimum over every split of the N agents (brute force)."""
    return min(cost(np.array([0] * (N - n) + [1] * n + [0] * len(EMPTY_ROWS)), params) for n in range(N + 1))


def test_sequential_best_response_splits_identical_agents_where_all_at_once_piles_up():
    new, old = map(np.asarray, both_rules(IDENTICAL))
    new_cost, old_cost, optimum = cost(new, IDENTICAL), cost(old, IDENTICAL), best_cost(IDENTICAL)
    # the old rule: every agent sees the others on link 0 and moves to link 1
    assert old[VALID].tolist() == [1] * N and old_cost == pytest.approx(2.0 * N)
    # sequential best response: the even split, the optimum
    assert optimum == pytest.approx(1.5 * N)
    assert np.bincount(new[VALID], minlength=K).tolist() == [N // 2, N // 2]
    assert new_cost == pytest.approx(optimum), (new_cost, old_cost, optimum)
    assert new[~VALID].tolist() == [0] * len(EMPTY_ROWS)  # empty rows left alone


def test_sequential_best_response_ends_at_an_equilibrium_of_unequal_links():
    new, _ = map(np.asarray, both_rules(UNEQUAL))  # same shapes: the program compiled above
    _, state = reset(jax.random.key(0), UNEQUAL)
    scores = np.asarray(link_guidance(minus_total_latency, state, jnp.asarray(new), UNEQUAL))
    # no agent gains by moving alone (a Nash equilibrium of the potential game) ...
    assert np.all(scores[np.arange(J), new] >= scores.max(axis=1) - 1e-5)
    # ... and with identical agents and convex latencies that is the optimum
    assert cost(new, UNEQUAL) == pytest.approx(best_cost(UNEQUAL))


@pytest.mark.parametrize("passes", [0, -1, 1.5, True])
def test_passes_must_be_a_positive_integer(passes):
    with pytest.raises(ValueError, match="passes"):
        evaluate.potential_greedy(TASK, passes=passes)

