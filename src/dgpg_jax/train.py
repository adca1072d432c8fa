"""`make_train(config) -> train(key)`: a whole IPPO / MAPPO / DG-PG run as one jitted program.

The learner sees its system only through the `Task` that `config.env.make_task()` builds
(`dgpg_jax.task`): cloud scheduling, EV charging or a user's own. An episode is one day (T steps from empty queues) and holds `updates_per_episode` PPO
updates, each on a rollout segment of T / updates_per_episode steps (the env state is
carried across segments). The run is a `lax.scan` over episodes; seeds are a `vmap` over
keys; alpha, learning rate and utilisation are traced `Hyper` values, so a grid over
them is a second `vmap`. Episode e of a run draws its traces from the same key as
`evaluate.episode_key(traces_key(run_key), e)`, so the ratio to the task's reference
(Best-Fit, valley filling) is on the same traces.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dgpg_jax import algorithms, evaluate, ppo, registry
from dgpg_jax.networks import Actor, CentralCritic, LocalCritic, policy_distribution
from dgpg_jax.task import Act, Task, check_task
from dgpg_jax.validation import check, check_choice, check_integer, check_number

GUIDANCE_MODES = ("sampled", "exact")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A training run. The defaults are the settings measured to work at N = 5..200
    (docs/learners.md gives the reasons)."""

    algo: str = "dgpg"
    """One of dgpg, mappo, ippo."""
    env: Any = dataclasses.field(default_factory=registry.default_config)
    """The system's config (cloud scheduling by default): a frozen dataclass with
    `validate()`, `make_task()`, `num_agents` and `horizon` (docs/task.md)."""
    num_episodes: int = 20
    updates_per_episode: int = 4
    """PPO updates per episode; must divide the horizon."""
    num_epochs: int = 4
    num_minibatches: int = 2
    """Minibatches per epoch, over time steps; must divide the segment length."""
    learning_rate: float = 3e-3
    max_grad_norm: float = 0.5
    clip: float = 0.5
    gamma: float = 0.95
    gae_lambda: float = 0.95
    entropy_coef: float = 0.01
    value_coef: float = 0.5
    alpha_start: float = 0.9
    alpha_end: float = 0.2
    alpha_schedule: str = "linear"
    """linear (alpha_start -> alpha_end over `alpha_decay_episodes`, then alpha_end) or
    constant (alpha_start)."""
    alpha_decay_episodes: int = 20
    """Length of the linear decay; independent of num_episodes so a resumed run is exact."""
    advantage_form: str = "additive"
    """additive: A + alpha A_g; convex: (1 - alpha) A + alpha A_g."""
    potential: str | Callable | None = None
    """A name among the task's potentials (None: its default; for cloud scheduling
    `light_congestion` with in-turn decisions and `area` with simultaneous or tentative
    ones, `valley` for EV charging) or a potential function of the task's aggregates."""
    guidance: str = "sampled"
    """sampled: A_g at the taken action; exact: expectation over all candidates."""
    first_order: bool = False
    """Guidance from w dG/dA (jax.grad) instead of the exact leave-one-out difference."""
    hidden: tuple[int, ...] = (64, 64)

    @property
    def segment_steps(self) -> int:
        """Steps of one rollout segment (one PPO update)."""
        return self.env.horizon // self.updates_per_episode

    def validate(self) -> "TrainConfig":
        """Raise ValueError naming the first invalid setting (before anything is traced)."""
        self.env.validate()
        check_choice("algo", self.algo, algorithms.ALGORITHMS)
        check_integer("num_episodes", self.num_episodes)
        check_integer("updates_per_episode", self.updates_per_episode)
        check("updates_per_episode", self.updates_per_episode, self.env.horizon % self.updates_per_episode == 0,
              f"a divisor of the horizon {self.env.horizon}")
        check_integer("num_epochs", self.num_epochs)
        check_integer("num_minibatches", self.num_minibatches)
        check("num_minibatches", self.num_minibatches, self.segment_steps % self.num_minibatches == 0,
              f"a divisor of the segment length {self.segment_steps} (horizon / updates_per_episode)")
        for name in ("learning_rate", "max_grad_norm", "clip"):
            check_number(name, getattr(self, name), 0, low_open=True)
        for name in ("gamma", "gae_lambda", "alpha_start", "alpha_end"):
            check_number(name, getattr(self, name), 0, 1)
        for name in ("entropy_coef", "value_coef"):
            check_number(name, getattr(self, name), 0)
        check_integer("alpha_decay_episodes", self.alpha_decay_episodes)
        check_choice("alpha_schedule", self.alpha_schedule, algorithms.ALPHA_SCHEDULES)
        check_choice("advantage_form", self.advantage_form, algorithms.ADVANTAGE_FORMS)
        check_choice("guidance", self.guidance, GUIDANCE_MODES)
        check("first_order", self.first_order, isinstance(self.first_order, bool), "True or False")
        check("hidden", self.hidden, isinstance(self.hidden, tuple) and len(self.hidden) >= 1
              and all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in self.hidden),
              "a tuple of integers >= 1")
        check("potential", self.potential, self.potential is None or isinstance(self.potential, str)
              or callable(self.potential), "None, a name among the task's potentials or a callable")
        return self  # the name is checked against the task's potentials by `make_learner` (no JAX here)


