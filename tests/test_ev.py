"""Tests of the EV-charging domain (dgpg_jax.tasks.ev): valley filling against scipy, window
commitments against a slot-by-slot NumPy replay, energy balance, guidance against a hand
computation and a brute-force recomputation of the potential, common random numbers,
the ranking of the baselines against the reference, config validation, jit + vmap.

Hand-worked guidance (test_guidance_hand_value): N = 2, T = 4, so dt = 6 h and
dt / N = 3. Committed load L = (4, 2, 1, 3) kW, one EV with p = 1 kW, d = 2, candidates
starting at 0, 1, 2, chosen window start 1 (slots 1, 2). g(b) = -(dt p / N)
[sum_{w_b}(L - r) - p |w_b n w_chosen| + d p / 2]:
  target r = 0:  b=0: -3 (6 - 1 + 1) = -18;  b=1: -3 (3 - 2 + 1) = -6;  b=2: -3 (4 - 1 + 1) = -12
  target r = 1:  b=0: -3 (4 - 1 + 1) = -12;  b=1: -3 (1 - 2 + 1) = 0;   b=2: -3 (2 - 1 + 1) = -6
(the same as L^{-i} = (4, 1, 0, 3) with the window added: b=1 gives -(3/2)((2^2 - 1) + (1 - 0)) = -6).

Compiled programs are shared: `_days` runs a tuple of policies (a `lax.switch` on a traced
index, so one compile per config) over a vmapped batch of seeds.
"""

import dataclasses
import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from dgpg_jax import evaluate, runner, train
from dgpg_jax.tasks import ev
from dgpg_jax.evaluate import seed_keys
from dgpg_jax.tasks.ev.arrivals import pack_arrivals
from dgpg_jax.tasks.ev.evaluate import rollout, summarise
from dgpg_jax.tasks.ev.guidance import LoadAggregates, potential_target, tracking_potential, window_guidance
from dgpg_jax.tasks.ev.types import arrival_slot_probabilities_host

DEFAULT = ev.EVConfig(num_agents=50)
# Overflowing rows (J = 3), short stays (departures near 21:00 give undelivered energy),
# hourly slots, the overload term on: exercises every accounting rule, and the reference
# must stay a lower bound under a non-quadratic convex cost.
STRESS = ev.EVConfig(num_agents=40, horizon=24, decision_rows=3, departure_mean_hour=21.0, energy_mean=15.0,
                     overload_weight=5.0, capacity_per_agent=2.0)


def wild_policy(key, state, params):
    """Candidate indices in [-1, k], so some are out of range (taken as candidate 0)."""
    return jax.random.randint(key, (params.num_rows,), -1, params.num_candidates + 1, dtype=jnp.int32)


@functools.partial(jax.jit, static_argnums=0)
def _days(policies, index, params, episode_keys):
    """Days under policies[index] for each key: (day, arrivals, actions, records, metrics)."""
    act = lambda key, state, p: jax.lax.switch(index, policies, key, state, p)  # noqa: E731

    def one(key):
        day, arrivals, actions, records = rollout(act, params, key)
        return day, arrivals, actions, records, summarise(records, params)

    return jax.vmap(one)(episode_keys)


BASELINE_NAMES = tuple(ev.BASELINES)
BASELINE_POLICIES = tuple(ev.BASELINES.values())


@functools.lru_cache(maxsize=None)
def default_days(num_seeds: int = 2):
    """All baselines on the default config at N = 50, the same seeds: {name: outputs}."""
    params = ev.make_params(DEFAULT)
    keys = seed_keys(0, num_seeds)
    return {name: jax.device_get(_days(BASELINE_POLICIES, i, params, keys)) for i, name in enumerate(BASELINE_NAMES)}


# ---------------------------------------------------------------- valley filling


def scipy_valley(base: np.ndarray, energy: float) -> np.ndarray:
    """min sum (b + x)^2 s.t. sum x = E, x >= 0, by SLSQP in float64."""
    result = optimize.minimize(lambda x: ((base + x) ** 2).sum(), np.full_like(base, energy / base.size),
                               jac=lambda x: 2 * (base + x), method="SLSQP", bounds=[(0, None)] * base.size,
                               constraints=[{"type": "eq", "fun": lambda x: x.sum() - energy,
                                             "jac": lambda x: np.ones_like(x)}],
                               options={"ftol": 1e-15, "maxiter": 500})
    assert result.success, result.message
    return result.x


