"""In-turn decisions (`CloudConfig(decisions="in_turn")`): the jobs of a step decide in agent
order, each seeing the work the earlier jobs of its step sent; and tentative ones
(`"tentative"`): each job picks twice, the second time seeing the others' first picks.

References: a plain-Python loop over the slots that rebuilds each job's features after
the earlier jobs (numpy, float64), `baselines.sequential_greedy_policy` (the in-turn
greedies, written independently of the observation), and the telescoping identity of
the in-turn guidance: the guidance of a step's jobs at their chosen servers sums to the
step's change of the potential. DG-PG at alpha = 0 stays MAPPO bit for bit.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgpg_jax import train
from dgpg_jax.tasks import cloud as env
from dgpg_jax.tasks.cloud import baselines
from dgpg_jax.tasks.cloud.dynamics import earlier_work
from dgpg_jax.tasks.cloud.observation import current_reference_share
from dgpg_jax.tasks.cloud.guidance import POTENTIALS, make_aggregates

IN_TURN = env.CloudConfig(num_agents=200, decisions="in_turn")


def busy_states(config: env.CloudConfig, steps: int, seed: int = 0) -> list:
    """States of `steps` consecutive steps under Best-Fit (queues non-empty, several jobs a
    step), those with at least two jobs."""
    task = config.make_task()
    params = task.params
    step, best_fit = jax.jit(task.step), jax.jit(lambda s: baselines.BASELINES["best_fit"](None, s, params))
    _, state = task.reset(jax.random.key(seed), params)
    out = []
    for t in range(steps):
        if int(state.jobs.valid.sum()) >= 2:
            out.append(state)
        state = step(jax.random.key(1000 + t), state, best_fit(state), params)[1]
    return out


def reference_in_turn(state, params, choice: np.ndarray) -> np.ndarray:
    """(J, k, F) features of each job after the earlier jobs of its step went to their
    chosen candidates: a Python loop over slots, float64."""
    jobs = state.jobs
    size, cand, valid = (np.asarray(x) for x in (jobs.size, jobs.candidates, jobs.valid))
    mu = np.asarray(params.capacity, np.float64) / float(params.mean_job_steps)
    scale = float(params.mean_job_steps)
    load = np.asarray(state.backlog, np.float64).copy()
    share = np.asarray(current_reference_share(state, params), np.float64)
    util = np.asarray(state.recent_utilisation, np.float64)
    phase = 2 * np.pi * int(state.time) / params.horizon
    out = np.zeros(cand.shape + (10,))
    for i in range(len(size)):
        if not valid[i]:
            continue
        c = cand[i]
        wait = load[c] / mu[c] / scale
        service = size[i] / mu[c] / scale
        finish = wait + service
        out[i] = np.stack([np.log1p(wait), np.log1p(service), np.log1p(finish), np.log1p(finish - finish.min()),
                           np.log(np.asarray(params.capacity, np.float64)[c]), util[c], share[c],
                           np.full(len(c), np.log(size[i])), np.full(len(c), np.sin(phase)),
                           np.full(len(c), np.cos(phase))], axis=-1)
        load[c[choice[i]]] += size[i]
    return out


def random_choose(key, obs):
    return jax.random.randint(key, (), 0, obs.shape[0])


def greedy_choose(beta: float):
    """The in-turn greedy's criterion (W + (1 + beta) w) / mu read back from the features."""

    def choose(key, obs):
        return jnp.argmin(jnp.expm1(obs[:, 0]) + (1 + beta) * jnp.expm1(obs[:, 1]))

    return choose


def test_each_job_sees_the_work_of_the_earlier_jobs_of_its_step():
    task = IN_TURN.make_task()
    params = task.params
    decide = jax.jit(lambda s, k: task.decide(s, params, random_choose, jax.random.split(k, params.num_rows)))
    seen_more = 0
    for t, state in enumerate(busy_states(IN_TURN, 40)[-6:]):
        obs, choice = decide(state, jax.random.key(t))
        valid = np.asarray(state.jobs.valid)
        expected = reference_in_turn(state, params, np.asarray(choice))
        np.testing.assert_allclose(np.asarray(obs), expected, rtol=2e-5, atol=2e-6)
        # the first job sees the step-start queues, as every job does deciding at once ...
        first = int(np.argmax(valid))
        np.testing.assert_allclose(np.asarray(obs)[first], np.asarray(task.observe(state, params))[first], rtol=1e-6)
        seen_more += int(np.sum(np.asarray(obs)[valid][:, :, 0] > np.asarray(task.observe(state, params))[valid][:, :, 0]))
    assert seen_more > 0  # later jobs saw more work than the step-start queues: the check has power


