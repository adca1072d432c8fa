"""The pure pieces of the learners: GAE, the clipped surrogate, the running normaliser
(ppo.py), the advantage combination and alpha schedule (algorithms.py), and the
convergence count of evaluate.py. Hand-worked values keep their arithmetic in a comment;
the rest is checked against plain Python / NumPy oracles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgpg_jax import algorithms, ppo
from dgpg_jax.evaluate import episodes_to_converge

# ----------------------------------------------------------------------------- gae


def gae_loop(rewards, values, next_values, trace_cut, gamma, lam):
    """GAE the slow way: one backward Python loop in float64."""
    advantages = np.zeros(len(rewards))
    running = 0.0
    for t in reversed(range(len(rewards))):
        delta = rewards[t] + gamma * next_values[t] - values[t]
        running = delta + gamma * lam * (0.0 if trace_cut[t] else 1.0) * running
        advantages[t] = running
    return advantages, advantages + np.asarray(values, np.float64)


def test_gae_hand_worked_three_steps():
    # gamma = lam = 1/2, so gamma * lam = 1/4; every number below is dyadic, hence exact.
    #   rewards      r = [1,   2,   3  ]
    #   values       V = [0.5, 1,   1.5]
    #   next values  V'= [1,   1.5, 2  ]    (V'_2 = 2 is the bootstrap value)
    #   delta_t = r_t + V'_t / 2 - V_t  = [1 + 0.5 - 0.5, 2 + 0.75 - 1, 3 + 1 - 1.5] = [1, 1.75, 2.5]
    #   A_2 = 2.5
    #   A_1 = 1.75 + 2.5 / 4   = 2.375
    #   A_0 = 1    + 2.375 / 4 = 1.59375
    #   targets = A + V = [2.09375, 3.375, 4.0]
    rewards = jnp.array([1.0, 2.0, 3.0])
    values = jnp.array([0.5, 1.0, 1.5])
    next_values = jnp.array([1.0, 1.5, 2.0])
    no_cut = jnp.zeros(3, bool)
    advantages, targets = ppo.gae(rewards, values, next_values, no_cut, 0.5, 0.5)
    np.testing.assert_array_equal(np.asarray(advantages), [1.59375, 2.375, 2.5])
    np.testing.assert_array_equal(np.asarray(targets), [2.09375, 3.375, 4.0])

    # An episode boundary after step 1: the caller zeroes its bootstrap (V'_1 = 0) and cuts
    # the trace there, so step 1 no longer sees step 2:
    #   delta_1 = 2 + 0 - 1 = 1;  A_2 = 2.5 (unchanged);  A_1 = delta_1 = 1;  A_0 = 1 + 1/4 = 1.25
    cut = jnp.array([False, True, False])
    advantages, targets = ppo.gae(rewards, values, next_values.at[1].set(0.0), cut, 0.5, 0.5)
    np.testing.assert_array_equal(np.asarray(advantages), [1.25, 1.0, 2.5])
    np.testing.assert_array_equal(np.asarray(targets), [1.75, 2.0, 4.0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gae_matches_python_loop(seed):
    rng = np.random.default_rng(seed)
    steps = 37
    rewards = rng.normal(size=steps).astype(np.float32)
    values = rng.normal(size=steps).astype(np.float32)
    next_values = np.concatenate([values[1:], rng.normal(size=1)]).astype(np.float32)  # last = bootstrap
    cut = rng.random(steps) < 0.15
    cut[steps // 2] = True  # always at least one cut in the middle
    cut[-1] = False  # ... and a live bootstrap at the end
    gamma, lam = float(rng.uniform(0.8, 1.0)), float(rng.uniform(0.5, 1.0))

    advantages, targets = jax.jit(ppo.gae, static_argnums=(4, 5))(rewards, values, next_values, cut, gamma, lam)
    expected_adv, expected_targets = gae_loop(rewards, values, next_values, cut, gamma, lam)
    np.testing.assert_allclose(np.asarray(advantages), expected_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(targets), expected_targets, rtol=1e-5, atol=1e-5)

    # The bootstrap value enters the last step with weight gamma, and every earlier step up
    # to the nearest cut with weight gamma * (gamma lam)^(distance).
    bumped, _ = ppo.gae(rewards, values, next_values.copy() + np.eye(steps, dtype=np.float32)[-1], cut, gamma, lam)
    last_cut = np.flatnonzero(cut)[-1]
    distance = np.arange(steps)[::-1].astype(np.float64)
    influence = np.where(np.arange(steps) > last_cut, gamma * (gamma * lam) ** distance, 0.0)
    np.testing.assert_allclose(np.asarray(bumped - advantages), influence, atol=1e-5)


# ----------------------------------------------------------------------------- clipped surrogate


@pytest.mark.parametrize(
    "ratio, advantage, expected_loss",
    [
        # clip = 0.2, loss = -min(ratio A, clip(ratio, 0.8, 1.2) A)
        (1.1, 2.0, -2.2),  # inside the clip: -1.1 * 2
        (2.0, 2.0, -2.4),  # above, A > 0: the clipped 1.2 * 2 is the smaller
        (2.0, -1.0, 2.0),  # above, A < 0: min(-2, -1.2) = -2, the unclipped
        (0.5, -1.0, 0.8),  # below, A < 0: min(-0.5, -0.8) = -0.8, the clipped
        (0.5, 2.0, -1.0),  # below, A > 0: min(1, 1.6) = 1, the unclipped
        (1.0, -3.0, 3.0),  # on-policy: -A
    ],
)
def test_clipped_surrogate_hand_worked(ratio, advantage, expected_loss):
    log_prob = jnp.log(jnp.array([ratio]))
    loss = ppo.clipped_surrogate(log_prob, jnp.zeros(1), jnp.array([advantage]), jnp.ones(1, bool), 0.2)
    np.testing.assert_allclose(float(loss), expected_loss, rtol=1e-6)


def test_clipped_surrogate_gradient_vanishes_where_clipped_and_mask_excludes():
    # Entries: inside the clip (A = 1), clipped above with A > 0, clipped below with A < 0,
    # and a masked-out entry holding a huge ratio and advantage.
    log_prob = jnp.log(jnp.array([1.1, 2.0, 0.5, 1e6]))
    advantage = jnp.array([1.0, 1.0, -1.0, 1e30])
    mask = jnp.array([True, True, True, False])
    loss, grad = jax.value_and_grad(ppo.clipped_surrogate)(log_prob, jnp.zeros(4), advantage, mask, 0.2)
    # loss = -(1.1 + 1.2 - 0.8) / 3 = -0.5
    np.testing.assert_allclose(float(loss), -0.5, rtol=1e-6)
    # d/dlogp of -ratio A / 3 is -ratio A / 3 inside the clip; zero where the clip is active
    # or the entry is masked.
    np.testing.assert_allclose(np.asarray(grad), [-1.1 / 3, 0.0, 0.0, 0.0], rtol=1e-6, atol=0)


# ----------------------------------------------------------------------------- running norm


def test_running_norm_matches_numpy_over_a_masked_stream():
    rng = np.random.default_rng(0)
    batches = [
        (rng.normal(3.0, 2.0, size=16), rng.random(16) < 0.7),
        (rng.normal(-1.0, 0.5, size=16), np.zeros(16, bool)),  # nothing valid: no change
        (rng.normal(10.0, 4.0, size=16), rng.random(16) < 0.3),
        (rng.normal(0.0, 1.0, size=16), np.ones(16, bool)),
        (rng.normal(5.0, 3.0, size=16), rng.random(16) < 0.5),
    ]
    update = jax.jit(ppo.running_norm_update)
    state = ppo.running_norm_init()
    seen = []
    for x, mask in batches:
        state = update(state, jnp.asarray(x, jnp.float32), jnp.asarray(mask))
        seen.append(x[mask].astype(np.float32).astype(np.float64))
        stream = np.concatenate(seen)
        assert float(state.count) == stream.size
        np.testing.assert_allclose(float(state.mean), stream.mean(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(float(state.var), stream.var(), rtol=1e-4)
    standardised = ppo.standardise(state, jnp.asarray(stream, jnp.float32))
    np.testing.assert_allclose(np.asarray(ppo.unstandardise(state, standardised)), stream, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float(standardised.mean()), 0.0, atol=1e-5)
    np.testing.assert_allclose(float(standardised.std()), 1.0, rtol=1e-4)


# ----------------------------------------------------------------------------- advantages and alpha


@pytest.mark.parametrize("form", algorithms.ADVANTAGE_FORMS)
def test_combine_advantages_alpha_zero_is_the_return_advantage_bit_for_bit(form):
    return_advantage = jnp.array([0.1, -0.0, -1.7, 3.3e-38, 2.5], jnp.float32)
    guidance = jnp.array([3e38, -3e38, jnp.inf, jnp.nan, -jnp.inf], jnp.float32)
    for combine in (algorithms.combine_advantages, jax.jit(algorithms.combine_advantages, static_argnums=3)):
        out = combine(return_advantage, guidance, jnp.float32(0.0), form)
        np.testing.assert_array_equal(np.asarray(out).view(np.uint32), np.asarray(return_advantage).view(np.uint32))


def test_combine_advantages_forms():
    a, g = jnp.array([1.0, -2.0]), jnp.array([4.0, 8.0])
    # additive: A + 0.25 g = [2, 0];  convex: 0.75 A + 0.25 g = [1.75, 0.5]
    quarter = jnp.float32(0.25)
    np.testing.assert_allclose(np.asarray(algorithms.combine_advantages(a, g, quarter, "additive")), [2.0, 0.0])
    np.testing.assert_allclose(np.asarray(algorithms.combine_advantages(a, g, quarter, "convex")), [1.75, 0.5])


def test_alpha_linear_schedule():
    at = lambda e: float(algorithms.alpha_at(jnp.int32(e), 8, 0.9, 0.2, "linear"))  # noqa: E731
    np.testing.assert_allclose(at(0), 0.9, rtol=1e-6)
    np.testing.assert_allclose(at(7), 0.2, rtol=1e-6)  # decay_episodes - 1
    np.testing.assert_allclose([at(8), at(100)], [0.2, 0.2], rtol=1e-6)  # and after
    np.testing.assert_allclose(at(3), 0.9 - 0.7 * 3 / 7, rtol=1e-6)
    # non-increasing for a decreasing schedule, increasing for an increasing one
    assert np.all(np.diff([at(e) for e in range(12)]) <= 0)
    np.testing.assert_allclose(float(algorithms.alpha_at(jnp.int32(7), 8, 0.0, 0.4, "linear")), 0.4, rtol=1e-6)


def test_alpha_constant_schedule():
    for episode in (0, 1, 7, 50):
        assert float(algorithms.alpha_at(jnp.int32(episode), 8, 0.6, 0.2, "constant")) == np.float32(0.6)


# ----------------------------------------------------------------------------- episodes to converge


def test_episodes_to_converge_hand_made_curves():
    episodes = 10
    flat = np.full(episodes, 1.3)
    # Raw values drop at episode 4 (1-based); the 3-episode moving average is
    #   [4, 4, 4, 3, 2, 1, 1, 1, 1, 1]: last outside the 5% band of the final 1 at episode 5,
    # so the run has converged from episode 6.
    settles_at_6 = np.array([4.0, 4.0, 4.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    # Still falling at the end: averages ..., 3, 2; the last but one is outside -> E.
    settles_at_end = np.arange(episodes, 0, -1, dtype=np.float64)
    # Noise within 5% of the final level never leaves the band -> 1.
    jitter = 1.0 + 0.02 * np.array([1, -1, 1, -1, 1, -1, 1, -1, 1, 0])

    assert episodes_to_converge(flat) == 1
    assert episodes_to_converge(settles_at_6) == 6
    assert episodes_to_converge(settles_at_end) == episodes
    assert episodes_to_converge(jitter) == 1
    # batched over leading axes, one count per run
    batched = episodes_to_converge(np.stack([flat, settles_at_6, settles_at_end, jitter]))
    np.testing.assert_array_equal(batched, [1, 6, episodes, 1])