class Hyper(NamedTuple):
    """Traced values of a run: a grid over them is a vmap. `utilisation` sets the task's
    traced load (`Task.traced_load`; unused by a task without one). `init_runner` and
    `train_episodes` check concrete values with `check_hyper`; values they receive as
    tracers (a Hyper passed through jit or vmap) are the caller's to check with
    `check_hyper` on the host first."""

    alpha_start: jax.Array
    alpha_end: jax.Array
    learning_rate: jax.Array
    utilisation: jax.Array


def check_hyper(hyper: Hyper, learner: Learner) -> Hyper:
    """Raise ValueError naming the first field of `hyper` out of range and its first bad
    element (of a batched grid, with its index): alphas in [0, 1], a learning rate > 0 and
    finite in float32, a load the task's config accepts (its `validate` with that load).
    Tracers are skipped: their values exist only when the program runs."""
    load, env = learner.task.traced_load, learner.config.env
    checked_loads = {float(np.float32(getattr(env, load)))} if load else set()  # the config's own passed validate
    for name, value in hyper._asdict().items():
        if isinstance(value, jax.core.Tracer) or (name == "utilisation" and not load):
            continue
        array = np.asarray(value, np.float32)
        for index, element in np.ndenumerate(array):
            label, element = name + (str(list(index)) if array.ndim else ""), float(element)
            if name == "learning_rate":
                check_number(label, element, 0, low_open=True)
            elif name != "utilisation":
                check_number(label, element, 0, 1)
            elif element not in checked_loads:
                dataclasses.replace(env, **{load: element}).validate()
                checked_loads.add(element)
    return hyper


def default_hyper(config: TrainConfig) -> Hyper:
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    load = config.env.make_task().traced_load
    return Hyper(f32(config.alpha_start), f32(config.alpha_end), f32(config.learning_rate),
                 f32(getattr(config.env, load) if load else 0.0))


class RunnerState(NamedTuple):
    """What a run carries from episode to episode (and what a checkpoint holds)."""

    params: dict  # {"actor": ..., "critic": ...}
    opt_state: optax.OptState
    value_norm: ppo.RunningNorm
    episode: jax.Array  # () int32, episodes done


class Transition(NamedTuple):
    """One rollout step, what the update needs."""

    obs: jax.Array  # (J, k, F)
    valid: jax.Array  # (J,) bool
    action: jax.Array  # (J,) int32 candidate index
    log_prob: jax.Array  # (J,)
    guidance_advantage: jax.Array  # (J, k) centred with the rollout policy; zeros without guidance
    entity_features: jax.Array  # (E, Fe) the central critic's per-entity input (servers, slots)
    global_features: jax.Array  # (Fg,)
    day_left: jax.Array  # () fraction of the day left (the local critic's clock)
    value: jax.Array  # () step value (raw units)
    job_value: jax.Array  # (J,) per-job value (raw units; the step value broadcast for a central critic)
    reward: jax.Array  # ()
    truncated: jax.Array  # () bool


