"""Limits checked before anything is built or traced, and the rows that report sizes.

- sizes no run could hold (agents, servers, horizon, one episode's T x J x k candidate
  rows, seeds and seeds x rows) are refused by the configs' `validate` and by
  `validation.check_seeds`, naming the field, in well under a second; every size the
  experiments use stays valid;
- actions of a shape other than (J,) raise a ValueError naming `actions` and J at trace
  time, under jit, in both tasks;
- concrete `train.Hyper` values out of range are refused by `init_runner` and
  `train_episodes` before anything is traced; traced ones are left to the caller;
- `evaluate_policies` rows of cloud scheduling carry `num_servers`; EV rows still work.
"""

import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgpg_jax import evaluate, train, validation
from dgpg_jax.tasks import cloud as env
from dgpg_jax.tasks import ev
from dgpg_jax.tasks.cloud import CloudConfig
from dgpg_jax.tasks.ev import EVConfig
from dgpg_jax.validation import MAX_AGENTS, MAX_HORIZON, MAX_SEEDS, SEED_MAX, check_seeds
from conftest import at_once

# ----------------------------------------------------------------------------- sizes


@pytest.fixture
def nothing_built(monkeypatch):
    """Fail if a check lets a config get as far as building arrays or compiling."""

    def fail(*args, **kwargs):
        pytest.fail("reached JAX: the size should have been refused first")

    monkeypatch.setattr(jax, "jit", fail)
    monkeypatch.setattr(env.types, "fleet_capacity", fail)
    monkeypatch.setattr(ev.types, "arrival_slot_probabilities_host", fail)


@pytest.mark.parametrize("config, message", [
    (CloudConfig(num_agents=2**31 - 1), rf"^num_agents=2147483647 is invalid: allowed an integer in \[1, {MAX_AGENTS}\]"),
    (EVConfig(num_agents=2**31 - 1), rf"^num_agents=2147483647 is invalid: allowed an integer in \[1, {MAX_AGENTS}\]"),
    (CloudConfig(horizon=2**40), rf"^horizon=1099511627776 is invalid: allowed an integer in \[1, {MAX_HORIZON}\]"),
    (EVConfig(horizon=2**40), r"^horizon=1099511627776 is invalid"),
    # M = ceil(servers_per_agent x N) = 10^7 servers
    (CloudConfig(num_agents=1000, servers_per_agent=1e4), r"^servers_per_agent=10000.0 is invalid: allowed at most"),
])
def test_huge_sizes_are_refused_at_once(config, message, nothing_built):
    start = time.perf_counter()
    with pytest.raises(ValueError, match=message):
        config.make_task()
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize("config", [
    CloudConfig(num_agents=100_000, horizon=100_000),  # J ~ 5000 rows x k = 8 per step
    EVConfig(num_agents=200_000, horizon=1440, num_candidates=64, decision_rows=100_000),
])
def test_an_episode_too_large_for_one_array_is_refused_naming_the_fields(config, monkeypatch):
    monkeypatch.setattr(jax, "jit", lambda *a, **k: pytest.fail("compiled"))
    with pytest.raises(ValueError, match=r"^horizon x num_rows x num_candidates=\d+ is invalid: allowed a product "
                                         rf"<= {2**31 - 1} .*horizon={config.horizon}, num_rows=\d+, num_candidates="):
        config.validate()


def test_every_size_the_experiments_use_stays_valid():
    """The largest of each family: N = 1500 in the three cloud settings and EV charging,
    the gap experiment's 3600-step day with all servers as candidates, 4096 seeds."""
    cloud = [CloudConfig(num_agents=1500, decisions=d) for d in ("simultaneous", "in_turn")] + [
        CloudConfig(num_agents=1500, horizon=200, memoryless=True, mean_job_steps=0.6, candidate_sampling="uniform",
                  decisions="simultaneous"),
        CloudConfig(num_agents=200, mean_job_steps=30, horizon=3600, num_candidates=2000, decisions="simultaneous")]
    for config in cloud + [EVConfig(num_agents=1500)]:
        config.validate()
        check_seeds(4096, 0, config.make_task().episode_rows)


@pytest.mark.parametrize("seeds, seed, rows, field", [
    (0, 0, 1, "seeds"),
    (MAX_SEEDS + 1, 0, 1, "seeds"),
    (True, 0, 1, "seeds"),
    (1, -1, 1, "seed"),
    (1, SEED_MAX + 1, 1, "seed"),
    (2, SEED_MAX, 1, "seeds"),  # seed + 1 is past 2^32 - 1
    (MAX_SEEDS, 0, 2**21, "seeds"),  # 2^41 candidate rows in all
])
def test_check_seeds_refuses(seeds, seed, rows, field):
    with pytest.raises(ValueError, match=rf"^{field}={seed if field == 'seed' else seeds!r} is invalid"):
        check_seeds(seeds, seed, rows)


