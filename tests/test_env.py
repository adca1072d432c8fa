"""Tests of the cloud-scheduling environment (dgpg_jax.tasks.cloud): hand-worked steps, an
independent plain-Python oracle, queueing theory, invariants on random configs, the
Gymnax-style contract (shapes, dtypes, horizon, jit/vmap/retracing), and input checks."""

import functools
import math
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

from conftest import TINY_CONFIG
from dgpg_jax.tasks import cloud as env
from dgpg_jax.tasks.cloud import arrivals
from reference_env import reference_step

jit_step = jax.jit(env.step)
jit_reset = jax.jit(env.reset)
SERVE_ALL_TO_FIRST, RANDOM_CANDIDATE, ANY_SERVER = 0, 1, 2  # action rules of `rollout`


class Transition(NamedTuple):
    state: env.CloudState  # before the step
    actions: jax.Array
    obs: jax.Array  # after the step
    reward: jax.Array
    done: jax.Array
    info: dict


def choose_actions(key, state, params, rule):
    """(J,) servers: all to server 0, a random candidate of each job, or any server."""
    num_rows, num_candidates = state.jobs.candidates.shape
    column = jax.random.randint(key, (num_rows,), 0, num_candidates)
    candidate = jnp.take_along_axis(state.jobs.candidates, column[:, None], axis=1)[:, 0]
    anywhere = jax.random.randint(key, (num_rows,), 0, params.num_servers, dtype=jnp.int32)
    return jnp.select([rule == RANDOM_CANDIDATE, rule == ANY_SERVER], [candidate, anywhere],
                      jnp.zeros_like(candidate)).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames="num_steps")
def rollout(key, params, rule, num_steps):
    """Reset, then `num_steps` steps under action rule `rule` (a traced int, so every rule
    shares one compilation). The env's keys do not depend on the rule."""
    reset_key, steps_key = jax.random.split(key)
    _, state = env.reset(reset_key, params)

    def one_step(state, step_key):
        env_key, act_key = jax.random.split(step_key)
        actions = choose_actions(act_key, state, params, rule)
        obs, next_state, reward, done, info = env.step(env_key, state, actions, params)
        return next_state, Transition(state, actions, obs, reward, done, info)

    final, trajectory = jax.lax.scan(one_step, state, jax.random.split(steps_key, num_steps))
    return final, trajectory


def to_numpy(tree):
    return jax.tree.map(np.asarray, tree)


# ---------------------------------------------------------------------------------------
# Hand-worked steps on the tiny fleet (numbers in conftest.py: mu = [0.25, 0.5, 0.75],
# buffer work = [1, 2, 3], penalty 10 steps, reward = -sum / 2 / 2).


def tiny_state(backlog, sizes):
    """A state of the tiny fleet with both slots holding jobs of `sizes`."""
    jobs = env.Jobs(size=jnp.array(sizes, jnp.float32),
                    candidates=jnp.tile(jnp.arange(3, dtype=jnp.int32), (2, 1)), valid=jnp.ones(2, bool),
                    num_overflow=jnp.zeros((), jnp.int32), agent=jnp.arange(2, dtype=jnp.int32))
    return env.CloudState(backlog=jnp.array(backlog, jnp.float32), recent_utilisation=jnp.zeros(3, jnp.float32),
                        burst_steps_left=jnp.zeros((), jnp.int32), time=jnp.zeros((), jnp.int32), jobs=jobs)


