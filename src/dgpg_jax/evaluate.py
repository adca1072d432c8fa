"""Rolling out a policy for whole episodes of any `Task` on common random numbers.

Every episode's traces (for cloud scheduling: arrivals, sizes, candidates; for EV
charging: the day's EVs and base load) come from `env_keys(episode_key)`, and a policy's
own randomness from a separate stream, so every policy, baseline or learned, sees the
same episode e of seed s.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from dgpg_jax import memory
from dgpg_jax.task import Act, Task


def env_keys(episode_key: jax.Array, horizon: int) -> tuple[jax.Array, jax.Array]:
    """Reset key and (T,) step keys of one episode's environment stream."""
    reset_key, steps_key = jax.random.split(jax.random.fold_in(episode_key, 0))
    return reset_key, jax.random.split(steps_key, horizon)


def policy_keys(episode_key: jax.Array, horizon: int) -> jax.Array:
    """(T,) keys of one episode's policy stream, disjoint from the environment's."""
    return jax.random.split(jax.random.fold_in(episode_key, 1), horizon)


def scan_episode(reset_fn: Callable, step_fn: Callable, record: Callable, act: Callable, params,
                 episode_key: jax.Array):
    """One day of any Gymnax-style system under `act(key, state, params) -> actions`, on
    the episode's environment and policy streams (`env_keys`, `policy_keys`). Returns the
    day's first state and the (T,)-stacked `record(state, actions, reward, info)` of every
    step; `params.horizon` is the day's length."""
    reset_key, step_keys = env_keys(episode_key, params.horizon)
    _, state = reset_fn(reset_key, params)

    def one_step(state, keys):
        env_key, act_key = keys
        actions = act(act_key, state, params)
        _, next_state, reward, _, info = step_fn(env_key, state, actions, params)
        return next_state, record(state, actions, reward, info)

    return state, jax.lax.scan(one_step, state, (step_keys, policy_keys(episode_key, params.horizon)))[1]


def run_episode(act: Act, task: Task, episode_key: jax.Array):
    """Metrics of one day of `task` under `act(key, state, params) -> actions`."""
    _, records = scan_episode(task.reset, task.step, task.record, act, task.params, episode_key)
    return task.summarise(records, task.params)


def ratio_of_means(task: Task, metrics, reference) -> float:
    """Pooled cost of `metrics` over that of `reference` on the same episodes (host-side)."""
    return task.pool(metrics)[task.cost_key] / task.pool(reference)[task.cost_key]


def seed_keys(seed: int, num_seeds: int) -> jax.Array:
    """(S,) run keys of seeds 0..S-1 of master seed `seed`."""
    return jax.random.split(jax.random.key(seed), num_seeds)


def episode_key(run_key: jax.Array, episode: jax.Array) -> jax.Array:
    """Key of episode `episode` of a run (the same for every policy)."""
    return jax.random.fold_in(run_key, episode)


def _over_runs(one_episode: Callable, run_keys: jax.Array, num_episodes: int, first_episode: int,
               seeds_per_batch: int | None):
    """`one_episode(episode_key)` on episodes first..first+E-1 of each run key: [S, E] leaves."""

    def one_run(run_key):
        episodes = first_episode + jnp.arange(num_episodes)
        return jax.lax.map(lambda e: one_episode(episode_key(run_key, e)), episodes)

    if seeds_per_batch is None or seeds_per_batch >= run_keys.shape[0]:
        return jax.vmap(one_run)(run_keys)
    return jax.lax.map(one_run, run_keys, batch_size=seeds_per_batch)


def evaluate(act: Act, task: Task, run_keys: jax.Array, num_episodes: int, first_episode: int = 0,
             seeds_per_batch: int | None = None):
    """Metrics of shape [S, E] for `act` on episodes first..first+E-1 of each run key (S,).
    Seeds run `seeds_per_batch` at a time (a `lax.map` over batches of a `vmap`), all at
    once by default; the results do not depend on it (up to float32 rounding)."""
    return _over_runs(lambda key: run_episode(act, task, key), run_keys, num_episodes, first_episode,
                      seeds_per_batch)


