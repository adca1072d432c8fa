"""Pytrees of the EV-charging environment: its configuration, params, the day's fleet and
the per-step decision rows.

`EVConfig` is what a user writes (plain Python numbers, validated before anything is
traced); `make_params` turns it into `EVParams`, whose array sizes are static fields and
whose numeric settings are pytree leaves, so `jax.vmap` over params works. Loads are in
kW, energies in kWh, times in slots of `slot_hours` = 24 / T hours unless a name says
hours.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import struct

from dgpg_jax.task import decision_rows
from dgpg_jax.validation import MAX_AGENTS, check, check_episode_rows, check_integer, check_number, is_number

HOURS_PER_DAY = 24.0
MAX_HORIZON = 1440  # one-minute slots
MAX_CANDIDATES = 64


@dataclasses.dataclass(frozen=True)
class EVConfig:
    """Settings of the coordinated EV-charging day. Clock hours are in [0, 24); the day
    runs from `day_start_hour` to the same hour of the next day, so evening arrivals and
    morning departures fall inside one day."""

    view: ClassVar[str] = "dgpg_jax.tasks.ev.view:VIEW"
    potential_names: ClassVar[str] = "dgpg_jax.tasks.ev.guidance:POTENTIALS"
    renamed_fields: ClassVar[dict] = {"decision_slots": "decision_rows"}

    num_agents: int = 100
    """EVs N; each arrives once per day."""
    horizon: int = 48
    """Slots per day T (48: half-hour slots)."""
    day_start_hour: float = 12.0
    """Clock hour at which the day (slot 0) starts."""
    num_candidates: int = 4
    """Charging windows each EV chooses among (k); candidate 0 charges on arrival."""
    decision_rows: int | None = None
    """Decision rows per step J; None sizes it from the arrival distribution (`num_rows`)."""
    arrival_mean_hour: float = 18.0
    """Clock hour of the mean arrival (normal, clipped to the day)."""
    arrival_sd_hours: float = 1.5
    """Standard deviation of the arrival time, hours."""
    departure_mean_hour: float = 7.5
    """Clock hour of the mean departure (normal; at least one slot after arrival)."""
    departure_sd_hours: float = 1.0
    """Standard deviation of the departure time, hours."""
    energy_mean: float = 10.0
    """Mean energy need, kWh (lognormal before the cap)."""
    energy_sigma: float = 0.5
    """Log-standard deviation of the energy need."""
    energy_max: float = 60.0
    """Largest energy need, kWh (a battery's usable size)."""
    power_levels: tuple[float, ...] = (3.7, 7.4, 11.0)
    """Charger power limits, kW (1-phase 16 A, 1-phase 32 A, 3-phase 16 A)."""
    power_probabilities: tuple[float, ...] = (0.3, 0.5, 0.2)
    """Share of EVs at each power limit; sums to 1."""
    base_load_per_agent: float = 1.0
    """Mean non-EV load per agent, kW (a household's ~24 kWh/day)."""
    base_amplitude: float = 0.35
    """Relative amplitude of the base load's daily harmonic."""
    base_peak_hour: float = 19.0
    """Clock hour of the daily harmonic's peak (the household evening peak)."""
    base_second_amplitude: float = 0.15
    """Relative amplitude of the half-day harmonic (a morning and an evening bump)."""
    base_second_peak_hour: float = 8.0
    """Clock hour of a peak of the half-day harmonic (the other is 12 h later)."""
    base_noise: float = 0.05
    """Relative standard deviation of the i.i.d. per-slot noise of the base load."""
    undelivered_penalty: float = 10.0
    """Cost per kWh not delivered by departure, in cost units (see `cost.py`)."""
    overload_weight: float = 0.0
    """Weight of the extra convex cost above `capacity_per_agent` (0 turns it off)."""
    capacity_per_agent: float = 3.0
    """Feeder capacity per agent, kW, above which the overload term applies."""

    def validate(self) -> "EVConfig":
        """Raise ValueError naming the first invalid field, its value and the allowed range."""
        check_integer("num_agents", self.num_agents, 1, MAX_AGENTS)
        check_integer("horizon", self.horizon, 2, MAX_HORIZON)
        check_number("day_start_hour", self.day_start_hour, 0, HOURS_PER_DAY, high_open=True)
        check_integer("num_candidates", self.num_candidates, 1, MAX_CANDIDATES)
        if self.decision_rows is not None:
            check_integer("decision_rows", self.decision_rows, 1, self.num_agents)
        check_number("arrival_mean_hour", self.arrival_mean_hour, 0, HOURS_PER_DAY, high_open=True)
        check_number("arrival_sd_hours", self.arrival_sd_hours, 0, HOURS_PER_DAY, low_open=True)
        check_number("departure_mean_hour", self.departure_mean_hour, 0, HOURS_PER_DAY, high_open=True)
        check_number("departure_sd_hours", self.departure_sd_hours, 0, HOURS_PER_DAY, low_open=True)
        check_number("energy_mean", self.energy_mean, 0, 1e4, low_open=True)
        check_number("energy_sigma", self.energy_sigma, 0, 3)
        check_number("energy_max", self.energy_max, 0, 1e5, low_open=True)
        levels, shares = self.power_levels, self.power_probabilities
        check("power_levels", levels, isinstance(levels, tuple) and 1 <= len(levels) <= 16
              and all(is_number(p) and 0 < p <= 1e4 for p in levels), "a tuple of 1 to 16 numbers in (0, 1e4]")
        check("power_probabilities", shares, isinstance(shares, tuple) and len(shares) == len(levels)
              and all(is_number(q) and q >= 0 for q in shares) and abs(sum(shares) - 1) <= 1e-6,
              f"a tuple of {len(levels)} numbers >= 0 (one per power level) summing to 1")
        check_number("base_load_per_agent", self.base_load_per_agent, 0, 1e4)
        check_number("base_amplitude", self.base_amplitude, 0, 1)
        check_number("base_peak_hour", self.base_peak_hour, 0, HOURS_PER_DAY, high_open=True)
        check_number("base_second_amplitude", self.base_second_amplitude, 0, 1 - self.base_amplitude,
                     high_open=True)
        check_number("base_second_peak_hour", self.base_second_peak_hour, 0, HOURS_PER_DAY, high_open=True)
        check_number("base_noise", self.base_noise, 0, 1)
        check_number("undelivered_penalty", self.undelivered_penalty, 0, 1e6)
        check_number("overload_weight", self.overload_weight, 0, 1e6)
        check_number("capacity_per_agent", self.capacity_per_agent, 0, 1e4, low_open=True)
        check_episode_rows(self.horizon, self.num_rows, self.num_candidates)
        return self

    def make_task(self):
        """This system as a `dgpg_jax.task.Task` (validated first)."""
        from dgpg_jax.tasks.ev.task import make_task

        return make_task(self.validate())

    @property
    def slot_hours(self) -> float:
        return HOURS_PER_DAY / self.horizon

    @property
    def peak_arrival_probability(self) -> float:
        """Largest probability, over slots, that one EV arrives in that slot."""
        return max(arrival_slot_probabilities_host(self))

    @property
    def num_rows(self) -> int:
        """Decision rows per step J: N p + 6 sigma + 4 at the busiest slot, at most N."""
        if self.decision_rows is not None:
            return self.decision_rows
        return decision_rows(self.num_agents, self.peak_arrival_probability)



def hours_after_start(clock_hour: float, day_start_hour: float) -> float:
    """Hours from the day's start to the next `clock_hour`, in [0, 24)."""
    return (clock_hour - day_start_hour) % HOURS_PER_DAY


def arrival_slot_probabilities_host(config: EVConfig) -> list[float]:
    """(T,) probability of each arrival slot, on the host (sizes J before anything is traced).

    The arrival, x hours after the day's start, is normal; its slot is ceil(x / dt) (the
    first slot that starts at or after it) clipped to [0, T - 1], so slot 0 takes x <= 0
    and slot T - 1 takes x > (T - 2) dt. `arrivals.arrival_slot_probabilities` is the
    same formula in JAX.
    """
    t, dt = config.horizon, config.slot_hours
    mean = hours_after_start(config.arrival_mean_hour, config.day_start_hour)
    cdf = [0.5 * (1 + math.erf((s * dt - mean) / (config.arrival_sd_hours * math.sqrt(2)))) for s in range(t - 1)]
    return [cdf[0]] + [cdf[s] - cdf[s - 1] for s in range(1, t - 1)] + [1 - cdf[t - 2]]


@struct.dataclass
class EVParams:
    """Everything `reset` and `step` read. Sizes are static; the rest are leaves."""

    num_agents: int = struct.field(pytree_node=False)  # N
    horizon: int = struct.field(pytree_node=False)  # T slots per day
    num_candidates: int = struct.field(pytree_node=False)  # k
    num_rows: int = struct.field(pytree_node=False)  # J decision rows per step
    day_start_hour: jax.Array  # () float32, clock hour of slot 0
    arrival_mean: jax.Array  # () float32, hours after the day's start
    arrival_sd: jax.Array  # () float32, hours
    departure_mean: jax.Array  # () float32, hours after the day's start
    departure_sd: jax.Array  # () float32, hours
    energy_mean: jax.Array  # () float32, kWh
    energy_sigma: jax.Array  # () float32
    energy_max: jax.Array  # () float32, kWh
    power_levels: jax.Array  # (P,) float32, kW
    power_probabilities: jax.Array  # (P,) float32
    base_load_per_agent: jax.Array  # () float32, kW
    base_amplitude: jax.Array  # () float32
    base_peak_hour: jax.Array  # () float32, clock hour
    base_second_amplitude: jax.Array  # () float32
    base_second_peak_hour: jax.Array  # () float32, clock hour
    base_noise: jax.Array  # () float32
    undelivered_penalty: jax.Array  # () float32, cost units per kWh
    overload_weight: jax.Array  # () float32
    capacity_per_agent: jax.Array  # () float32, kW

    @property
    def slot_hours(self) -> float:
        """dt, hours per slot (static: it follows from T)."""
        return HOURS_PER_DAY / self.horizon


@struct.dataclass
class Day:
    """One day's EVs (sorted by arrival slot) and loads, all drawn at reset from its key."""

    arrival: jax.Array  # (N,) int32, first slot the EV may charge in, sorted ascending
    departure: jax.Array  # (N,) int32, first slot after the stay (exclusive end), in [arrival + 1, T]
    energy: jax.Array  # (N,) float32, kWh demanded
    power_limit: jax.Array  # (N,) float32, kW
    base_load: jax.Array  # (T,) float32, kW, realised non-EV load (forecast x noise)
    valley_load: jax.Array  # (T,) float32, kW, forecast base filled with the day's deliverable energy
    overflow_load: jax.Array  # (T, T) float32, kW, row t: charge-on-arrival load of step t's overflow EVs
    overflow_count: jax.Array  # (T,) int32, EVs arriving at t beyond the J decision rows
    overflow_energy: jax.Array  # (T,) float32, kWh demanded by them
    overflow_delivered: jax.Array  # (T,) float32, kWh their windows deliver


@struct.dataclass
class Arrivals:
    """The EVs arriving in one step, one decision row each, in arrival order."""

    valid: jax.Array  # (J,) bool, row holds an EV
    agent: jax.Array  # (J,) int32, index into the day's (sorted) fleet; N for an empty row
    departure: jax.Array  # (J,) int32, exclusive end slot of the stay
    energy: jax.Array  # (J,) float32, kWh demanded; 0 for an empty row
    power: jax.Array  # (J,) float32, kW charging power of every candidate window (<= the limit)
    length: jax.Array  # (J,) int32, slots d of every candidate window; 0 for an empty row
    candidate_start: jax.Array  # (J, k) int32, first slot of each candidate window (action b -> column b)
    num_overflow: jax.Array  # () int32, EVs beyond J (charge on arrival, see `core.step`)


@struct.dataclass
class EVState:
    ev_load: jax.Array  # (T,) float32, kW committed by the EVs that have arrived so far
    time: jax.Array  # () int32, slot index within the day
    day: Day
    arrivals: Arrivals  # the EVs deciding at this step


def make_params(config: EVConfig = EVConfig()) -> EVParams:
    """Validate `config` and build the params pytree."""
    config.validate()
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    return EVParams(
        num_agents=config.num_agents,
        horizon=config.horizon,
        num_candidates=config.num_candidates,
        num_rows=config.num_rows,
        day_start_hour=f32(config.day_start_hour),
        arrival_mean=f32(hours_after_start(config.arrival_mean_hour, config.day_start_hour)),
        arrival_sd=f32(config.arrival_sd_hours),
        departure_mean=f32(hours_after_start(config.departure_mean_hour, config.day_start_hour)),
        departure_sd=f32(config.departure_sd_hours),
        energy_mean=f32(config.energy_mean),
        energy_sigma=f32(config.energy_sigma),
        energy_max=f32(config.energy_max),
        power_levels=f32(config.power_levels),
        power_probabilities=f32(config.power_probabilities),
        base_load_per_agent=f32(config.base_load_per_agent),
        base_amplitude=f32(config.base_amplitude),
        base_peak_hour=f32(config.base_peak_hour),
        base_second_amplitude=f32(config.base_second_amplitude),
        base_second_peak_hour=f32(config.base_second_peak_hour),
        base_noise=f32(config.base_noise),
        undelivered_penalty=f32(config.undelivered_penalty),
        overload_weight=f32(config.overload_weight),
        capacity_per_agent=f32(config.capacity_per_agent),
    )
