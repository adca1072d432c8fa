"""Whole training runs: make_train / train_episodes, the run driver (runner.py) and
checkpoints (checkpoint.py).

Compiling a training program costs 10-40 s on a 2-core CPU, and running one of these
small ones well under a second, so the compiled programs are module-scoped fixtures
shared by several tests, and alpha is varied through the traced `Hyper` (train(key,
hyper)) rather than by building a new config. Programs compiled here:

  dgpg_5       DG-PG, N = 5, T = 100, 10 episodes (learning, alpha = 0, debug_nans,
               vmap and transfer tests)
  mappo_5      MAPPO, same sizes
  variant_5    DG-PG with exact guidance, first-order guidance, the convex form and a
               user potential function, all at once (each is a static setting)
  ippo_5       IPPO, 2 episodes
  dgpg_50      DG-PG, N = 50 (learning)
  and the run driver's programs (chunks of 10, 5 and 1 episodes).
"""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgpg_jax import algorithms, checkpoint, runner, train
from dgpg_jax.env import EnvConfig, make_params
from dgpg_jax.evaluate import evaluate, seed_keys

BASE = train.TrainConfig(env=EnvConfig(num_agents=5, horizon=100), num_episodes=10, updates_per_episode=2)


def user_potential(agg):
    """An elementwise potential written by a user: the area potential times 2."""
    return -((agg.backlog + agg.arriving_work) ** 2) / agg.service_rate


VARIANT = dataclasses.replace(BASE, guidance="exact", first_order=True, advantage_form="convex",
                              potential=user_potential)
ALPHA_ZERO = dict(alpha_start=0.0, alpha_end=0.0)


def tree_equal(a, b) -> bool:
    """Bit-for-bit equality of two pytrees of arrays."""
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(leaves_a) == len(leaves_b) and all(
        np.asarray(x).shape == np.asarray(y).shape and np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True)
        for x, y in zip(leaves_a, leaves_b))


def assert_logs_finite(logs: train.EpisodeLog, episodes: int) -> None:
    for name, value in logs._asdict().items():
        assert np.shape(value)[-1] == episodes, name
        assert np.all(np.isfinite(value)), f"{name} not finite: {value}"


class Program:
    """A config with its jitted `train(key, hyper)`, compiled on first call."""

    def __init__(self, config: train.TrainConfig):
        self.config = config
        self.jitted = jax.jit(train.make_train(config))

    def __call__(self, key, **hyper_fields):
        hyper = train.default_hyper(dataclasses.replace(self.config, **hyper_fields))
        return self.jitted(key, hyper)


@pytest.fixture(scope="module")
def dgpg_5():
    return Program(BASE)


@pytest.fixture(scope="module")
def mappo_5():
    return Program(dataclasses.replace(BASE, algo="mappo"))


@pytest.fixture(scope="module")
def variant_5():
    return Program(VARIANT)


@pytest.fixture(scope="module")
def debug_nans():
    previous = jax.config.jax_debug_nans
    jax.config.update("jax_debug_nans", True)
    try:
        yield
    finally:
        jax.config.update("jax_debug_nans", previous)


# ----------------------------------------------------------------------------- alpha = 0 is MAPPO


@pytest.mark.parametrize("program", ["dgpg_5", "variant_5"])
def test_alpha_zero_dgpg_is_mappo_bit_for_bit(program, request, mappo_5):
    """alpha_start = alpha_end = 0: sampled guidance (dgpg_5) and exact guidance (variant_5,
    also first-order, convex, user potential) give MAPPO's parameters and logs exactly.
    Only guidance_norm differs: DG-PG still computes (and logs) the guidance it ignores."""
    dgpg = request.getfixturevalue(program)
    key = jax.random.key(3)
    runner_dgpg, logs_dgpg = dgpg(key, **ALPHA_ZERO)
    runner_mappo, logs_mappo = mappo_5(key)
    assert tree_equal(runner_dgpg, runner_mappo)
    for name in train.EpisodeLog._fields:
        if name != "guidance_norm":
            np.testing.assert_array_equal(getattr(logs_dgpg, name), getattr(logs_mappo, name), err_msg=name)
    assert np.all(np.asarray(logs_dgpg.alpha) == 0)
    assert np.all(np.asarray(logs_dgpg.guidance_norm) > 0)  # the guidance was there, and ignored
    # ... and with alpha > 0 the runs do differ (the comparison above can fail)
    runner_guided, _ = dgpg(key)
    assert not tree_equal(runner_guided.params, runner_mappo.params)


# ----------------------------------------------------------------------------- learning

# Measured (this file's programs, seeds = seed_keys(0, 3), 2-core CPU): ratio of mean
# response time to Best-Fit on the same traces,
#   N = 5:  first episode [see LEARNING_5]; mean of episodes 8-10 [see LEARNING_5]
#   N = 50: first episode [see LEARNING_50]; mean of episodes 8-10 [see LEARNING_50]
LEARNING_SEEDS = 3