@pytest.mark.parametrize("seed", range(5))
def test_valley_fill_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.5, 2.0, 24)
    energy = float(rng.uniform(0.5, 12.0))
    level, profile = jax.jit(ev.valley_fill)(jnp.asarray(base, jnp.float32), jnp.float32(energy))
    expected = scipy_valley(base, energy)
    objective = lambda x: ((base + x) ** 2).sum()  # noqa: E731
    np.testing.assert_allclose(objective(np.asarray(profile, np.float64)), objective(expected), rtol=1e-5)
    np.testing.assert_allclose(profile, expected, atol=1e-5 * (base.max() + energy))
    np.testing.assert_allclose(np.sum(profile), energy, rtol=1e-5)
    active = np.asarray(profile) > 0
    np.testing.assert_allclose((base + profile)[active], level, rtol=1e-5)  # one level where filled
    assert np.all(base[~active] >= level - 1e-5)  # untouched slots lie above it


def test_valley_fill_edges_vmap_and_gradient():
    base = jnp.array([3.0, 1.0, 2.0, 5.0])
    level, profile = ev.valley_fill(base, jnp.float32(0.0))
    assert float(level) == 1.0 and np.all(np.asarray(profile) == 0)
    # E = 3 fills slots of base 1 and 2 to level 3: x = (0, 2, 1, 0).
    level, profile = ev.valley_fill(base, jnp.float32(3.0))
    np.testing.assert_allclose(level, 3.0)
    np.testing.assert_allclose(profile, [0.0, 2.0, 1.0, 0.0])
    # d level / d E = 1 / (active slots) = 1/2 there; d level / d b_1 = 1/2.
    grad_e, grad_b = jax.grad(lambda b, e: ev.valley_fill(b, e)[0], argnums=(1, 0))(base, jnp.float32(3.0))
    np.testing.assert_allclose(grad_e, 0.5)
    np.testing.assert_allclose(grad_b, [0.0, 0.5, 0.5, 0.0])
    batch = jnp.stack([base, base[::-1]])
    levels, profiles = jax.vmap(ev.valley_fill)(batch, jnp.array([3.0, 3.0]))
    np.testing.assert_allclose(levels, [3.0, 3.0])
    np.testing.assert_allclose(profiles[1], [0.0, 1.0, 2.0, 0.0])
    with pytest.raises(ValueError, match="total_energy"):
        ev.valley_fill(base, jnp.float32(-1.0))


# ---------------------------------------------------------------- windows


def test_commit_matches_slot_by_slot_numpy():
    rng = np.random.default_rng(0)
    horizon, rows, k = 30, 40, 3
    length = rng.integers(0, 12, rows)
    start = rng.integers(0, horizon - length + 1)  # (rows,) windows inside the day
    power = rng.uniform(1.0, 11.0, rows).astype(np.float32)
    include = rng.uniform(size=rows) < 0.8
    initial = rng.uniform(0.0, 5.0, horizon).astype(np.float32)
    load = jax.jit(ev.commit_windows)(jnp.asarray(initial), jnp.asarray(start), jnp.asarray(length),
                                      jnp.asarray(power), jnp.asarray(include))
    expected = initial.astype(np.float64)
    for s, d, p, keep in zip(start, length, power, include):
        for t in range(s, s + d):
            expected[t] += p if keep else 0.0
    np.testing.assert_allclose(load, expected, rtol=1e-5, atol=1e-5)
    # Window sums by prefix sums against plain slices.
    starts = np.stack([rng.integers(0, horizon - length + 1) for _ in range(k)], axis=1)  # (rows, k)
    sums = ev.window_sums(jnp.asarray(initial), jnp.asarray(starts), jnp.asarray(length))
    expected_sums = [[initial[s:s + d].sum() for s in row] for row, d in zip(starts, length)]
    np.testing.assert_allclose(sums, expected_sums, rtol=1e-5, atol=1e-5)


