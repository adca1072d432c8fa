"""Behaviour of the environment against independent hand formulas and statistics:
observation features, the diurnal arrival law, bursts, candidate sampling, the job-size
law, the fleet mix, and row overflow under a real overload.

Every expected value is computed here in float64 from docs/environment.md's description, never
from the library's own helpers (except `env.make_params`, `env.reset` to get a state of
the right shapes, and the functions under test). Statistical checks run on fixed keys, so
they are deterministic; their tolerances are a few standard errors of the sample.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from dgpg_jax.tasks import cloud as env
from dgpg_jax.tasks.cloud import arrivals

F64 = np.float64
jit_reset = jax.jit(env.reset)
jit_fleet_capacity = jax.jit(env.fleet_capacity, static_argnums=0)


def f64(x):
    return np.asarray(x, F64)


def hand_state(params, backlog, sizes, candidates, valid, time=0, burst_steps_left=0, recent=None, overflow=0):
    """A state of `params` with the given backlog and jobs. Built from `reset` and
    `.replace`, so it works whatever other fields the pytrees carry."""
    _, state = jit_reset(jax.random.key(0), params)
    m = params.num_servers
    jobs = state.jobs.replace(size=jnp.asarray(sizes, jnp.float32), candidates=jnp.asarray(candidates, jnp.int32),
                              valid=jnp.asarray(valid, bool), num_overflow=jnp.asarray(overflow, jnp.int32))
    recent = np.zeros(m) if recent is None else recent
    return state.replace(backlog=jnp.asarray(backlog, jnp.float32),
                         recent_utilisation=jnp.asarray(recent, jnp.float32),
                         burst_steps_left=jnp.asarray(burst_steps_left, jnp.int32),
                         time=jnp.asarray(time, jnp.int32), jobs=jobs)


def sqrt_rule_split(mu, rate):
    """Delay-optimal static split in float64, by checking the KKT conditions of every
    active-set size: x_j = mu_j - sqrt(mu_j) nu on the active set (x_j > 0 there),
    sqrt(mu_j) <= nu off it; saturation x = mu at or above capacity; zeros at rate 0."""
    mu = f64(mu)
    if rate <= 0:
        return np.zeros_like(mu)
    if rate >= mu.sum():
        return mu.copy()
    order = np.argsort(-mu, kind="stable")
    for n in range(len(mu), 0, -1):
        active, rest = order[:n], order[n:]
        nu = (mu[active].sum() - rate) / np.sqrt(mu[active]).sum()
        if np.all(np.sqrt(mu[active]) > nu) and np.all(np.sqrt(mu[rest]) <= nu):
            x = np.zeros_like(mu)
            x[active] = mu[active] - np.sqrt(mu[active]) * nu
            assert abs(x.sum() - rate) < 1e-9 * max(1.0, rate)
            return x
    raise AssertionError("no active set satisfies the KKT conditions")


def hand_arrival_probability(params, time, burst):
    """p0 (1 - a cos(2 pi t / T)) [x burst_factor], p0 = rho sum(capacity) / (N mean_job_steps)."""
    p0 = float(params.utilisation) * f64(params.capacity).sum() / (params.num_agents * float(params.mean_job_steps))
    p = p0 * (1 - float(params.diurnal_amplitude) * math.cos(2 * math.pi * time / params.horizon))
    return p * (float(params.burst_factor) if burst else 1.0)


def hand_share(params, time, burst):
    """Reference share x~_j / mu_j of the expected work rate N p_t, in float64."""
    mu = f64(params.capacity) / float(params.mean_job_steps)
    rate = params.num_agents * hand_arrival_probability(params, time, burst)
    return sqrt_rule_split(mu, rate) / mu


# ---------------------------------------------------------------------------------------
# 1-2. Observation features on a hand-made state.
#
# N = 4, M = 4, k = 3 (< M: candidates are drawn, here set by hand, one job with a repeated
# server), mean job 2 steps, a day of T = 48 steps, the clock at t = 7.

OBS_CAPACITY = (0.5, 1.0, 1.5, 1.0)
OBS_BACKLOG = (0.6, 0.0, 2.1, 0.35)
OBS_RECENT = (0.2, 0.0, 0.9, 0.55)
OBS_SIZES = (0.8, 1.7, 0.9, 0.05)
OBS_CANDIDATES = ((0, 2, 3), (1, 1, 2), (3, 2, 1), (3, 0, 1))
OBS_VALID = (True, True, False, True)  # slot 2 is empty although it holds a size and candidates
OBS_TIME = 7


@functools.lru_cache(maxsize=None)
def obs_params():
    config = env.CloudConfig(num_agents=4, servers_per_agent=1.0, num_candidates=3, mean_job_steps=2.0, horizon=48,
                           burst_rate=0.5)
    params = env.make_params(config).replace(capacity=jnp.asarray(OBS_CAPACITY, jnp.float32))
    assert (params.num_servers, params.num_candidates, params.num_rows) == (4, 3, 4)
    assert not params.all_candidates
    return params


def hand_job_features(params, state, time, burst):
    """(J, k, 10) in float64: docs/environment.md's per-candidate and per-job features."""
    scale = float(params.mean_job_steps)
    cap = f64(params.capacity)
    mu = cap / scale
    backlog, recent = f64(state.backlog), f64(state.recent_utilisation)
    sizes, cand, valid = f64(state.jobs.size), np.asarray(state.jobs.candidates), np.asarray(state.jobs.valid)
    share = hand_share(params, time, burst)
    phase = 2 * math.pi * time / params.horizon
    out = np.zeros(cand.shape + (10,))
    for i in range(cand.shape[0]):
        if not valid[i]:
            continue
        wait = [backlog[s] / mu[s] / scale for s in cand[i]]  # mean job times
        service = [sizes[i] / mu[s] / scale for s in cand[i]]
        finish = [a + b for a, b in zip(wait, service)]
        best = min(finish)
        for b, s in enumerate(cand[i]):
            out[i, b] = [math.log1p(wait[b]), math.log1p(service[b]), math.log1p(finish[b]),
                         math.log1p(finish[b] - best), math.log(cap[s]), recent[s], share[s],
                         math.log(sizes[i]), math.sin(phase), math.cos(phase)]
    return out