class EpisodeLog(NamedTuple):
    """Per-episode training log: the episode's task metrics, the reference's on the same
    traces, and the learner's own quantities (one scalar each)."""

    metrics: Any
    reference: Any
    ratio_to_reference: jax.Array  # () cost over the reference's, this episode
    entropy: jax.Array
    policy_loss: jax.Array
    value_loss: jax.Array
    alpha: jax.Array
    guidance_norm: jax.Array  # RMS of the taken candidates' guidance advantage, before scaling


class Learner(NamedTuple):
    """Static pieces of a run, built once on the host."""

    config: TrainConfig
    task: Task
    actor: Actor
    critic: CentralCritic | LocalCritic
    potential: Any


@functools.lru_cache(maxsize=64)
def _checked(env_config, guided: bool) -> bool:
    """`check_task` once per (frozen, hashable) config: the same config builds the same task."""
    check_task(env_config.make_task(), guided)
    return True


def make_learner(config: TrainConfig) -> Learner:
    """The static pieces of a run: the config validated, its task built and checked
    (`check_task`, before anything compiles), the networks and the potential."""
    config.validate()
    critic = CentralCritic(config.hidden) if algorithms.uses_central_critic(config.algo) else LocalCritic(config.hidden)
    guided = algorithms.uses_guidance(config.algo)
    try:
        hash(config.env)
    except TypeError:  # an unhashable config: checked every time
        check_task(config.env.make_task(), guided)
    else:
        _checked(config.env, guided)
    task = config.env.make_task()
    return Learner(config, task, Actor(config.hidden), critic,
                   task.get_potential(config.potential, exact=not config.first_order))


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Gradient clipping and Adam. The learning rate lives in the optimiser state
    (`inject_hyperparams`): `init_runner` sets it from `Hyper`, so it can be traced."""
    adam = optax.inject_hyperparams(optax.adam)(learning_rate=config.learning_rate)
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), adam)


def _task(learner: Learner, hyper: Hyper) -> Task:
    """The learner's task with the traced load of `hyper`."""
    task = learner.task
    return dataclasses.replace(task, params=task.apply_load(task.params, hyper.utilisation))


def init_runner(learner: Learner, run_key: jax.Array, hyper: Hyper) -> RunnerState:
    """Fresh networks, optimiser and value normaliser for one run key (`hyper` checked
    first, see `check_hyper`)."""
    task = _task(learner, check_hyper(hyper, learner))
    init_key = jax.random.split(run_key)[0]
    actor_key, critic_key = jax.random.split(init_key)
    obs, state = task.reset(jax.random.key(0), task.params)  # any state: only the shapes matter
    if algorithms.uses_central_critic(learner.config.algo):
        critic_params = learner.critic.init(critic_key, *task.critic_inputs(state, task.params))
    else:
        critic_params = learner.critic.init(critic_key, obs, task.clock(state, task.params))
    params = {"actor": learner.actor.init(actor_key, obs), "critic": critic_params}
    opt_state = optax.tree_utils.tree_set(make_optimizer(learner.config).init(params),
                                          learning_rate=hyper.learning_rate)
    return RunnerState(params, opt_state, ppo.running_norm_init(), jnp.zeros((), jnp.int32))


def _critic_values(learner: Learner, params: dict, norm: ppo.RunningNorm, obs, entity_features, global_features,
                   clock, valid):
    """Step value () and per-row values (J,), raw units; `clock` is the fraction of the day left."""
    if algorithms.uses_central_critic(learner.config.algo):
        value = ppo.unstandardise(norm, learner.critic.apply(params["critic"], entity_features, global_features))
        return value, jnp.broadcast_to(value, valid.shape)
    job_value = ppo.unstandardise(norm, learner.critic.apply(params["critic"], obs, clock))
    value = jnp.where(valid.any(), ppo.masked_mean(job_value, valid), job_value.mean())
    return value, job_value


class Decisions(NamedTuple):
    """One step's decisions by the actor."""

    obs: jax.Array  # (J, k, F) the features each row decided on (in-turn: after the rows before it)
    logits: jax.Array  # (J, k)
    action: jax.Array  # (J,) int32 candidate index
    log_prob: jax.Array  # (J,)
    guidance_advantage: jax.Array  # (J, k) centred with the policy; zeros without guidance