def test_tentative_jobs_see_the_other_jobs_first_picks():
    """decisions="tentative" with a deterministic "actor" (earliest finish among the
    candidates): the first picks are JSQ-k's; each job's second features are those of a
    Python loop with every other job's first pick added to the queues, and its decision
    is the earliest finish on them."""
    config = dataclasses.replace(IN_TURN, decisions="tentative")
    task = config.make_task()
    params = task.params
    decide = jax.jit(lambda s: task.decide(s, params, greedy_choose(0.0), jax.random.split(jax.random.key(0),
                                                                                          params.num_rows)))
    jsq = jax.jit(lambda s: baselines.BASELINES["jsq"](None, s, params))
    moved = 0
    for state in busy_states(config, 40)[-6:]:
        obs, choice = decide(state)
        first = np.asarray(jsq(state))
        size, cand, valid = (np.asarray(x) for x in (state.jobs.size, state.jobs.candidates, state.jobs.valid))
        backlog = np.asarray(state.backlog, np.float64)
        for i in np.flatnonzero(valid):
            others = backlog.copy()
            for q in np.flatnonzero(valid):
                if q != i:
                    others[first[q]] += size[q]
            single = state.replace(backlog=jnp.asarray(others, jnp.float32))
            expected = np.asarray(task.observe(single, params))[i]
            np.testing.assert_allclose(np.asarray(obs)[i], expected, rtol=2e-5, atol=2e-6)
            assert int(choice[i]) == int(np.argmin(np.expm1(expected[:, 0]) + np.expm1(expected[:, 1])))
            moved += int(cand[i, int(choice[i])] != first[i])
    assert moved > 0  # some job changed its mind: the check has power


@pytest.mark.parametrize("name, beta", [("greedy_k", -0.5), ("bestfit_k", 0.0)])
def test_the_in_turn_greedy_as_a_fixed_actor_reproduces_it_exactly(name, beta):
    """An "actor" that scores the greedy's criterion from the features picks, through
    `decide_in_turn`, the same server as `baselines.<name>` for every job of 150 steps."""
    task = IN_TURN.make_task()
    params = task.params
    decide = jax.jit(lambda s: task.to_actions(s, task.decide(
        s, params, greedy_choose(beta), jax.random.split(jax.random.key(0), params.num_rows))[1]))
    greedy = jax.jit(lambda s: baselines.BASELINES[name](None, s, params))
    simultaneous = jax.jit(lambda s: baselines.pick_candidate(s.jobs.candidates, jax.vmap(greedy_choose(beta))(
        None, task.observe(s, params))))
    decided = differ = 0
    for state in busy_states(IN_TURN, 150):
        valid = np.asarray(state.jobs.valid)
        np.testing.assert_array_equal(np.asarray(decide(state))[valid], np.asarray(greedy(state))[valid])
        differ += int((np.asarray(simultaneous(state)) != np.asarray(greedy(state)))[valid].sum())
        decided += int(valid.sum())
    assert decided > 500 and differ > 10, (decided, differ)  # deciding at once would not pass


def test_earlier_work_matches_a_python_loop():
    rng = np.random.default_rng(0)
    j, k, m = 40, 6, 7
    server = rng.integers(0, m, j)
    size = rng.uniform(0.1, 3.0, j).astype(np.float32)
    valid = rng.uniform(size=j) < 0.7
    candidates = rng.integers(0, m, (j, k))
    candidates[:, 0] = server  # a job's own server among its candidates
    got = np.asarray(jax.jit(earlier_work)(jnp.asarray(server, jnp.int32), jnp.asarray(size), jnp.asarray(valid),
                                           jnp.asarray(candidates, jnp.int32)))
    expected = np.array([[sum(size[q] for q in range(i) if valid[q] and server[q] == candidates[i, b])
                          for b in range(k)] for i in range(j)])
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-5)
    assert np.count_nonzero(expected) > j  # the check has power