@pytest.mark.parametrize("burst_steps_left", [0, 3])
def test_job_observation_features_equal_hand_values(burst_steps_left):
    params = obs_params()
    state = hand_state(params, OBS_BACKLOG, OBS_SIZES, OBS_CANDIDATES, OBS_VALID, time=OBS_TIME,
                       burst_steps_left=burst_steps_left, recent=OBS_RECENT)
    obs = np.asarray(jax.jit(env.job_observation)(state, params), F64)
    assert obs.shape == (4, 3, 10)
    expected = hand_job_features(params, state, OBS_TIME, burst_steps_left > 0)
    np.testing.assert_allclose(obs, expected, rtol=1e-5, atol=1e-5)
    # The empty row is all zeros (its size and candidates are ignored).
    np.testing.assert_array_equal(obs[2], 0.0)
    # Sanity of the hand case itself: the regret is 0 at the best candidate, a burst raises
    # the rate (and so the reference shares), and a repeated server repeats its features.
    assert np.all(expected[np.array(OBS_VALID), :, 3].min(axis=1) == 0)
    np.testing.assert_allclose(obs[1, 0], obs[1, 1])
    if burst_steps_left:
        assert np.all(hand_share(params, OBS_TIME, True) >= hand_share(params, OBS_TIME, False))
        assert not np.allclose(hand_share(params, OBS_TIME, True), hand_share(params, OBS_TIME, False))


def test_server_observation_features_equal_hand_values():
    params = obs_params()
    # All slots full and 2 more arrivals overflowed (an overflow happens only with full slots).
    sizes = (0.8, 1.7, 0.9, 0.05)
    state = hand_state(params, OBS_BACKLOG, sizes, OBS_CANDIDATES, (True,) * 4, time=OBS_TIME,
                       recent=OBS_RECENT, overflow=2)
    per_server, global_features = (np.asarray(x, F64) for x in env.server_observation(state, params))
    scale = float(params.mean_job_steps)
    cap = f64(params.capacity)
    mu = cap / scale
    expected_server = np.stack([np.log1p(f64(OBS_BACKLOG) / mu / scale), np.log(cap), f64(OBS_RECENT),
                                hand_share(params, OBS_TIME, False)], axis=-1)
    np.testing.assert_allclose(per_server, expected_server, rtol=1e-5, atol=1e-5)

    phase = 2 * math.pi * OBS_TIME / params.horizon
    rate = params.num_agents * hand_arrival_probability(params, OBS_TIME, False)  # expected work (= jobs) per step
    work = float(np.sum(f64(np.float32(sizes))))
    expected_global = [math.sin(phase), math.cos(phase), math.log1p((4 + 2) / rate), math.log1p(work / rate)]
    assert global_features.shape in ((4,), (5,))
    np.testing.assert_allclose(global_features[:4], expected_global, rtol=1e-5, atol=1e-6)
    if global_features.shape == (5,):
        np.testing.assert_allclose(global_features[4], 1 - OBS_TIME / params.horizon, rtol=1e-6)


