"""Coordinated EV charging: N EV agents each pick one of k charging windows on arrival;
the cost is a convex function of the total (base + EV) load of every slot of the day."""

from dgpg_jax.tasks.ev.arrivals import arrival_slot_probabilities, pack_arrivals, sample_day, sample_fleet
from dgpg_jax.tasks.ev.base_load import base_forecast, base_shape, sample_base_load
from dgpg_jax.tasks.ev.baselines import BASELINES, get_policy
from dgpg_jax.tasks.ev.core import reset, step, step_env
from dgpg_jax.tasks.ev.cost import per_agent_load, slot_cost, undelivered_cost
from dgpg_jax.tasks.ev.evaluate import EpisodeMetrics, pool, reference_metrics, rollout, summarise
from dgpg_jax.tasks.ev.guidance import (POTENTIALS, LoadAggregates, TrackingPotential, first_order_guidance, potential_target,
                                  step_guidance, task_guidance, tracking_potential, window_guidance)
from dgpg_jax.tasks.ev.observation import (NUM_CANDIDATE_FEATURES, NUM_GLOBAL_FEATURES, NUM_SLOT_FEATURES,
                                     candidate_observation, slot_observation)
from dgpg_jax.tasks.ev.types import Arrivals, Day, EVConfig, EVParams, EVState, make_params
from dgpg_jax.tasks.ev.valley import reference_cost, valley_fill, valley_load
from dgpg_jax.tasks.ev.windows import candidate_starts, charging_plan, commit_windows, window_sums

__all__ = [
    "EVConfig", "EVParams", "EVState", "Day", "Arrivals", "make_params", "reset", "step", "step_env",
    "sample_day", "sample_fleet", "pack_arrivals", "arrival_slot_probabilities",
    "base_forecast", "base_shape", "sample_base_load", "per_agent_load", "slot_cost", "undelivered_cost",
    "charging_plan", "candidate_starts", "commit_windows", "window_sums",
    "valley_fill", "valley_load", "reference_cost",
    "POTENTIALS", "LoadAggregates", "TrackingPotential", "tracking_potential", "potential_target", "window_guidance",
    "step_guidance", "first_order_guidance", "task_guidance",
    "candidate_observation", "slot_observation", "NUM_CANDIDATE_FEATURES", "NUM_SLOT_FEATURES",
    "NUM_GLOBAL_FEATURES", "BASELINES", "get_policy", "EpisodeMetrics", "rollout", "summarise", "pool",
    "reference_metrics",
]
