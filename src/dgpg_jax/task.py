"""The Task interface: what the learner (`train`), the evaluation loop (`evaluate`) and the
sweep engine need from a multi-agent system, and nothing else.

At each step a system presents J decision rows (one per agent that acts this step), each
choosing one of k candidates that the shared actor scores from (J, k, F) features. A
system says what only it knows: `reset`, `step`, `observe` (the candidate features) and,
for DG-PG, its potentials and how the candidates move its aggregates. Everything else has
a default that `Task` fills in. docs/task.md states every contract with an example.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from dgpg_jax import guidance as generic_guidance

Act = Callable[[jax.Array, Any, Any], jax.Array]
"""A policy: `act(key, state, params) -> actions` of one step."""


def decision_rows(num_agents: int, probability: float) -> int:
    """Rows J that hold a step's deciding agents, each deciding with `probability`: the
    mean plus 6 standard deviations plus 4, at most N (a step beyond it is
    astronomically rare; a system that meets one leaves the extra agents idle)."""
    n, p = num_agents, min(1.0, probability)
    return min(n, math.ceil(n * p + 6 * math.sqrt(n * p * (1 - p)) + 4))


@struct.dataclass
class EpisodeCost:
    """The default episode metrics: the day's cost (minus the summed reward) and return."""

    cost: jax.Array
    episode_return: jax.Array


def _default_summarise(records, params) -> EpisodeCost:
    total = jnp.sum(records)
    return EpisodeCost(cost=-total, episode_return=total)


def pool_mean(metrics) -> dict:
    """Every field of `metrics` (a dataclass of arrays of any leading shape) averaged over
    all its elements: the default pooling of seeds and episodes."""
    return {field.name: float(np.mean(np.asarray(getattr(metrics, field.name))))
            for field in dataclasses.fields(metrics)}


