"""The randomised baselines draw from the distributions docs/environment.md names (chi-square over
many fixed keys, one vmapped program per policy), and the in-turn congestion-aware greedy
among own candidates (`greedy_k`) equals a plain-Python loop on hand-worked cases.

The fleet: N = 8 agents, M = 8 servers of hand-set capacity (sum 8), k = 4 candidates per
job, J = 8 slots, mean job 2 steps, so mu = capacity / 2 =
[0.25, 0.25, 0.375, 0.5, 0.5, 0.625, 0.75, 0.75].
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from dgpg_jax.tasks import cloud as env
from dgpg_jax.tasks.cloud import analytical, baselines
from dgpg_jax.tasks.cloud import arrivals

CAPACITY = (0.5, 0.5, 0.75, 1.0, 1.0, 1.25, 1.5, 1.5)
NUM_KEYS = 5000
P_MIN = 1e-3
jit_reset = jax.jit(env.reset)


@functools.lru_cache(maxsize=None)
def fleet_params():
    config = env.CloudConfig(num_agents=8, servers_per_agent=1.0, num_candidates=4, mean_job_steps=2.0)
    params = env.make_params(config).replace(capacity=jnp.asarray(CAPACITY, jnp.float32))
    assert (params.num_servers, params.num_candidates, params.num_rows) == (8, 4, 8)
    return params


def hand_state(params, backlog, sizes, candidates, valid, time=0, burst_steps_left=0):
    """A state with the given backlog and jobs, from `reset` and `.replace` (works whatever
    other fields the pytrees carry)."""
    _, state = jit_reset(jax.random.key(0), params)
    jobs = state.jobs.replace(size=jnp.asarray(sizes, jnp.float32), candidates=jnp.asarray(candidates, jnp.int32),
                              valid=jnp.asarray(valid, bool), num_overflow=jnp.zeros((), jnp.int32))
    return state.replace(backlog=jnp.asarray(backlog, jnp.float32), time=jnp.asarray(time, jnp.int32),
                         burst_steps_left=jnp.asarray(burst_steps_left, jnp.int32), jobs=jobs)


@functools.lru_cache(maxsize=None)
def vmapped(name):
    """policy(keys, state, params) over keys, jitted once per policy."""
    return jax.jit(jax.vmap(baselines.get_policy(name), in_axes=(0, None, None)))


def draws(name, state, params, seed=0):
    """(NUM_KEYS, J) servers chosen by policy `name` under NUM_KEYS fixed keys."""
    keys = jax.random.split(jax.random.key(seed), NUM_KEYS)
    return np.asarray(vmapped(name)(keys, state, params))


def chisquare_p(counts, probabilities, ddof=0):
    """p-value of counts against probabilities; categories of probability 0 must be empty."""
    counts, probabilities = np.asarray(counts, np.float64), np.asarray(probabilities, np.float64)
    zero = probabilities <= 0
    assert np.all(counts[zero] == 0), (counts, probabilities)
    expected = probabilities[~zero] / probabilities[~zero].sum() * counts[~zero].sum()
    return stats.chisquare(counts[~zero], expected, ddof=ddof).pvalue


BACKLOG = (0.3, 0.0, 1.2, 0.5, 0.5, 0.1, 1.6, 0.9)
SIZES = (0.8, 1.7, 0.45, 1.1, 2.3, 0.6, 1.0, 0.25)
# Four distinct candidates per job (softmin and power_of_d read only a job's own candidates).
DISTINCT = ((0, 3, 5, 7), (1, 2, 6, 7), (3, 4, 0, 1), (2, 5, 6, 0), (7, 6, 5, 4), (0, 1, 2, 3), (4, 6, 1, 5),
            (3, 7, 2, 6))


def mu_of(params):
    return np.asarray(params.capacity, np.float64) / float(params.mean_job_steps)


# ---------------------------------------------------------------------------------------
# Global samplers: capacity and the static split.


def test_capacity_policy_is_proportional_to_capacity():
    params = fleet_params()
    state = hand_state(params, BACKLOG, SIZES, DISTINCT, (True,) * 8)
    servers = draws("capacity", state, params)
    counts = np.bincount(servers.ravel(), minlength=8)
    assert chisquare_p(counts, CAPACITY) > P_MIN
    assert chisquare_p(counts, np.ones(8)) < 1e-12  # power: far from uniform
    # Every slot draws independently of the others (the slot columns have the same law).
    per_slot = np.stack([np.bincount(servers[:, i], minlength=8) for i in range(8)])
    assert stats.chi2_contingency(per_slot).pvalue > P_MIN


@pytest.mark.parametrize("utilisation, time, burst_steps_left", [
    (0.75, 0, 0),  # rate 8 * 0.375 * 0.75 = 2.25 of capacity 4: every server active, not proportional
    (0.3, 0, 0),  # rate 0.9: the two slowest servers get no share
    (0.3, 500, 4),  # rate 0.9 / 0.75 * 1.25 * 1.5 = 2.25 (peak of the day and a burst)
])
def test_static_split_samples_the_reference_split(utilisation, time, burst_steps_left):
    params = fleet_params().replace(utilisation=jnp.asarray(utilisation, jnp.float32),
                                    burst_rate=jnp.asarray(0.5, jnp.float32))
    state = hand_state(params, BACKLOG, SIZES, DISTINCT, (True,) * 8, time=time, burst_steps_left=burst_steps_left)
    rate = arrivals.expected_work_rate(params, jnp.asarray(time, jnp.int32), jnp.asarray(burst_steps_left > 0))
    split = np.asarray(analytical.reference_split(env.service_rate(params), rate), np.float64)
    counts = np.bincount(draws("static_split", state, params, seed=1).ravel(), minlength=8)
    assert chisquare_p(counts, split) > P_MIN
    assert chisquare_p(counts[split > 0], np.asarray(CAPACITY)[split > 0]) < 1e-6  # not the capacity split
    if utilisation == 0.3 and time == 0:
        assert np.all(split[:2] == 0) and np.all(counts[:2] == 0)


# ---------------------------------------------------------------------------------------
# Softmin over own candidates.


def softmin_probabilities(params, state, temperature=1.0):
    """(J, k) softmax(-finish / (mean_job_steps temperature)), finish = (W_b + w) / mu_b steps."""
    mu = mu_of(params)
    cand = np.asarray(state.jobs.candidates)
    finish = (np.asarray(state.backlog, np.float64)[cand] + np.asarray(state.jobs.size, np.float64)[:, None]) / mu[cand]
    logits = -finish / (float(params.mean_job_steps) * temperature)
    weights = np.exp(logits - logits.max(axis=1, keepdims=True))
    return weights / weights.sum(axis=1, keepdims=True)


def column_counts(servers, candidates):
    """(J, k) how often each job's choice was each of its (distinct) candidates."""
    candidates = np.asarray(candidates)
    hit = servers[:, :, None] == candidates[None]  # (K, J, k)
    assert np.all(hit.sum(-1) == 1)  # always one of the own candidates
    return hit.sum(0)