@pytest.mark.parametrize("backlog, sizes, actions, response_time, accepted, next_backlog", [
    # Both to server 1 (W = 1, mu = 0.5, buffer 2). Job 0: 1 + 0 + 1 = 2 <= 2 fits, (2)/0.5 = 4
    # steps. Job 1: 1 + 1 + 0.75 = 2.75 > 2, rejected: 10 steps. Server 1: max(0, 1 + 1 - 0.5) = 1.5;
    # server 0: 0.5 - 0.25 = 0.25; server 2 idle. Reward -(4 + 10) / 2 / 2 = -3.5.
    ([0.5, 1.0, 0.0], [1.0, 0.75], [1, 1], [4.0, 10.0], [True, False], [0.25, 1.5, 0.0]),
    # Tail drop at server 0 (W = 0.5, buffer 1): job 0: 0.5 + 0.75 = 1.25 > 1, rejected; job 1:
    # 0.5 + 0.75 (rejected, still ahead) + 0.25 = 1.5 > 1, rejected although 0.5 + 0.25 would fit.
    # Reward -(10 + 10) / 4 = -5.
    ([0.5, 0.0, 0.0], [0.75, 0.25], [0, 0], [10.0, 10.0], [False, False], [0.25, 0.0, 0.0]),
    # The same two jobs the other way round: job 0: 0.5 + 0.25 = 0.75 fits, 0.75 / 0.25 = 3 steps;
    # job 1: 0.5 + 0.25 + 0.75 = 1.5 > 1, rejected. Server 0: 0.5 + 0.25 - 0.25 = 0.5. Reward -13/4.
    ([0.5, 0.0, 0.0], [0.25, 0.75], [0, 0], [3.0, 10.0], [True, False], [0.5, 0.0, 0.0]),
    # Different servers: job 0 to server 2 (W = 0): 1.5 / 0.75 = 2 steps; job 1 to server 1
    # (W = 0.25): (0.25 + 1) / 0.5 = 2.5 steps. Backlog: [0, max(0, 1.25 - 0.5), max(0, 1.5 - 0.75)].
    # Reward -(2 + 2.5) / 4 = -1.125.
    ([0.0, 0.25, 0.0], [1.5, 1.0], [2, 1], [2.0, 2.5], [True, True], [0.0, 0.75, 0.75]),
])
def test_hand_worked_step(tiny_params, backlog, sizes, actions, response_time, accepted, next_backlog):
    state = tiny_state(backlog, sizes)
    _, next_state, reward, done, info = jit_step(jax.random.key(0), state, jnp.array(actions, jnp.int32),
                                                 tiny_params)
    np.testing.assert_allclose(info["response_time"], response_time, rtol=1e-6)
    np.testing.assert_array_equal(info["accepted"], accepted)
    np.testing.assert_array_equal(info["rejected"], ~np.array(accepted))
    np.testing.assert_allclose(next_state.backlog, next_backlog, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(reward, -sum(response_time) / 2 / 2, rtol=1e-6)
    assert not done and int(next_state.time) == 1


def test_memoryless_drops_the_backlog_left_after_service(tiny_memoryless_params):
    # As the first hand-worked case: 0.25 + 1.5 + 0 = 1.75 work left after service, then dropped.
    state = tiny_state([0.5, 1.0, 0.0], [1.0, 0.75])
    _, next_state, _, _, info = jit_step(jax.random.key(0), state, jnp.array([1, 1], jnp.int32),
                                         tiny_memoryless_params)
    np.testing.assert_allclose(info["backlog_after"], 1.75, rtol=1e-6)
    np.testing.assert_allclose(info["dropped_work"], 1.75, rtol=1e-6)
    np.testing.assert_array_equal(next_state.backlog, np.zeros(3))


# ---------------------------------------------------------------------------------------
# Oracle: the jitted step against the plain-Python reference (tests/reference_env.py).
# The static structure (shapes, flags) comes from a few configs, so jit compiles each once;
# everything numeric (capacity, time scale, buffer, penalty, backlog, jobs, actions) is drawn.

ORACLE_CONFIGS = (
    TINY_CONFIG,  # N = 2, M = 3, all candidates, J = 2
    env.CloudConfig(num_agents=5, servers_per_agent=1.0, num_candidates=2, candidate_sampling="uniform",
                  mean_job_steps=1.0, memoryless=True),  # M = 5, J = 5
    env.CloudConfig(num_agents=8, servers_per_agent=0.75, num_candidates=3, mean_job_steps=1.0),  # M = 6, J = 8
)
ORACLE_PARAMS = tuple(env.make_params(c) for c in ORACLE_CONFIGS)
f32 = functools.partial(st.floats, width=32, allow_nan=False, allow_infinity=False)


@st.composite
def oracle_cases(draw):
    params = draw(st.sampled_from(ORACLE_PARAMS))
    m, j = params.num_servers, params.num_rows
    params = params.replace(
        capacity=jnp.asarray(draw(st.lists(f32(0.125, 4.0), min_size=m, max_size=m)), jnp.float32),
        mean_job_steps=jnp.asarray(draw(f32(0.5, 20.0)), jnp.float32),
        buffer_time=jnp.asarray(draw(f32(0.125, 10.0)), jnp.float32),
        rejection_penalty=jnp.asarray(draw(f32(0.0, 100.0)), jnp.float32),
    )
    backlog = draw(st.lists(st.one_of(st.just(0.0), f32(0.0, 20.0)), min_size=m, max_size=m))
    sizes = draw(st.lists(f32(1 / 64, 10.0), min_size=j, max_size=j))
    valid = draw(st.lists(st.booleans(), min_size=j, max_size=j))
    crowd = draw(st.integers(1, m))  # servers used: few -> queues within the step, tail drops
    servers = draw(st.lists(st.integers(0, crowd - 1), min_size=j, max_size=j))
    num_overflow = draw(st.integers(0, 3))
    jobs = env.Jobs(size=jnp.where(jnp.array(valid), jnp.array(sizes), 0.0),
                    candidates=jnp.zeros((j, params.num_candidates), jnp.int32), valid=jnp.array(valid),
                    num_overflow=jnp.asarray(num_overflow, jnp.int32),
                    agent=jnp.where(jnp.array(valid), jnp.arange(j), params.num_agents).astype(jnp.int32))
    state = env.CloudState(backlog=jnp.asarray(backlog, jnp.float32), recent_utilisation=jnp.zeros(m, jnp.float32),
                         burst_steps_left=jnp.zeros((), jnp.int32), time=jnp.zeros((), jnp.int32), jobs=jobs)
    return params, state, jnp.asarray(servers, jnp.int32), draw(st.integers(0, 2**31 - 1))


AHEAD_ULPS = 16
"""The library takes the work ahead of a job as the difference of two prefix sums over all
of the step's jobs sorted by server (dynamics.work_ahead), so its absolute error is a few
float32 ulps of the step's total work, not of the work at the job's own server: measured
half an ulp (a job of size 1/64 first at its server got 4.8e-7 of work ahead, after 7.6 at
a lower-numbered server). Comparisons allow AHEAD_ULPS ulps of the total on top of 1e-5."""


def ahead_error(jobs):
    """Absolute error allowed on the work ahead of any job of this step."""
    return AHEAD_ULPS * float(np.finfo(np.float32).eps) * float(np.sum(np.where(jobs.valid, jobs.size, 0.0)))


def assert_close(actual, desired, rtol, atol):
    """np.testing.assert_allclose with a per-element `atol` array."""
    actual, desired = np.asarray(actual, np.float64), np.asarray(desired, np.float64)
    bad = ~(np.abs(actual - desired) <= atol + rtol * np.abs(desired))
    assert not bad.any(), f"actual {actual[bad]} desired {desired[bad]} allowed {np.broadcast_to(atol, bad.shape)[bad]}"


def reference_for(params, backlog, jobs, actions):
    """The plain-Python reference step for `jobs` (numpy or JAX leaves) sent to `actions`."""
    return reference_step(backlog=np.asarray(backlog), capacity=np.asarray(params.capacity),
                          mean_job_steps=float(params.mean_job_steps), buffer_time=float(params.buffer_time),
                          rejection_penalty=float(params.rejection_penalty), num_agents=params.num_agents,
                          memoryless=params.memoryless, sizes=np.asarray(jobs.size), valid=np.asarray(jobs.valid),
                          servers=np.asarray(actions), num_overflow=int(jobs.num_overflow),
                          boundary_atol=ahead_error(jobs))


def assert_matches_reference(ref, params, backlog, jobs, actions, info, reward, next_backlog=None):
    """Compare one step's outputs with the reference: masks exactly; times and work to 1e-5
    relative, plus the work-ahead error (AHEAD_ULPS) for response times and 1e-6 of the
    step's work magnitude for values near zero."""
    scale = 1.0 + float(np.max(backlog)) + float(np.sum(jobs.size))
    mu = np.asarray(env.service_rate(params), np.float64)
    response_atol = 1e-6 + ahead_error(jobs) / mu[np.asarray(actions)]
    np.testing.assert_array_equal(info["accepted"], ref.accepted)
    np.testing.assert_array_equal(info["rejected"], ref.rejected)
    assert_close(info["response_time"], ref.response_time, rtol=1e-5, atol=response_atol)
    np.testing.assert_allclose(info["backlog_after"], sum(ref.backlog_after), rtol=1e-5, atol=1e-6 * scale)
    np.testing.assert_allclose(info["served_work"], ref.served_work, rtol=1e-5, atol=1e-6 * scale)
    response_sum_atol = 1e-6 + float(np.sum(np.where(jobs.valid, response_atol, 0.0)))
    np.testing.assert_allclose(info["response_time_sum"], ref.response_time_sum, rtol=1e-5, atol=response_sum_atol)
    np.testing.assert_allclose(reward, ref.reward, rtol=1e-5,
                               atol=1e-7 + response_sum_atol / float(params.mean_job_steps) / params.num_agents)
    assert int(info["num_rejected"]) == sum(ref.rejected) + int(jobs.num_overflow)
    if next_backlog is not None:
        np.testing.assert_allclose(next_backlog, ref.next_backlog, rtol=1e-5, atol=1e-6 * scale)


@settings(max_examples=8 * settings.default.max_examples)
@given(oracle_cases())
def test_step_matches_reference(case):
    params, state, actions, seed = case
    _, next_state, reward, _, info = jit_step(jax.random.key(seed), state, actions, params)
    ref = reference_for(params, state.backlog, state.jobs, actions)
    assume(not ref.ambiguous)  # a buffer test at equality within float32 rounding
    servers = np.asarray(actions)[np.asarray(state.jobs.valid)]
    event(f"N = {params.num_agents}")
    event(f"rejected jobs: {('none', 'one', 'several')[min(sum(ref.rejected), 2)]}")
    event(f"jobs sharing a server: {len(servers) > len(set(servers.tolist()))}")
    assert_matches_reference(ref, params, np.asarray(state.backlog), to_numpy(state.jobs), actions, to_numpy(info),
                             reward, next_backlog=next_state.backlog)


# ---------------------------------------------------------------------------------------
# Queueing oracle: one agent, one server is a discrete-time M/G/1 queue.
#
# Per step a job arrives with probability p = rho / mean_job_steps (Bernoulli arrivals see
# time averages), its service time is S = w / mu = w * mean_job_steps steps with w lognormal
# of mean 1: E[S] = mean_job_steps, E[S^2] = mean_job_steps^2 exp(sigma^2). The waiting time
# is V = backlog / mu at the step the job arrives, and V' = max(0, V + B S - 1).
#
# Pollaczek-Khinchine (continuous time): E[Wq] = p E[S^2] / (2 (1 - rho)).
# The discrete recursion is solvable up to one term. With X = B S - 1 (B ~ Bernoulli(p)) and the
# idle part I = (V + X)^- in [0, 1]: V' = V + X + I, so E[I] = -E[X] = 1 - rho, and
# V'^2 = (V + X)^2 - I^2; in steady state, with V independent of X,
#     E[V] = (E[X^2] - E[I^2]) / (2 (1 - rho)) = (p E[S^2] - 2 rho + 1 - E[I^2]) / (2 (1 - rho)),
# where (1 - rho)^2 <= E[I^2] <= 1 - rho,
# so E[V] lies in [PK - rho / (2 (1 - rho)), PK - rho^2 / (2 (1 - rho))]: the discretisation
# bias is at most rho / (2 (1 - rho)) steps (0.5 step at rho = 1/2), i.e. O(1 / mean_job_steps)
# relative to PK. With deterministic sizes (sigma = 0) and an integer mean_job_steps, V stays
# an integer, I is 0 or 1, and E[V] equals the lower end exactly.

QUEUE_MEAN_JOB_STEPS, QUEUE_UTILISATION = 20.0, 0.5
QUEUE_STEPS, QUEUE_WARMUP, QUEUE_SEEDS = 20_000, 5_000, 256
# Warm-up: the queue starts empty; its relaxation time is about
# E[S] (1 + sqrt(rho))^2 / (1 - sqrt(rho))^2 = 680 steps, so 5000 steps leave e^-7 of the start.


@functools.partial(jax.jit, static_argnames="num_steps")
def mean_waiting_time_per_seed(keys, params, num_steps, warmup):
    """(S,) total waiting time (response minus own service time) and job count after warm-up."""

    def one_seed(key):
        reset_key, steps_key = jax.random.split(key)
        _, state = env.reset(reset_key, params)

        def one_step(carry, xs):
            state, total, count = carry
            step_key, t = xs
            _, next_state, _, _, info = env.step(step_key, state, jnp.zeros(state.jobs.valid.shape, jnp.int32), params)
            wait = info["response_time"] - state.jobs.size * params.mean_job_steps
            counted = state.jobs.valid & (t >= warmup)
            return (next_state, total + jnp.where(counted, wait, 0.0).sum(), count + counted.sum()), None

        xs = (jax.random.split(steps_key, num_steps), jnp.arange(num_steps))
        (_, total, count), _ = jax.lax.scan(one_step, (state, jnp.zeros(()), jnp.zeros((), jnp.int32)), xs)
        return total, count

    return jax.vmap(one_seed)(keys)


def test_single_server_waiting_time_matches_pollaczek_khinchine():
    config = env.CloudConfig(num_agents=1, servers_per_agent=1.0, num_candidates=1, diurnal_amplitude=0.0,
                           large_fraction=0.0, small_sigma=0.5, buffer_time=1e4,
                           mean_job_steps=QUEUE_MEAN_JOB_STEPS, utilisation=QUEUE_UTILISATION,
                           horizon=QUEUE_STEPS + 1)
    params = env.make_params(config)
    assert params.num_servers == 1 and float(params.capacity[0]) == pytest.approx(1.0)
    keys = jax.random.split(jax.random.key(0), QUEUE_SEEDS)
    rho, steps = QUEUE_UTILISATION, QUEUE_MEAN_JOB_STEPS
    arrival_probability = rho / steps

    def check(sigma):
        total, count = mean_waiting_time_per_seed(keys, params.replace(small_sigma=jnp.asarray(sigma, jnp.float32)),
                                                  QUEUE_STEPS, QUEUE_WARMUP)
        total, count = np.asarray(total, np.float64), np.asarray(count, np.float64)
        per_seed = total / count
        mean = total.sum() / count.sum()
        standard_error = per_seed.std(ddof=1) / math.sqrt(len(per_seed))
        second_moment = steps**2 * math.exp(sigma**2)  # E[S^2]
        pk = arrival_probability * second_moment / (2 * (1 - rho))
        low, high = pk - rho / (2 * (1 - rho)), pk - rho**2 / (2 * (1 - rho))
        return mean, standard_error, pk, low, high

    # Lognormal sizes, sigma = 0.5: PK = 0.025 * 400 * e^0.25 / (2 * 0.5) = 12.84 steps; the exact
    # discrete answer lies in [12.34, 12.59]. Measured: 12.16 with a standard error of 0.16 over
    # 256 seeds x 15000 counted steps (96000 jobs; the per-seed spread includes the queue's
    # autocorrelation), 1.1 standard errors below the bracket, 5.3% below PK. Tolerance: the
    # bracket widened by 4 standard errors; against PK itself, the 0.5-step (3.9%) discretisation
    # bias plus 4 standard errors (5.1%): 9%.
    mean, standard_error, pk, low, high = check(0.5)
    assert low - 4 * standard_error <= mean <= high + 4 * standard_error, (mean, standard_error, low, high)
    assert mean == pytest.approx(pk, rel=0.09)

    # Deterministic sizes (M/D/1): E[Wq] = 9.5 steps exactly (PK 10 minus 0.5); measured 9.44, standard
    # error 0.10 (the same arrivals as above: the two checks are not independent).
    mean, standard_error, pk, low, _ = check(0.0)
    assert abs(mean - low) <= 4 * standard_error, (mean, standard_error, low)


# ---------------------------------------------------------------------------------------
# Invariants on random configs and random actions.

NUM_STEPS = 12


@st.composite
def env_configs(draw):
    config = env.CloudConfig(
        num_agents=draw(st.integers(1, 60)),
        servers_per_agent=draw(st.sampled_from([0.1, 0.5, 1.0, 1.5])),
        num_candidates=draw(st.integers(1, 12)),
        candidate_sampling=draw(st.sampled_from(["capacity", "uniform"])),
        horizon=draw(st.integers(2, NUM_STEPS + 2)),  # usually inside the run: crosses the day boundary
        mean_job_steps=draw(st.floats(0.6, 20.0)),
        utilisation=draw(st.floats(0.1, 1.2)),
        diurnal_amplitude=draw(st.floats(0.0, 0.5)),
        burst_rate=draw(st.sampled_from([0.0, 0.5])),
        large_fraction=draw(st.floats(0.0, 0.5)),
        small_sigma=draw(st.floats(0.0, 1.5)),
        buffer_time=draw(st.floats(0.5, 100.0)),  # small buffers: many rejections
        memoryless=draw(st.booleans()),
    )
    assume(config.peak_arrival_probability <= 1)
    return config


@settings(max_examples=max(3, settings.default.max_examples // 2))
@given(config=env_configs(), seed=st.integers(0, 2**31 - 1))
def test_invariants_on_random_configs(config, seed):
    params = env.make_params(config)
    key = jax.random.key(seed)
    rules = jnp.array([RANDOM_CANDIDATE, ANY_SERVER])
    run = functools.partial(rollout, num_steps=NUM_STEPS)
    final, traj = jax.vmap(run, in_axes=(None, None, 0))(key, params, rules)
    final, traj = to_numpy(final), to_numpy(traj)
    info, jobs = traj.info, traj.state.jobs
    m, j = params.num_servers, params.num_rows

    assert traj.state.backlog.shape == (2, NUM_STEPS, m) and jobs.size.shape == (2, NUM_STEPS, j)
    assert np.all((traj.actions >= 0) & (traj.actions < m))
    # Backlog never negative.
    assert np.all(traj.state.backlog >= 0) and np.all(final.backlog >= 0) and np.all(info["backlog_after"] >= 0)
    # Work conserved in each step: arrived = served + growth of the backlog + rejected.
    magnitude = 1.0 + info["backlog_before"] + info["arrived_work"]
    balance = info["served_work"] + (info["backlog_after"] - info["backlog_before"]) + info["rejected_work"]
    np.testing.assert_allclose(info["arrived_work"], balance, rtol=0, atol=2e-6 * magnitude.max())
    assert np.all(info["served_work"] <= info["capacity_work"] * (1 + 1e-6))
    # What the next step starts from: the backlog after service, dropped if memoryless or at the horizon.
    next_backlog = np.concatenate([traj.state.backlog[:, 1:], final.backlog[:, None]], axis=1).sum(-1)
    if config.memoryless:
        np.testing.assert_array_equal(info["dropped_work"], info["backlog_after"])
        assert np.all(next_backlog == 0)
    else:
        assert np.all(info["dropped_work"] == 0)
        kept = ~info["truncated"]
        np.testing.assert_allclose(next_backlog[kept], info["backlog_after"][kept], rtol=1e-5, atol=1e-5)
    assert np.all(next_backlog[info["truncated"]] == 0)
    # Counts: every arrival is accepted or rejected (row overflow counts as rejected).
    accepted, rejected, valid = info["accepted"], info["rejected"], jobs.valid
    assert not np.any(accepted & rejected)
    np.testing.assert_array_equal(accepted | rejected, valid)
    np.testing.assert_array_equal(accepted.sum(-1) + rejected.sum(-1) + info["num_overflow"], info["num_arrived"])
    np.testing.assert_array_equal(info["num_rejected"], rejected.sum(-1) + info["num_overflow"])
    np.testing.assert_array_equal(info["num_arrived"], valid.sum(-1) + jobs.num_overflow)
    # Jobs: positive sizes on valid slots, none elsewhere; candidates are servers.
    assert np.all(jobs.size[valid] > 0) and np.all(jobs.size[~valid] == 0)
    assert np.all((jobs.candidates >= 0) & (jobs.candidates < m))
    # Response times: positive and finite for jobs, zero for empty rows; at least the own
    # service time when accepted, the penalty when rejected.
    response = info["response_time"]
    assert np.all(np.isfinite(response)) and np.all(response[valid] > 0) and np.all(response[~valid] == 0)
    mu = np.asarray(env.service_rate(params))
    own_service = jobs.size / mu[traj.actions]
    step_work = np.where(valid, jobs.size, 0.0).sum(-1, keepdims=True)  # (2, T, 1)
    slack = AHEAD_ULPS * np.finfo(np.float32).eps * step_work / mu[traj.actions]  # see AHEAD_ULPS
    assert np.all(response[accepted] >= (own_service * (1 - 1e-5) - slack)[accepted])
    np.testing.assert_allclose(response[rejected], config.rejection_penalty * config.mean_job_steps, rtol=1e-6)
    # Reward: minus the response-time sum in mean job times over N.
    np.testing.assert_allclose(traj.reward, -info["response_time_sum"] / config.mean_job_steps / config.num_agents,
                               rtol=1e-5)
    assert np.all(np.isfinite(traj.obs)) and np.all(traj.reward <= 0)
    # Clock: truncation exactly when the day ends.
    expected_truncated = (np.arange(NUM_STEPS) + 1) % config.horizon == 0
    np.testing.assert_array_equal(info["truncated"], np.broadcast_to(expected_truncated, (2, NUM_STEPS)))
    np.testing.assert_array_equal(traj.state.time[0], np.arange(NUM_STEPS) % config.horizon)
    assert not np.any(info["terminated"])
    # Every step against the plain-Python reference, on the env's own jobs.
    backlogs = np.concatenate([traj.state.backlog, final.backlog[:, None]], axis=1)
    for rule in range(2):
        for t in range(NUM_STEPS):
            jobs_t, info_t = jax.tree.map(lambda x: x[rule, t], (jobs, info))
            ref = reference_for(params, backlogs[rule, t], jobs_t, traj.actions[rule, t])
            if ref.ambiguous:
                continue
            next_backlog = None if info_t["truncated"] else backlogs[rule, t + 1]
            assert_matches_reference(ref, params, backlogs[rule, t], jobs_t, traj.actions[rule, t], info_t,
                                     traj.reward[rule, t], next_backlog)


# ---------------------------------------------------------------------------------------
# Common random numbers: the jobs come from the key alone.


EPISODE_CONFIG = env.CloudConfig(num_agents=20, horizon=100, burst_rate=0.5, mean_job_steps=2.0)
EPISODE_STEPS = EPISODE_CONFIG.horizon + 3  # one day and three steps of the next (one compilation for all)


def test_jobs_do_not_depend_on_actions():
    params = env.make_params(EPISODE_CONFIG)
    key = jax.random.key(3)
    _, herd = rollout(key, params, jnp.asarray(SERVE_ALL_TO_FIRST), EPISODE_STEPS)
    _, spread = rollout(key, params, jnp.asarray(RANDOM_CANDIDATE), EPISODE_STEPS)
    herd, spread = to_numpy(herd), to_numpy(spread)
    # The two policies did differ (herding fills server 0's buffer), yet saw the same jobs.
    assert herd.info["num_rejected"].sum() > spread.info["num_rejected"].sum()
    assert not np.allclose(herd.state.backlog, spread.state.backlog)
    chex.assert_trees_all_equal(herd.state.jobs, spread.state.jobs)
    np.testing.assert_array_equal(herd.state.burst_steps_left, spread.state.burst_steps_left)
    np.testing.assert_array_equal(herd.state.time, spread.state.time)
    assert herd.state.burst_steps_left.max() > 0  # bursts happened, and at the same steps


def test_same_key_same_trajectory_and_other_key_other_trajectory():
    params = env.make_params(EPISODE_CONFIG)
    rule = jnp.asarray(RANDOM_CANDIDATE)
    first = rollout(jax.random.key(5), params, rule, EPISODE_STEPS)
    again = rollout(jax.random.key(5), params, rule, EPISODE_STEPS)
    other = rollout(jax.random.key(6), params, rule, EPISODE_STEPS)
    chex.assert_trees_all_equal(first, again)
    assert not np.array_equal(first[1].state.jobs.valid, other[1].state.jobs.valid)


def test_full_jitted_episode_is_finite_and_truncates_at_the_horizon():
    params = env.make_params(EPISODE_CONFIG)
    horizon = params.horizon
    final, traj = rollout(jax.random.key(7), params, jnp.asarray(RANDOM_CANDIDATE), EPISODE_STEPS)
    chex.assert_tree_all_finite((final, traj.obs, traj.reward, traj.state))
    chex.assert_shape(traj.obs, (horizon + 3, params.num_rows, params.num_candidates, env.NUM_JOB_FEATURES))
    traj = to_numpy(traj)
    info = traj.info
    truncated_at = np.flatnonzero(info["truncated"])
    np.testing.assert_array_equal(truncated_at, [horizon - 1])
    np.testing.assert_array_equal(traj.done, info["truncated"])
    assert not info["terminated"].any()
    np.testing.assert_array_equal(traj.state.time, list(range(horizon)) + [0, 1, 2])
    assert info["backlog_after"][horizon - 1] > 0  # there was work to drop at the boundary
    day_two = traj.state  # the state the step after the boundary starts from
    np.testing.assert_array_equal(day_two.backlog[horizon], 0.0)
    np.testing.assert_array_equal(day_two.recent_utilisation[horizon], 0.0)
    assert info["backlog_before"][horizon] == 0
    assert info["num_arrived"].sum() > 0 and info["served_work"].sum() > 0


# ---------------------------------------------------------------------------------------
# Contract: jit, vmap, retracing, shapes and dtypes.


def tiny_states(params, seeds):
    """States of the tiny fleet reset from `seeds`, with some backlog."""
    states = []
    for seed in seeds:
        _, state = jit_reset(jax.random.key(seed), params)
        states.append(state.replace(backlog=jnp.array([0.3, 1.2, 0.7], jnp.float32) * seed))
    return states


def test_jit_equals_no_jit(tiny_params):
    (state,) = tiny_states(tiny_params, [1])
    actions = jnp.array([2, 1], jnp.int32)
    eager = env.step(jax.random.key(2), state, actions, tiny_params)
    jitted = jit_step(jax.random.key(2), state, actions, tiny_params)
    chex.assert_trees_all_close(eager, jitted, rtol=1e-6, atol=1e-6)
    chex.assert_trees_all_equal_dtypes(eager, jitted)


def test_vmap_over_seeds_equals_python_loop(tiny_params):
    seeds = [3, 4, 5]
    reset_keys = jnp.stack([jax.random.key(seed) for seed in seeds])
    step_keys = jax.random.split(jax.random.key(6), len(seeds))
    actions = jnp.array([[2, 1], [0, 0], [1, 2]], jnp.int32)
    backlog = jnp.array([0.3, 1.2, 0.7], jnp.float32) * jnp.array(seeds, jnp.float32)[:, None]

    @jax.jit
    @functools.partial(jax.vmap, in_axes=(0, 0, 0, 0))
    def reset_and_step(reset_key, step_key, backlog, actions):
        obs, state = env.reset(reset_key, tiny_params)
        return (obs, state), env.step(step_key, state.replace(backlog=backlog), actions, tiny_params)

    batched = reset_and_step(reset_keys, step_keys, backlog, actions)
    for i, state in enumerate(tiny_states(tiny_params, seeds)):
        single = (jit_reset(reset_keys[i], tiny_params), jit_step(step_keys[i], state, actions[i], tiny_params))
        chex.assert_trees_all_close(jax.tree.map(lambda x: x[i], batched), single, rtol=1e-6, atol=1e-6)
    assert not np.array_equal(batched[1][1].jobs.size[0], batched[1][1].jobs.size[1])


def test_step_compiles_once(tiny_params):
    chex.clear_trace_counter()
    step = jax.jit(chex.assert_max_traces(env.step, n=1))
    _, state = jit_reset(jax.random.key(0), tiny_params)
    actions = state.jobs.candidates[:, 0]
    _, state, _, _, _ = step(jax.random.key(1), state, actions, tiny_params)  # the state returned by step ...
    _, state, _, _, _ = step(jax.random.key(2), state, actions + 1, tiny_params)  # ... goes back in: no retrace
    assert int(state.time) == 2


@pytest.mark.parametrize("num_agents", [1, 2, 5, 200])
def test_shapes_and_dtypes(num_agents):
    params = env.make_params(env.CloudConfig(num_agents=num_agents))
    m, k, j = params.num_servers, params.num_candidates, params.num_rows
    assert (m, k) == (max(1, math.ceil(num_agents / 2)), min(8, m)) and 1 <= j <= num_agents

    @jax.jit
    def reset_and_step(key):
        obs0, state0 = env.reset(key, params)
        return (obs0, state0), env.step(key, state0, state0.jobs.candidates[:, 0], params)

    (obs0, state0), (obs, state, reward, done, info) = reset_and_step(jax.random.key(0))
    for o, s in ((obs0, state0), (obs, state)):
        chex.assert_shape(o, (j, k, env.NUM_JOB_FEATURES))
        chex.assert_type(o, jnp.float32)
        chex.assert_shape([s.backlog, s.recent_utilisation], (m,))
        chex.assert_type([s.backlog, s.recent_utilisation], jnp.float32)
        chex.assert_shape([s.burst_steps_left, s.time], ())
        chex.assert_type([s.burst_steps_left, s.time], jnp.int32)
        chex.assert_shape([s.jobs.size, s.jobs.valid], (j,))
        chex.assert_type([s.jobs.size, s.jobs.valid], [jnp.float32, jnp.bool_])
        chex.assert_shape(s.jobs.candidates, (j, k))
        chex.assert_type([s.jobs.candidates, s.jobs.num_overflow], jnp.int32)
        chex.assert_shape(s.jobs.num_overflow, ())
    chex.assert_trees_all_equal_shapes_and_dtypes(state0, state)
    chex.assert_shape([reward, done], ())
    chex.assert_type([reward, done], [jnp.float32, jnp.bool_])
    chex.assert_shape([info["response_time"], info["accepted"], info["rejected"]], (j,))
    chex.assert_type([info["response_time"], info["accepted"], info["rejected"]], [jnp.float32, jnp.bool_, jnp.bool_])
    scalars = ("num_arrived", "num_rejected", "num_overflow", "num_invalid", "response_time_sum", "arrived_work",
               "rejected_work",
               "served_work", "dropped_work", "backlog_before", "backlog_after", "capacity_work", "truncated",
               "terminated")
    assert set(info) == set(scalars) | {"response_time", "accepted", "rejected"}
    chex.assert_shape([info[name] for name in scalars], ())
    for name in ("num_arrived", "num_rejected", "num_overflow"):
        assert jnp.issubdtype(info[name].dtype, jnp.integer), name
    chex.assert_type([info["truncated"], info["terminated"]], jnp.bool_)
    chex.assert_tree_all_finite((obs0, obs, reward))


# ---------------------------------------------------------------------------------------
# Bad input: each invalid field raises ValueError naming it, before anything is traced.


@pytest.mark.parametrize("field, value", [
    ("num_agents", 0), ("num_agents", -3), ("num_agents", 2.5),
    ("servers_per_agent", 0.0), ("num_candidates", 0), ("candidate_sampling", "nearest"),
    ("horizon", 0), ("mean_job_steps", 0.0), ("mean_job_steps", -1.0), ("mean_job_steps", float("nan")),
    ("utilisation", 0.0), ("utilisation", 1.6), ("utilisation", float("nan")), ("utilisation", float("inf")),
    ("diurnal_amplitude", 1.0), ("burst_rate", -0.1), ("burst_factor", 0.5), ("burst_duration", 0.0),
    ("large_fraction", -0.1), ("large_fraction", 1.5), ("small_sigma", -0.5), ("small_sigma", float("nan")),
    ("large_shape", 0.0), ("large_shape", float("nan")), ("large_scale", -4.0), ("large_clip", 0.5),
    ("buffer_time", 0.0), ("rejection_penalty", -1.0), ("utilisation_average_time", 0.0), ("decisions", "at_once"),
])
def test_invalid_config_field_is_named(field, value):
    with pytest.raises(ValueError, match=field):
        env.make_params(env.CloudConfig(**{field: value}))


def test_peak_arrival_probability_above_one_is_rejected():
    # p0 = rho M / (N mean_job_steps) = 1.0 * 20 / (10 * 0.6) = 3.3 jobs per agent per step.
    config = env.CloudConfig(num_agents=10, servers_per_agent=2.0, mean_job_steps=0.6, utilisation=1.0)
    with pytest.raises(ValueError, match="peak arrival probability"):
        env.make_params(config)
    # The daily peak alone: p0 = 0.75 * 5 / (10 * 0.5) = 0.75 is fine flat, 0.75 * 1.5 = 1.125 at the peak.
    env.make_params(env.CloudConfig(num_agents=10, mean_job_steps=0.5, diurnal_amplitude=0.0))
    with pytest.raises(ValueError, match="peak arrival probability"):
        env.make_params(env.CloudConfig(num_agents=10, mean_job_steps=0.5, diurnal_amplitude=0.5))


@pytest.mark.parametrize("field, value", [("small_sigma", 5.5), ("large_scale", 1e26), ("large_clip", 1e16)])
def test_unusable_size_parameters_are_rejected(field, value):
    with pytest.raises(ValueError, match=field):
        env.make_params(env.CloudConfig(num_agents=4, **{field: value}))


def analytic_mean_size(config: env.CloudConfig) -> float:
    """Mean of the unscaled bimodal size in float64: lognormal mean exp(s^2/2) and the
    clipped Pareto's xm (1 + (c^(1-a) - 1)/(1 - a)) (xm (1 + log c) at a = 1)."""
    a, c, xm = config.large_shape, config.large_clip, config.large_scale
    tail = np.log(c) if abs(a - 1) < 1e-12 else (c ** (1 - a) - 1) / (1 - a)
    return (1 - config.large_fraction) * np.exp(config.small_sigma**2 / 2) + config.large_fraction * xm * (1 + tail)


@pytest.mark.parametrize("overrides", [
    dict(large_shape=70.0),  # xm^a = 4^70 overflowed float32: every size was NaN
    dict(large_scale=5e13),  # the largest accepted scale at the default clip (1e26 gave all-zero sizes)
    dict(large_fraction=0.0, large_shape=70.0),  # 0 x NaN = NaN
    dict(small_sigma=5.0),  # the largest accepted sigma (its mean is set by events too rare to sample)
    dict(large_shape=1.0),  # the log branch of the clipped Pareto mean
    dict(large_shape=0.5),  # a tail index below 1 (mean finite only by the clip)
])
def test_accepted_size_parameters_give_positive_sizes_with_mean_one(overrides):
    """A config that validates gives usable jobs: every sampled size finite and > 0, and
    the sample mean 1 within 5 standard errors (the sizes are rescaled by the mean), and
    the mean used for the rescaling equals the float64 formula."""
    config = env.CloudConfig(num_agents=4, **overrides)
    params = env.make_params(config)
    sizes = np.asarray(jax.jit(lambda k: arrivals.sample_sizes(k, params, (200_000,)))(jax.random.key(0)), np.float64)
    assert np.all(np.isfinite(sizes)) and np.all(sizes > 0), (overrides, sizes.min(), sizes.max())
    if config.small_sigma <= 1:
        assert abs(sizes.mean() - 1) < 5 * sizes.std() / np.sqrt(sizes.size) + 1e-3, (overrides, sizes.mean())
    raw_mean = float(arrivals._raw_mean_size(params))
    assert raw_mean == pytest.approx(analytic_mean_size(config), rel=1e-5)


def test_out_of_range_actions_are_rejected_at_the_penalty_and_conserve_work(tiny_params):
    """A server index outside [0, M) (-1 and M here) rejects its job at the penalty and adds
    its work to no queue; the in-range jobs of the step are served as without them."""
    params = tiny_params
    m = params.num_servers
    sizes = jnp.array([1.0, 0.5], jnp.float32)
    state = env.reset(jax.random.key(0), params)[1]
    state = state.replace(backlog=jnp.array([0.5, 0.0, 1.0], jnp.float32),
                          jobs=state.jobs.replace(size=sizes, valid=jnp.array([True, True])))
    penalty_steps = float(params.rejection_penalty * params.mean_job_steps)
    for bad in (-1, m, m + 7):
        _, next_state, _, _, info = env.step(jax.random.key(1), state, jnp.array([bad, 1], jnp.int32), params)
        assert int(info["num_invalid"]) == 1 and int(info["num_rejected"]) == 1
        assert bool(info["rejected"][0]) and not bool(info["accepted"][0])
        assert float(info["response_time"][0]) == penalty_steps
        # job 1 alone at server 1 (empty, mu = 0.5): response 0.5 / 0.5 = 1 step
        assert float(info["response_time"][1]) == 1.0
        # work conservation: the rejected job's 1.0 enters no queue (backlog 1.5 + 0.5 arriving)
        np.testing.assert_allclose(float(info["backlog_before"]) + float(info["arrived_work"])
                                   - float(info["rejected_work"]) - float(info["served_work"]),
                                   float(info["backlog_after"]), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(next_state.backlog), [0.25, 0.0, 0.25], atol=1e-6)
    _, _, _, _, info = env.step(jax.random.key(1), state, jnp.array([0, 1], jnp.int32), params)
    assert int(info["num_invalid"]) == 0