def evaluate_per_run(make_act: Callable, run_params, task: Task, run_keys: jax.Array, num_episodes: int,
                     first_episode: int = 0):
    """Metrics [S, E] where run s plays `make_act(params_s)`, params_s the s-th slice of every
    leaf of `run_params` (leading axis S), on the episodes of run key s: each seed's own
    trained actor on its own traces (`make_act = lambda p: train.learned_policy(task, actor,
    p)`), at any size of its task. Equal to `evaluate` run seed by seed."""

    def one_run(params, run_key):
        metrics = evaluate(make_act(params), task, run_key[None], num_episodes, first_episode)
        return jax.tree.map(lambda x: x[0], metrics)

    return jax.vmap(one_run)(run_params, run_keys)


def evaluate_reference(task: Task, run_keys: jax.Array, num_episodes: int, first_episode: int = 0,
                       seeds_per_batch: int | None = None):
    """The task's reference metrics [S, E] on the same episodes as `evaluate`."""
    return _over_runs(lambda key: task.reference(task.params, key), run_keys, num_episodes, first_episode,
                      seeds_per_batch)


def evaluate_policies(policies: list[tuple[str, Act]], task: Task, run_keys: jax.Array, num_episodes: int,
                      first_episode: int = 0) -> list[dict]:
    """One row per (name, act) of metrics pooled over the seeds and episodes
    (`task.pool`), all on the same traces, with N, the task's `sizes` and
    `ratio_to_reference` (also under `ratio_to_<reference_name>`): the pooled cost over
    the reference's on those traces. A policy named like the reference (Best-Fit for
    cloud scheduling) is the reference; otherwise `task.reference` is evaluated too.

    All policies run in one compiled program: a `lax.map` over the policy index whose
    body picks the policy with `lax.switch` (a real branch, since the index is not
    vmapped), so the environment and the episode loop are compiled once, not per policy."""
    names = [name for name, _ in policies]
    acts = [act for _, act in policies]
    own_reference = task.reference_name in names

    def program(seeds_per_batch):
        def one_policy(index):
            def act(key, state, env_params):
                return jax.lax.switch(index, acts, key, state, env_params)
            return evaluate(act, task, run_keys, num_episodes, first_episode, seeds_per_batch)

        def everything():
            metrics = jax.lax.map(one_policy, jnp.arange(len(acts)))
            if own_reference:
                return metrics, None
            return metrics, evaluate_reference(task, run_keys, num_episodes, first_episode, seeds_per_batch)

        return jax.jit(everything).lower().compile()

    # Too many seeds for the free memory: the same program over batches of seeds that fit;
    # what does not fit even one seed at a time is refused.
    compiled, seeds = program(None), int(run_keys.shape[0])
    if seeds > 1 and memory.program_bytes(compiled) > memory.FRACTION * memory.available_bytes():
        compiled = program(max(1, memory.seeds_that_fit(memory.program_bytes(compiled) / seeds)))
    num_agents = task.params.num_agents
    memory.check_fits(compiled, f"evaluating {seeds} seeds at N={num_agents}", "fewer --num-agents")
    everything, reference = jax.tree.map(np.asarray, compiled())
    metrics = [jax.tree.map(lambda x, i=i: x[i], everything) for i in range(len(acts))]
    reference = metrics[names.index(task.reference_name)] if own_reference else reference
    reference_cost = task.pool(reference)[task.cost_key]
    rows = []
    for name, m in zip(names, metrics):
        pooled = task.pool(m)
        with np.errstate(divide="ignore", invalid="ignore"):  # nan or inf for a reference of cost 0
            ratio = float(np.divide(pooled[task.cost_key], reference_cost))
        rows.append({"policy": name, "num_agents": num_agents, **task.sizes, "episodes": num_episodes, "seeds": seeds,
                     **pooled, task.ratio_key: ratio, "ratio_to_reference": ratio})
    return rows