def learning_curves(program: Program) -> np.ndarray:
    """[seeds, episodes] ratio to Best-Fit, one compiled program run seed by seed."""
    return np.stack([np.asarray(program(key)[1].ratio_to_best_fit) for key in seed_keys(0, LEARNING_SEEDS)])


def test_dgpg_learns_at_5_agents(dgpg_5):
    ratio = learning_curves(dgpg_5)
    first, final = ratio[:, 0].mean(), ratio[:, -3:].mean()
    print(f"N=5 ratio first {ratio[:, 0]} final {ratio[:, -3:].mean(1)}")
    assert np.all(np.isfinite(ratio))
    assert final < 0.6 * first
    assert final < 1.5


def test_dgpg_learns_at_50_agents():
    ratio = learning_curves(Program(dataclasses.replace(BASE, env=EnvConfig(num_agents=50, horizon=100))))
    first, final = ratio[:, 0].mean(), ratio[:, -3:].mean()
    print(f"N=50 ratio first {ratio[:, 0]} final {ratio[:, -3:].mean(1)}")
    assert np.all(np.isfinite(ratio))
    assert final < 0.7 * first
    assert final < 1.5


# ----------------------------------------------------------------------------- health


def test_debug_nans_run_is_finite(dgpg_5, debug_nans):
    # jax_debug_nans is not part of the jit cache key: the compiled program is reused and
    # its outputs checked (an error would be raised on a NaN).
    assert jax.config.jax_debug_nans
    runner_state, logs = dgpg_5(jax.random.key(11))
    assert_logs_finite(logs, BASE.num_episodes)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(runner_state.params))


def test_mappo_runs_finite(mappo_5):
    _, logs = mappo_5(jax.random.key(5))
    assert_logs_finite(logs, BASE.num_episodes)
    assert np.all(np.asarray(logs.alpha) == 0) and np.all(np.asarray(logs.guidance_norm) == 0)


def test_ippo_runs_finite():
    config = dataclasses.replace(BASE, algo="ippo", num_episodes=2)
    runner_state, logs = jax.jit(train.make_train(config))(jax.random.key(5))
    assert_logs_finite(logs, 2)
    assert np.all(np.asarray(logs.alpha) == 0)
    assert int(runner_state.episode) == 2


def test_variant_exact_first_order_convex_user_potential_runs(variant_5):
    runner_state, logs = variant_5(jax.random.key(6))
    assert_logs_finite(logs, VARIANT.num_episodes)
    assert np.all(np.asarray(logs.guidance_norm) > 0)
    # alpha follows the linear schedule 0.9 -> 0.2 over alpha_decay_episodes = 20
    expected = [0.9 + (0.2 - 0.9) * e / (VARIANT.alpha_decay_episodes - 1) for e in range(VARIANT.num_episodes)]
    np.testing.assert_allclose(np.asarray(logs.alpha), expected, rtol=1e-6)
    # and with a constant alpha (a traced value, so the same program)
    _, logs = variant_5(jax.random.key(6), alpha_start=0.4, alpha_end=0.4)
    np.testing.assert_allclose(np.asarray(logs.alpha), np.full(VARIANT.num_episodes, 0.4), rtol=1e-6)


def test_policy_trained_at_5_agents_runs_at_50(dgpg_5):
    runner_state, _ = dgpg_5(jax.random.key(0))
    learner = train.make_learner(BASE)
    params_50 = make_params(EnvConfig(num_agents=50, horizon=100))
    keys = seed_keys(1, 2)

    @jax.jit
    def evaluate_actor(actor_params):
        return evaluate(train.learned_policy(learner.actor, actor_params), params_50, keys, 2)

    trained = evaluate_actor(runner_state.params["actor"])
    untrained = evaluate_actor(train.init_runner(learner, jax.random.key(0), train.default_hyper(BASE)).params["actor"])
    for name, value in trained.__dict__.items():
        assert np.shape(value) == (2, 2), name
        assert np.all(np.isfinite(value)), name
    assert np.all(np.asarray(trained.mean_response_time) > 0)
    print(f"N=5 -> 50: trained {np.asarray(trained.mean_response_time).mean():.3f}, "
          f"untrained {np.asarray(untrained.mean_response_time).mean():.3f}")
    assert np.asarray(trained.mean_response_time).mean() < np.asarray(untrained.mean_response_time).mean()


# ----------------------------------------------------------------------------- run driver, vmap, resume


@pytest.fixture(scope="module")
def uninterrupted():
    """Two seeds, all 10 episodes in one chunk."""
    return runner.run_training(BASE, seed=0, num_seeds=2, chunk_episodes=BASE.num_episodes)


@pytest.fixture(scope="module")
def saved_half(tmp_path_factory):
    """The first 5 episodes of the same run, saved."""
    run_dir = tmp_path_factory.mktemp("run")
    result = runner.run_training(dataclasses.replace(BASE, num_episodes=5), seed=0, num_seeds=2, out_dir=run_dir,
                                 chunk_episodes=5)
    return run_dir, result