@pytest.mark.parametrize("name", ["area", "congestion", "split"])
def test_in_turn_guidance_sums_to_the_change_of_the_potential(name):
    """Job i's in-turn guidance at its own server is G(earlier jobs and i) - G(earlier jobs),
    so a step's jobs sum to G(all the step's work) - G(none). Area guidance in turn is the
    greedy's score: its best candidate is the one greedy_k picks."""
    task = IN_TURN.make_task()
    params, potential = task.params, POTENTIALS[name]
    guide = jax.jit(lambda s, c: task.guidance(potential, s, c, params, True))
    decide = jax.jit(lambda s: task.decide(s, params, greedy_choose(-0.5),
                                                    jax.random.split(jax.random.key(0), params.num_rows))[1])
    mu = env.service_rate(params)
    for state in busy_states(IN_TURN, 60)[-4:]:
        choice = decide(state)
        g = np.asarray(guide(state, choice))
        valid = np.asarray(state.jobs.valid)
        taken = np.take_along_axis(g, np.asarray(choice)[:, None], axis=1)[:, 0][valid]
        server = task.to_actions(state, choice)
        arriving = env.dynamics.server_totals(server, state.jobs.size, state.jobs.valid, params.num_servers)
        rate = env.arrivals.expected_work_rate(params, state.time, state.burst_steps_left > 0)
        after = make_aggregates(state.backlog, arriving, mu, rate)
        total = float(potential(after).sum() - potential(after.replace(arriving_work=jnp.zeros_like(arriving))).sum())
        assert float(taken.sum()) == pytest.approx(total, rel=1e-4, abs=1e-4 * float(np.abs(taken).max()))
        if name == "area":
            np.testing.assert_array_equal(np.asarray(choice)[valid], g.argmax(axis=1)[valid])


def test_default_potential_follows_the_decisions():
    """In turn (the default), the default potential is light_congestion, the measured best
    there; deciding at once or tentatively, area. Every potential stays available by name."""
    assert env.CloudConfig().decisions == "in_turn"
    for decisions, first in (("in_turn", "light_congestion"), ("simultaneous", "area"), ("tentative", "area")):
        task = env.CloudConfig(decisions=decisions).make_task()
        assert next(iter(task.potentials)) == first and task.get_potential(None) is POTENTIALS[first]
        assert set(task.potentials) == set(POTENTIALS)
    assert train.make_learner(train.TrainConfig()).potential is POTENTIALS["light_congestion"]


def test_learned_policy_in_turn_runs_the_actor_job_by_job():
    """learned_policy in turn, deterministic: every job's server is the argmax of the actor
    on the features it saw (decide's obs), which differ from the step-start ones."""
    task = IN_TURN.make_task()
    params = task.params
    learner = train.make_learner(train.TrainConfig(env=IN_TURN))
    actor_params = learner.actor.init(jax.random.key(1), task.observe(busy_states(IN_TURN, 3)[0], params))
    state = busy_states(IN_TURN, 40)[-1]
    obs, choice = jax.jit(lambda s, k: train.decide(task, learner.actor, actor_params, s, params, k, True))(
        state, jax.random.key(0))
    valid = np.asarray(state.jobs.valid)
    np.testing.assert_array_equal(np.asarray(choice)[valid],
                                  np.asarray(learner.actor.apply(actor_params, obs)).argmax(-1)[valid])
    servers = jax.jit(train.learned_policy(task, learner.actor, actor_params, deterministic=True))(
        jax.random.key(0), state, params)
    np.testing.assert_array_equal(np.asarray(servers)[valid], np.asarray(task.to_actions(state, choice))[valid])


IN_TURN_TRAIN = train.TrainConfig(env=env.CloudConfig(num_agents=20, horizon=60, decisions="in_turn"), num_episodes=3,
                                  updates_per_episode=2)


@pytest.mark.slow
def test_alpha_zero_dgpg_is_mappo_bit_for_bit_in_turn():
    key = jax.random.key(3)
    zero = dataclasses.replace(IN_TURN_TRAIN, alpha_start=0.0, alpha_end=0.0)
    runner_dgpg, logs_dgpg = jax.jit(train.make_train(zero))(key)
    runner_mappo, logs_mappo = jax.jit(train.make_train(dataclasses.replace(IN_TURN_TRAIN, algo="mappo")))(key)
    for a, b in ((runner_dgpg, runner_mappo), (logs_dgpg._replace(guidance_norm=None),
                                               logs_mappo._replace(guidance_norm=None))):
        jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)
    assert np.all(np.asarray(logs_dgpg.guidance_norm) > 0)  # the guidance was there, and ignored