def _sample(actor: Actor, actor_params, obs: jax.Array, key: jax.Array):
    """Sample a candidate per row: (logits (J, k), candidate index (J,))."""
    logits = actor.apply(actor_params, obs)
    return logits, policy_distribution(logits).sample(seed=key).astype(jnp.int32)


def decide(task: Task, actor: Actor, actor_params, state, params, key: jax.Array, deterministic: bool = False):
    """The actor's choice for every row of a step: (obs (J, k, F), candidate index (J,)).
    Rows decide at once on `task.observe`, or after seeing other rows' choices through
    `task.decide` (in turn, or tentative; one key per row). Sampled, or the most likely candidate (`deterministic`)."""
    def choose(row_key, row_obs):  # one row (k, F), or all rows at once (J, k, F)
        if deterministic:
            return jnp.argmax(actor.apply(actor_params, row_obs), axis=-1)
        return _sample(actor, actor_params, row_obs, row_key)[1]

    if task.decide is None:
        obs = task.observe(state, params)
        return obs, choose(key, obs)

    rows = task.valid(state).shape[0]
    return task.decide(state, params, choose, jax.random.split(key, rows))


def learned_policy(task: Task, actor: Actor, actor_params, deterministic: bool = False) -> Act:
    """A trained actor as a policy of `task` (the baselines' signature): sampling as in
    training, or the most likely candidate (`deterministic`). It runs at any size of the
    task (N, M, k, T)."""

    def act(key, state, params):
        return task.to_actions(state, decide(task, actor, actor_params, state, params, key, deterministic)[1])

    return act


def act_and_guide(learner: Learner, actor_params, task: Task, env_state, obs: jax.Array, key: jax.Array,
                  with_guidance: bool) -> Decisions:
    """One step's decisions, with the centred guidance advantage of every candidate (zeros
    unless `with_guidance`). `obs` is the step's observation; rows that see other rows'
    choices (`task.decide`) replace it with what each row saw."""
    if task.decide is None:
        logits, action = _sample(learner.actor, actor_params, obs, key)
    else:
        obs, action = decide(task, learner.actor, actor_params, env_state, task.params, key)
        logits = learner.actor.apply(actor_params, obs)
    # The barrier keeps XLA from fusing the stored log-probabilities with the guidance's
    # softmax of the same logits, which changed them by an ulp: DG-PG at alpha = 0 would
    # then drift from MAPPO instead of matching it bit for bit.
    logits, log_prob = jax.lax.optimization_barrier((logits, policy_distribution(logits).log_prob(action)))
    if with_guidance:
        guidance_at = task.guidance(learner.potential, env_state, action, task.params, not learner.config.first_order)
        guidance_advantage = algorithms.centred_guidance(guidance_at, jax.nn.softmax(logits, axis=-1))
    else:
        guidance_advantage = jnp.zeros_like(logits)
    return Decisions(obs, logits, action, log_prob, guidance_advantage)


def _rollout_step(learner: Learner, runner: RunnerState, task: Task, carry, keys):
    """Act, compute guidance, step the environment; returns the new carry and a transition."""
    env_state, obs = carry
    env_key, policy_key = keys
    params = task.params
    valid = task.valid(env_state)
    decisions = act_and_guide(learner, runner.params["actor"], task, env_state, obs, policy_key,
                              algorithms.uses_guidance(learner.config.algo))
    obs, action = decisions.obs, decisions.action
    entity_features, global_features = task.critic_inputs(env_state, params)
    clock = task.clock(env_state, params)
    value, job_value = _critic_values(learner, runner.params, runner.value_norm, obs, entity_features,
                                      global_features, clock, valid)
    actions = task.to_actions(env_state, action)
    next_obs, next_state, reward, done, info = task.step(env_key, env_state, actions, params)
    transition = Transition(obs, valid, action, decisions.log_prob, decisions.guidance_advantage, entity_features,
                            global_features, clock, value, job_value, reward, info["truncated"])
    return (next_state, next_obs), (transition, task.record(env_state, actions, reward, info))