# ---------------------------------------------------------------------------------------
# 3. Diurnal arrival probability and the empirical arrival frequency of sample_jobs.

ARRIVAL_CONFIG = env.CloudConfig(num_agents=200, mean_job_steps=1.0, burst_rate=0.5, burst_factor=1.5)
# p0 = 0.75 * 100 / (200 * 1) = 0.375; peak with a burst 0.375 * 1.25 * 1.5 = 0.70.


@functools.lru_cache(maxsize=None)
def arrival_params():
    return env.make_params(ARRIVAL_CONFIG)


def test_arrival_probability_is_the_daily_sine():
    params = arrival_params()
    assert float(params.capacity.sum()) == pytest.approx(params.num_servers, rel=1e-6)
    for time in (0, 7, 250, 333, 500, 731, 999):
        for burst in (False, True):
            p = float(arrivals.arrival_probability(params, jnp.asarray(time, jnp.int32), jnp.asarray(burst)))
            assert p == pytest.approx(hand_arrival_probability(params, time, burst), rel=1e-6), (time, burst)
    # docs/environment.md's numbers: p0 = rho M / (N mean_job_steps); lowest at t = 0, highest at T / 2.
    assert hand_arrival_probability(params, 0, False) == pytest.approx(0.375 * 0.75, rel=1e-5)
    assert hand_arrival_probability(params, 500, False) == pytest.approx(0.375 * 1.25, rel=1e-5)
    default = env.make_params(env.CloudConfig())
    assert float(arrivals.arrival_probability(default, jnp.asarray(250), jnp.asarray(False))) == pytest.approx(
        0.0375, rel=1e-5)


@jax.jit
def arrivals_per_key(keys, params, time, burst):
    """(K,) jobs arriving at step `time` (slots used plus overflow), one draw per key."""
    def one(key):
        jobs = arrivals.sample_jobs(key, params, time, burst)
        return jobs.valid.sum() + jobs.num_overflow
    return jax.vmap(one)(keys)


@pytest.mark.parametrize("time, burst", [(0, False), (500, False), (500, True), (130, True)])
def test_empirical_arrival_frequency_matches_the_probability(time, burst):
    params = arrival_params()
    num_keys = 1000
    keys = jax.random.split(jax.random.key(11 + time), num_keys)
    counts = np.asarray(arrivals_per_key(keys, params, jnp.asarray(time, jnp.int32), jnp.asarray(burst)))
    trials = num_keys * params.num_agents
    p = hand_arrival_probability(params, time, burst)
    frequency = counts.sum() / trials
    standard_error = math.sqrt(p * (1 - p) / trials)
    assert abs(frequency - p) < 5 * standard_error, (time, burst, frequency, p, standard_error)
    # The per-step count is binomial(N, p): its variance too.
    np.testing.assert_allclose(counts.var(ddof=1), params.num_agents * p * (1 - p), rtol=0.2)


# ---------------------------------------------------------------------------------------
# 4. Bursts.

BURST_CONFIG = env.CloudConfig(num_agents=20, mean_job_steps=2.0, burst_rate=0.5, burst_duration=2.2)
# start probability 0.5 / 2 = 0.25 per step; length ceil(2.2 * 2) = ceil(4.4) = 5 (round and floor give 4).
BURST_LENGTH = 5


@jax.jit
def next_burst_per_key(keys, params, steps_left):
    return jax.vmap(lambda k: arrivals.next_burst(k, params, steps_left))(keys)