@dataclasses.dataclass(frozen=True)
class Task:
    """A system as the learner sees it. Required: `name`, `params`, `reset`, `step`,
    `observe`. DG-PG also needs `potentials` and either `aggregates` or `guidance`.
    The rest default as each field's docstring says."""

    name: str
    """Short name, used in output titles."""
    params: Any
    """The environment's params pytree; must have `num_agents` and `horizon` (T, steps
    of one episode), read by the learner."""
    reset: Callable
    """`reset(key, params) -> (obs, state)`."""
    step: Callable
    """`step(key, state, actions, params) -> (obs, state, reward, done, info)`; `info`
    holds `"truncated"`, a () bool that is True at the day's last step (the learner does
    not bootstrap across it). `obs` is `observe` of the new state."""
    observe: Callable
    """`observe(state, params) -> (J, k, F)` float32 candidate features of the rows
    deciding at `state`."""
    potentials: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Named potentials G (to be ascended) that `guidance` accepts; the first is the
    default. Needed for DG-PG only."""
    aggregates: Callable | None = None
    """`aggregates(state, params) -> (base (E,), contribution (J, k, E))`: the system's
    E aggregates (loads of links, servers, time slots) without this step's rows, and
    what row i adds to them by taking candidate b. With it, `guidance` defaults to the
    exact leave-one-out change of G(load, params) (`dgpg_jax.guidance`)."""
    guidance: Callable | None = None
    """`guidance(potential, state, choice, params, exact) -> (J, k)`: the change of G when
    row i takes candidate b, the others at `choice`. Default: from `aggregates`."""
    valid: Callable | None = None
    """`valid(state) -> (J,) bool`, the rows holding a decision. Default: every row."""
    agent: Callable | None = None
    """`agent(state) -> (J,) int32`, the agent deciding in each row (N for an empty row).
    Default: row i is agent i."""
    to_actions: Callable | None = None
    """`to_actions(state, choice (J,) int32) -> actions` for `step`. Default: the
    candidate indices themselves."""
    clock: Callable | None = None
    """`clock(state, params) -> ()` fraction of the day left (the local critic's input).
    Default: 1 - state.time / params.horizon."""
    critic_inputs: Callable | None = None
    """`critic_inputs(state, params) -> ((E, Fe) entity features, (Fg,) global
    features)`, the central critic's input (MAPPO, DG-PG). Default: the step's (J k, F)
    candidate features and the clock."""
    record: Callable | None = None
    """`record(state, actions, reward, info) -> pytree`, one step's part of the episode's
    metrics. Default: the reward."""
    summarise: Callable | None = None
    """`summarise(records (T, ...), params) -> metrics`, a dataclass of arrays. Default:
    `EpisodeCost` (cost = minus the summed reward)."""
    cost_key: str = "cost"
    """Field of the metrics that is the cost, lower is better."""
    pool: Callable = pool_mean
    """`pool(metrics of any leading shape) -> dict` of floats, on the host."""
    reference: Callable | None = None
    """`reference(params, episode_key) -> metrics` of a reference policy or bound on the
    same episode; the learner reports its cost over the reference's. Default: a unit
    reference (every ratio is then the absolute cost)."""
    reference_name: str = "unit"
    """Short name of the reference in output keys (`best_fit`, `valley`)."""
    baselines: Mapping[str, Act] = dataclasses.field(default_factory=dict)
    """Heuristic policies by name, for evaluation."""
    peak_rate: float | None = None
    """Expected decisions per agent per step at the busiest step: sizes the learner's
    packed update rows. Default: every row decides every step."""
    sizes: Mapping[str, int] = dataclasses.field(default_factory=dict)
    """Sizes of the system beyond N, added to every evaluation row."""
    traced_load: str | None = None
    """Name of the params field set by `Hyper.utilisation` (a grid over load), or None."""
    exact_user_potentials: bool = True
    """Whether `guidance` computes the exact change for a user callable."""
    decide: Callable | None = None
    """None: the rows of a step decide at once, each on `observe(state, params)`. Rows that
    see other rows' choices first: `decide(state, params, choose, keys) -> (obs (J, k, F),
    choice (J,))`, where `choose(key, obs (k, F)) -> ()` picks a row's candidate."""

    def __post_init__(self):
        fill = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        if self.valid is None or self.agent is None:
            rows = self.rows
            if self.valid is None:
                fill("valid", lambda state: jnp.ones((rows,), bool))
            if self.agent is None:
                fill("agent", lambda state: jnp.arange(rows, dtype=jnp.int32))
        if self.to_actions is None:
            fill("to_actions", lambda state, choice: choice)
        if self.clock is None:
            fill("clock", lambda state, params: 1.0 - state.time.astype(jnp.float32) / params.horizon)
        if self.critic_inputs is None:
            observe, clock = self.observe, self.clock
            fill("critic_inputs", lambda state, params: (_flat_rows(observe(state, params)),
                                                         jnp.reshape(clock(state, params), (1,))))
        if self.record is None:
            fill("record", lambda state, actions, reward, info: reward)
        if self.summarise is None:
            fill("summarise", _default_summarise)
        if self.reference is None:
            shapes = self.metric_shapes
            fill("reference", lambda params, key: jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), shapes))
        if self.guidance is None and self.aggregates is not None:
            fill("guidance", generic_guidance.from_aggregates(self.aggregates, self.valid))

    @functools.cached_property
    def observation_shape(self) -> tuple[int, int, int]:
        """(J, k, F): decision rows, candidates and features of a step (no computation)."""
        return jax.eval_shape(lambda: self.observe(self.reset(jax.random.key(0), self.params)[1], self.params)).shape

    @property
    def rows(self) -> int:
        """J, the decision rows of a step."""
        return self.observation_shape[0]

    @property
    def episode_rows(self) -> int:
        """T x J x k candidate rows of one episode (`validation.check_seeds` bounds seeds x them)."""
        return self.params.horizon * self.observation_shape[0] * self.observation_shape[1]

    @functools.cached_property
    def metric_shapes(self):
        """Shapes of one episode's metrics (no computation)."""
        def one_episode():
            from dgpg_jax.evaluate import scan_episode

            act = lambda key, state, params: self.to_actions(state, jnp.zeros(self.valid(state).shape, jnp.int32))  # noqa: E731
            _, records = scan_episode(self.reset, self.step, self.record, act, self.params, jax.random.key(0))
            return self.summarise(records, self.params)

        return jax.eval_shape(one_episode)

    def apply_load(self, params, value: jax.Array):
        """`params` with the traced load set to `value` (unchanged for a task without one)."""
        return params if self.traced_load is None else params.replace(**{self.traced_load: value})

    def get_potential(self, potential, exact: bool = True):
        """A potential by name (None: the default) or a user callable, checked before tracing."""
        if potential is None:
            if not self.potentials:
                raise ValueError(f"potential=None is invalid for the {self.name} task: it names no potentials; "
                                 "allowed a callable, or ippo / mappo (no guidance)")
            return next(iter(self.potentials.values()))
        if callable(potential):
            if exact and not self.exact_user_potentials:
                raise ValueError(f"potential={potential!r} is invalid with exact guidance on the {self.name} task: "
                                 "allowed a named potential, or first_order=True for a user potential")
            return potential
        if potential not in self.potentials:
            raise ValueError(f"potential={potential!r} is invalid for the {self.name} task: allowed one of "
                             f"{tuple(self.potentials)} or a callable")
        return self.potentials[potential]

    @property
    def ratio_key(self) -> str:
        """The output key of the cost over the reference's: `ratio_to_<reference_name>`."""
        return f"ratio_to_{self.reference_name}"

    def cost(self, metrics) -> jax.Array:
        """The cost of `metrics` (jittable)."""
        return getattr(metrics, self.cost_key)


def _flat_rows(obs: jax.Array) -> jax.Array:
    return obs.reshape((-1, obs.shape[-1]))


def _shape_error(task: Task, field: str, got, expected: str) -> ValueError:
    return ValueError(f"task {task.name!r}: {field} is {got}: expected {expected} (docs/task.md)")


def _describe(x) -> str:
    return f"shape {tuple(x.shape)} {x.dtype}" if hasattr(x, "shape") else type(x).__name__


def check_task(task: Task, guided: bool = True) -> Task:
    """Check every function of `task` against the contracts of docs/task.md by tracing
    them once with `jax.eval_shape` (seconds, nothing compiled), so a mistake surfaces as
    a ValueError naming the field, before any training compiles. `guided`: also check the
    guidance with the default potential (DG-PG)."""
    params = task.params
    for size in ("num_agents", "horizon"):
        value = getattr(params, size, None)
        if not (isinstance(value, int) and value >= 1):
            raise _shape_error(task, f"params.{size}", repr(value), "an int >= 1 (a static field)")
    try:
        obs, state = jax.eval_shape(task.reset, jax.random.key(0), params)
    except (TypeError, ValueError) as error:
        raise ValueError(f"task {task.name!r}: reset(key, params) must return (obs, state): {error}") from None
    if obs.ndim != 3 or not jnp.issubdtype(obs.dtype, jnp.floating):
        raise _shape_error(task, "reset's obs", _describe(obs), "(J, k, F) floats: J rows, k candidates, F features")
    rows, k, _ = obs.shape
    checks = [("observe(state, params)", lambda s: task.observe(s, params), obs.shape, None),
              ("valid(state)", task.valid, (rows,), jnp.bool_),
              ("agent(state)", task.agent, (rows,), jnp.integer),
              ("clock(state, params)", lambda s: task.clock(s, params), (), jnp.floating)]
    for field, fn, shape, dtype in checks:
        out = jax.eval_shape(fn, state)
        if out.shape != shape or (dtype is not None and not jnp.issubdtype(out.dtype, dtype)):
            raise _shape_error(task, field, _describe(out), f"shape {shape}" + (f" {dtype.__name__}" if dtype else ""))
    entities, global_features = jax.eval_shape(lambda s: task.critic_inputs(s, params), state)
    if entities.ndim != 2 or global_features.ndim != 1:
        raise _shape_error(task, "critic_inputs(state, params)", f"({_describe(entities)}, "
                           f"{_describe(global_features)})", "((E, Fe), (Fg,)) floats")
    choice = jnp.zeros((rows,), jnp.int32)
    result = jax.eval_shape(lambda s: task.step(jax.random.key(0), s, task.to_actions(s, choice), params), state)
    if not (isinstance(result, tuple) and len(result) == 5):
        raise _shape_error(task, "step(key, state, actions, params)", type(result).__name__,
                           "(obs, state, reward, done, info)")
    next_obs, _, reward, _, info = result
    if next_obs.shape != obs.shape or reward.shape != ():
        raise _shape_error(task, "step's (obs, reward)", f"({_describe(next_obs)}, {_describe(reward)})",
                           f"(shape {obs.shape} as reset's, a () reward)")
    truncated = info.get("truncated") if isinstance(info, dict) else None
    if truncated is None or truncated.shape != () or truncated.dtype != jnp.bool_:
        raise _shape_error(task, 'step\'s info["truncated"]', "missing" if truncated is None else _describe(truncated),
                           "a () bool, True at the day's last step")
    metrics = task.metric_shapes
    if not dataclasses.is_dataclass(metrics) or not hasattr(metrics, task.cost_key):
        raise _shape_error(task, "summarise(records, params)", type(metrics).__name__,
                           f"a dataclass of arrays with the cost field {task.cost_key!r}")
    reference = jax.eval_shape(lambda: task.reference(params, jax.random.key(0)))
    if type(reference) is not type(metrics):
        raise _shape_error(task, "reference(params, key)", type(reference).__name__,
                           f"metrics of summarise's type {type(metrics).__name__}")
    if guided:
        if task.guidance is None:
            raise ValueError(f"task {task.name!r} has no guidance: expected `aggregates` or `guidance` for DG-PG "
                             "(docs/task.md); allowed algorithms without it: ippo, mappo")
        potential = task.get_potential(None)
        out = jax.eval_shape(lambda s: task.guidance(potential, s, choice, params, True), state)
        if out.shape != (rows, k):
            raise _shape_error(task, "guidance(potential, state, choice, params, exact)", _describe(out),
                               f"shape {(rows, k)}")
    return task