def test_softmin_draws_candidates_by_softmax_of_the_finish_time():
    params = fleet_params()
    state = hand_state(params, BACKLOG, SIZES, DISTINCT, (True,) * 8)
    probabilities = softmin_probabilities(params, state)
    assert probabilities.min() > 0.02 and probabilities.max() < 0.9  # a spread-out hand case
    counts = column_counts(draws("softmin", state, params, seed=2), DISTINCT)
    j, k = counts.shape
    # All jobs together: 8 independent multinomials, 8 (k - 1) degrees of freedom.
    expected = probabilities * counts.sum(axis=1, keepdims=True)
    pooled = stats.chisquare(counts.ravel(), expected.ravel(), ddof=j - 1)
    assert pooled.pvalue > P_MIN
    # Power: the finish time in steps (no mean_job_steps scaling) is rejected.
    wrong = softmin_probabilities(params, state, temperature=1 / float(params.mean_job_steps))
    assert stats.chisquare(counts.ravel(), (wrong * NUM_KEYS).ravel(), ddof=j - 1).pvalue < 1e-12


# ---------------------------------------------------------------------------------------
# Power of d = 2 choices among own candidates.


def power_of_two_distribution(params, state, tie_to_first_of_pair=True):
    """(J, M) exact law of the chosen server: two candidate columns uniform with
    replacement (k^2 equally likely pairs), the lower score wins, a tie goes to the first
    column of the pair (jnp.argmin) or, for the power check, to the lower column."""
    mu = mu_of(params)
    cand = np.asarray(state.jobs.candidates)
    backlog, sizes = np.asarray(state.backlog, np.float32), np.asarray(state.jobs.size, np.float32)
    j, k = cand.shape
    out = np.zeros((j, params.num_servers))
    for i in range(j):
        # float32 like the policy, so exact ties are ties here too
        finish = (backlog[cand[i]] + sizes[i]) / np.float32(mu[cand[i]])
        for a, b in itertools.product(range(k), repeat=2):
            if finish[a] < finish[b]:
                win = a
            elif finish[b] < finish[a]:
                win = b
            else:
                win = a if tie_to_first_of_pair else min(a, b)
            out[i, cand[i, win]] += 1 / k**2
    return out


