"""Tests of the guidance: potentials, exact and first-order guidance values, centring with
the policy, normalisation.

Oracle for the exact guidance: the total potential G = sum_j potential(agg)_j evaluated
directly (float64, jax.enable_x64) with job i's work moved: G(job i at b, the other jobs
where they went) - G(job i removed). The reference split and the water-level allocation
are exogenous aggregates (the agents do not move them, DESIGN.md section 1), so the
direct G holds them fixed too.

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

from dgpg_jax.guidance import (POTENTIALS, Aggregates, centred_guidance, dispatched_work, get_potential,
                               make_aggregates, normalise)
from dgpg_jax.guidance import guidance_values as eager_guidance_values

# Jitted once per shape: op-by-op eager dispatch compiles every primitive and dominated
# this file's runtime. The potential is a static (hashable) argument.
guidance_values = jax.jit(eager_guidance_values, static_argnums=0, static_argnames="exact")


@functools.partial(jax.jit, static_argnames="num_servers")
def step_aggregates(backlog, service_rate, expected_rate, server, size, valid, num_servers: int) -> Aggregates:
    """make_aggregates with the arriving work of the jobs as dispatched."""
    return make_aggregates(backlog, dispatched_work(server, size, valid, num_servers), service_rate, expected_rate)


def cubic_potential(agg: Aggregates) -> jax.Array:
    """A user-written elementwise potential, -(W + A)^3 / mu, with no hand-written derivative."""
    return -((agg.backlog + agg.arriving_work) ** 3) / agg.service_rate


ALL_POTENTIALS = {**POTENTIALS, "cubic": cubic_potential}


def first_order_closed_form(name: str, agg: Aggregates) -> np.ndarray:
    """(M,) dG/dA_b by hand, float64, reference and level work held fixed:
    area  -(W + A)^2/(2 mu)        -> -(W + A) / mu
    split -(A - x~)^2 / (2 mu^2)   -> -(A - x~) / mu^2
    level -(A - x_level)^2/(2 mu)  -> -(A - x_level) / mu
    congestion -((W + A)^2 - 0.6 A^2)/(2 mu) -> -(W + 0.4 A) / mu
    cubic -(W + A)^3 / mu          -> -3 (W + A)^2 / mu"""
    w, a, mu, ref, lev = (np.asarray(x, np.float64) for x in (agg.backlog, agg.arriving_work, agg.service_rate,
                                                              agg.reference_work, agg.level_work))
    return {"area": -(w + a) / mu, "split": -(a - ref) / mu**2, "level": -(a - lev) / mu,
            "congestion": -(w + 0.4 * a) / mu, "cubic": -3 * (w + a) ** 2 / mu}[name]


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
    (discount 0: `area`; 0.6: `congestion`)."""
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
    np.testing.assert_allclose(guidance_values(POTENTIALS["area"], *case, exact=True), [[-1.5, -1.25], [-6.0, -1.0]],
                               rtol=1e-6)
    np.testing.assert_allclose(guidance_values(POTENTIALS["area"], *case, exact=False), [[-2.0, -1.0], [-4.0, -2.0]],
                               rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", sorted(ALL_POTENTIALS))
def test_exact_guidance_is_the_direct_difference_of_the_total_potential(name, seed):
    potential = ALL_POTENTIALS[name]
    case = random_case(seed)
    expected = direct_guidance(potential, *case)
    values = np.asarray(guidance_values(potential, *case, exact=True))
    assert values.dtype == np.float32
    assert np.all(values[~np.asarray(case[-1])] == 0.0)
    # float32 against float64: G's terms are O(10); the difference of two is one term.
    np.testing.assert_allclose(values, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    with jax.enable_x64(True):
        case64 = jax.tree.map(lambda x: jnp.asarray(np.asarray(x, np.float64)) if np.asarray(x).dtype == np.float32
                              else jnp.asarray(x), case)
        values64 = np.asarray(eager_guidance_values(potential, *case64, exact=True))
    np.testing.assert_allclose(values64, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_area_exact_guidance_closed_form(seed):
    case = random_case(seed)
    np.testing.assert_allclose(guidance_values(POTENTIALS["area"], *case, exact=True), area_closed_form(*case),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_congestion_exact_guidance_closed_form(seed):
    """The congestion potential's guidance is the beta = -(1 + 0.6)/2 = -0.8 greedy's score."""
    case = random_case(seed)
    np.testing.assert_allclose(guidance_values(POTENTIALS["congestion"], *case, exact=True),
                               area_closed_form(*case, discount=0.6), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------
# first-order guidance (jax.grad of the potential)
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", sorted(ALL_POTENTIALS))
def test_first_order_guidance_is_size_times_analytic_gradient(name, seed):
    agg, size, candidates, server, valid = case = random_case(seed)
    values = np.asarray(guidance_values(ALL_POTENTIALS[name], *case, exact=False))
    gradient = first_order_closed_form(name, agg)
    expected = np.where(np.asarray(valid)[:, None], gradient[np.asarray(candidates)] * np.asarray(size)[:, None], 0.0)
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


@pytest.mark.parametrize("seed", [0, 1])
def test_area_exact_minus_first_order_is_half_size_squared_over_rate(seed):
    agg, size, candidates, server, valid = case = random_case(seed)
    exact = np.asarray(guidance_values(POTENTIALS["area"], *case, exact=True), np.float64)
    first = np.asarray(guidance_values(POTENTIALS["area"], *case, exact=False), np.float64)
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
    values = guidance_values(POTENTIALS["area"], agg, size, candidates, server, valid, exact=True)[0]
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


def test_policy_gradient_with_centred_guidance_matches_exact_gradient():
    values, logits = one_job_guidance()
    probs = jax.nn.softmax(logits)
    centred = centred_guidance(values[None], probs[None])[0]
    exact = np.asarray(jax.grad(expected_guidance)(logits, values), np.float64)

    n = 200_000
    actions = jax.random.categorical(jax.random.key(1), logits, shape=(n,))
    score = jax.vmap(jax.grad(lambda theta, a: jax.nn.log_softmax(theta)[a]), in_axes=(None, 0))(logits, actions)
    samples = np.asarray(score * centred[actions][:, None], np.float64)  # (n, k)
    estimate = samples.mean(axis=0)
    standard_error = samples.std(axis=0) / np.sqrt(n)
    assert np.all(standard_error < 0.05 * np.abs(exact).max()), "the check must have power"
    np.testing.assert_array_less(np.abs(estimate - exact), 4 * standard_error + 1e-6)
    # the same identity without sampling: sum_b pi(b) grad log pi(b) centred(b)
    exact_sum = jnp.einsum("b,bk,b->k", probs, jax.nn.one_hot(jnp.arange(5), 5) - probs, centred)
    np.testing.assert_allclose(exact_sum, exact, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_step_along_guidance_gradient_increases_expected_guidance(seed):
    values, logits = one_job_guidance(seed)
    gradient = jax.grad(expected_guidance)(logits, values)
    step = 1e-2 / float(jnp.linalg.norm(gradient))
    assert expected_guidance(logits + step * gradient, values) > expected_guidance(logits, values)


def test_area_guidance_moves_probability_to_earlier_finish():
    # Five equal servers (mu 1) so that g = -w * finish + const; other jobs add A^{-i}.
    # finish_b = W_b + A_b^{-i} + w with W = (4, 0, 2, 1, 3), A^{-i} = (0, 0.5, 0, 1.5, 0):
    # (5, 1.5, 3, 3.5, 4), mean 3.4 -> from uniform logits, candidates 1, 2 gain, 0, 3, 4 lose.
    backlog, mu = jnp.array([4.0, 0.0, 2.0, 1.0, 3.0]), jnp.ones(5)
    size = jnp.array([1.0, 0.5, 1.5])
    server, valid = jnp.array([0, 1, 3], jnp.int32), jnp.array([True, True, True])
    candidates = jnp.broadcast_to(jnp.arange(5, dtype=jnp.int32), (3, 5))
    agg = step_aggregates(backlog, mu, jnp.asarray(3.0), server, size, valid, 5)
    values = guidance_values(POTENTIALS["area"], agg, size, candidates, server, valid, exact=True)[0]
    finish = np.array([5.0, 1.5, 3.0, 3.5, 4.0])
    logits = jnp.zeros(5)
    gradient = jax.grad(expected_guidance)(logits, values)
    new_probs = np.asarray(jax.nn.softmax(logits + 0.1 * gradient))
    np.testing.assert_array_equal(np.sign(new_probs - 0.2), np.sign(finish.mean() - finish))
    assert new_probs @ finish < finish.mean()


# ---------------------------------------------------------------------------------------
# normalise
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("centre", [True, False])
def test_normalise_masked_moments(centre):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(3.0, 2.0, (8, 5)), jnp.float32)
    mask = jnp.asarray(rng.random((8, 5)) < 0.6)
    x = jnp.where(mask, x, jnp.array([jnp.nan, jnp.inf, 1e30, -7.0, 0.0])[None, :])  # junk where masked out
    out = np.asarray(normalise(x, mask, centre=centre), np.float64)
    kept = out[np.asarray(mask)]
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out[~np.asarray(mask)], 0.0)
    np.testing.assert_allclose(np.mean(kept**2), 1.0, rtol=1e-5)
    if centre:
        np.testing.assert_allclose(kept.mean(), 0.0, atol=1e-6)
    else:  # scaling only: the masked entries keep their signs and ratios
        x_kept = np.asarray(x, np.float64)[np.asarray(mask)]
        np.testing.assert_allclose(kept, x_kept / np.sqrt(np.mean(x_kept**2)), rtol=1e-5)


@pytest.mark.parametrize("centre", [True, False])
@pytest.mark.parametrize("case", ["all_zero", "constant", "nothing_masked_in", "one_entry"])
def test_normalise_degenerate_inputs_are_zero_not_nan(case, centre):
    x = {"all_zero": jnp.zeros(6), "constant": jnp.full(6, 2.5), "nothing_masked_in": jnp.arange(6.0),
         "one_entry": jnp.arange(6.0)}[case]
    mask = {"nothing_masked_in": jnp.zeros(6, bool), "one_entry": jnp.arange(6) == 3}.get(case, jnp.ones(6, bool))
    out = normalise(x, mask, centre=centre)
    assert np.all(np.isfinite(out))
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

def test_get_potential_by_name_and_callable():
    for name, potential in POTENTIALS.items():
        assert get_potential(name) is potential
    assert get_potential(cubic_potential) is cubic_potential


@pytest.mark.parametrize("name", ["tracking", "", "AREA"])
def test_get_potential_rejects_unknown_name(name):
    with pytest.raises(ValueError, match=r"^potential="):
        get_potential(name)