def test_burst_starts_at_the_rate_with_the_length_in_steps():
    params = env.make_params(BURST_CONFIG)
    assert math.ceil(BURST_CONFIG.burst_duration * BURST_CONFIG.mean_job_steps) == BURST_LENGTH
    num_keys = 40_000
    out = np.asarray(next_burst_per_key(jax.random.split(jax.random.key(3), num_keys), params, jnp.asarray(0)))
    assert set(np.unique(out).tolist()) == {0, BURST_LENGTH}
    q = BURST_CONFIG.burst_rate / BURST_CONFIG.mean_job_steps
    frequency = (out > 0).mean()
    assert abs(frequency - q) < 5 * math.sqrt(q * (1 - q) / num_keys), (frequency, q)


@pytest.mark.parametrize("burst_rate, mean_job_steps", [(0.5, 2.0), (0.95, 1.0)])
def test_running_burst_counts_down_and_never_restarts(burst_rate, mean_job_steps):
    params = env.make_params(BURST_CONFIG).replace(burst_rate=jnp.asarray(burst_rate, jnp.float32),
                                                   mean_job_steps=jnp.asarray(mean_job_steps, jnp.float32))
    keys = jax.random.split(jax.random.key(5), 2000)
    for steps_left in (1, 2, 3, 7, 40):
        out = np.asarray(next_burst_per_key(keys, params, jnp.asarray(steps_left)))
        np.testing.assert_array_equal(out, steps_left - 1)


def test_burst_runs_in_a_chain_have_exactly_the_burst_length():
    """Chained next_burst over many steps: every run of positive steps_left counts down
    L, L-1, ..., 1 (L = ceil(duration * mean_job_steps)); new bursts start only from 0,
    at rate burst_rate / mean_job_steps per idle step."""
    params = env.make_params(BURST_CONFIG)
    num_steps = 30_000

    @jax.jit
    def chain(key):
        def one(left, k):
            new = arrivals.next_burst(k, params, left)
            return new, new
        return jax.lax.scan(one, jnp.zeros((), jnp.int32), jax.random.split(key, num_steps))[1]

    left = np.asarray(chain(jax.random.key(8)))
    previous = np.concatenate([[0], left[:-1]])
    running = previous > 0
    np.testing.assert_array_equal(left[running], previous[running] - 1)  # counts down, no restart
    starts = ~running & (left > 0)
    assert np.all(left[starts] == BURST_LENGTH)
    idle = ~running
    q = BURST_CONFIG.burst_rate / BURST_CONFIG.mean_job_steps
    frequency = starts.sum() / idle.sum()
    assert abs(frequency - q) < 5 * math.sqrt(q * (1 - q) / idle.sum()), (frequency, q)
    # Fraction of steps inside a burst, L q / (1 + L q) in the long run (renewal: a cycle is
    # L burst steps, the step that counts down to 0, then idle steps until a start, mean (1 - q) / q).
    busy = (left > 0).mean()
    assert busy == pytest.approx(BURST_LENGTH * q / (1 + BURST_LENGTH * q), rel=0.05)


# ---------------------------------------------------------------------------------------
# 5. Candidate frequencies.


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_capacity_weighted_candidates_follow_capacity(seed):
    params = env.make_params(env.CloudConfig(num_agents=32, num_candidates=4))  # M = 16, the catalog mix
    assert params.num_servers == 16 and params.num_candidates == 4 and params.capacity_weighted
    cand = np.asarray(arrivals.sample_candidates(jax.random.key(seed), params, 5000))
    assert cand.shape == (5000, 4)
    counts = np.bincount(cand.ravel(), minlength=16)
    cap = f64(params.capacity)
    expected = cap / cap.sum() * counts.sum()
    assert stats.chisquare(counts, expected).pvalue > 1e-3
    # Power: the same counts are far from uniform.
    assert stats.chisquare(counts, np.full(16, counts.sum() / 16)).pvalue < 1e-12


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_uniform_candidates_are_uniform(seed):
    params = env.make_params(env.CloudConfig(num_agents=32, num_candidates=4, candidate_sampling="uniform"))
    assert not params.capacity_weighted
    cand = np.asarray(arrivals.sample_candidates(jax.random.key(seed), params, 5000))
    counts = np.bincount(cand.ravel(), minlength=16)
    assert stats.chisquare(counts, np.full(16, counts.sum() / 16)).pvalue > 1e-3
    cap = f64(params.capacity)
    assert stats.chisquare(counts, cap / cap.sum() * counts.sum()).pvalue < 1e-12


# ---------------------------------------------------------------------------------------
# 6. The job-size law.

NUM_SIZES = 200_000


