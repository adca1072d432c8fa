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
  and dgpg_5 vmapped over two seeds, an evaluation at N = 50, and the run driver's
  programs (init, chunks of 10 and 2 episodes; each run_training call compiles its own).
"""

import dataclasses
import json
import math
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from dgpg_jax import checkpoint, runner, train
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
        self.train = train.make_train(config)
        self.jitted = jax.jit(self.train)

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
def init_5():
    """Jitted init_runner of BASE (a fresh runner for a key)."""
    learner, hyper = train.make_learner(BASE), train.default_hyper(BASE)
    return jax.jit(lambda key: train.init_runner(learner, key, hyper))


@pytest.fixture
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
    Only guidance_norm differs: DG-PG still computes (and logs) the guidance it ignores.
    (The Hyper of the alpha = 0 config is passed in, as train does with that config.)

    This needs the rollout of both programs to store the same log-probabilities to the
    bit. Found: DG-PG's rollout also takes a softmax of the same logits for the guidance,
    XLA fuses the two differently, and 2 of 250 stored log-probabilities of the first chunk
    differ by one ulp; the runs then drift apart at 1e-7 relative. An optimization barrier
    on (log_prob, logits) in train._rollout_step makes both cases bit for bit equal."""
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

# Ratio of mean response time to Best-Fit on the same traces, seeds seed_keys(0, 3),
# measured with these programs on the 2-core CPU:
#   N = 5:  first episode 1.45, 8.59, 3.15 (mean 4.40); mean of episodes 8-10: 1.38, 1.10, 1.06 (mean 1.18)
#   N = 50: first episode 2.31, 2.53, 3.06 (mean 2.63); mean of episodes 8-10: 1.14, 1.07, 1.17 (mean 1.13)
# The first episode is mostly the untrained (near uniform) policy. The thresholds leave
# about a factor 2 (N = 5) and 1.6 (N = 50) of room on the means.
LEARNING_SEEDS = 3


def learning_curves(program: Program) -> np.ndarray:
    """[seeds, episodes] ratio to Best-Fit, one compiled program run seed by seed."""
    return np.stack([np.asarray(program(key)[1].ratio_to_best_fit) for key in seed_keys(0, LEARNING_SEEDS)])


def test_dgpg_learns_at_5_agents(dgpg_5):
    ratio = learning_curves(dgpg_5)
    assert np.all(np.isfinite(ratio))
    first, final = ratio[:, 0].mean(), ratio[:, -3:].mean()
    assert final < 0.6 * first, ratio
    assert final < 1.5, ratio


def test_dgpg_learns_at_50_agents():
    ratio = learning_curves(Program(dataclasses.replace(BASE, env=EnvConfig(num_agents=50, horizon=100))))
    assert np.all(np.isfinite(ratio))
    first, final = ratio[:, 0].mean(), ratio[:, -3:].mean()
    assert final < 0.7 * first, ratio
    assert final < 1.5, ratio
    assert np.all(ratio[:, -3:].mean(1) < ratio[:, 0]), ratio  # every seed improves


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


def test_policy_trained_at_5_agents_runs_at_50(dgpg_5, init_5):
    runner_state, _ = dgpg_5(jax.random.key(0))
    learner = train.make_learner(BASE)
    params_50 = make_params(EnvConfig(num_agents=50, horizon=100))
    keys = seed_keys(1, 2)

    @jax.jit
    def evaluate_actor(actor_params):
        return evaluate(train.learned_policy(learner.actor, actor_params), params_50, keys, 2)

    trained = evaluate_actor(runner_state.params["actor"])
    untrained = evaluate_actor(init_5(jax.random.key(0)).params["actor"])
    for name, value in trained.__dict__.items():
        assert np.shape(value) == (2, 2), name
        assert np.all(np.isfinite(value)), name
    assert np.all(np.asarray(trained.mean_response_time) > 0)
    # measured mean response time (steps) at N = 50: trained 9.8, untrained 27.0
    assert np.asarray(trained.mean_response_time).mean() < np.asarray(untrained.mean_response_time).mean()


# ----------------------------------------------------------------------------- run driver, vmap, resume


SEEDS = 2
HALF = 4  # episodes saved before the resume