def numpy_plan(energy, power_limit, arrival, departure, dt, k):
    """Independent window length, power and candidate starts of one EV."""
    stay = departure - arrival
    length = min(max(math.ceil(energy / (power_limit * dt) - 1e-4), 1), stay)
    power = min(power_limit, energy / (length * dt))
    slack = stay - length
    starts = [arrival] if k == 1 else [arrival + math.floor(b * slack / (k - 1) + 0.5) for b in range(k)]
    return length, power, starts


def test_episode_replays_slot_by_slot_and_balances_energy():
    """A day with overflow, short stays and out-of-range actions, replayed in NumPy from the
    day's fleet and the actions: every EV's window added slot by slot, overflow EVs and
    invalid actions charged on arrival."""
    params = ev.make_params(STRESS)
    day, arrivals, actions, records, metrics = jax.device_get(
        _days((wild_policy,), 0, params, seed_keys(3, 1)))
    day, arrivals, actions, records, metrics = jax.tree.map(lambda x: x[0], (day, arrivals, actions, records, metrics))
    dt, k, j = params.slot_hours, params.num_candidates, params.num_rows
    load = np.zeros(params.horizon)
    demanded = undelivered = 0.0
    overflow = invalid = 0
    first = {}
    for i, a in enumerate(day.arrival):
        first.setdefault(int(a), i)
    for i in range(params.num_agents):
        a, e = int(day.arrival[i]), int(day.departure[i])
        assert a + 1 <= e <= params.horizon
        length, power, starts = numpy_plan(float(day.energy[i]), float(day.power_limit[i]), a, e, dt, k)
        rank = i - first[a]
        if rank < j:
            assert arrivals.agent[a, rank] == i and arrivals.valid[a, rank]
            assert arrivals.length[a, rank] == length
            np.testing.assert_array_equal(arrivals.candidate_start[a, rank], starts)
            np.testing.assert_allclose(arrivals.power[a, rank], power, rtol=1e-6)
            action = int(actions[a, rank])
            invalid += not 0 <= action < k
            start = starts[action] if 0 <= action < k else starts[0]
        else:
            overflow += 1
            start = a
        for t in range(start, start + length):
            load[t] += power
        demanded += float(day.energy[i])
        undelivered += float(day.energy[i]) - power * length * dt
    assert overflow > 0 and invalid > 0 and undelivered > 1.0  # the rules were exercised
    assert metrics.num_overflow == overflow and metrics.num_invalid == invalid
    assert metrics.num_arrived == params.num_agents
    np.testing.assert_allclose(records.ev_load, load, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(records.load, records.base_load + records.ev_load, rtol=1e-6)
    assert np.all(records.load >= 0) and np.all(records.ev_load >= 0) and np.all(records.base_load >= 0)
    np.testing.assert_allclose(metrics.demanded_energy, demanded, rtol=1e-5)
    np.testing.assert_allclose(metrics.undelivered_energy, undelivered, rtol=1e-4)
    # Energy from the slot loads (difference arrays) + undelivered = demanded.
    np.testing.assert_allclose(metrics.charged_energy + metrics.undelivered_energy, metrics.demanded_energy,
                               rtol=1e-5)
    np.testing.assert_allclose(metrics.delivered_energy, metrics.charged_energy, rtol=1e-5)
    assert records.load.max() / params.num_agents > STRESS.capacity_per_agent  # the overload term bites
    assert metrics.reference_cost <= metrics.total_cost


def test_default_days_balance_energy_and_stay_nonnegative():
    for name, (_, _, _, records, metrics) in default_days().items():
        np.testing.assert_allclose(metrics.charged_energy + metrics.undelivered_energy, metrics.demanded_energy,
                                   rtol=1e-5, err_msg=name)
        assert np.all(records.load >= 0) and np.all(records.ev_load >= 0), name
        assert np.all(metrics.num_arrived == DEFAULT.num_agents) and np.all(metrics.num_overflow == 0), name
        np.testing.assert_allclose(-metrics.episode_return * DEFAULT.num_agents, metrics.total_cost, rtol=1e-5)


# ---------------------------------------------------------------- guidance


def test_guidance_hand_value():
    params = ev.make_params(ev.EVConfig(num_agents=2, horizon=4))
    load = jnp.array([4.0, 2.0, 1.0, 3.0])
    start = jnp.array([[0, 1, 2], [0, 0, 0]])
    length, power = jnp.array([2, 0]), jnp.array([1.0, 0.0])
    chosen, valid = jnp.array([1, 0]), jnp.array([True, False])
    for target, expected in ((0.0, [-18.0, -6.0, -12.0]), (1.0, [-12.0, 0.0, -6.0])):
        agg = LoadAggregates(load=load, target=jnp.full((4,), target))
        g = window_guidance(agg, start, length, power, chosen, valid, params)
        np.testing.assert_allclose(g[0], expected, rtol=1e-6)
        np.testing.assert_array_equal(g[1], 0.0)
    # G of the `load` potential is minus half the quadratic load cost.
    agg = LoadAggregates(load=load, target=jnp.zeros(4))
    np.testing.assert_allclose(tracking_potential(agg, params).sum(), -0.5 * ev.slot_cost(load, params).sum(),
                               rtol=1e-6)


@functools.partial(jax.jit, static_argnums=0)
def _evening_guidance(potential, params, key):
    """Some committed load, the arrivals of 18:00, random actions, their guidance."""
    reset_key, load_key, action_key = jax.random.split(key, 3)
    _, state = ev.reset(reset_key, params)
    time = jnp.int32(12)
    ev_load = jax.random.uniform(load_key, (params.horizon,)) * params.num_agents * 2.0
    state = state.replace(time=time, ev_load=ev_load, arrivals=pack_arrivals(state.day, time, params))
    actions = jax.random.randint(action_key, (params.num_rows,), 0, params.num_candidates)
    obs = ev.candidate_observation(state, params)
    per_slot, global_features = ev.slot_observation(state, params)
    guidance = ev.step_guidance(state, actions, params, potential)
    return state, actions, guidance, potential_target(potential, state, params), obs, per_slot, global_features


@pytest.mark.parametrize("potential", ["valley", "load"])
def test_guidance_equals_brute_force_potential_difference(potential):
    params = ev.make_params(DEFAULT)
    state, actions, guidance, target, obs, per_slot, global_features = jax.device_get(
        _evening_guidance(potential, params, jax.random.key(1)))
    rows = state.arrivals
    assert rows.valid.sum() >= 3
    dt, n = params.slot_hours, params.num_agents
    load = np.asarray(ev.base_forecast(params), np.float64) + state.ev_load + state.day.overflow_load[12]
    for i in np.flatnonzero(rows.valid):
        s = rows.candidate_start[i, actions[i]]
        load[s:s + rows.length[i]] += rows.power[i]
    potential_sum = lambda x: -0.5 * dt / n * ((x - target) ** 2).sum()  # noqa: E731
    expected = np.zeros(guidance.shape)
    for i in np.flatnonzero(rows.valid):
        d, p = rows.length[i], rows.power[i]
        without = load.copy()
        s = rows.candidate_start[i, actions[i]]
        without[s:s + d] -= p
        for b, sb in enumerate(rows.candidate_start[i]):
            with_window = without.copy()
            with_window[sb:sb + d] += p
            expected[i, b] = potential_sum(with_window) - potential_sum(without)
    np.testing.assert_allclose(guidance, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    assert np.all(guidance[~rows.valid] == 0)
    # Observations: shapes, finite, zero on empty rows.
    chex.assert_shape(obs, (params.num_rows, params.num_candidates, ev.NUM_CANDIDATE_FEATURES))
    chex.assert_shape(per_slot, (params.horizon, ev.NUM_SLOT_FEATURES))
    chex.assert_shape(global_features, (ev.NUM_GLOBAL_FEATURES,))
    chex.assert_tree_all_finite((obs, per_slot, global_features))
    assert np.all(obs[~rows.valid] == 0) and np.any(obs[rows.valid] != 0)


# ---------------------------------------------------------------- policies and reference


def test_common_random_numbers_same_day_for_every_policy():
    days = default_days()
    reference_day, reference_arrivals = days["arrival"][0], days["arrival"][1]
    for name, (day, arrivals, _, records, _) in days.items():
        chex.assert_trees_all_equal(day, reference_day)
        for field in ("valid", "agent", "departure", "energy", "power", "length", "candidate_start"):
            np.testing.assert_array_equal(getattr(arrivals, field), getattr(reference_arrivals, field), err_msg=name)
        np.testing.assert_array_equal(records.base_load, days["arrival"][3].base_load)
    # ... and different seeds give different days.
    assert not np.array_equal(reference_day.arrival[0], reference_day.arrival[1])


def test_charge_on_arrival_clearly_worse_and_reference_is_a_lower_bound():
    metrics = {name: out[4] for name, out in default_days().items()}
    arrival = metrics["arrival"]
    assert np.all(arrival.total_cost / metrics["greedy"].total_cost > 1.2)
    assert np.all(arrival.total_cost / arrival.reference_cost > 1.2)
    for name, m in metrics.items():
        np.testing.assert_allclose(m.reference_cost, arrival.reference_cost, rtol=1e-6)  # same day, same bound
        assert np.all(m.reference_cost <= m.total_cost * (1 + 1e-6)), name
        assert np.all(m.cost_ratio >= 1 - 1e-6), name
    assert np.all(metrics["greedy"].peak_load < arrival.peak_load)


def test_jit_vmap_over_seeds_of_a_whole_episode():
    """`_days` is jit(vmap(rollout + summarise)), the body of `ev.evaluate`; new seeds, the
    same shapes, so the compiled program is reused."""
    params = ev.make_params(DEFAULT)
    _, arrivals, actions, records, metrics = _days(BASELINE_POLICIES, BASELINE_NAMES.index("random"), params,
                                                   seed_keys(5, 2))
    chex.assert_shape(actions, (2, params.horizon, params.num_rows))
    chex.assert_shape(records.load, (2, params.horizon))
    chex.assert_shape(metrics.total_cost, (2,))
    chex.assert_tree_all_finite((records, metrics))
    assert metrics.total_cost[0] != metrics.total_cost[1]
    np.testing.assert_allclose(metrics.total_cost, records.cost.sum(axis=1), rtol=1e-6)


def test_step_auto_resets_at_the_end_of_the_day_and_traces_once():
    params = ev.make_params(DEFAULT)
    state = _evening_guidance("load", params, jax.random.key(1))[0]  # compiled already
    last = params.horizon - 1
    state = state.replace(time=jnp.int32(last), arrivals=pack_arrivals(state.day, jnp.int32(last), params),
                          ev_load=jnp.ones((params.horizon,)))
    actions = jnp.zeros((params.num_rows,), jnp.int32)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(key, state, actions):
        return ev.step(key, state, actions, params)

    obs, new_state, reward, done, info = step(jax.random.key(1), state, actions)
    assert bool(done) and bool(info["truncated"]) and not bool(info["terminated"])
    assert int(new_state.time) == 0 and float(new_state.ev_load.sum()) == 0.0
    assert not np.array_equal(new_state.day.arrival, state.day.arrival)
    chex.assert_shape(obs, (params.num_rows, params.num_candidates, ev.NUM_CANDIDATE_FEATURES))
    _, mid_state, _, mid_done, _ = step(jax.random.key(1), state.replace(time=jnp.int32(5)), actions)
    assert not bool(mid_done) and int(mid_state.time) == 6
    assert float(reward) < 0


# ---------------------------------------------------------------- distributions and config


def test_sampled_day_follows_its_distributions():
    params = ev.make_params(dataclasses.replace(DEFAULT, num_agents=20000))
    arrival, departure, energy, power = jax.device_get(jax.jit(ev.sample_fleet)(jax.random.key(0), params))
    dt = params.slot_hours
    assert np.all(np.diff(arrival) >= 0)  # sorted
    # Arrival slot ceil(x / dt) with x ~ N(6 h, 1.5 h) after 12:00: mean slot ~ 6 / 0.5 + 1/2.
    assert abs(arrival.mean() * dt - (6.0 + dt / 2)) < 0.05
    assert abs(departure.mean() * dt - (19.5 - dt / 2)) < 0.05
    assert abs(energy.mean() - 10.0) < 0.15 and energy.max() <= 60.0
    shares = [np.mean(power == np.float32(p)) for p in DEFAULT.power_levels]
    np.testing.assert_allclose(shares, DEFAULT.power_probabilities, atol=0.015)
    host = np.array(arrival_slot_probabilities_host(DEFAULT))
    np.testing.assert_allclose(ev.arrival_slot_probabilities(params), host, atol=1e-6)
    np.testing.assert_allclose(np.bincount(arrival, minlength=params.horizon) / arrival.size, host, atol=0.006)
    np.testing.assert_allclose(host.sum(), 1.0)
    np.testing.assert_allclose(ev.base_shape(params).mean(), 1.0, rtol=1e-6)


BAD_VALUES = [
    ("num_agents", 0), ("num_agents", True), ("horizon", 1), ("horizon", 48.0), ("day_start_hour", 24.0),
    ("num_candidates", 0), ("decision_rows", 0), ("decision_rows", 51), ("arrival_mean_hour", -1.0),
    ("arrival_sd_hours", 0.0), ("departure_sd_hours", -1.0), ("energy_mean", 0.0), ("energy_sigma", 4.0),
    ("energy_max", float("nan")), ("power_levels", ()), ("power_levels", (3.7, -1.0, 11.0)),
    ("power_probabilities", (0.5, 0.6, 0.2)), ("power_probabilities", (0.5, 0.5)),
    ("base_load_per_agent", -1.0), ("base_amplitude", 1.5), ("base_second_amplitude", 0.7),
    ("base_noise", 2.0), ("undelivered_penalty", -1.0), ("overload_weight", float("inf")),
    ("capacity_per_agent", 0.0),
]


@pytest.mark.parametrize("field, value", BAD_VALUES)
def test_config_validation_names_the_parameter(field, value):
    with pytest.raises(ValueError, match=f"^{field}="):
        ev.make_params(dataclasses.replace(DEFAULT, **{field: value}))


def test_names_are_checked():
    with pytest.raises(ValueError, match="policy="):
        ev.get_policy("nope")
    with pytest.raises(ValueError, match="potential="):
        potential_target("nope", None, None)
    assert DEFAULT.validate() is DEFAULT


# ---------------------------------------------------------------- the Task interface


def test_task_reference_is_the_valley_bound_of_the_policy_day():
    """`task.reference` on an episode key gives the bound that a policy's own `summarise`
    reports for that day, and `run_episode` through the Task equals the direct rollout."""
    task = DEFAULT.make_task()
    keys = seed_keys(3, 2)
    metrics, reference = jax.device_get(jax.jit(jax.vmap(lambda k: (
        evaluate.run_episode(ev.BASELINES["greedy"], task, k), task.reference(task.params, k))))(keys))
    direct = _days(BASELINE_POLICIES, BASELINE_NAMES.index("greedy"), task.params, keys)[4]
    chex.assert_trees_all_close(metrics, direct, rtol=1e-6)
    np.testing.assert_allclose(reference.total_cost, metrics.reference_cost, rtol=1e-5)
    np.testing.assert_allclose(reference.delivered_energy, metrics.delivered_energy, rtol=1e-5)
    np.testing.assert_allclose(reference.undelivered_energy, metrics.undelivered_energy, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(reference.charged_energy, reference.delivered_energy, rtol=1e-4)  # the profile delivers it
    assert np.all(reference.total_cost < metrics.total_cost)
    assert np.all(reference.peak_load < metrics.peak_load)
    pooled = task.pool(metrics)
    assert pooled["cost_ratio"] == pytest.approx(float(metrics.total_cost.sum() / metrics.reference_cost.sum()),
                                                 rel=1e-6)


def test_user_potential_first_order_guidance_equals_hand_derivative():
    """A user potential (a function of LoadAggregates) gets first-order guidance
    p sum_{t in w_b} dG/dL_t; for G = sum_t -(L_t - r_t)^4 / 4 that is -p sum_{w_b} (L - r)^3,
    with r the valley profile and L the load with every row's window committed."""
    params = ev.make_params(DEFAULT)
    state, actions, _, valley, *_ = jax.device_get(_evening_guidance("valley", params, jax.random.key(1)))

    def quartic(agg):
        return -0.25 * (agg.load - agg.target) ** 4

    guidance = np.asarray(jax.jit(lambda s, a: ev.task_guidance(quartic, s, a, params, exact=False))(state, actions))
    rows = state.arrivals
    load = np.asarray(ev.base_forecast(params), np.float64) + state.ev_load + state.day.overflow_load[12]
    for i in np.flatnonzero(rows.valid):
        s = rows.candidate_start[i, actions[i]]
        load[s:s + rows.length[i]] += rows.power[i]
    expected = np.zeros(guidance.shape)
    for i in np.flatnonzero(rows.valid):
        for b, sb in enumerate(rows.candidate_start[i]):
            window = slice(sb, sb + rows.length[i])
            expected[i, b] = -rows.power[i] * ((load[window] - valley[window]) ** 3).sum()
    np.testing.assert_allclose(guidance, expected, rtol=2e-4, atol=2e-4 * np.abs(expected).max())
    assert np.all(guidance[~rows.valid] == 0)
    # The named quadratic potential, first order: -(p dt / N) sum_{w_b} (L - r), without
    # the exact form's own-window correction.
    tracked = np.asarray(ev.task_guidance(ev.POTENTIALS["valley"], state, actions, params, exact=False))
    for i in np.flatnonzero(rows.valid):
        for b, sb in enumerate(rows.candidate_start[i]):
            window = slice(sb, sb + rows.length[i])
            hand = -rows.power[i] * (load[window] - valley[window]).sum()
            np.testing.assert_allclose(tracked[i, b], hand, rtol=2e-4, atol=2e-4 * np.abs(load).max())
    with pytest.raises(ValueError, match="potential=.*first_order"):
        ev.task_guidance(quartic, state, actions, params, exact=True)
    with pytest.raises(ValueError, match="potential=.*first_order"):
        DEFAULT.make_task().get_potential(quartic, exact=True)


@pytest.fixture(scope="module")
def ev_learning():
    """DG-PG and MAPPO at N = 50, 10 episodes, 2 seeds: the ratio to the valley bound [S, E]."""
    out = {}
    for algo in ("dgpg", "mappo"):
        config = train.TrainConfig(algo=algo, env=DEFAULT, num_episodes=10)
        out[algo] = runner.run_training(config, seed=0, num_seeds=2)
    return out


@pytest.mark.slow
def test_dgpg_improves_the_initial_policy_within_10_episodes_at_n50(ev_learning):
    """The first episode is the initial (near-uniform) policy; the last three episodes,
    pooled, are clearly cheaper for every seed, and cheaper than MAPPO's on the same days."""
    ratio = ev_learning["dgpg"].logs.ratio_to_reference
    assert np.all(ratio[:, -3:].mean(axis=1) < ratio[:, 0] - 0.01), ratio
    summary = ev_learning["dgpg"].summary()
    assert summary["task"] == "ev-charging"
    assert summary["final_ratio_to_reference"] == summary["final_ratio_to_valley"]
    assert summary["final_ratio_to_reference"] < ev_learning["mappo"].summary()["final_ratio_to_reference"] - 0.005
    logs = ev_learning["dgpg"].logs
    np.testing.assert_allclose(logs.metrics.total_cost / logs.reference.total_cost, ratio, rtol=1e-6)


def test_potential_greedy_checks_alignment_before_training():
    """Ascending either named potential (rows in turn, `potential_greedy`) beats a random
    window on the same days (the alignment check of docs/task.md); rows carry the
    reference ratio."""
    task = DEFAULT.make_task()
    rows = evaluate.evaluate_policies([("random", ev.BASELINES["random"]),
                                       ("valley", evaluate.potential_greedy(task, "valley")),
                                       ("load", evaluate.potential_greedy(task, "load"))], task, seed_keys(0, 2), 2)
    ratio = {row["policy"]: row["ratio_to_valley"] for row in rows}
    assert ratio["valley"] < ratio["random"] - 0.02 and ratio["load"] < ratio["random"] - 0.02, ratio
    assert all(row["ratio_to_reference"] == row["ratio_to_valley"] >= 1 for row in rows)