def clipped_pareto_mean(a, xm, c):
    """E[min(X, xm c)] for X Pareto(a, xm): xm + int_xm^{xm c} (xm / x)^a dx."""
    tail = math.log(c) if a == 1 else (c ** (1 - a) - 1) / (1 - a)
    return xm * (1 + tail)


def raw_size_mean(params):
    f = float(params.large_fraction)
    small = math.exp(float(params.small_sigma) ** 2 / 2)
    large = clipped_pareto_mean(float(params.large_shape), float(params.large_scale), float(params.large_clip))
    return (1 - f) * small + f * large


def test_clipped_pareto_mean_formula_by_quadrature():
    # The closed form above against numerical integration of the survival function.
    from scipy import integrate
    for a in (0.5, 1.0, 1.5, 3.0):
        numeric = 4.0 + integrate.quad(lambda x: (4.0 / x) ** a, 4.0, 50.0)[0]
        assert clipped_pareto_mean(a, 4.0, 12.5) == pytest.approx(numeric, rel=1e-10)


def size_params(**replace):
    params = env.make_params(env.CloudConfig(num_agents=4))
    return params.replace(**{k: jnp.asarray(v, jnp.float32) for k, v in replace.items()})


def draw_sizes(params, seed=0):
    return np.asarray(arrivals.sample_sizes(jax.random.key(seed), params, (NUM_SIZES,)), F64)


def assert_mean_one(sizes):
    standard_error = sizes.std(ddof=1) / math.sqrt(len(sizes))
    assert abs(sizes.mean() - 1) < 5 * standard_error, (sizes.mean(), standard_error)


def test_default_sizes_have_mean_one_and_the_large_tenth_carries_about_half_the_work():
    params = size_params()
    sizes = draw_sizes(params)
    assert np.all(sizes > 0)
    assert_mean_one(sizes)

    f, sigma = float(params.large_fraction), float(params.small_sigma)
    xm, c = float(params.large_scale), float(params.large_clip)
    raw = raw_size_mean(params)
    large_mean = clipped_pareto_mean(float(params.large_shape), xm, c)
    # Analytic share of the work carried by the large mode (docs/environment.md: "the large 10% carry
    # half the work"): 0.1 * 9.737 / 2.051 = 0.4747.
    large_share = f * large_mean / raw
    assert large_share == pytest.approx(0.5, abs=0.03)

    # The largest size is the Pareto clip xm c over the raw mean (about 2% of the large jobs
    # sit at the clip, 450 of the sample): this pins the analytic mean used for the rescaling.
    np.testing.assert_allclose(sizes.max(), xm * c / raw, rtol=1e-5)
    # The modes overlap (a lognormal above xm has probability 1%), so test the law above the
    # threshold xm / raw (in mean-1 units): the fraction of jobs and the share of work there.
    threshold = xm / raw
    z = math.log(xm) / sigma
    above = sizes >= threshold
    fraction = f + (1 - f) * stats.norm.sf(z)
    assert abs(above.mean() - fraction) < 5 * math.sqrt(fraction * (1 - fraction) / NUM_SIZES), (above.mean(),
                                                                                                fraction)
    small_above = math.exp(sigma**2 / 2) * stats.norm.cdf(sigma - z)  # E[L; L > xm], L lognormal(0, sigma)
    share_above = (f * large_mean + (1 - f) * small_above) / raw
    y = np.where(above, sizes, 0.0)
    ratio = y.sum() / sizes.sum()
    ratio_error = np.std(y - ratio * sizes, ddof=1) / sizes.mean() / math.sqrt(NUM_SIZES)  # delta method
    assert abs(ratio - share_above) < 5 * ratio_error, (ratio, share_above, ratio_error)


def test_separated_modes_give_the_large_fraction_and_the_large_share():
    """With sigma = 0.3 the lognormal practically never reaches xm = 4 (P = 2e-6), so
    sizes above xm / raw are exactly the large jobs."""
    params = size_params(small_sigma=0.3)
    sizes = draw_sizes(params, seed=1)
    assert_mean_one(sizes)
    f = float(params.large_fraction)
    raw = raw_size_mean(params)
    large = sizes >= float(params.large_scale) / raw * (1 - 1e-6)
    assert abs(large.mean() - f) < 5 * math.sqrt(f * (1 - f) / NUM_SIZES), large.mean()
    share = f * clipped_pareto_mean(float(params.large_shape), float(params.large_scale),
                                    float(params.large_clip)) / raw
    y = np.where(large, sizes, 0.0)
    ratio = y.sum() / sizes.sum()
    ratio_error = np.std(y - ratio * sizes, ddof=1) / sizes.mean() / math.sqrt(NUM_SIZES)
    assert abs(ratio - share) < 5 * ratio_error, (ratio, share, ratio_error)