def test_vmapped_seeds_equal_separate_runs(uninterrupted, dgpg_5):
    """run_training vmaps train_episodes over seeds (and the init separately); each seed
    equals train(key) for that key alone. Bit for bit: [holds / see comment]."""
    for i, key in enumerate(seed_keys(0, 2)):
        runner_alone, logs_alone = dgpg_5(key)
        for name in train.EpisodeLog._fields:
            np.testing.assert_array_equal(uninterrupted.logs[name][i], np.asarray(getattr(logs_alone, name)),
                                          err_msg=name)
        assert tree_equal(jax.tree.map(lambda x: x[i], uninterrupted.runner), runner_alone)


def test_resume_and_chunks_equal_the_uninterrupted_run(uninterrupted, saved_half):
    run_dir, half = saved_half
    assert (run_dir / "config.json").exists() and (run_dir / "checkpoint").is_dir()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 5 and {row["episode"] for row in rows} == set(range(1, 6))
    for name in train.EpisodeLog._fields:
        np.testing.assert_array_equal(half.logs[name], uninterrupted.logs[name][:, :5], err_msg=name)

    # Continue to 10 episodes, one episode per chunk.
    resumed = runner.run_training(BASE, seed=0, num_seeds=2, resume=run_dir, chunk_episodes=1)
    for name in train.EpisodeLog._fields:
        assert resumed.logs[name].shape == (2, BASE.num_episodes)
        np.testing.assert_array_equal(resumed.logs[name], uninterrupted.logs[name], err_msg=name)
    assert tree_equal(resumed.runner, uninterrupted.runner)
    np.testing.assert_array_equal(np.asarray(resumed.runner.episode), [BASE.num_episodes] * 2)


def test_summary_fields(uninterrupted):
    summary = uninterrupted.summary(2)
    assert summary["algo"] == "dgpg" and summary["num_agents"] == 5 and summary["episodes"] == 10
    assert summary["final_ratio_to_best_fit"] == pytest.approx(uninterrupted.logs["ratio_to_best_fit"][:, -3:].mean())
    assert 1 <= summary["episodes_to_converge"] <= 10
    assert all(math.isfinite(v) for v in summary.values() if isinstance(v, float))


# ----------------------------------------------------------------------------- invalid settings


@pytest.fixture
def no_compile(monkeypatch):
    """Fail the test if a run gets as far as building networks (tracing)."""

    def fail(*args, **kwargs):
        pytest.fail("init_runner reached: the error should have come before any tracing")

    monkeypatch.setattr(train, "init_runner", fail)


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(alpha_start=1.5), "alpha_start"),
        (dict(alpha_end=-0.1), "alpha_end"),
        (dict(num_episodes=0), "num_episodes"),
        (dict(updates_per_episode=3), "updates_per_episode"),  # 3 does not divide 100
        (dict(algo="sac"), "algo"),
        (dict(potential="nope"), "potential"),
        (dict(num_minibatches=3), "num_minibatches"),  # chunk = 100 / 2 = 50 steps
        (dict(alpha_schedule="cosine"), "alpha_schedule"),
        (dict(advantage_form="product"), "advantage_form"),
        (dict(guidance="mean"), "guidance"),
        (dict(env=EnvConfig(num_agents=0)), "num_agents"),
    ],
)
def test_invalid_config_raises_naming_the_field(changes, field, no_compile, tmp_path):
    config = dataclasses.replace(BASE, **changes)
    with pytest.raises(ValueError, match=field):
        train.make_train(config)
    with pytest.raises(ValueError, match=field):
        runner.run_training(config, seed=0, num_seeds=1, out_dir=tmp_path)


def test_resume_with_a_different_config_raises(saved_half, no_compile):
    run_dir, _ = saved_half
    saved = checkpoint.load_config(run_dir)
    assert saved == (dataclasses.replace(BASE, num_episodes=5), 0, 2)
    checkpoint.check_resumable(saved, (BASE, 0, 2))  # only num_episodes differs: fine
    for config, seed, seeds, field in [
        (dataclasses.replace(BASE, learning_rate=1e-3), 0, 2, "learning_rate"),
        (dataclasses.replace(BASE, env=EnvConfig(num_agents=6, horizon=100)), 0, 2, "env.num_agents"),
        (dataclasses.replace(BASE, algo="mappo"), 0, 2, "algo"),
        (BASE, 1, 2, "seed"),
        (BASE, 0, 3, "seeds"),
    ]:
        with pytest.raises(ValueError, match=field):
            checkpoint.check_resumable(saved, (config, seed, seeds))
        with pytest.raises(ValueError, match=field):
            runner.run_training(config, seed=seed, num_seeds=seeds, resume=run_dir)


def test_resume_from_a_missing_directory_raises(tmp_path, no_compile):
    with pytest.raises(ValueError, match="resume"):
        runner.run_training(BASE, seed=0, num_seeds=2, resume=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="resume"):
        runner.run_training(BASE, seed=0, num_seeds=2, resume=tmp_path / "empty")


def test_invalid_chunk_raises(no_compile):
    with pytest.raises(ValueError, match="chunk_episodes"):
        runner.run_training(BASE, seed=0, num_seeds=1, chunk_episodes=0)
