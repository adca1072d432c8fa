"""`reset` and `step` of the EV-charging environment (Gymnax-style, auto-reset).

Spec of one day (T slots of dt = 24 / T hours, slot 0 at `day_start_hour`):
- reset draws the day from the key: N EVs (arrival, departure, energy need, power limit),
  the realised base load, the valley target and the overflow commitments.
- observation: (J, k, F) features of each decision row's candidate windows
  (`observation.candidate_observation`); `state.arrivals` holds the valid mask (J,) and
  the candidate-to-window mapping `candidate_start` (J, k).
- action: (J,) int32 candidate index in [0, k) per row, ignored on empty rows. An index
  outside [0, k) is taken as candidate 0 (charge on arrival, the uncontrolled default)
  and counted in `info["num_invalid"]`.
- step t commits the rows' windows and the overflow EVs' charge-on-arrival windows, after
  which slot t's load L_t = base_t + EV_t is final (every window starts at t or later).
- reward: -(N dt c(L_t / N) + penalty x kWh this step's EVs will not get) / N.
- done: True after slot T - 1, a truncation (`info["truncated"]`; `terminated` is always
  False). Nothing carries over: the next day is drawn from the key of the last step.
"""

import jax
import jax.numpy as jnp

from dgpg_jax.tasks.ev.arrivals import pack_arrivals, sample_day
from dgpg_jax.tasks.ev.cost import slot_cost, undelivered_cost
from dgpg_jax.tasks.ev.observation import candidate_observation
from dgpg_jax.tasks.ev.types import Arrivals, EVParams, EVState
from dgpg_jax.tasks.ev.windows import commit_windows
from dgpg_jax.validation import check


def resolve_actions(arrivals: Arrivals, actions: jax.Array, num_candidates: int):
    """(J,) chosen candidate, its window start, and whether the action was out of range.
    An out-of-range action on a valid row becomes candidate 0 (charge on arrival); actions
    of a shape other than (J,) raise ValueError when traced (every entry taking actions,
    `step_env` and the guidance, comes through here)."""
    j = arrivals.valid.shape[0]
    check("actions.shape", jnp.shape(actions), jnp.shape(actions) == (j,),
          f"(J,) = ({j},), one candidate index per decision row")
    invalid = arrivals.valid & ((actions < 0) | (actions >= num_candidates))
    choice = jnp.where(arrivals.valid & ~invalid, actions, 0).astype(jnp.int32)
    start = jnp.take_along_axis(arrivals.candidate_start, choice[:, None], axis=1)[:, 0]
    return choice, start, invalid


def commit_step(state: EVState, start: jax.Array) -> jax.Array:
    """(T,) kW EV load after committing this step's rows at window starts `start` (J,) and
    the overflow EVs (charge on arrival). O(J + T)."""
    rows = state.arrivals
    ev_load = commit_windows(state.ev_load, start, rows.length, rows.power, rows.valid)
    return ev_load + state.day.overflow_load[jnp.minimum(state.time, state.ev_load.shape[0] - 1)]


def _initial_state(key: jax.Array, params: EVParams) -> EVState:
    day = sample_day(key, params)
    time = jnp.zeros((), jnp.int32)
    return EVState(ev_load=jnp.zeros((params.horizon,), jnp.float32), time=time, day=day,
                   arrivals=pack_arrivals(day, time, params))


def reset(key: jax.Array, params: EVParams) -> tuple[jax.Array, EVState]:
    """Draw a day and start it with nothing committed. Returns (obs (J, k, F), state).
    O(N log N + T^2) (sorting the fleet, the overflow profiles)."""
    state = _initial_state(key, params)
    return candidate_observation(state, params), state


def step_env(state: EVState, actions: jax.Array, params: EVParams):
    """One step without the auto-reset: (obs, state, reward, done, info); at the end of the
    day the returned state has time T and no arrivals. O(J k + T)."""
    rows = state.arrivals
    day = state.day
    t = state.time
    choice, start, invalid = resolve_actions(rows, actions, params.num_candidates)
    ev_load = commit_step(state, start)
    base = day.base_load[t]
    load = base + ev_load[t]
    delivered_each = jnp.where(rows.valid, rows.power * rows.length * params.slot_hours, 0.0)
    demanded = rows.energy.sum() + day.overflow_energy[t]
    delivered = delivered_each.sum() + day.overflow_delivered[t]
    undelivered = jnp.maximum(demanded - delivered, 0.0)
    load_cost = slot_cost(load, params)
    penalty = undelivered_cost(undelivered, params)
    time = t + 1
    truncated = time >= params.horizon
    new_state = EVState(ev_load=ev_load, time=time, day=day, arrivals=pack_arrivals(day, time, params))
    info = {
        "cost": load_cost + penalty,  # this step's cost: slot t's load cost and the undelivered penalty
        "load_cost": load_cost,
        "penalty_cost": penalty,
        "load": load,  # kW, realised total load of slot t (final)
        "base_load": base,  # kW, realised non-EV load of slot t
        "ev_load": ev_load[t],  # kW, EV load of slot t
        "demanded_energy": demanded,  # kWh, EVs arriving at t (overflow included)
        "delivered_energy": delivered,  # kWh their windows deliver
        "undelivered_energy": undelivered,  # kWh they will not get by departure
        "choice": choice,  # (J,) candidate taken (0 for empty rows and invalid actions)
        "window_start": jnp.where(rows.valid, start, 0),  # (J,) first slot of the committed window
        "num_arrived": rows.valid.sum() + rows.num_overflow,
        "num_overflow": rows.num_overflow,  # beyond J: charged on arrival
        "num_invalid": invalid.sum(),  # actions outside [0, k): charged on arrival
        "truncated": truncated,
        "terminated": jnp.zeros((), bool),
    }
    reward = -(load_cost + penalty) / params.num_agents
    return candidate_observation(new_state, params), new_state, reward, truncated, info


def step(key: jax.Array, state: EVState, actions: jax.Array, params: EVParams):
    """`step_env`, then at the end of the day a new day from `key` (the key is read only
    then). Returns (obs, state, reward, done, info), `info` from the step taken. Under
    `vmap` the `cond` becomes a select, so every step also pays for a reset."""
    obs, new_state, reward, done, info = step_env(state, actions, params)
    obs, new_state = jax.lax.cond(done, lambda: reset(key, params), lambda: (obs, new_state))
    return obs, new_state, reward, done, info
