"""The gradient-variance diagnostics: the estimator against a multi-agent bandit whose
variances are known in closed form (and its slopes in N), the per-agent gradients against
a direct `jax.grad` of each agent's own surrogate, and `dgpg variance --json`."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgpg_jax import cli, diagnostics, evaluate, train
from dgpg_jax.tasks.cloud import CloudConfig
from dgpg_jax.tasks.ev import EVConfig
from dgpg_jax.networks import policy_distribution
from conftest import at_once

PI = 0.3  # the bandit's probability of action 1
V = PI * (1 - PI)  # E (a - pi)^2
M4 = PI * (1 - PI) ** 4 + (1 - PI) * PI**4  # E (a - pi)^4


def bandit_moments(num_agents: int, rollouts: int, seed: int):
    """N agents each draw a ~ Bernoulli(pi) with score a - pi (one parameter). The shared
    reward is the mean of (a_j - pi) (the best constant baseline already removed), so
    agent i's shared estimate is (a_i - pi) mean_j (a_j - pi), with mean V / N and
    relative variance M4 / V^2 + N - 2; its own reward a_i - pi (the guidance) gives
    (a_i - pi)^2, with relative variance M4 / V^2 - 1 at every N."""
    rng = np.random.default_rng(seed)
    d = (rng.random((rollouts, num_agents)) < PI) - PI
    shared = d * d.mean(axis=1, keepdims=True)
    guided = d * d
    return {name: diagnostics.GradientMoments((g**2).sum(axis=1), g.mean(axis=1)[:, None], g[:, :1])
            for name, g in (("shared", shared), ("guidance", guided))}


def test_estimator_recovers_the_bandits_variances():
    n, r = 8, 4000
    estimates = {name: diagnostics.variance_estimates(m, n) for name, m in bandit_moments(n, r, 0).items()}
    truth = {"shared": {"mean_sq_norm": (V / n) ** 2, "variance": (M4 + (n - 1) * V**2) / n**2 - (V / n) ** 2,
                        "relative_variance": M4 / V**2 + n - 2},
             "guidance": {"mean_sq_norm": V**2, "variance": M4 - V**2, "relative_variance": M4 / V**2 - 1}}
    for name, quantities in truth.items():
        for quantity, value in quantities.items():
            got, se = estimates[name][quantity], estimates[name][f"{quantity}_se"]
            assert abs(got - value) < 4 * se, (name, quantity, got, value, se)
            assert se < 0.1 * abs(value), (name, quantity, se)  # the test has power
    # agent 0's own variance across rollouts is the same quantity
    assert abs(estimates["guidance"]["variance_agent0"] - (M4 - V**2)) < 4 * estimates["guidance"]["variance_agent0_se"]


def test_standard_errors_are_calibrated():
    """Over independent repetitions, the spread of the relative variance matches its SE."""
    n = 4
    runs = [diagnostics.variance_estimates(bandit_moments(n, 400, seed)["shared"], n) for seed in range(60)]
    values = np.array([r["relative_variance"] for r in runs])
    ses = np.array([r["relative_variance_se"] for r in runs])
    assert 0.7 < values.std() / np.median(ses) < 1.4


def test_log_log_slopes_are_one_for_the_shared_return_and_zero_for_the_guidance():
    sizes = np.array([4, 16, 64])
    slopes = {}
    for name in ("shared", "guidance"):
        values = [diagnostics.variance_estimates(bandit_moments(n, 6000, n)[name], n)["relative_variance"]
                  for n in sizes]
        slopes[name] = np.polyfit(np.log(sizes), np.log(values), 1)[0]
    assert slopes["shared"] == pytest.approx(1.0, abs=0.12) and abs(slopes["guidance"]) < 0.1, slopes


def reference_moments(learner, actor_params, key, rollouts, baseline, same):
    """Each agent's two estimates by a Python loop over steps and `jax.grad` of its own
    surrogate sum_t sum_{rows of i} w log pi, with w = G_t - b_t or its guidance."""
    task, gamma = learner.task, learner.config.gamma
    n, horizon = task.params.num_agents, task.params.horizon
    out = {"shared": [], "guidance": []}
    for r in range(rollouts):
        reset_key, step_keys, policy_keys = diagnostics._rollout_keys(key, jnp.int32(r), horizon, same)
        obs, state = task.reset(reset_key, task.params)
        steps = []
        for t in range(horizon):
            decisions = train.act_and_guide(learner, actor_params, task, state, obs, policy_keys[t], True)
            obs, action, guidance = decisions.obs, decisions.action, decisions.guidance_advantage
            agent = np.where(np.asarray(task.valid(state)), np.asarray(task.agent(state)), n)
            taken = np.take_along_axis(np.asarray(guidance), np.asarray(action)[:, None], axis=-1)[:, 0]
            steps.append((obs, action, agent, taken))
            obs, state, reward, _, _ = task.step(step_keys[t], state, task.to_actions(state, action), task.params)
            steps[-1] += (float(reward),)
        rewards = np.array([s[4] for s in steps])
        returns = np.array([sum(gamma ** (u - t) * rewards[u] for u in range(t, horizon)) for t in range(horizon)])

        def surrogate(p, i, weights):
            total = 0.0
            for t, (o, a, agent, _, _) in enumerate(steps):
                log_prob = policy_distribution(learner.actor.apply(p, o)).log_prob(a)
                total = total + jnp.sum(jnp.where(agent == i, log_prob * weights(t), 0.0))
            return total

        for name, weights in (("shared", lambda t: returns[t] - float(baseline[t])), ("guidance", lambda t: steps[t][3])):
            grads = [jax.flatten_util.ravel_pytree(jax.grad(surrogate)(actor_params, i, weights))[0] for i in range(n)]
            out[name].append(np.stack(grads))
    return {name: np.stack(g) for name, g in out.items()}  # (R, N, P)


@pytest.mark.parametrize("env, same", [
    (at_once(num_agents=4, num_candidates=2, horizon=4, mean_job_steps=0.6), True),
    (CloudConfig(decisions="in_turn", num_agents=4, num_candidates=2, horizon=4, mean_job_steps=0.6), True),
    pytest.param(EVConfig(num_agents=4, horizon=4, decision_rows=2), False, marks=pytest.mark.slow)])
def test_per_agent_gradients_equal_a_direct_grad_of_each_agents_surrogate(env, same):
    config = train.TrainConfig(env=env, updates_per_episode=1)
    learner = train.make_learner(config)
    run_key = evaluate.seed_keys(3, 1)[0]
    actor_params = train.init_runner(learner, run_key, train.default_hyper(config)).params["actor"]
    key, rollouts = jax.random.key(11), 1
    baseline = jnp.linspace(-0.5, 0.1, env.horizon)
    moments = diagnostics.gradient_moments(learner, actor_params, key, rollouts, baseline, same, 1)
    reference = reference_moments(learner, actor_params, key, rollouts, baseline, same)
    for name, g in reference.items():
        assert np.abs(g).sum() > 0, name  # decisions were made
        np.testing.assert_allclose(moments[name].sq_norm_sum, (g**2).sum(axis=(1, 2)), rtol=2e-4, err_msg=name)
        # float32 sums in another order: elements near zero are compared on the gradient's scale
        atol = 1e-3 * np.abs(g).max()
        np.testing.assert_allclose(moments[name].agent_mean, g.mean(axis=1), rtol=2e-4, atol=atol, err_msg=name)
        np.testing.assert_allclose(moments[name].first_agent, g[:, 0], rtol=2e-4, atol=atol, err_msg=name)


def test_cli_variance_json_and_bad_input(capsys):
    assert cli.main(["variance", "--num-agents", "6", "--horizon", "8", "--rollouts", "6", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for name in ("relative_variance_shared", "relative_variance_guidance", "variance_shared", "variance_guidance"):
        assert np.isfinite(result[name]) and result[f"{name}_se"] > 0, name
    assert (result["num_agents"], result["rollouts"], result["task"]) == (6, 6, "cloud-scheduling")
    assert cli.main(["variance", "--num-agents", "6", "--rollouts", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rollouts=3" in err[0] and "[4, " in err[0], err
