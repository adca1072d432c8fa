"""Gradient-variance diagnostics: how noisy one agent's policy-gradient estimate is when
its advantage is the shared return (what MAPPO learns from) and when it is the guidance
(what DG-PG adds), at fixed policy parameters, on any Task.

    result = measure(TrainConfig(env=CloudConfig(num_agents=200)), rollouts=64)
    result["relative_variance_shared"], result["relative_variance_guidance"]

R rollouts of one day run with the same actor parameters theta (the initial ones of a
seed, or a trained actor's). In rollout r, agent i's two estimates are

    shared:   g_i = sum_t sum_{decisions of i at t} grad log pi(a | o) (G_t - b_t)
    guidance: g_i = sum_t sum_{decisions of i at t} grad log pi(a | o) A_g(a)

with G_t the discounted return-to-go of the shared reward (the config's gamma), b_t a
per-step baseline (the mean G_t of `baseline_rollouts` further, independent rollouts,
so that it does not depend on the rollout's own actions) and A_g the centred guidance
advantage of the taken candidate (`train.act_and_guide`, as in training). With
`traces="same"` (the default) every rollout replays the same day (arrivals, sizes,
base load): only the agents' own sampling differs, which is the noise the shared return
spreads over every agent. `traces="independent"` gives each rollout its own day.

Agents share the actor and are exchangeable, so every agent's estimate has the same mean
mu. The estimators, over the R x N estimates (host-side, float64):

    E|g|^2   = mean over r and i of |g_i^r|^2
    |mu|^2   = |h|^2 - tr(Cov_r h^r) / R          h^r = mean_i g_i^r, h = mean_r h^r
    variance = E|g|^2 - |mu|^2                     (trace of one agent's covariance)
    relative variance = variance / |mu|^2

The bias correction of |mu|^2 removes the noise of h itself (it uses the rollouts'
means, which are independent, so agents correlated within a rollout are allowed). The
relative variance does not depend on how the reward is scaled. Standard errors are
delete-one jackknife over rollouts. Agent 0's own variance (across rollouts only) is
reported too. A relative variance needs |mu|^2 well above its standard error: with too
few rollouts it is noise (the estimate of |mu|^2 can even be negative).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from dgpg_jax import evaluate, memory, train
from dgpg_jax.networks import policy_distribution
from dgpg_jax.validation import SEED_MAX, check_choice, check_integer

TRACES = ("same", "independent")
ESTIMATORS = ("shared", "guidance")


class GradientMoments(NamedTuple):
    """Per-rollout statistics of the N per-agent estimates g_i of one estimator."""

    sq_norm_sum: jax.Array  # (R,) sum over agents of |g_i|^2
    agent_mean: jax.Array  # (R, P) mean over agents of g_i
    first_agent: jax.Array  # (R, P) g_0


def _rollout_keys(key: jax.Array, index: jax.Array, horizon: int, same_traces: bool):
    """(reset key, (T,) step keys, (T,) policy keys) of rollout `index`."""
    traces_key, policy_key = jax.random.split(key)
    day = evaluate.episode_key(traces_key, 0 if same_traces else index)
    reset_key, step_keys = evaluate.env_keys(day, horizon)
    return reset_key, step_keys, evaluate.policy_keys(jax.random.fold_in(policy_key, index), horizon)


def _returns_to_go(rewards: jax.Array, gamma: float) -> jax.Array:
    """(T,) G_t = sum_{u >= t} gamma^(u - t) r_u."""
    return jax.lax.scan(lambda g, r: (r + gamma * g, r + gamma * g), jnp.zeros(()), rewards, reverse=True)[1]


def _day(learner: train.Learner, actor_params, keys, step_fn, carry):
    """One day of the actor, `step_fn(carry, state, decisions, reward) -> (carry, y)` after
    each step (`decisions`: `train.Decisions`, with the features each row decided on);
    returns (carry, ys)."""
    task = learner.task
    reset_key, step_keys, policy_keys = keys
    obs, state = task.reset(reset_key, task.params)

    def one(c, k):
        env_key, policy_key = k
        state, obs, inner = c
        decisions = train.act_and_guide(learner, actor_params, task, state, obs, policy_key, True)
        obs_next, state_next, reward, _, _ = task.step(env_key, state, task.to_actions(state, decisions.action),
                                                       task.params)
        inner, y = step_fn(inner, state, decisions, reward)
        return (state_next, obs_next, inner), y

    (_, _, carry), ys = jax.lax.scan(one, (state, obs, carry), (step_keys, policy_keys))
    return carry, ys


def step_baseline(learner: train.Learner, actor_params, key: jax.Array, first: int, count: int,
                  same_traces: bool, batch: int) -> jax.Array:
    """(T,) mean return-to-go at each step over rollouts first..first+count-1."""
    horizon, gamma = learner.task.params.horizon, learner.config.gamma

    def one(index):
        keys = _rollout_keys(key, index, horizon, same_traces)
        _, rewards = _day(learner, actor_params, keys, lambda carry, state, decisions, reward: (carry, reward),
                          None)
        return _returns_to_go(rewards, gamma)

    return jax.lax.map(one, first + jnp.arange(count), batch_size=batch).mean(axis=0)


def gradient_moments(learner: train.Learner, actor_params, key: jax.Array, rollouts: int, baseline: jax.Array,
                     same_traces: bool, batch: int) -> dict[str, GradientMoments]:
    """The shared and guidance estimators' `GradientMoments` over rollouts 0..R-1, with
    `baseline` the (T,) per-step baseline b_t of the shared return. Rollouts run
    `batch` at a time (`lax.map`); each carries three (N, P) arrays."""
    task, config = learner.task, learner.config
    n, horizon, gamma = task.params.num_agents, task.params.horizon, config.gamma
    flat, unravel = ravel_pytree(actor_params)

    def log_prob(flat_params, obs, action):
        return policy_distribution(learner.actor.apply(unravel(flat_params), obs)).log_prob(action)

    row_scores = jax.vmap(jax.grad(log_prob), in_axes=(None, 0, 0))  # (J, k, F), (J,) -> (J, P)

    def step_fn(carry, state, decisions, reward):
        trace, shared, guided, t = carry
        action, guidance_advantage = decisions.action, decisions.guidance_advantage
        scores = row_scores(flat, decisions.obs, action)
        agent = jnp.where(task.valid(state), task.agent(state), n)  # empty rows land in row N, dropped
        per_agent = lambda w: jnp.zeros((n + 1, flat.size)).at[agent].add(scores * w[:, None])[:n]  # noqa: E731
        taken = jnp.take_along_axis(guidance_advantage, action[:, None], axis=-1)[:, 0]
        own = per_agent(jnp.ones_like(taken))
        trace = gamma * trace + own  # sum_{t' <= t} gamma^(t - t') s_t': r_t * trace credits every earlier action
        return (trace, shared + reward * trace - baseline[t] * own, guided + per_agent(taken), t + 1), None

    def one(index):
        keys = _rollout_keys(key, index, horizon, same_traces)
        zeros = jnp.zeros((n, flat.size))
        (_, shared, guided, _), _ = _day(learner, actor_params, keys, step_fn, (zeros, zeros, zeros, jnp.int32(0)))
        return {name: GradientMoments(jnp.sum(g**2), g.mean(axis=0), g[0])
                for name, g in zip(ESTIMATORS, (shared, guided))}

    return jax.lax.map(one, jnp.arange(rollouts), batch_size=batch)


def _estimates(second: np.ndarray, means: np.ndarray, first: np.ndarray) -> np.ndarray:
    """[E|g|^2, |mu|^2, variance, relative variance, agent 0's variance] of rollouts."""
    r = len(second)
    h = means.mean(axis=0)
    spread = ((means - h) ** 2).sum() / (r - 1)
    mu_sq = float(h @ h) - spread / r
    moment = float(second.mean())
    variance = moment - mu_sq
    first_variance = ((first - first.mean(axis=0)) ** 2).sum() / (r - 1)
    return np.array([moment, mu_sq, variance, variance / mu_sq, first_variance])


def variance_estimates(moments: GradientMoments, num_agents: int) -> dict[str, float]:
    """The estimators of the module docstring, each with its jackknife standard error."""
    second = np.asarray(moments.sq_norm_sum, np.float64) / num_agents
    means, first = np.asarray(moments.agent_mean, np.float64), np.asarray(moments.first_agent, np.float64)
    r = len(second)
    full = _estimates(second, means, first)
    keep = ~np.eye(r, dtype=bool)
    left_out = np.array([_estimates(second[k], means[k], first[k]) for k in keep])
    se = np.sqrt((r - 1) / r * ((left_out - left_out.mean(axis=0)) ** 2).sum(axis=0))
    names = ("second_moment", "mean_sq_norm", "variance", "relative_variance", "variance_agent0")
    return {**dict(zip(names, full.tolist())), **{f"{name}_se": float(s) for name, s in zip(names, se)}}


def _batch_size(learner: train.Learner, actor_params, key, rollouts: int, same_traces: bool) -> tuple[int, int]:
    """Rollouts per `lax.map` step that fit the free memory, and the bytes of one."""
    horizon = learner.task.params.horizon
    probe = jax.jit(lambda p, k, b: gradient_moments(learner, p, k, 1, b, same_traces, 1))
    one = memory.program_bytes(probe.lower(actor_params, key, jnp.zeros(horizon)).compile())
    batch = min(rollouts, memory.seeds_that_fit(one))
    if batch < 1:
        raise ValueError(f"num_agents={learner.task.params.num_agents}: one rollout of the variance diagnostics "
                         f"needs about {memory.gib(one)} and {memory.gib(memory.available_bytes())} is available: "
                         "allowed a smaller N, horizon or network")
    return batch, one


def measure(config: train.TrainConfig, rollouts: int = 64, seed: int = 0, actor=None,
            baseline_rollouts: int | None = None, traces: str = "same") -> dict:
    """Both estimators' variance and relative variance at fixed parameters: the initial
    actor of `dgpg train --seed seed` with `config`, or `actor` = (Actor, params) (a
    trained one: `checkpoint.load_actor`). `baseline_rollouts` (default `rollouts`)
    further rollouts give the per-step baseline. Returns a flat dict: num_agents,
    rollouts, `<quantity>_<estimator>` and `<quantity>_<estimator>_se` for the
    quantities of `variance_estimates`, and the settings."""
    check_integer("rollouts", rollouts, minimum=4)
    baseline_rollouts = rollouts if baseline_rollouts is None else baseline_rollouts
    check_integer("baseline_rollouts", baseline_rollouts, minimum=1)
    check_integer("seed", seed, minimum=0, maximum=SEED_MAX)
    check_choice("traces", traces, TRACES)
    learner = train.make_learner(config)
    run_key = evaluate.seed_keys(seed, 1)[0]
    if actor is None:
        actor_params = train.init_runner(learner, run_key, train.default_hyper(config)).params["actor"]
    else:
        learner = learner._replace(actor=actor[0])
        actor_params = actor[1]
    same = traces == "same"
    key = jax.random.fold_in(run_key, 7)
    batch, bytes_per_rollout = _batch_size(learner, actor_params, key, max(rollouts, baseline_rollouts), same)
    baseline = jax.jit(lambda p, k: step_baseline(learner, p, k, rollouts, baseline_rollouts, same, batch))(
        actor_params, key)
    moments = jax.jit(lambda p, k, b: gradient_moments(learner, p, k, rollouts, b, same, batch))(
        actor_params, key, baseline)
    out = {"task": learner.task.name, "num_agents": learner.task.params.num_agents, "rollouts": rollouts,
           "baseline_rollouts": baseline_rollouts, "traces": traces, "seed": seed,
           "num_parameters": int(ravel_pytree(actor_params)[0].size), "rollouts_per_batch": batch,
           "bytes_per_rollout": bytes_per_rollout}
    for name in ESTIMATORS:
        for quantity, value in variance_estimates(jax.device_get(moments[name]), out["num_agents"]).items():
            base, se = (quantity[:-3], "_se") if quantity.endswith("_se") else (quantity, "")
            out[f"{base}_{name}{se}"] = value
    return out