def test_power_of_d_matches_the_enumerated_pair_law():
    params = fleet_params()
    # Job 2's best two candidates (servers 3 and 4: same rate, same backlog) tie exactly; job 5
    # lists server 2 twice; the other jobs have distinct candidates.
    candidates = list(DISTINCT)
    candidates[2] = (3, 4, 0, 1)
    candidates[5] = (2, 0, 2, 3)
    state = hand_state(params, BACKLOG, SIZES, candidates, (True,) * 8)
    law = power_of_two_distribution(params, state)
    np.testing.assert_allclose(law.sum(1), 1.0)
    servers = draws("power_of_d", state, params, seed=3)
    counts = np.stack([np.bincount(servers[:, i], minlength=8) for i in range(8)])  # (J, M)
    assert np.all(counts[law == 0] == 0)  # never a server that cannot win
    support = law > 0
    expected = law[support] * NUM_KEYS
    # 8 independent multinomials: support.sum() - 8 degrees of freedom.
    assert stats.chisquare(counts[support], expected, ddof=7).pvalue > P_MIN
    # Each job alone too (in particular the tie and the repeated server).
    for i in range(8):
        assert chisquare_p(counts[i], law[i]) > P_MIN, i
    # The tie rule matters for job 2: the pairs (3, 4) and (4, 3) go one to each server (argmin
    # takes the first of the pair), not both to the lower column; the sample tells them apart.
    lower = power_of_two_distribution(params, state, tie_to_first_of_pair=False)
    np.testing.assert_allclose(law[2, 3] - lower[2, 3], -1 / 16)
    np.testing.assert_allclose(law[2, 4] - lower[2, 4], 1 / 16)
    assert chisquare_p(counts[2], lower[2]) < 1e-6


# ---------------------------------------------------------------------------------------
# greedy_k: agents in turn among own candidates, score (W_b + (1 + beta) w) / mu_b.


def python_greedy_k(params, backlog, sizes, candidates, valid, beta):
    """Plain-Python in-turn greedy among own candidates: the load grows by each earlier
    valid job of the step; ties to the first candidate column. Returns {slot: server}."""
    mu = mu_of(params)
    load = [float(np.float32(w)) for w in backlog]
    chosen = {}
    for i, (w, cand, ok) in enumerate(zip(sizes, candidates, valid)):
        if not ok:
            continue
        w = float(np.float32(w))
        scores = [(load[s] + (1 + beta) * w) / mu[s] for s in cand]
        best = cand[int(np.argmin(scores))]
        chosen[i] = best
        load[best] += w
    return chosen


def python_simultaneous(params, backlog, sizes, candidates, valid, beta):
    mu = mu_of(params)
    return {i: cand[int(np.argmin([(backlog[s] + (1 + beta) * w) / mu[s] for s in cand]))]
            for i, (w, cand, ok) in enumerate(zip(sizes, candidates, valid)) if ok}


def policy_choice(name, state, params, valid, beta=None):
    servers = np.asarray(jax.jit(baselines.get_policy(name, beta))(jax.random.key(0), state, params))
    return {i: int(servers[i]) for i, ok in enumerate(valid) if ok}


# In-turn case (beta = -1/2, score (W + w / 2) / mu), backlog W below, mu as in the docstring:
#   job 0 (w = 1.0, cands 6, 3, 6, 1): 6: (0.4 + 0.5) / 0.75 = 1.2, 3: 0.7 / 0.5 = 1.4, 1: 4 -> 6, W6 = 1.4
#   job 1 (w = 0.6, cands 6, 3, 5, 2): 6: 1.7 / 0.75 = 2.27, 3: 0.5 / 0.5 = 1.0, 5: 2.08, 2: 1.6 -> 3, W3 = 0.8
#       (at once it would take 6: (0.4 + 0.3) / 0.75 = 0.93)
#   slot 2 is empty: its size 2 must add no load to server 3
#   job 3 (w = 1.0, cands 3, 2, 7, 0): 3: 1.3 / 0.5 = 2.6, 2: 0.8 / 0.375 = 2.13, 7: 2 / 0.75 = 2.67,
#       0: 0.5 / 0.25 = 2 -> 0, W0 = 1 (at once: 3 scores 0.7 / 0.5 = 1.4 -> 3)
#   job 4 (w = 0.5, cands 0, 3, 7, 1): 0: 1.25 / 0.25 = 5, 3: 1.05 / 0.5 = 2.1, 7: 1.75 / 0.75 = 2.33,
#       1: 0.75 / 0.25 = 3 -> 3 (had slot 2 added its 2 to server 3: 3.05 / 0.5 = 6.1 -> 7)
IN_TURN_BACKLOG = (0.0, 0.5, 0.3, 0.2, 0.6, 1.0, 0.4, 1.5)
IN_TURN_SIZES = (1.0, 0.6, 2.0, 1.0, 0.5, 0.0, 0.0, 0.0)
IN_TURN_CANDIDATES = ((6, 3, 6, 1), (6, 3, 5, 2), (3, 3, 3, 3), (3, 2, 7, 0), (0, 3, 7, 1), (0, 1, 2, 3),
                      (0, 1, 2, 3), (0, 1, 2, 3))
