"""Tests of the guidance: potentials, exact and first-order guidance values, centring with
the policy, the exact expected-guidance loss, sampling from the actor, normalisation.

Oracle for the exact guidance: the total potential G = sum_j potential(agg)_j evaluated
directly (float64, jax.enable_x64) with job i's work moved: G(job i at b, the other jobs
where they went) - G(job i removed). The reference split and the water-level allocation
are exogenous aggregates (the reference split depends on the expected rate only, the water
level on the step's total work, which moving one job does not change), so the direct G
holds them fixed too.

Hand-worked case (HAND below): mu = (1, 2), W = (1, 0); job 0 (w 1) went to server 0, job 1
(w 2) to server 1, both see candidates (0, 1); A = (1, 2).
  area, exact, g_i(b) = -(W_b + A_b^{-i} + w_i/2) w_i / mu_b:
    job 0 (A^{-0} = (0, 2)): b=0: -(1 + 0 + 0.5) * 1 / 1 = -1.5;  b=1: -(0 + 2 + 0.5) * 1 / 2 = -1.25
    job 1 (A^{-1} = (1, 0)): b=0: -(1 + 1 + 1) * 2 / 1 = -6;      b=1: -(0 + 0 + 1) * 2 / 2 = -1
  area, first order, -(W_b + A_b) w_i / mu_b:
    job 0: b=0: -(1 + 1) * 1 / 1 = -2;  b=1: -(0 + 2) * 1 / 2 = -1
    job 1: b=0: -(1 + 1) * 2 / 1 = -4;  b=1: -(0 + 2) * 2 / 2 = -2
  exact - first order = +w^2/(2 mu) at the job's own server, -w^2/(2 mu) elsewhere:
    job 0: +0.5, -0.25;  job 1: -2, +1.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from dgpg_jax import algorithms, train
from dgpg_jax.tasks import cloud as env
from dgpg_jax.algorithms import centred_guidance, normalise
from dgpg_jax.tasks.cloud.dynamics import server_totals
from dgpg_jax.tasks.cloud.guidance import POTENTIALS, Aggregates, make_aggregates, make_congestion_potential
from dgpg_jax.tasks.cloud.guidance import candidate_guidance as eager_guidance
from dgpg_jax.networks import Actor
from conftest import at_once

# Jitted once per shape: op-by-op eager dispatch compiles every primitive and dominated
# this file's runtime. The potential is a static (hashable) argument.
candidate_guidance = jax.jit(eager_guidance, static_argnums=0, static_argnames="exact")


@functools.partial(jax.jit, static_argnames="num_servers")
def step_aggregates(backlog, service_rate, expected_rate, server, size, valid, num_servers: int) -> Aggregates:
    """make_aggregates with the arriving work of the jobs as dispatched."""
    return make_aggregates(backlog, server_totals(server, size, valid, num_servers), service_rate, expected_rate)


def cubic_potential(agg: Aggregates) -> jax.Array:
    """A user-written elementwise potential, -(W + A)^3 / mu, with no hand-written derivative."""
    return -((agg.backlog + agg.arriving_work) ** 3) / agg.service_rate


ALL_POTENTIALS = {**POTENTIALS, "cubic": cubic_potential}
# Built once: each potential is a static jit argument, hashed by identity, so a fresh
# closure per test would recompile.
CONGESTION = {d: make_congestion_potential(d) for d in (0.0, 0.3, 0.6, 0.9)}


def first_order_closed_form(name: str, agg: Aggregates) -> np.ndarray:
    """(M,) dG/dA_b by hand, float64, reference and level work held fixed:
    area  -(W + A)^2/(2 mu)        -> -(W + A) / mu
    split -(A - x~)^2 / (2 mu^2)   -> -(A - x~) / mu^2
    level -(A - x_level)^2/(2 mu)  -> -(A - x_level) / mu
    congestion -((W + A)^2 - 0.6 A^2)/(2 mu) -> -(W + 0.4 A) / mu
    light_congestion -((W + A)^2 - 0.3 A^2)/(2 mu) -> -(W + 0.7 A) / mu
    cubic -(W + A)^3 / mu          -> -3 (W + A)^2 / mu"""
    w, a, mu, ref, lev = (np.asarray(x, np.float64) for x in (agg.backlog, agg.arriving_work, agg.service_rate,
                                                              agg.reference_work, agg.level_work))
    return {"area": -(w + a) / mu, "split": -(a - ref) / mu**2, "level": -(a - lev) / mu,
            "congestion": -(w + 0.4 * a) / mu, "light_congestion": -(w + 0.7 * a) / mu,
            "cubic": -3 * (w + a) ** 2 / mu}[name]


def random_case(seed: int, num_servers: int = 7, num_jobs: int = 6, num_candidates: int = 4):
    """One step's jobs and aggregates, float32 as in the env. Candidates are drawn with
    replacement (duplicates happen, as in the env); one job went to a server outside its
    candidates (a global policy); the last slot is empty and holds junk size/server."""
    rng = np.random.default_rng(seed)
    mu = rng.uniform(0.2, 3.0, num_servers).astype(np.float32)
    backlog = (rng.exponential(2.0, num_servers) * (rng.random(num_servers) < 0.7)).astype(np.float32)
    size = rng.lognormal(0.0, 0.6, num_jobs).astype(np.float32)
    candidates = rng.integers(0, num_servers, (num_jobs, num_candidates)).astype(np.int32)
    server = candidates[np.arange(num_jobs), rng.integers(0, num_candidates, num_jobs)]
    server[-2] = rng.integers(0, num_servers)
    valid = np.ones(num_jobs, bool)
    valid[-1] = False
    expected_rate = np.float32(0.7 * mu.sum())
    agg = step_aggregates(jnp.asarray(backlog), jnp.asarray(mu), jnp.asarray(expected_rate), jnp.asarray(server),
                          jnp.asarray(size), jnp.asarray(valid), num_servers)
    return agg, jnp.asarray(size), jnp.asarray(candidates), jnp.asarray(server), jnp.asarray(valid)


def hand_case():
    size, candidates = jnp.array([1.0, 2.0]), jnp.array([[0, 1], [0, 1]], jnp.int32)
    server, valid = jnp.array([0, 1], jnp.int32), jnp.array([True, True])
    agg = step_aggregates(jnp.array([1.0, 0.0]), jnp.array([1.0, 2.0]), jnp.asarray(1.0), server, size, valid, 2)
    return agg, size, candidates, server, valid


def direct_guidance(potential, agg, size, candidates, server, valid) -> np.ndarray:
    """(J, k) G(job i at b) - G(job i removed), the total potential summed over all servers,
    in float64, one job and one candidate at a time."""
    with jax.enable_x64(True):
        agg64 = jax.tree.map(lambda x: jnp.asarray(np.asarray(x, np.float64)), agg)
        total = jax.jit(lambda work: potential(agg64.replace(arriving_work=work)).sum())
        work = np.asarray(agg64.arriving_work)
        size, candidates, server, valid = (np.asarray(x) for x in (size, candidates, server, valid))
        values = np.zeros(candidates.shape)
        for i in np.flatnonzero(valid):
            without = work.copy()
            without[server[i]] -= size[i]
            g_without = float(total(without))
            for c, b in enumerate(candidates[i]):
                with_job = without.copy()
                with_job[b] += size[i]
                values[i, c] = float(total(with_job)) - g_without
    return values


def area_closed_form(agg, size, candidates, server, valid, discount: float = 0.0) -> np.ndarray:
    """g_i(b) = -(W_b + (1 - discount)(A_b^{-i} + w_i/2)) w_i / mu_b, numpy float64
    (discount 0: `area`; d: `make_congestion_potential(d)`)."""
    w, a, mu = (np.asarray(x, np.float64) for x in (agg.backlog, agg.arriving_work, agg.service_rate))
    size, candidates, server, valid = (np.asarray(x) for x in (size, candidates, server, valid))
    size = size.astype(np.float64)
    own = np.where(candidates == server[:, None], size[:, None], 0.0)
    others = a[candidates] - own
    values = -(w[candidates] + (1 - discount) * (others + size[:, None] / 2)) * size[:, None] / mu[candidates]
    return np.where(valid[:, None], values, 0.0)


# ---------------------------------------------------------------------------------------
# exact guidance
# ---------------------------------------------------------------------------------------

def test_area_guidance_hand_worked():
    case = hand_case()
    np.testing.assert_allclose(candidate_guidance(POTENTIALS["area"], *case, exact=True), [[-1.5, -1.25], [-6.0, -1.0]],
                               rtol=1e-6)
    np.testing.assert_allclose(candidate_guidance(POTENTIALS["area"], *case, exact=False), [[-2.0, -1.0], [-4.0, -2.0]],
                               rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", sorted(ALL_POTENTIALS))
def test_exact_guidance_is_the_direct_difference_of_the_total_potential(name, seed):
    potential = ALL_POTENTIALS[name]
    case = random_case(seed)
    expected = direct_guidance(potential, *case)
    values = np.asarray(candidate_guidance(potential, *case, exact=True))
    assert values.dtype == np.float32
    assert np.all(values[~np.asarray(case[-1])] == 0.0)
    # float32 against float64: G's terms are O(10); the difference of two is one term.
    np.testing.assert_allclose(values, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    with jax.enable_x64(True):
        case64 = jax.tree.map(lambda x: jnp.asarray(np.asarray(x, np.float64)) if np.asarray(x).dtype == np.float32
                              else jnp.asarray(x), case)
        values64 = np.asarray(eager_guidance(potential, *case64, exact=True))
    np.testing.assert_allclose(values64, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_area_exact_guidance_closed_form(seed):
    case = random_case(seed)
    np.testing.assert_allclose(candidate_guidance(POTENTIALS["area"], *case, exact=True), area_closed_form(*case),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("discount", sorted(CONGESTION))
def test_congestion_exact_guidance_closed_form(discount, seed):
    """make_congestion_potential(d)'s exact guidance of job i at b is
    -(W_b + (1 - d)(A_b^{-i} + w_i/2)) w_i / mu_b (the beta = -(1 + d)/2 greedy's score),
    0 on the empty row, for d in {0, 0.3, 0.6, 0.9}."""
    case = random_case(seed)
    np.testing.assert_allclose(candidate_guidance(CONGESTION[discount], *case, exact=True),
                               area_closed_form(*case, discount=discount), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_congestion_endpoints_are_area_and_the_registered_potential(seed):
    """Discount 0 gives the `area` potential's exact and first-order guidance bit for bit, and
    POTENTIALS["congestion"] is the discount 0.6 potential (same guidance bit for bit)."""
    case = random_case(seed)
    for exact in (True, False):
        np.testing.assert_array_equal(candidate_guidance(CONGESTION[0.0], *case, exact=exact),
                                      candidate_guidance(POTENTIALS["area"], *case, exact=exact))
        np.testing.assert_array_equal(candidate_guidance(POTENTIALS["congestion"], *case, exact=exact),
                                      candidate_guidance(CONGESTION[0.6], *case, exact=exact))


# ---------------------------------------------------------------------------------------
# first-order guidance (jax.grad of the potential)
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", sorted(ALL_POTENTIALS))
def test_first_order_guidance_is_size_times_analytic_gradient(name, seed):
    agg, size, candidates, server, valid = case = random_case(seed)
    values = np.asarray(candidate_guidance(ALL_POTENTIALS[name], *case, exact=False))
    gradient = first_order_closed_form(name, agg)
    expected = np.where(np.asarray(valid)[:, None], gradient[np.asarray(candidates)] * np.asarray(size)[:, None], 0.0)
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


@pytest.mark.parametrize("seed", [0, 1])
def test_area_exact_minus_first_order_is_half_size_squared_over_rate(seed):
    agg, size, candidates, server, valid = case = random_case(seed)
    exact = np.asarray(candidate_guidance(POTENTIALS["area"], *case, exact=True), np.float64)
    first = np.asarray(candidate_guidance(POTENTIALS["area"], *case, exact=False), np.float64)
    size, candidates, server, valid = (np.asarray(x) for x in (size, candidates, server, valid))
    half = size[:, None].astype(np.float64) ** 2 / (2 * np.asarray(agg.service_rate, np.float64)[candidates])
    expected = np.where(candidates == server[:, None], half, -half) * valid[:, None]
    np.testing.assert_allclose(exact - first, expected, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------
# centring with the policy: exact expectation vs Monte Carlo
# ---------------------------------------------------------------------------------------

def one_job_guidance(seed: int = 3):
    """Guidance values (k,) of job 0 (area, exact) among its 5 distinct candidates, and
    random logits (k,)."""
    rng = np.random.default_rng(seed)
    agg, size, _, server, valid = random_case(seed, num_servers=9, num_jobs=6, num_candidates=5)
    candidates = jnp.asarray(np.stack([rng.permutation(9)[:5] for _ in range(6)]), jnp.int32)
    values = candidate_guidance(POTENTIALS["area"], agg, size, candidates, server, valid, exact=True)[0]
    logits = jnp.asarray(rng.normal(0.0, 1.0, 5), jnp.float32)
    return values, logits


def expected_guidance(logits, values):
    return jax.nn.softmax(logits) @ values


def test_centred_guidance_has_zero_policy_mean_exactly_and_by_sampling():
    values, logits = one_job_guidance()
    probs = jax.nn.softmax(logits)
    centred = centred_guidance(values[None], probs[None])[0]
    np.testing.assert_allclose(probs @ centred, 0.0, atol=1e-6 * float(jnp.abs(values).max()))
    actions = jax.random.categorical(jax.random.key(0), logits, shape=(200_000,))
    samples = np.asarray(centred[actions], np.float64)
    standard_error = samples.std() / np.sqrt(samples.size)
    assert abs(samples.mean()) < 4 * standard_error


def test_area_guidance_moves_probability_to_earlier_finish():
    # Five equal servers (mu 1) so that g = -w * finish + const; other jobs add A^{-i}.
    # finish_b = W_b + A_b^{-i} + w with W = (4, 0, 2, 1, 3), A^{-i} = (0, 0.5, 0, 1.5, 0):
    # (5, 1.5, 3, 3.5, 4), mean 3.4 -> from uniform logits, candidates 1, 2 gain, 0, 3, 4 lose.
    backlog, mu = jnp.array([4.0, 0.0, 2.0, 1.0, 3.0]), jnp.ones(5)
    size = jnp.array([1.0, 0.5, 1.5])
    server, valid = jnp.array([0, 1, 3], jnp.int32), jnp.array([True, True, True])
    candidates = jnp.broadcast_to(jnp.arange(5, dtype=jnp.int32), (3, 5))
    agg = step_aggregates(backlog, mu, jnp.asarray(3.0), server, size, valid, 5)
    values = candidate_guidance(POTENTIALS["area"], agg, size, candidates, server, valid, exact=True)[0]
    finish = np.array([5.0, 1.5, 3.0, 3.5, 4.0])
    logits = jnp.zeros(5)
    gradient = jax.grad(expected_guidance)(logits, values)
    new_probs = np.asarray(jax.nn.softmax(logits + 0.1 * gradient))
    np.testing.assert_array_equal(np.sign(new_probs - 0.2), np.sign(finish.mean() - finish))
    assert new_probs @ finish < finish.mean()


# ---------------------------------------------------------------------------------------
# the exact expected-guidance loss
# ---------------------------------------------------------------------------------------

guidance_loss_and_grad = jax.jit(jax.value_and_grad(algorithms.expected_guidance_loss))


def guidance_loss_case(seed: int, shape: tuple[int, ...]):
    """Random float32 logits and guidance (..., k) and a mask (...) with valid and invalid
    jobs; the invalid jobs hold finite junk guidance, which must not count."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, shape).astype(np.float32)
    valid = rng.random(shape[:-1]) < 0.6
    valid.flat[0], valid.flat[-1] = True, False
    guidance = np.where(valid[..., None], rng.normal(-3.0, 2.0, shape), rng.uniform(-1e3, 1e3, shape))
    return logits, guidance.astype(np.float32), valid


def guidance_loss_reference(logits, guidance, valid, alpha: float):
    """numpy float64: loss -alpha mean_{valid i} sum_b pi_ib g_ib and its gradient in the
    logits, -alpha pi (g - sum_b pi_b g_b) / count on valid jobs, 0 on invalid ones."""
    logits, guidance = np.asarray(logits, np.float64), np.asarray(guidance, np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    expected = (probs * guidance).sum(-1)
    count = max(int(valid.sum()), 1)
    loss = -alpha * expected[valid].sum() / count
    gradient = -alpha * probs * (guidance - expected[..., None]) / count
    return loss, np.where(valid[..., None], gradient, 0.0)


@pytest.mark.parametrize("shape", [(9, 5), (3, 6, 4)])
@pytest.mark.parametrize("alpha", [0.7, 2.5])
def test_expected_guidance_loss_value_and_logit_gradient(alpha, shape):
    """algorithms.expected_guidance_loss: the value is -alpha times the mean over valid jobs
    of sum_b pi_b g_b; jax.grad in the logits is -alpha pi (g - E_pi g) / count on valid jobs
    (count = number of valid jobs), which is -alpha pi centred_guidance(g, pi) / count, and
    exactly 0 on invalid jobs whatever their guidance holds."""
    logits, values, valid = guidance_loss_case(int(10 * alpha) + len(shape), shape)
    loss, gradient = guidance_loss_and_grad(jnp.asarray(logits), jnp.asarray(values), jnp.asarray(valid),
                                            jnp.float32(alpha))
    expected_loss, expected_gradient = guidance_loss_reference(logits, values, valid, alpha)
    gradient = np.asarray(gradient)
    assert gradient.dtype == np.float32 and gradient.shape == shape
    np.testing.assert_allclose(float(loss), expected_loss, rtol=1e-5)
    np.testing.assert_array_equal(gradient[~valid], 0.0)
    np.testing.assert_allclose(gradient, expected_gradient, rtol=1e-4, atol=1e-6 * np.abs(expected_gradient).max())
    probs = jax.nn.softmax(jnp.asarray(logits), axis=-1)
    via_centring = -alpha * probs * centred_guidance(jnp.asarray(values), probs) / valid.sum()
    np.testing.assert_allclose(gradient[valid], np.asarray(via_centring)[valid], rtol=1e-4,
                               atol=1e-6 * np.abs(expected_gradient).max())


def test_expected_guidance_loss_is_exactly_zero_at_zero_alpha_or_no_valid_job():
    """alpha = 0 gives loss 0 and gradient 0 exactly (junk guidance on invalid jobs
    included), and so does a batch with no valid job at any alpha (no 0/0)."""
    logits, values, valid = guidance_loss_case(7, (9, 5))
    for alpha, mask in ((0.0, valid), (1.3, np.zeros_like(valid))):
        loss, gradient = guidance_loss_and_grad(jnp.asarray(logits), jnp.asarray(values), jnp.asarray(mask),
                                                jnp.float32(alpha))
        assert float(loss) == 0.0
        np.testing.assert_array_equal(gradient, np.zeros((9, 5)))


# ---------------------------------------------------------------------------------------
# sampling from the actor (train._sample, train.learned_policy)
# ---------------------------------------------------------------------------------------

NUM_DRAWS = 20_000


@functools.cache
def actor_case():
    """An Actor((8,)) initialised on a reset observation (N = 10) with its output kernel times
    100, so its logits are clearly non-uniform (probabilities about 0.04 to 0.43; scaling
    every leaf instead saturates the tanh layer, and distinct servers then tie exactly); a
    state of that env with random backlog, 8 of its 9 slots holding jobs and random
    candidates drawn with replacement (duplicates, as in the env), so that server and
    candidate index differ."""
    env_params = env.make_params(at_once(num_agents=10))
    obs, state = jax.jit(env.reset)(jax.random.key(0), env_params)  # jitted: eager dispatch is slower
    actor = Actor((8,))
    actor_params = jax.tree_util.tree_map_with_path(
        lambda path, x: 100.0 * x if "Dense_1" in jax.tree_util.keystr(path) else x,
        jax.jit(actor.init)(jax.random.key(1), obs))
    rng = np.random.default_rng(0)
    num_jobs, k = state.jobs.candidates.shape
    valid = np.arange(num_jobs) < num_jobs - 1
    state = state.replace(
        backlog=jnp.asarray(rng.exponential(20.0, env_params.num_servers), jnp.float32),
        jobs=state.jobs.replace(
            valid=jnp.asarray(valid),
            size=jnp.asarray(np.where(valid, rng.lognormal(0.0, 0.6, num_jobs), 0.0), jnp.float32),
            candidates=jnp.asarray(rng.integers(0, env_params.num_servers, (num_jobs, k)), jnp.int32)))
    obs = jax.jit(env.job_observation)(state, env_params)
    logits = np.asarray(actor.apply(actor_params, obs), np.float64)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    assert np.all(probs[valid].max(-1) - probs[valid].min(-1) > 0.05), "logits must be clearly non-uniform"
    return actor, actor_params, state, env_params, obs, logits, probs


def test_sample_draws_candidates_with_softmax_probabilities():
    """train._sample over many keys: the candidate index of each job is drawn with
    probability softmax(actor logits)_b (pooled chi-square over jobs, p > 1e-3; the same
    counts reject a uniform draw), the logits returned are the actor's, and the task's
    action of a candidate index is the server candidates[i, action_i]."""
    actor, actor_params, state, _, obs, logits, probs = actor_case()
    candidates = state.jobs.candidates
    sample = jax.jit(jax.vmap(lambda p, o, key: train._sample(actor, p, o, key), in_axes=(None, None, 0)))
    out_logits, action = (np.asarray(x) for x in sample(actor_params, obs,
                                                         jax.random.split(jax.random.key(2), NUM_DRAWS)))
    task = at_once(num_agents=10).make_task()
    server = np.asarray(jax.vmap(lambda a: task.to_actions(state, a))(jnp.asarray(action)))
    num_jobs, k = logits.shape
    assert action.shape == server.shape == (NUM_DRAWS, num_jobs)
    np.testing.assert_allclose(out_logits, np.broadcast_to(logits, out_logits.shape), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(server, np.asarray(candidates)[np.arange(num_jobs), action])
    counts = np.stack([np.bincount(action[:, i], minlength=k) for i in range(num_jobs)])
    assert counts.shape == (num_jobs, k)
    assert stats.chisquare(counts.ravel(), NUM_DRAWS * probs.ravel(), ddof=num_jobs - 1).pvalue > 1e-3
    uniform = np.full(num_jobs * k, NUM_DRAWS / k)
    assert stats.chisquare(counts.ravel(), uniform, ddof=num_jobs - 1).pvalue < 1e-6, "the check must have power"


def test_learned_policy_samples_servers_and_deterministic_picks_the_argmax():
    """train.learned_policy on an env state: sampled, job i goes to server s with
    probability sum of softmax(logits)_b over its candidates b equal to s (chi-square,
    p > 1e-3; never to a server outside its candidates); deterministic, to the server of the
    argmax-logit candidate of every job, for every key."""
    actor, actor_params, state, env_params, _, logits, probs = actor_case()
    candidates = np.asarray(state.jobs.candidates)
    num_jobs, m = logits.shape[0], env_params.num_servers
    act = jax.jit(jax.vmap(train.learned_policy(at_once(num_agents=10).make_task(), actor, actor_params), in_axes=(0, None, None)))
    servers = np.asarray(act(jax.random.split(jax.random.key(3), NUM_DRAWS), state, env_params))
    assert servers.shape == (NUM_DRAWS, num_jobs)
    counts = np.stack([np.bincount(servers[:, i], minlength=m) for i in range(num_jobs)])
    server_probs = np.stack([np.bincount(candidates[i], weights=probs[i], minlength=m) for i in range(num_jobs)])
    reachable = server_probs > 0
    assert counts.shape == (num_jobs, m) and not reachable.all(), "some job must miss some server"
    np.testing.assert_array_equal(counts[~reachable], 0)
    assert stats.chisquare(counts[reachable], NUM_DRAWS * server_probs[reachable],
                           ddof=num_jobs - 1).pvalue > 1e-3

    deterministic = jax.jit(jax.vmap(train.learned_policy(at_once(num_agents=10).make_task(), actor, actor_params,
                                                     deterministic=True),
                                     in_axes=(0, None, None)))
    chosen = np.asarray(deterministic(jax.random.split(jax.random.key(4), 3), state, env_params))
    best = candidates[np.arange(num_jobs), logits.argmax(-1)]
    valid = np.asarray(state.jobs.valid)
    runner_up = np.where(candidates == best[:, None], -np.inf, logits).max(-1)  # best logit at another server
    assert np.all(logits.max(-1)[valid] - runner_up[valid] > 1e-3), "the argmax server must be unambiguous"
    assert not np.array_equal(best[valid], candidates[valid, 0]), "the check must have power"
    np.testing.assert_array_equal(chosen[:, valid], np.broadcast_to(best[valid], (3, int(valid.sum()))))
    # the empty row's candidates tie (zero observation): any top-logit candidate's server
    tied = candidates[~valid][logits[~valid] >= logits[~valid].max(-1, keepdims=True) - 1e-6]
    assert np.all(np.isin(chosen[:, ~valid], tied))


# ---------------------------------------------------------------------------------------
# normalise
# ---------------------------------------------------------------------------------------

def normalise_reference(x, mask, centre: bool, eps: float = 1e-8) -> np.ndarray:
    """numpy float64: (x - m) / sqrt(mean over masked of (x - m)^2 + eps) on the masked
    entries, m the masked mean if `centre` else 0; zeros where masked out."""
    x, mask = np.asarray(x, np.float64), np.asarray(mask)
    count = max(int(mask.sum()), 1)
    mean = np.where(mask, x, 0.0).sum() / count if centre else 0.0
    shifted = np.where(mask, x - mean, 0.0)
    return shifted / np.sqrt((shifted**2).sum() / count + eps)


@pytest.mark.parametrize("centre", [True, False])
def test_normalise_masked_moments(centre):
    """normalise equals the numpy reference (junk, even NaN and inf, where masked out
    becomes 0), and its masked entries have second moment 1 (mean 0 if centred; if not,
    they keep the signs and ratios of x)."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(3.0, 2.0, (8, 5)), jnp.float32)
    mask = jnp.asarray(rng.random((8, 5)) < 0.6)
    x = jnp.where(mask, x, jnp.array([jnp.nan, jnp.inf, 1e30, -7.0, 0.0])[None, :])  # junk where masked out
    out = np.asarray(normalise(x, mask, centre=centre), np.float64)
    kept = out[np.asarray(mask)]
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out[~np.asarray(mask)], 0.0)
    np.testing.assert_allclose(out, normalise_reference(x, mask, centre), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.mean(kept**2), 1.0, rtol=1e-5)
    if centre:
        np.testing.assert_allclose(kept.mean(), 0.0, atol=1e-6)
    else:  # scaling only: the masked entries keep their signs and ratios
        x_kept = np.asarray(x, np.float64)[np.asarray(mask)]
        np.testing.assert_allclose(kept, x_kept / np.sqrt(np.mean(x_kept**2)), rtol=1e-5)


@pytest.mark.parametrize("centre", [True, False])
@pytest.mark.parametrize("case", ["all_zero", "constant", "nothing_masked_in", "one_entry", "tiny"])
def test_normalise_degenerate_inputs_are_zero_not_nan(case, centre):
    """Degenerate inputs give finite values equal to the numpy reference: 0 where the shifted
    x is 0 (all zero, nothing masked in, constant or a single entry when centred), 1 for a
    constant or single entry when not centred, and eps inside the root for tiny x (1e-5
    scale: about x / 1e-4, not unit second moment)."""
    x = {"all_zero": jnp.zeros(6), "constant": jnp.full(6, 2.5), "nothing_masked_in": jnp.arange(6.0),
         "one_entry": jnp.arange(6.0), "tiny": 1e-5 * jnp.arange(6.0)}[case]
    mask = {"nothing_masked_in": jnp.zeros(6, bool), "one_entry": jnp.arange(6) == 3}.get(case, jnp.ones(6, bool))
    out = normalise(x, mask, centre=centre)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, normalise_reference(x, mask, centre), rtol=1e-5, atol=1e-7)
    if case in ("constant", "one_entry") and not centre:
        np.testing.assert_allclose(out[np.asarray(mask)], 1.0, rtol=1e-6)
    if case in ("all_zero", "nothing_masked_in") or (centre and case in ("constant", "one_entry")):
        np.testing.assert_array_equal(out, np.zeros(6))


@pytest.mark.parametrize("x", [jnp.zeros(5), jnp.array([1.0, -2.0, 3.0, 1e30, -1e-30])])
def test_zero_weight_times_normalised_is_exactly_zero(x):
    for centre in (True, False):
        out = 0.0 * normalise(x, jnp.array([True, True, True, False, True]), centre=centre)
        np.testing.assert_array_equal(out, np.zeros(5))


# ---------------------------------------------------------------------------------------
# get_potential
# ---------------------------------------------------------------------------------------

def get_potential(potential):
    return at_once(num_agents=5).make_task().get_potential(potential)


def test_get_potential_by_name_and_callable():
    for name, potential in POTENTIALS.items():
        assert get_potential(name) is potential
    assert get_potential(cubic_potential) is cubic_potential
    assert get_potential(None) is POTENTIALS["area"]


@pytest.mark.parametrize("name", ["tracking", "", "AREA"])
def test_get_potential_rejects_unknown_name(name):
    with pytest.raises(ValueError, match=r"^potential="):
        get_potential(name)