def potential_greedy(task: Task, potential=None, exact: bool = True, passes: int = 2) -> Act:
    """The policy that ascends the potential, by sequential best response: the alignment
    check. Against `random` on the same traces it tests a potential before any training:
    an aligned potential gives a clearly lower cost.

    Guidance is the change of the potential G (larger is better: the named potentials
    are minus a cost), so each row takes the argmax of its guidance row. Rows decide in
    turn (a `lax.scan` over the J rows), row i given the current choices of all the
    others: the rows before it at what they just chose, the rows after it still at their
    tentative choice; an invalid row is left alone, and a row moves only if that strictly
    raises its guidance (a tie keeps its choice). This is repeated `passes` times. With
    an exactly aligned potential every move raises G given the others, so this is
    coordinate ascent on G and, once no row moves, a local optimum of G (a Nash
    equilibrium of the potential game); with fewer passes than it needs, the last pass's
    moves still each raised G.

    Scoring every row at once against a fixed tentative choice (the rule before this)
    misleads: on identical agents (two identical congestible routes) every row sees the
    others parked on candidate 0 and all move to candidate 1, far from the optimal split.

    The tentative choice is candidate 0 for every row. It matters only in the first
    pass, where row i still counts the later rows at candidate 0 (which biases the
    early rows away from it); the second pass re-decides every row against the first
    pass's choices, which corrects that. Any start converges to a local optimum with
    enough passes, but which one (and how close the fixed `passes` get) may depend on
    it. For a task whose guidance counts only the earlier rows (cloud scheduling with
    `decisions="in_turn"`), one pass is the in-turn greedy and later passes change
    nothing.

    Cost: passes x J evaluations of `task.guidance` (each of all J x k) per step, against
    one for the rule at once; the result does not use the policy key.
    """
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
        raise ValueError(f"passes={passes!r} is invalid: allowed an integer >= 1")
    potential = task.get_potential(potential, exact)

    def act(key, state, params):
        valid = task.valid(state)
        rows = jnp.arange(valid.shape[0])

        def respond(choice, i):
            scores = task.guidance(potential, state, choice, params, exact)[i]
            best = jnp.argmax(scores).astype(jnp.int32)
            move = valid[i] & (scores[best] > scores[choice[i]])
            return choice.at[i].set(jnp.where(move, best, choice[i])), None

        def one_pass(choice, _):
            return jax.lax.scan(respond, choice, rows)[0], None

        tentative = jnp.zeros(valid.shape, jnp.int32)
        choice = jax.lax.scan(one_pass, tentative, None, length=passes)[0]
        return task.to_actions(state, choice)

    return act


def episodes_to_converge(ratio: np.ndarray, window: int = 3, tolerance: float = 0.05) -> np.ndarray:
    """Episodes a run needs to converge, per run: the first episode (1-based) after which the
    `window`-episode moving average of the ratio to the reference (on the same traces)
    stays within `tolerance` (relative) of its final value. The raw cost is too noisy
    (heavy-tailed job sizes, random days), hence the ratio and the average. A run that never settles
    returns its length; shorter windows are used for the first episodes.

    Args:
      ratio: [..., E] ratio to the reference per episode.
    Returns:
      [...] int, in 1..E.
    """
    ratio = np.asarray(ratio, dtype=np.float64)
    cumulative = np.cumsum(ratio, axis=-1)
    shifted = np.concatenate([np.zeros_like(cumulative[..., :window]), cumulative[..., :-window]], axis=-1)
    counts = np.minimum(np.arange(1, ratio.shape[-1] + 1), window)
    moving = (cumulative - shifted[..., : ratio.shape[-1]]) / counts
    final = moving[..., -1:]
    outside = np.abs(moving - final) > tolerance * np.abs(final)
    # last episode (0-based) whose average is outside the band; the run has converged from the next one
    last_outside = np.where(outside.any(axis=-1), ratio.shape[-1] - 1 - np.argmax(outside[..., ::-1], axis=-1), -1)
    return last_outside + 2  # the final episode is always inside, so this is at most E