@pytest.fixture(scope="module")
def uninterrupted():
    """Two seeds, all 10 episodes in one chunk."""
    return runner.run_training(BASE, seed=0, num_seeds=SEEDS, chunk_episodes=BASE.num_episodes)


@pytest.fixture(scope="module")
def saved_half(tmp_path_factory):
    """The first HALF episodes of the same run, in chunks of 2, saved."""
    run_dir = tmp_path_factory.mktemp("run")
    result = runner.run_training(dataclasses.replace(BASE, num_episodes=HALF), seed=0, num_seeds=SEEDS,
                                 out_dir=run_dir, chunk_episodes=2)
    return run_dir, result


def assert_seed_matches(runner_state, logs: dict, i: int, runner_alone, logs_alone) -> None:
    """Seed i of a batched run against the run of its key alone, at rtol 1e-4 / atol 1e-5."""
    for name in train.EpisodeLog._fields:
        np.testing.assert_allclose(np.asarray(logs[name])[i], np.asarray(getattr(logs_alone, name)),
                                   rtol=1e-4, atol=1e-5, err_msg=name)
    batched = jax.tree.map(lambda x: x[i], runner_state.params)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5),
                 batched, runner_alone.params)
    assert int(runner_state.episode[i]) == int(runner_alone.episode)


def test_vmapped_seeds_equal_separate_runs(dgpg_5, uninterrupted):
    """jax.vmap(train)(keys)[i] equals train(keys[i]), and so does seed i of the run
    driver (its init and train_episodes vmapped over the seeds, separately jitted).

    Not bit for bit: a vmapped program is compiled differently, which changes float32
    rounding (even dgpg_5 with Hyper traced and with Hyper as constants differ so).
    Measured on this CPU: the episode metrics (response times, ratio to Best-Fit, return)
    bit for bit equal, the losses and entropy within 4e-6 relative, the parameters within
    3e-6 absolute (the actor has no output bias, which used to drift apart). Hence
    allclose at rtol 1e-4 / atol 1e-5."""
    keys = seed_keys(0, SEEDS)
    vmapped = jax.jit(jax.vmap(dgpg_5.train, in_axes=(0, None)))
    vmapped_runner, vmapped_logs = vmapped(keys, train.default_hyper(BASE))
    for i, key in enumerate(keys):
        runner_alone, logs_alone = dgpg_5(key)
        assert_seed_matches(vmapped_runner, vmapped_logs._asdict(), i, runner_alone, logs_alone)
        assert_seed_matches(uninterrupted.runner, uninterrupted.logs, i, runner_alone, logs_alone)
    # the seeds are different runs
    assert not np.array_equal(np.asarray(vmapped_logs.mean_response_time)[0],
                              np.asarray(vmapped_logs.mean_response_time)[1])


def test_vmap_of_jitted_train_lowers():
    """vmap(jit(train)) is as valid a way to run seeds as jit(vmap(train)); lowering it
    (no compile) must work and give [seeds, episodes] logs. Found failing with "TypeError:
    No constant handler for type DynamicJaxprTracer" once the orthogonal initialiser's QR
    ran under jax.custom_batching.sequential_vmap: its closure held the scale
    jnp.sqrt(2.0), a tracer when computed inside jit (jax.eval_shape does not notice)."""
    lowered = jax.jit(jax.vmap(jax.jit(train.make_train(BASE)))).lower(seed_keys(0, SEEDS))
    runner_shape, logs_shape = lowered.out_info
    assert logs_shape.ratio_to_best_fit.shape == (SEEDS, BASE.num_episodes)
    assert runner_shape.episode.shape == (SEEDS,)


