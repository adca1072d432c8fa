"""The Task interface: everything the learner (`train`), the evaluation loop (`evaluate`)
and the sweep engine need from a multi-agent system, and nothing else.

A system plugs into DG-PG by building a `Task` from its config. Agents decide in rows:
at each step, J decision rows (one per agent that acts this step; empty rows are
masked) each pick one of k candidates, scored by the shared actor from (J, k, F)
features. A Task supplies, as pure jittable functions:

- `reset(key, params) -> (obs, state)` and `step(key, state, actions, params) ->
  (obs, state, reward, done, info)`, Gymnax-style with auto-reset at the day's end;
  `obs` is the (J, k, F) candidate features of the rows deciding at `state`, and
  `observe(state, params)` recomputes it (what a policy of a state reads);
- optionally `decide(state, params, choose, keys) -> (obs, choice)`, for a system whose
  rows see other rows' choices of the step before they decide (the cloud task with
  `decisions="in_turn"` or `"tentative"`); None when rows decide at once;
- `valid(state) -> (J,) bool`, the rows holding a decision, `agent(state) -> (J,)
  int32`, the agent deciding in each row (N for an empty row; the variance diagnostics
  sum each agent's decisions), and `to_actions(state, choice) -> actions`, the step's
  actions from each row's candidate index (J,) int32;
- `critic_inputs(state, params) -> ((E, Fe) entity features, (Fg,) global features)`
  for the centralised critic, and `clock(state, params) -> ()` the fraction of the day
  left (the local critic's input beside the candidate features);
- `guidance(potential, state, choice, params, exact) -> (J, k)`: the change of the
  potential G of the task's aggregates when row i takes candidate b instead, the other
  rows' choices held fixed (exact leave-one-out, or first order when `exact` is False);
  `potentials` names the task's potentials (the first is the default) and a user may
  pass a callable of the task's aggregates instead (with exact guidance only where
  `exact_user_potentials`);
- `record(state, actions, reward, info)` and `summarise(records, params) -> metrics`:
  one step's contribution and one episode's metrics (a pytree of scalars and arrays);
  `pool(metrics) -> dict` pools any leading shape of them on the host;
- `reference(params, episode_key) -> metrics`: the reference on the same episode (the
  same traces), and `cost_key`, the metric (lower is better) whose ratio to the
  reference's is the learner's headline figure `ratio_to_reference`.
- optionally `sizes`, the system's sizes beyond N by name, which evaluation rows report.

The config of a task (a frozen dataclass) has `validate()`, `make_task()`,
`num_agents`, `horizon`, `num_slots` (J) and `peak_arrival_probability` (expected
decisions per agent per step at the busiest step, which sizes the packed update rows). `TrainConfig.env`
holds it; the learner never imports a particular task.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax

Act = Callable[[jax.Array, Any, Any], jax.Array]
"""A policy: `act(key, state, params) -> actions` of one step."""


@dataclasses.dataclass(frozen=True)
class Task:
    """A system as the learner sees it (see the module docstring for each function)."""

    name: str
    params: Any
    """The environment's params pytree (static sizes, traced values)."""
    reset: Callable
    step: Callable
    observe: Callable
    valid: Callable
    agent: Callable
    to_actions: Callable
    critic_inputs: Callable
    clock: Callable
    guidance: Callable
    potentials: Mapping[str, Any]
    """Named potentials accepted by `guidance`; the first is the default."""
    record: Callable
    summarise: Callable
    pool: Callable
    reference: Callable
    reference_name: str
    """Short name of the reference in output keys (`best_fit`, `valley`)."""
    cost_key: str
    """Field of the metrics (and key of `pool`) that is the cost, lower is better."""
    baselines: Mapping[str, Act]
    """Heuristic policies by name, for evaluation."""
    sizes: Mapping[str, int] = dataclasses.field(default_factory=dict)
    """Sizes of the system beyond N (cloud scheduling: `num_servers`), added to every
    evaluation row."""
    traced_load: str | None = None
    """Name of the params field set by `Hyper.utilisation` (a grid over load), or None."""
    exact_user_potentials: bool = True
    """Whether `guidance` computes the exact leave-one-out change for a user callable
    (otherwise a user potential needs first-order guidance)."""
    decide: Callable | None = None
    """None: the rows of a step decide at once, each on `observe(state, params)`. Rows that
    see other rows' choices first: `decide(state, params, choose, keys) -> (obs (J, k, F),
    choice (J,))`, where `choose(key, obs (k, F)) -> ()` picks a row's candidate from the
    features it sees (keys (J,)); in turn, a `lax.scan` over the rows, row i seeing the
    choices of the rows before it."""

    def apply_load(self, params, value: jax.Array):
        """`params` with the traced load set to `value` (unchanged for a task without one)."""
        return params if self.traced_load is None else params.replace(**{self.traced_load: value})

    def get_potential(self, potential, exact: bool = True):
        """A potential by name (None: the default) or a user callable, checked before tracing."""
        if potential is None:
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

    def cost(self, metrics) -> jax.Array:
        """The cost of `metrics` (jittable)."""
        return getattr(metrics, self.cost_key)