def test_check_seeds_accepts_the_edges():
    check_seeds(1, SEED_MAX)
    check_seeds(MAX_SEEDS, SEED_MAX + 1 - MAX_SEEDS)
    check_seeds(2**10, 0, validation.MAX_RUN_ROWS // 2**10)


# ----------------------------------------------------------------------------- actions


def test_cloud_actions_of_the_wrong_length_are_refused_under_jit(tiny_params):
    key = jax.random.key(0)
    state = jax.eval_shape(lambda k: env.reset(k, tiny_params)[1], key)  # shapes are all the check reads
    assert tiny_params.num_rows == 2
    for shape in ((3,), (2, 1), ()):
        with pytest.raises(ValueError, match=rf"^actions.shape={re.escape(repr(shape))} is invalid: allowed "
                                             r"\(J,\) = \(2,\), one server index per job row"):
            jax.jit(env.step).lower(key, state, jnp.zeros(shape, jnp.int32), tiny_params)
    jax.jit(env.step).lower(key, state, jnp.zeros(2, jnp.int32), tiny_params)  # (J,) traces


def test_ev_actions_of_the_wrong_length_are_refused_under_jit():
    """`step`, `step_env` and the guidance of a step, every entry that takes the actions."""
    params, key = ev.make_params(EVConfig(num_agents=6, horizon=8, decision_rows=3)), jax.random.key(0)
    state = jax.eval_shape(lambda k: ev.reset(k, params)[1], key)
    entries = {"step": lambda s, a: ev.step(key, s, a, params), "step_env": lambda s, a: ev.step_env(s, a, params),
               "step_guidance": lambda s, a: ev.step_guidance(s, a, params)}
    for name, entry in entries.items():
        with pytest.raises(ValueError, match=r"^actions.shape=\(4,\) is invalid: allowed \(J,\) = \(3,\), one "
                                             r"candidate index per decision row"):
            jax.jit(entry).lower(state, jnp.zeros(4, jnp.int32))
        jax.jit(entry).lower(state, jnp.zeros(3, jnp.int32))  # (J,) traces


# ----------------------------------------------------------------------------- Hyper

TINY_TRAIN = train.TrainConfig(env=CloudConfig(num_agents=5, horizon=40), updates_per_episode=2)


@pytest.fixture(scope="module")
def learner():
    return train.make_learner(TINY_TRAIN)


def _hyper(**fields) -> train.Hyper:
    return train.default_hyper(TINY_TRAIN)._replace(**{k: jnp.asarray(v, jnp.float32) for k, v in fields.items()})


@pytest.mark.parametrize("fields, message", [
    (dict(alpha_start=5.0), r"^alpha_start=5.0 is invalid: allowed \[0, 1\]"),
    (dict(alpha_end=float("nan")), r"^alpha_end=nan is invalid: allowed \[0, 1\]"),
    (dict(learning_rate=-1.0), r"^learning_rate=-1.0 is invalid: allowed a number > 0"),
    (dict(learning_rate=float("inf")), r"^learning_rate=inf is invalid"),
    (dict(utilisation=2.0), r"^utilisation=2.0 is invalid: allowed \(0, 1.5\]"),
    # a grid: the first bad point, by index
    (dict(alpha_start=[0.2, 0.5, 5.0, -1.0]), r"^alpha_start\[2\]=5.0 is invalid: allowed \[0, 1\]"),
    (dict(utilisation=[0.5, 0.0]), r"^utilisation=0.0 is invalid: allowed \(0, 1.5\]"),
])
def test_hyper_out_of_range_is_refused_before_tracing(fields, message, learner, monkeypatch):
    monkeypatch.setattr(train, "_task", lambda *a: pytest.fail("traced: the check should have come first"))
    hyper, key = _hyper(**fields), jax.random.key(0)
    with pytest.raises(ValueError, match=message):
        train.init_runner(learner, key, hyper)
    with pytest.raises(ValueError, match=message):
        train.train_episodes(learner, None, key, hyper, 1)  # the runner is never read
    with pytest.raises(ValueError, match=message):  # a Hyper closed over by a jitted call is concrete
        jax.jit(lambda k: train.init_runner(learner, k, hyper)).lower(key)


def test_valid_and_traced_hyper_pass(learner):
    hyper = train.default_hyper(TINY_TRAIN)
    assert train.check_hyper(hyper, learner) is hyper
    grid = _hyper(alpha_start=[0.0, 0.5, 1.0], learning_rate=[1e-4, 1e-3, 1.0], utilisation=[0.1, 0.75, 1.5])
    train.check_hyper(grid, learner)
    # traced values are unknown to the check: the caller checks them on the host
    jax.eval_shape(lambda h: train.check_hyper(h, learner), _hyper(alpha_start=5.0, learning_rate=-1.0))


def test_hyper_load_is_unchecked_for_a_task_without_one():
    config = train.TrainConfig(env=EVConfig(num_agents=10, horizon=8), updates_per_episode=2)
    hyper = train.default_hyper(config)
    assert train.make_learner(config).task.traced_load is None and float(hyper.utilisation) == 0.0
    train.check_hyper(hyper, train.make_learner(config))


# ----------------------------------------------------------------------------- evaluation rows


@pytest.mark.parametrize("task", [at_once(num_agents=5, horizon=10).make_task(),
                                  EVConfig(num_agents=6, horizon=8).make_task()], ids=["cloud", "ev"])
def test_evaluation_rows_carry_the_task_sizes(task):
    rows = evaluate.evaluate_policies([("random", task.baselines["random"])], task, evaluate.seed_keys(0, 1), 1)
    (row,) = rows
    assert row["num_agents"] == task.params.num_agents and np.isfinite(row["ratio_to_reference"])
    if task.name == "cloud-scheduling":
        assert row["num_servers"] == task.params.num_servers == 3
    else:
        assert "num_servers" not in row