def test_vmapped_init_has_no_batched_lapack_call():
    """jax.vmap(train) batches the QR of the orthogonal initialisers into one LAPACK call
    over the seeds. jaxlib runs a batched LAPACK call by splitting the batch over XLA's
    intra-op thread pool (ParallelBatchMap) and blocking until the pieces are done; when
    two such calls run at once on a 2-thread pool (2-core CPU), both threads block
    waiting for work queued behind them and the program never finishes. Observed here,
    before the fix: jax.jit(jax.vmap(train))(2 keys) hung in 2 of 3 tries, and
    run_training's vmapped init once. A QR that stays unbatched under vmap (the
    initialiser wrapped in jax.custom_batching.sequential_vmap) never takes that path."""
    text = jax.jit(jax.vmap(train.make_train(BASE))).lower(seed_keys(0, 2)).as_text()
    lapack = re.findall(r'custom_call @(lapack_\w+)[^\n]*?num_batch_dims = "(\d+)"', text)
    batched = sorted({name for name, dims in lapack if dims != "0"})
    assert not batched, f"batched LAPACK calls under vmap (deadlock-prone on a 2-core CPU): {batched}"


VMAP_SCRIPT = """
import json, jax, numpy as np
from dgpg_jax import train
from dgpg_jax.env import EnvConfig
from dgpg_jax.evaluate import seed_keys
config = train.TrainConfig(env=EnvConfig(num_agents=5, horizon=100), num_episodes=1, updates_per_episode=2)
_, logs = jax.jit(jax.vmap(train.make_train(config)))(seed_keys(0, 2))
print(json.dumps(np.asarray(logs.ratio_to_best_fit).tolist()))
"""


@pytest.mark.slow
def test_vmap_of_whole_train_completes():
    """jax.jit(jax.vmap(train))(keys), the documented way to run seeds, in a subprocess so
    that a hang fails the test instead of stalling the suite. On the 2-core CPU it hung in
    2 of 3 tries before networks.orthogonal kept the QR unbatched: the batched QR of the
    orthogonal initialisers (jaxlib's LAPACK kernel, ParallelBatchMap) blocked both
    threads of XLA's intra-op pool waiting for work queued on that same pool."""
    try:
        done = subprocess.run([sys.executable, "-c", VMAP_SCRIPT], capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("jax.jit(jax.vmap(train))(2 keys) did not finish in 240 s (deadlock)")
    assert done.returncode == 0, done.stderr[-2000:]
    ratio = np.array(json.loads(done.stdout.strip().splitlines()[-1]))
    assert ratio.shape == (2, 1) and np.all(np.isfinite(ratio))


def test_resume_and_chunks_equal_the_uninterrupted_run(uninterrupted, saved_half):
    """HALF episodes in chunks of 2, saved; resumed to 10 in chunks of 2: the logs and the
    whole runner state (params, optimiser, value normaliser) equal the uninterrupted
    10-episode run's bit for bit."""
    run_dir, half = saved_half
    assert (run_dir / "config.json").exists() and (run_dir / "checkpoint").is_dir()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(row["seed"], row["episode"]) for row in rows] == [(i, e) for i in range(SEEDS) for e in range(1, HALF + 1)]
    for name in train.EpisodeLog._fields:
        np.testing.assert_array_equal(half.logs[name], uninterrupted.logs[name][:, :HALF], err_msg=name)

    resumed = runner.run_training(BASE, seed=0, num_seeds=SEEDS, resume=run_dir, chunk_episodes=2)
    for name in train.EpisodeLog._fields:
        assert resumed.logs[name].shape == (SEEDS, BASE.num_episodes)
        np.testing.assert_array_equal(resumed.logs[name], uninterrupted.logs[name], err_msg=name)
    assert tree_equal(resumed.runner, uninterrupted.runner)
    np.testing.assert_array_equal(np.asarray(resumed.runner.episode), [BASE.num_episodes] * SEEDS)


def test_summary_fields(uninterrupted):
    summary = uninterrupted.summary(SEEDS)
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
    assert saved == (dataclasses.replace(BASE, num_episodes=HALF), 0, SEEDS)
    checkpoint.check_resumable(saved, (BASE, 0, SEEDS))  # only num_episodes differs: fine
    for config, seed, seeds, field in [
        (dataclasses.replace(BASE, learning_rate=1e-3), 0, SEEDS, "learning_rate"),
        (dataclasses.replace(BASE, env=EnvConfig(num_agents=6, horizon=100)), 0, SEEDS, "env.num_agents"),
        (dataclasses.replace(BASE, algo="mappo"), 0, SEEDS, "algo"),
        (BASE, 1, SEEDS, "seed"),
        (BASE, 0, SEEDS + 1, "seeds"),
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
