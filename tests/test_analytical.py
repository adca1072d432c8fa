"""Tests of the analytical model: the delay-optimal reference split and the water level.

Oracles: the KKT conditions of the convex problem, scipy's SLSQP on the primal problem,
and a scipy root-find (brentq) on the dual multiplier. All oracles run in float64 on the
float32-rounded inputs the library sees.

Problem: minimise sum_j x_j / (mu_j - x_j) s.t. sum_j x_j = rate, 0 <= x_j < mu_j.
d/dx [x / (mu - x)] = mu / (mu - x)^2, increasing in x (convex). KKT with multiplier lam:
  active (x_j > 0):   mu_j / (mu_j - x_j)^2 = lam   =>  x_j = mu_j - sqrt(mu_j / lam)
  inactive (x_j = 0): mu_j / mu_j^2 = 1 / mu_j >= lam
With nu = 1 / sqrt(lam): x_j = max(0, mu_j - sqrt(mu_j) nu), the square-root rule.

Hand-worked case used below, mu = (4, 1, 0.25), sqrt(mu) = (2, 1, 0.5):
  rate 3: both fast servers active, nu = (4 + 1 - 3) / (2 + 1) = 2/3; x = (4 - 4/3, 1 - 2/3, 0)
          = (8/3, 1/3, 0); the slow server stays out since sqrt(0.25) = 0.5 < nu;
          lam = 1/nu^2 = 9/4; dx/drate = sqrt(mu_A) / sum_A sqrt(mu) = (2/3, 1/3, 0).
  rate 1: only the fastest, nu = (4 - 1) / 2 = 1.5 >= sqrt(1); x = (1, 0, 0).

KKT in float32: active marginals agree to 2.2e-5 relative (we assert 2e-4); in float64
to 1e-9.

Precision (measured on 300 random fleets, mu log-uniform in [0.01, 10], M <= 40):
float32 vs the float64 dual oracle, worst |dx_j| / mu_j = 1.8e-6 (we assert 1e-5), but
worst |dx| / rate = 4.6e-5: x_j = mu_j - sqrt(mu_j) nu cancels for a barely active server
or a small rate, so the error is O(eps mu_j), not O(eps x_j), and a rate-relative 1e-5
is out of float32's reach as the rate goes to 0. In float64 (jax.enable_x64) the same
code matches the dual oracle to 8e-13 relative to the rate (we assert 1e-9). SLSQP
(scaled variables y = x / mu) is itself accurate to about 5e-9 relative to the rate
(we assert 1e-6 against it).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize

from dgpg_jax.tasks.cloud.analytical import reference_share, reference_split, water_level
from dgpg_jax.tasks.cloud import fleet_capacity

F32_RTOL_OF_CAPACITY = 1e-5  # |x - x*| <= this * mu_j (float32 measured worst 1.8e-6)
F64_RTOL_OF_RATE = 1e-9  # x64 mode vs the dual oracle (measured worst 8e-13)
SLSQP_RTOL_OF_RATE = 1e-6  # SLSQP's own accuracy, measured worst 5e-9

PROPERTY_SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)


# ---------------------------------------------------------------------------------------
# float64 oracles (numpy / scipy), independent of the library's water-filling code
# ---------------------------------------------------------------------------------------

def dual_split(mu: np.ndarray, rate: float) -> np.ndarray:
    """Split from the stationarity condition x_j(nu) = max(0, mu_j - sqrt(mu_j) nu), with
    the multiplier found by brentq on sum_j x_j(nu) = rate (decreasing in nu)."""
    def excess(nu):
        return np.maximum(mu - np.sqrt(mu) * nu, 0.0).sum() - rate

    nu = optimize.brentq(excess, 0.0, np.sqrt(mu.max()), xtol=1e-300, rtol=1e-15, maxiter=500)
    return np.maximum(mu - np.sqrt(mu) * nu, 0.0)


def slsqp_split(mu: np.ndarray, rate: float) -> np.ndarray:
    """The primal problem solved by SLSQP in utilisations y = x / mu (better conditioned
    than x when the rates span decades): min sum y / (1 - y), mu . y = rate, 0 <= y < 1."""
    result = optimize.minimize(
        lambda y: np.sum(y / (1 - y)), np.full_like(mu, rate / mu.sum()), jac=lambda y: 1 / (1 - y) ** 2,
        method="SLSQP", bounds=[(0.0, 1.0 - 1e-12)] * mu.size,
        constraints=[{"type": "eq", "fun": lambda y: (mu @ y - rate) / rate, "jac": lambda y: mu / rate}],
        options={"ftol": 1e-16, "maxiter": 1000})
    # status 8 ("positive directional derivative for linesearch"): no further progress at
    # float64 precision, the point is the optimum to SLSQP's accuracy (checked by the caller).
    assert result.status in (0, 8), result.message
    return result.x * mu


def level_oracle(backlog: np.ndarray, mu: np.ndarray, work: float) -> float:
    """Level L with sum_j max(0, L mu_j - W_j) = work, by brentq."""
    finish = backlog / mu
    if work == 0:
        return float(finish.min())
    hi = finish.max() + work / mu.sum() + 1.0
    return optimize.brentq(lambda level: np.maximum(level * mu - backlog, 0.0).sum() - work, finish.min(), hi,
                           xtol=1e-300, rtol=1e-15)


def assert_kkt(mu: np.ndarray, x: np.ndarray, rate: float, rtol: float, sum_atol: float) -> None:
    """KKT of the split: a common marginal mu/(mu-x)^2 on the active set, 1/mu at least
    that on the inactive set, feasibility (sum within sum_atol of the rate)."""
    assert np.all(x >= 0) and np.all(x < mu)
    assert abs(x.sum() - rate) <= sum_atol
    active = x > 0
    assert active[np.argmax(mu)], "the fastest server is always active at a positive rate"
    marginal = mu / (mu - x) ** 2
    multiplier = marginal[np.argmax(mu)]
    np.testing.assert_allclose(marginal[active], multiplier, rtol=rtol)
    assert np.all(1 / mu[~active] >= multiplier * (1 - rtol))


@st.composite
def fleets_and_rates(draw, max_servers: int = 40):
    """(mu, rate): float32-representable capacities log-uniform in [0.01, 10] (a 1000x
    spread, wider than the catalog's 23x) and a rate in (0, 0.99 sum mu)."""
    m = draw(st.integers(1, max_servers))
    log_mu = draw(st.lists(st.floats(np.log(0.01), np.log(10.0)), min_size=m, max_size=m))
    mu = np.exp(np.array(log_mu)).astype(np.float32)
    fraction = draw(st.floats(1e-4, 0.99))
    rate = np.float32(fraction * mu.astype(np.float64).sum())
    return mu, rate


# ---------------------------------------------------------------------------------------
# reference_split
# ---------------------------------------------------------------------------------------

def test_reference_split_hand_worked():
    mu = jnp.array([4.0, 1.0, 0.25])
    np.testing.assert_allclose(reference_split(mu, 3.0), [8 / 3, 1 / 3, 0.0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(reference_split(mu, 1.0), [1.0, 0.0, 0.0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(reference_share(mu, 3.0), [2 / 3, 1 / 3, 0.0], rtol=1e-6, atol=1e-7)


@PROPERTY_SETTINGS
@given(fleets_and_rates())
def test_reference_split_float32_matches_scipy_oracles_and_kkt(fleet):
    mu32, rate32 = fleet
    mu, rate = mu32.astype(np.float64), float(rate32)
    x = np.asarray(jax.jit(reference_split)(jnp.asarray(mu32), jnp.asarray(rate32)), np.float64)
    assert np.all(np.isfinite(x))
    assert np.all(x >= 0) and np.all(x < mu)

    oracle = dual_split(mu, rate)
    np.testing.assert_array_less(np.abs(x - oracle), F32_RTOL_OF_CAPACITY * mu)
    primal = slsqp_split(mu, rate)
    np.testing.assert_array_less(np.abs(oracle - primal), SLSQP_RTOL_OF_RATE * rate + 1e-12)
    np.testing.assert_array_less(np.abs(x - primal), F32_RTOL_OF_CAPACITY * mu + SLSQP_RTOL_OF_RATE * rate)
    # KKT in float32: marginals equal to 2.2e-5 (measured on 400 fleets); the sum is off by
    # O(eps mu_j) per server, not O(eps rate): see the module docstring.
    assert_kkt(mu, x, rate, rtol=2e-4, sum_atol=F32_RTOL_OF_CAPACITY * mu.sum())


@PROPERTY_SETTINGS
@given(fleets_and_rates())
def test_reference_split_float64_meets_kkt_and_dual_oracle(fleet):
    mu32, rate32 = fleet
    mu, rate = mu32.astype(np.float64), float(rate32)
    with jax.enable_x64(True):
        x_jax = jax.jit(reference_split)(jnp.asarray(mu), jnp.asarray(rate))
        assert x_jax.dtype == jnp.float64
        x = np.asarray(x_jax)
    np.testing.assert_array_less(np.abs(x - dual_split(mu, rate)), F64_RTOL_OF_RATE * rate)
    assert_kkt(mu, x, rate, rtol=1e-9, sum_atol=1e-12 * mu.sum())  # O(eps mu), as in float32


@pytest.mark.parametrize("mu", [[1.0, 2.0, 3.0], [0.05, 7.0, 7.0, 0.3], [1.95], [6.15, 1.0]])
def test_reference_split_zero_rate_gives_zeros(mu):
    # The docstring promises zeros. [1.95] and [6.15, 1.0] hit a float32 rounding case:
    # level[0] = mu/sqrt(mu) rounds below sqrt(mu), so one server counts as active and
    # gets mu - sqrt(mu) * level = 1.2e-7 (4.8e-7 for 6.15) instead of 0.
    x = reference_split(jnp.asarray(mu, jnp.float32), jnp.float32(0.0))
    np.testing.assert_array_equal(x, np.zeros(len(mu)))


@pytest.mark.parametrize("factor", [1.0, 1.5, 100.0, 1e30])
def test_reference_split_overload_saturates(factor):
    mu = jnp.array([4.0, 1.0, 0.25, 0.25])
    rate = factor * float(mu.sum())
    for split in (reference_split(mu, rate), jax.jit(reference_split)(mu, rate)):
        np.testing.assert_array_equal(split, mu)
    np.testing.assert_array_equal(reference_share(mu, rate), np.ones(4))


@pytest.mark.parametrize("num_servers", [25, 61])
def test_reference_split_never_exceeds_capacity_one_ulp_below_it(num_servers):
    # The env's own fleets (M = 25 is N = 50 agents), rate one float32 ulp below sum(mu):
    # the overload test uses mu.sum() but nu uses cumsum(sorted mu)[-1], summed in another
    # order; when the latter rounds below the rate, nu < 0 and x_j = mu_j - sqrt(mu_j) nu
    # exceeds mu_j (measured share 1.0000005 at M = 25, 1.0000006 at M = 61).
    mu = fleet_capacity(num_servers) / 10.0
    rate = jnp.nextafter(mu.sum(), jnp.float32(0.0))
    split, share = jax.jit(lambda mu, rate: (reference_split(mu, rate), reference_share(mu, rate)))(mu, rate)
    assert np.all(np.isfinite(split))
    excess = np.asarray(split, np.float64) - np.asarray(mu, np.float64)
    assert np.all(excess <= 0.0), f"x exceeds mu by up to {excess.max():.3g}"
    assert np.all(np.asarray(share) <= 1.0)


def test_reference_split_just_below_capacity_is_finite_and_feasible():
    mu = jnp.array([4.0, 1.0, 0.25, 0.25])
    rate = 0.9999 * 5.5
    x = np.asarray(reference_split(mu, rate))
    assert np.all(np.isfinite(x)) and np.all(x > 0) and np.all(x < np.asarray(mu))
    np.testing.assert_allclose(x.sum(), rate, rtol=1e-5)


@pytest.mark.parametrize("rate, expected", [(0.5, 0.5), (1.9, 1.9), (2.0, 2.0), (7.0, 2.0)])
def test_reference_split_one_server(rate, expected):
    x = reference_split(jnp.array([2.0]), rate)
    assert x.shape == (1,)
    np.testing.assert_allclose(x, [expected], rtol=1e-6)


def test_reference_split_jit_and_vmap_match_single_calls():
    rng = np.random.default_rng(0)
    mu = rng.uniform(0.05, 5.0, (6, 9)).astype(np.float32)
    rate = (rng.uniform(0.0, 1.2, 6) * mu.sum(axis=1)).astype(np.float32)
    rate[0] = 0.0
    single = jax.jit(reference_split)  # one fleet, one rate
    one_by_one = np.stack([single(jnp.asarray(m), jnp.asarray(r)) for m, r in zip(mu, rate)])
    batched = jax.jit(jax.vmap(reference_split))(jnp.asarray(mu), jnp.asarray(rate))
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-6, atol=1e-6)
    # over rates only, one fleet
    per_rate = jax.jit(jax.vmap(reference_split, in_axes=(None, 0)))(jnp.asarray(mu[1]), jnp.asarray(rate))
    np.testing.assert_allclose(per_rate, [single(jnp.asarray(mu[1]), r) for r in rate], rtol=1e-6, atol=1e-6)
    # and jit agrees with the eager call (the path that validates inputs)
    np.testing.assert_allclose(reference_split(jnp.asarray(mu[1]), jnp.asarray(rate[1])), one_by_one[1], rtol=1e-6)


@pytest.mark.parametrize("rate, expected_gradient", [(3.0, [2 / 3, 1 / 3, 0.0]), (1.0 - 1e-3, [1.0, 0.0, 0.0]),
                                                     (5.0, [2 / 3.5, 1 / 3.5, 0.5 / 3.5])])
def test_reference_split_differentiable_in_rate(rate, expected_gradient):
    mu = jnp.array([4.0, 1.0, 0.25])
    jacobian, total = jax.jit(lambda r: (jax.jacfwd(reference_split, argnums=1)(mu, r),
                                         jax.grad(lambda r: reference_split(mu, r).sum())(r)))(jnp.float32(rate))
    assert np.all(np.isfinite(jacobian))
    # dx_j/drate = sqrt(mu_j) / sum_A sqrt(mu) on the active set A, 0 off it
    np.testing.assert_allclose(jacobian, expected_gradient, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(total, 1.0, rtol=1e-5)
    with jax.enable_x64(True):
        mu64, h = jnp.asarray(mu, jnp.float64), 1e-6

        @jax.jit
        def derivatives(r):
            def cost(r):  # the optimal objective as a function of the rate
                x = reference_split(mu64, r)
                return jnp.sum(x / (mu64 - x))

            central = (reference_split(mu64, r + h) - reference_split(mu64, r - h)) / (2 * h)
            return jax.jacrev(reference_split, argnums=1)(mu64, r), central, jax.grad(cost)(r), reference_split(mu64, r)

        jacobian64, central, marginal_cost, x = map(np.asarray, derivatives(jnp.float64(rate)))
    np.testing.assert_allclose(jacobian64, central, rtol=1e-6, atol=1e-9)
    # Envelope theorem: d(optimal cost)/drate is the multiplier lam = 1/nu^2.
    active = x > 0
    nu = (np.asarray(mu, np.float64)[active].sum() - rate) / np.sqrt(np.asarray(mu, np.float64)[active]).sum()
    np.testing.assert_allclose(marginal_cost, 1 / nu**2, rtol=1e-9)


def test_reference_split_gradient_is_finite_under_overload():
    mu = jnp.array([4.0, 1.0, 0.25])
    gradient = jax.jit(jax.jacfwd(reference_split, argnums=1))(mu, jnp.float32(9.0))
    np.testing.assert_array_equal(gradient, np.zeros(3))


# ---------------------------------------------------------------------------------------
# water_level
# ---------------------------------------------------------------------------------------

@st.composite
def queues_and_work(draw, max_servers: int = 30):
    m = draw(st.integers(1, max_servers))
    mu = np.array(draw(st.lists(st.floats(0.05, 5.0), min_size=m, max_size=m)), np.float32)
    backlog = np.array(draw(st.lists(st.one_of(st.just(0.0), st.floats(0.0, 50.0)), min_size=m, max_size=m)),
                       np.float32)
    work = np.float32(draw(st.one_of(st.just(0.0), st.floats(0.0, 200.0))))
    return backlog, mu, work


def test_water_level_hand_worked():
    # finishes (1, 0, 3); 2 work fills server 1 (mu 2) up to level 1 = server 0's finish.
    level, allocation = water_level(jnp.array([1.0, 0.0, 3.0]), jnp.array([1.0, 2.0, 1.0]), 2.0)
    np.testing.assert_allclose(level, 1.0, rtol=1e-6)
    np.testing.assert_allclose(allocation, [0.0, 2.0, 0.0], atol=1e-6)
    # 5 more: level L with (L - 1) * 1 + L * 2 = 7 -> L = 8/3 < 3, server 2 stays out.
    level, allocation = water_level(jnp.array([1.0, 0.0, 3.0]), jnp.array([1.0, 2.0, 1.0]), 7.0)
    np.testing.assert_allclose(level, 8 / 3, rtol=1e-6)
    np.testing.assert_allclose(allocation, [5 / 3, 16 / 3, 0.0], rtol=1e-6, atol=1e-6)


@PROPERTY_SETTINGS
@given(queues_and_work())
def test_water_level_properties(case):
    backlog, mu, work = case
    level, allocation = jax.jit(water_level)(jnp.asarray(backlog), jnp.asarray(mu), jnp.asarray(work))
    level, allocation = float(level), np.asarray(allocation, np.float64)
    backlog64, mu64 = backlog.astype(np.float64), mu.astype(np.float64)
    scale = float(work) + backlog64.sum() + 1e-6
    assert np.all(allocation >= 0)
    assert abs(allocation.sum() - float(work)) <= 1e-5 * scale
    finish = (backlog64 + allocation) / mu64
    served = allocation > 0
    np.testing.assert_allclose(finish[served], level, rtol=1e-5, atol=1e-5)
    assert np.all(backlog64[~served] / mu64[~served] >= level * (1 - 1e-5) - 1e-5)
    np.testing.assert_allclose(level, level_oracle(backlog64, mu64, float(work)), rtol=1e-5, atol=1e-5)


def test_water_level_zero_work():
    backlog, mu = jnp.array([1.0, 0.5, 3.0]), jnp.array([1.0, 2.0, 1.0])
    level, allocation = water_level(backlog, mu, 0.0)
    np.testing.assert_array_equal(allocation, np.zeros(3))
    np.testing.assert_allclose(level, 0.25, rtol=1e-6)  # earliest finish, 0.5 / 2


def test_water_level_vmap_matches_eager():
    rng = np.random.default_rng(1)
    backlog = rng.uniform(0, 10, (4, 7)).astype(np.float32)
    mu = rng.uniform(0.1, 3, (4, 7)).astype(np.float32)
    work = np.array([0.0, 1.0, 10.0, 100.0], np.float32)
    levels, allocations = jax.vmap(water_level)(jnp.asarray(backlog), jnp.asarray(mu), jnp.asarray(work))
    one = jax.jit(water_level)
    for i in range(4):
        level, allocation = one(jnp.asarray(backlog[i]), jnp.asarray(mu[i]), jnp.asarray(work[i]))
        np.testing.assert_allclose(levels[i], level, rtol=1e-6)
        np.testing.assert_allclose(allocations[i], allocation, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------
# input validation (eager calls only; under jit the check is documented as a no-op)
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("service_rate, rate, name", [
    ([1.0, 2.0], -0.5, "rate"),
    ([1.0, 2.0], float("nan"), "rate"),
    ([1.0, 2.0], float("inf"), "rate"),
    ([], 1.0, "service_rate"),
    ([1.0, 0.0], 1.0, "service_rate"),
    ([1.0, -2.0], 1.0, "service_rate"),
    ([1.0, float("nan")], 1.0, "service_rate"),
    ([[1.0, 2.0]], 1.0, "service_rate"),
])
def test_reference_split_rejects_bad_input(service_rate, rate, name):
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        reference_split(jnp.asarray(service_rate, jnp.float32), jnp.asarray(rate, jnp.float32))


@pytest.mark.parametrize("backlog, service_rate, work, name", [
    ([1.0, 2.0], [1.0, 1.0], -1.0, "work"),
    ([1.0, 2.0], [1.0, 1.0], float("nan"), "work"),
    ([1.0, -2.0], [1.0, 1.0], 1.0, "backlog"),
    ([1.0, float("nan")], [1.0, 1.0], 1.0, "backlog"),
    ([], [], 1.0, "service_rate"),
    ([1.0, 2.0], [1.0, 0.0], 1.0, "service_rate"),
])
def test_water_level_rejects_bad_input(backlog, service_rate, work, name):
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        water_level(jnp.asarray(backlog, jnp.float32), jnp.asarray(service_rate, jnp.float32),
                    jnp.asarray(work, jnp.float32))