IN_TURN_VALID = (True, True, False, True, True, False, False, False)


def test_greedy_k_places_in_turn_among_own_candidates():
    params = fleet_params()
    args = (IN_TURN_BACKLOG, IN_TURN_SIZES, IN_TURN_CANDIDATES, IN_TURN_VALID)
    state = hand_state(params, *args)
    expected = python_greedy_k(params, *args, beta=-0.5)
    assert expected == {0: 6, 1: 3, 3: 0, 4: 3}  # the hand-worked numbers above
    assert python_simultaneous(params, *args, beta=-0.5) != expected  # the in-turn update matters here
    assert policy_choice("greedy_k", state, params, IN_TURN_VALID) == expected
    assert policy_choice("greedy_k", state, params, IN_TURN_VALID, beta=-0.5) == expected
    # The simultaneous variant of the same score decides on the start-of-step backlog.
    assert (policy_choice("greedy_k_simultaneous", state, params, IN_TURN_VALID)
            == python_simultaneous(params, *args, beta=-0.5) == {0: 6, 1: 6, 3: 3, 4: 3})


# beta case: job 0 (w = 1) between server 6 (mu 0.75, W 0.7) and server 0 (mu 0.25, empty):
#   beta = -0.5: 6: (0.7 + 0.5) / 0.75 = 1.6,  0: 0.5 / 0.25 = 2.0 -> 6
#   beta = -0.8: 6: (0.7 + 0.2) / 0.75 = 1.2,  0: 0.2 / 0.25 = 0.8 -> 0
# job 1 (w = 0.5) among servers 0, 6 and 2 (mu 0.375, W 0.25), after job 0's load:
#   beta = -0.5 (W6 = 1.7): 0: 0.25 / 0.25 = 1.0, 6: 1.95 / 0.75 = 2.6, 2: 0.5 / 0.375 = 1.33 -> 0
#   beta = -0.8 (W0 = 1.0): 0: 1.1 / 0.25 = 4.4, 6: 0.8 / 0.75 = 1.07, 2: 0.35 / 0.375 = 0.93 -> 2
BETA_BACKLOG = (0.0, 0.5, 0.25, 0.2, 0.6, 1.0, 0.7, 1.5)
BETA_SIZES = (1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
BETA_CANDIDATES = ((6, 0, 6, 0), (0, 6, 2, 2)) + ((0, 1, 2, 3),) * 6
BETA_VALID = (True, True) + (False,) * 6


def test_greedy_k_beta_changes_the_choice():
    params = fleet_params()
    args = (BETA_BACKLOG, BETA_SIZES, BETA_CANDIDATES, BETA_VALID)
    state = hand_state(params, *args)
    default = python_greedy_k(params, *args, beta=-0.5)
    strong = python_greedy_k(params, *args, beta=-0.8)
    assert default == {0: 6, 1: 0} and strong == {0: 0, 1: 2}
    assert policy_choice("greedy_k", state, params, BETA_VALID) == default
    assert policy_choice("greedy_k", state, params, BETA_VALID, beta=-0.8) == strong
    assert strong != default
    # beta = 0 is BestFit-k (earliest finish among own candidates, in turn).
    assert (policy_choice("greedy_k", state, params, BETA_VALID, beta=0.0)
            == policy_choice("bestfit_k", state, params, BETA_VALID) == python_greedy_k(params, *args, beta=0.0))


@pytest.mark.parametrize("beta", [-0.5, -0.8, 0.0])
def test_greedy_k_equals_the_python_loop_on_random_states(beta):
    params = fleet_params()
    policy = jax.jit(baselines.get_policy("greedy_k", beta))
    rng = np.random.default_rng(7)
    for _ in range(5):
        valid = rng.random(8) < 0.8
        args = (rng.exponential(1.0, 8).round(3), np.where(valid, rng.lognormal(0, 0.6, 8), 0.0).round(3),
                rng.integers(0, 8, (8, 4)), valid)
        state = hand_state(params, *args)
        servers = np.asarray(policy(jax.random.key(0), state, params))
        expected = python_greedy_k(params, *args, beta=beta)
        assert {i: int(servers[i]) for i in expected} == expected