@pytest.mark.parametrize("shape", [0.5, 1.0, 1.5, 3.0])
@pytest.mark.parametrize("large_fraction", [0.1, 1.0])
def test_sizes_have_mean_one_on_both_pareto_branches(shape, large_fraction):
    params = size_params(large_shape=shape, large_fraction=large_fraction)
    sizes = draw_sizes(params, seed=2)
    assert_mean_one(sizes)
    raw = raw_size_mean(params)
    xm, c = float(params.large_scale), float(params.large_clip)
    at_clip = np.isclose(sizes, xm * c / raw, rtol=1e-5)
    assert at_clip.any()
    np.testing.assert_allclose(sizes.max(), xm * c / raw, rtol=1e-5)
    if large_fraction == 1.0:
        # Only the Pareto mode: min(X, xm c) / E, so the sample minimum is just above xm / E and
        # P(at the clip) = c^-a.
        assert sizes.min() >= xm / raw * (1 - 1e-5) and sizes.min() <= xm / raw * 1.001
        p = c ** -shape
        assert abs(at_clip.mean() - p) < 5 * math.sqrt(p * (1 - p) / NUM_SIZES), (at_clip.mean(), p)


# ---------------------------------------------------------------------------------------
# 7. The fleet mix.

POWER = np.array([vcpu * speed for _, vcpu, speed, _ in env.SERVER_CATALOG], F64)
PER_16 = np.array([count for *_, count in env.SERVER_CATALOG])


def test_catalog_is_the_readme_mix():
    assert [(name, vcpu, speed, n) for name, vcpu, speed, n in env.SERVER_CATALOG] == [
        ("m5.large", 2, 1.0, 5), ("m5.xlarge", 4, 1.0, 4), ("c5.2xlarge", 8, 1.3, 2),
        ("r5.2xlarge", 8, 1.0, 2), ("m5.4xlarge", 16, 1.0, 2), ("c5.9xlarge", 36, 1.3, 1)]
    assert PER_16.sum() == 16


def type_counts(capacity):
    """Servers of each catalog type in a fleet where every type occurs (so the fleet's
    smallest capacity is the 2-vCPU type's and sets the scale)."""
    power = f64(capacity) * (POWER.min() / f64(capacity).min())
    kind = np.argmin(np.abs(power[:, None] - POWER[None, :]), axis=1)
    np.testing.assert_allclose(power, POWER[kind], rtol=1e-5)  # every server is a catalog type
    return np.bincount(kind, minlength=len(POWER))