class JobBatch(NamedTuple):
    """The valid decisions (jobs) of a rollout segment, packed into rows for the actor (and
    local critic)."""

    obs: jax.Array  # (C, k, F)
    valid: jax.Array  # (C,) bool, row holds a job
    action: jax.Array  # (C,) int32
    log_prob: jax.Array  # (C,)
    advantage: jax.Array  # (C,)
    guidance: jax.Array  # (C, k) guidance scaled to unit RMS (exact variant)
    target: jax.Array  # (C,) standardised value target of the job's step
    day_left: jax.Array  # (C,) fraction of the day left at the job's step (local critic)


class StepBatch(NamedTuple):
    """The steps of a rollout segment, for the central critic."""

    entity_features: jax.Array  # (L, E, Fe)
    global_features: jax.Array  # (L, Fg)
    target: jax.Array  # (L,) standardised value target


def packed_rows(config: TrainConfig, task: Task) -> int:
    """Rows C holding a segment's decisions: the expected count at the task's peak rate +
    6 sigma + J, rounded up to whole minibatches, at most L x J (all of them for a task
    without `peak_rate`). A decision beyond C (beyond 6 sigma) is left out of that
    update, never out of the environment or the metrics."""
    steps, slots = config.segment_steps, task.rows
    rows = steps * slots
    if task.peak_rate is not None:
        mean = steps * task.params.num_agents * min(1.0, task.peak_rate)
        rows = min(rows, int(mean + 6 * mean**0.5) + slots)
    return -(-rows // config.num_minibatches) * config.num_minibatches


def _pack(traj: Transition, advantage, guidance_scaled, targets_std, rows: int) -> JobBatch:
    """Gather the valid (step, slot) entries of a segment into `rows` rows, in time order."""
    steps, slots = traj.valid.shape
    index = jnp.nonzero(traj.valid.reshape(-1), size=rows, fill_value=steps * slots)[0]
    take = lambda x: x.reshape((steps * slots,) + x.shape[2:]).at[index].get(mode="fill", fill_value=0)  # noqa: E731
    return JobBatch(obs=take(traj.obs), valid=index < steps * slots, action=take(traj.action),
                    log_prob=take(traj.log_prob), advantage=take(advantage), guidance=take(guidance_scaled),
                    target=take(jnp.broadcast_to(targets_std[:, None], traj.valid.shape)),
                    day_left=take(jnp.broadcast_to(traj.day_left[:, None], traj.valid.shape)))


def _loss(learner: Learner, params: dict, jobs: JobBatch, steps: StepBatch, alpha: jax.Array):
    """PPO loss of a minibatch; returns (loss, (policy loss, value loss, entropy))."""
    config = learner.config
    logits = learner.actor.apply(params["actor"], jobs.obs)
    dist = policy_distribution(logits)
    policy_loss = ppo.clipped_surrogate(dist.log_prob(jobs.action), jobs.log_prob, jobs.advantage, jobs.valid,
                                        config.clip)
    if algorithms.uses_guidance(config.algo) and config.guidance == "exact":
        policy_loss = policy_loss + algorithms.expected_guidance_loss(logits, jobs.guidance, jobs.valid, alpha)
    entropy = ppo.masked_mean(dist.entropy(), jobs.valid)
    if algorithms.uses_central_critic(config.algo):
        prediction = jax.vmap(learner.critic.apply, in_axes=(None, 0, 0))(params["critic"], steps.entity_features,
                                                                          steps.global_features)
        value_loss = jnp.mean((prediction - steps.target) ** 2)
    else:
        prediction = learner.critic.apply(params["critic"], jobs.obs, jobs.day_left)
        value_loss = ppo.masked_mean((prediction - jobs.target) ** 2, jobs.valid)
    loss = policy_loss + config.value_coef * value_loss - config.entropy_coef * entropy
    return loss, (policy_loss, value_loss, entropy)


def _advantages(learner: Learner, traj: Transition, bootstrap: jax.Array, alpha: jax.Array):
    """Per-job advantages (L, J), guidance scaled to unit RMS (L, J, k) for the exact
    variant, value targets (L,), and the guidance RMS before scaling."""
    config = learner.config
    next_values = jnp.concatenate([traj.value[1:], bootstrap[None]])
    # The horizon ends the day and the day's return is the objective: no bootstrap across it.
    next_values = jnp.where(traj.truncated, 0.0, next_values)
    _, targets = ppo.gae(traj.reward, traj.value, next_values, traj.truncated, config.gamma, config.gae_lambda)
    return_advantage = algorithms.normalise(targets[:, None] - traj.job_value, traj.valid)
    if not algorithms.uses_guidance(config.algo):
        return return_advantage, jnp.zeros_like(traj.guidance_advantage), targets, jnp.zeros(())
    taken = jnp.take_along_axis(traj.guidance_advantage, traj.action[..., None], axis=-1)[..., 0]
    rms = jnp.sqrt(ppo.masked_mean(taken**2, traj.valid))
    scaled = traj.guidance_advantage / jnp.sqrt(rms**2 + 1e-8)
    if config.guidance == "exact":  # the guidance enters the loss as an expectation instead
        weighted = algorithms.policy_weight(alpha, config.advantage_form) * return_advantage
        advantage = jnp.where(alpha == 0, return_advantage, weighted)
    else:
        scaled_taken = jnp.take_along_axis(scaled, traj.action[..., None], axis=-1)[..., 0]
        advantage = algorithms.combine_advantages(return_advantage, scaled_taken, alpha, config.advantage_form)
    return advantage, scaled, targets, rms


def _update(learner: Learner, runner: RunnerState, traj: Transition, bootstrap: jax.Array, alpha: jax.Array,
            key: jax.Array):
    """Epochs x minibatches of PPO on one rollout segment: jobs (packed rows) and steps are
    shuffled and split separately, the actor learning from the first and the central
    critic from the second."""
    config = learner.config
    advantage, guidance_scaled, targets, guidance_rms = _advantages(learner, traj, bootstrap, alpha)
    value_norm = ppo.running_norm_update(runner.value_norm, targets, jnp.ones_like(targets, bool))
    targets_std = ppo.standardise(value_norm, targets)
    jobs = _pack(traj, advantage, guidance_scaled, targets_std, packed_rows(config, learner.task))
    steps = StepBatch(traj.entity_features, traj.global_features, targets_std)
    optimizer = make_optimizer(config)
    minibatches = config.num_minibatches

    def shuffle(batch, key):
        size = jax.tree.leaves(batch)[0].shape[0]
        order = jax.random.permutation(key, size)
        return jax.tree.map(lambda x: x[order].reshape((minibatches, size // minibatches) + x.shape[1:]), batch)

    def minibatch_step(carry, batch):
        params, opt_state = carry
        grads, aux = jax.grad(lambda p: _loss(learner, p, *batch, alpha), has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), aux

    def epoch(carry, epoch_key):
        job_key, step_key = jax.random.split(epoch_key)
        return jax.lax.scan(minibatch_step, carry, (shuffle(jobs, job_key), shuffle(steps, step_key)))

    (params, opt_state), (policy_loss, value_loss, entropy) = jax.lax.scan(
        epoch, (runner.params, runner.opt_state), jax.random.split(key, config.num_epochs))
    runner = runner._replace(params=params, opt_state=opt_state, value_norm=value_norm)
    return runner, (policy_loss.mean(), value_loss.mean(), entropy.mean(), guidance_rms)


def _run_segment(learner: Learner, hyper: Hyper, alpha: jax.Array, carry, segment):
    """Roll out one segment of the episode and update on it."""
    runner, env_state, obs = carry
    env_keys, policy_keys, update_key = segment
    task = _task(learner, hyper)
    (env_state, obs), (traj, records) = jax.lax.scan(
        lambda c, k: _rollout_step(learner, runner, task, c, k), (env_state, obs), (env_keys, policy_keys))
    entity_features, global_features = task.critic_inputs(env_state, task.params)
    bootstrap, _ = _critic_values(learner, runner.params, runner.value_norm, obs, entity_features, global_features,
                                  task.clock(env_state, task.params), task.valid(env_state))
    runner, losses = _update(learner, runner, traj, bootstrap, alpha, update_key)
    return (runner, env_state, obs), (records, losses)


def _run_episode(learner: Learner, run_key: jax.Array, hyper: Hyper, runner: RunnerState):
    """One day: `updates_per_episode` segments of rollout + update. Returns (runner, log)."""
    config, task = learner.config, _task(learner, hyper)
    horizon = task.params.horizon
    key = evaluate.episode_key(traces_key(run_key), runner.episode)
    reset_key, step_keys = evaluate.env_keys(key, horizon)
    act_keys = evaluate.policy_keys(key, horizon)
    update_keys = jax.random.split(jax.random.fold_in(key, 2), config.updates_per_episode)
    per_segment = lambda keys: keys.reshape(config.updates_per_episode, -1)  # noqa: E731
    segments = (per_segment(step_keys), per_segment(act_keys), update_keys)
    alpha = algorithms.alpha_at(runner.episode, config.alpha_decay_episodes, hyper.alpha_start, hyper.alpha_end,
                                config.alpha_schedule)
    alpha = alpha if algorithms.uses_guidance(config.algo) else jnp.zeros_like(alpha)
    obs, env_state = task.reset(reset_key, task.params)
    (runner, _, _), (records, losses) = jax.lax.scan(
        lambda c, x: _run_segment(learner, hyper, alpha, c, x), (runner, env_state, obs), segments)
    records = jax.tree.map(lambda x: x.reshape((horizon,) + x.shape[2:]), records)
    metrics = task.summarise(records, task.params)
    policy_loss, value_loss, entropy, guidance_rms = (x.mean() for x in losses)
    log = EpisodeLog(metrics=metrics, reference=metrics, ratio_to_reference=jnp.zeros(()), entropy=entropy,
                     policy_loss=policy_loss, value_loss=value_loss, alpha=alpha, guidance_norm=guidance_rms)
    return runner._replace(episode=runner.episode + 1), log  # the reference and the ratio: set by train_episodes


def traces_key(run_key: jax.Array) -> jax.Array:
    """Key whose `evaluate.episode_key(., e)` is episode e's key in a run of `run_key` (the
    other half of the split seeds the networks). Evaluate a policy with
    `evaluate.evaluate(act, task, traces_key(run_key)[None], ...)` to see the run's traces."""
    return jax.random.split(run_key)[1]


def reference_metrics(learner: Learner, run_key: jax.Array, hyper: Hyper, first_episode: jax.Array,
                      num_episodes: int):
    """[E] the task's reference metrics (Best-Fit, valley filling) on the traces of episodes
    first..first+E-1 of a run. They depend on the traces only, never on the learner."""
    task = _task(learner, hyper)
    keys = jax.vmap(lambda e: evaluate.episode_key(traces_key(run_key), e))(first_episode + jnp.arange(num_episodes))
    return jax.vmap(lambda k: task.reference(task.params, k))(keys)


def train_episodes(learner: Learner, runner: RunnerState, run_key: jax.Array, hyper: Hyper,
                   num_episodes: int, reference=None) -> tuple[RunnerState, EpisodeLog]:
    """Continue a run by `num_episodes` episodes; logs have a leading [num_episodes] axis.
    Several calls of fewer episodes give the same result as one call over all of them.
    `reference`: `reference_metrics` of these episodes when the caller already has it
    (a sweep shares it between runs on the same traces); computed here otherwise. `hyper`
    is checked first (`check_hyper`)."""
    check_hyper(hyper, learner)
    if reference is None:
        reference = reference_metrics(learner, run_key, hyper, runner.episode, num_episodes)
    runner, logs = jax.lax.scan(lambda r, _: _run_episode(learner, run_key, hyper, r), runner, None,
                                length=num_episodes)
    task = learner.task
    chex.assert_shape(task.cost(logs.metrics), (num_episodes,))
    return runner, logs._replace(reference=reference,
                                 ratio_to_reference=task.cost(logs.metrics) / task.cost(reference))


def make_train(config: TrainConfig) -> Callable[..., tuple[RunnerState, EpisodeLog]]:
    """Validate `config` and return a pure `train(key, hyper=None) -> (runner, logs [E])`.

    Jit it and vmap it over keys for seeds (and over `Hyper` for grids)."""
    learner = make_learner(config)

    def train(key: jax.Array, hyper: Hyper | None = None):
        hyper = default_hyper(config) if hyper is None else hyper
        runner = init_runner(learner, key, hyper)
        return train_episodes(learner, runner, key, hyper, config.num_episodes)

    return train
