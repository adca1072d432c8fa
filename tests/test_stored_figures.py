"""The cloud-scheduling task's figures against stored ones: tests/data/cloud_figures.json
was written by the code before the Task interface (commit 7236774) with the settings
below; the learner and evaluation through the Task interface must give the same numbers
(to float32 rounding: 1e-6 for the figures, 1e-4 for the policy loss, whose float32
sums another CPU orders differently)."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from dgpg_jax import evaluate, runner, train
from dgpg_jax.tasks.cloud.baselines import BASELINES
from conftest import at_once

STORED = json.loads((Path(__file__).parent / "data" / "cloud_figures.json").read_text())
RUNS = {"dgpg": {}, "ippo": {"algo": "ippo"},  # MAPPO is DG-PG at alpha = 0 (tests/test_train.py)
        "dgpg_exact_congestion": {"guidance": "exact", "potential": "congestion"}}


@pytest.mark.parametrize("name", list(RUNS))
def test_training_figures_unchanged(name):
    config = train.TrainConfig(env=at_once(num_agents=10, horizon=40), num_episodes=3, updates_per_episode=2,
                               **RUNS[name])
    logs = runner.run_training(config, seed=1, num_seeds=2).logs
    mine = {"ratio_to_best_fit": logs.ratio_to_reference, "mean_response_time": logs.metrics.mean_response_time,
            "p99_response_time": logs.metrics.p99_response_time, "policy_loss": logs.policy_loss}
    for key, value in mine.items():
        # the loss, a float32 mean over thousands of terms, sums in another order on another CPU
        rtol = 1e-4 if key == "policy_loss" else 1e-6
        np.testing.assert_allclose(np.asarray(value, np.float64), STORED[name][key], rtol=rtol, err_msg=key)


def test_baseline_figures_unchanged():
    task = at_once(num_agents=20, horizon=40).make_task()
    keys = jax.vmap(train.traces_key)(evaluate.seed_keys(0, 2))
    rows = evaluate.evaluate_policies([(n, BASELINES[n]) for n in ("best_fit", "jsq", "random", "greedy")], task,
                                      keys, 2)
    assert {row["policy"] for row in rows} == set(STORED["baselines"])
    for row in rows:
        for key in ("mean_response_time", "p99_response_time"):
            assert row[key] == pytest.approx(STORED["baselines"][row["policy"]][key], rel=1e-6), (row["policy"], key)