@pytest.mark.parametrize("num_servers", [16, 32, 160])
def test_fleet_is_the_exact_mix_for_multiples_of_16(num_servers):
    capacity = f64(env.fleet_capacity(num_servers))
    assert capacity.shape == (num_servers,)
    per_16_mean = (PER_16 * POWER).sum() / 16  # 8.85
    expected = np.sort(np.repeat(POWER / per_16_mean, PER_16 * num_servers // 16))
    np.testing.assert_allclose(np.sort(capacity), expected, rtol=1e-6)
    np.testing.assert_array_equal(type_counts(capacity), PER_16 * num_servers // 16)


def test_fleet_mean_is_one_and_counts_are_within_one_of_the_share():
    for m in (1, 2, 3, 5, 7, 11, 15, 17, 20, 24, 31, 33, 50, 65, 100, 117):
        capacity = f64(jit_fleet_capacity(m))
        assert capacity.mean() == pytest.approx(1.0, rel=1e-6), m
        assert np.all(capacity > 0)
        if m >= 16:
            counts = type_counts(capacity)
            assert counts.sum() == m
            assert np.all(np.abs(counts - m * PER_16 / 16) < 1 + 1e-9), (m, counts)


def test_homogeneous_fleet_has_equal_servers_of_the_catalog_total():
    catalog = env.make_params(env.CloudConfig(num_agents=40))
    homogeneous = env.make_params(env.CloudConfig(num_agents=40, fleet="homogeneous"))
    np.testing.assert_array_equal(f64(homogeneous.capacity), np.ones(20))
    assert f64(homogeneous.capacity).sum() == pytest.approx(f64(catalog.capacity).sum(), rel=1e-6)
    assert len(set(f64(catalog.capacity).tolist())) > 1
    with pytest.raises(ValueError, match="fleet"):
        env.CloudConfig(fleet="uniform").validate()


# ---------------------------------------------------------------------------------------
# 8. Slot overflow at a real overload.

OVERLOAD_CONFIG = env.CloudConfig(num_agents=50, mean_job_steps=2.0)  # M = 25, J sized for rho = 0.75
OVERLOAD_UTILISATION = 3.5  # p0 = 3.5 * 25 / (50 * 2) = 0.875: about 33 arrivals a step for 34 slots
OVERLOAD_STEPS, OVERLOAD_SEEDS = 40, 16


@jax.jit
def overload_rollout(keys, params):
    def one_seed(key):
        reset_key, steps_key = jax.random.split(key)
        _, state = env.reset(reset_key, params)

        def one_step(state, k):
            actions = state.jobs.candidates[:, 0]
            _, next_state, reward, _, info = env.step(k, state, actions, params)
            record = dict(valid=state.jobs.valid, overflow=state.jobs.num_overflow, time=state.time, reward=reward,
                          **{name: info[name] for name in ("num_arrived", "num_rejected", "num_overflow",
                                                           "response_time", "response_time_sum", "rejected")})
            return next_state, record

        return jax.lax.scan(one_step, state, jax.random.split(steps_key, OVERLOAD_STEPS))[1]

    return jax.vmap(one_seed)(keys)


def test_slot_overflow_is_counted_and_charged():
    params = env.make_params(OVERLOAD_CONFIG)
    j, n = params.num_rows, params.num_agents
    assert j == OVERLOAD_CONFIG.num_rows == 34
    params = params.replace(utilisation=jnp.asarray(OVERLOAD_UTILISATION, jnp.float32))
    out = jax.tree.map(np.asarray, overload_rollout(jax.random.split(jax.random.key(4), OVERLOAD_SEEDS), params))
    penalty_steps = float(params.rejection_penalty) * float(params.mean_job_steps)

    overflow = out["num_overflow"]
    np.testing.assert_array_equal(overflow, out["overflow"])
    assert (overflow > 0).mean() > 0.2 and (overflow == 0).mean() > 0.2, (overflow > 0).mean()
    assert np.all(out["valid"][overflow > 0].all(axis=-1))  # an overflow only with every slot full
    slots_used = out["valid"].sum(-1)
    np.testing.assert_array_equal(out["num_arrived"], slots_used + overflow)
    np.testing.assert_array_equal(out["num_rejected"], out["rejected"].sum(-1) + overflow)
    np.testing.assert_allclose(out["response_time"][out["rejected"]], penalty_steps, rtol=1e-6)
    np.testing.assert_allclose(out["response_time_sum"], out["response_time"].sum(-1) + overflow * penalty_steps,
                               rtol=1e-5)
    np.testing.assert_allclose(out["reward"], -out["response_time_sum"] / float(params.mean_job_steps) / n,
                               rtol=1e-5)

    # num_arrived counts the true arrivals: its mean is N p_t (an undercount at the J cap
    # would be 0.85 jobs a step, about 6 standard errors, low), and the mean overflow is
    # E[(X - J)^+] for X ~ binomial(N, p_t).
    p = np.array([[hand_arrival_probability(params, int(t), False) for t in row] for row in out["time"]])
    assert np.all(out["time"] == np.arange(OVERLOAD_STEPS))
    arrived = out["num_arrived"].astype(F64)
    standard_error = math.sqrt((n * p * (1 - p)).sum()) / arrived.size
    assert abs(arrived.mean() - n * p.mean()) < 5 * standard_error, (arrived.mean(), n * p.mean())
    x = np.arange(n + 1)
    excess = np.array([(np.maximum(x - j, 0) * stats.binom.pmf(x, n, q)).sum() for q in p[0]])
    excess_error = overflow.std(ddof=1) / math.sqrt(overflow.size)
    assert abs(overflow.mean() - excess.mean()) < 5 * excess_error, (overflow.mean(), excess.mean(), excess_error)
