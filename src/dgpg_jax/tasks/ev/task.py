"""EV charging as a `Task`: each step's arriving EVs are the decision rows, their k
charging windows the candidates, the per-slot loads the potentials' input, and the
valley-filling bound the reference."""

from dgpg_jax.tasks.ev.baselines import BASELINES
from dgpg_jax.tasks.ev.core import reset, step
from dgpg_jax.tasks.ev.evaluate import make_record, pool, reference_metrics, summarise
from dgpg_jax.tasks.ev.guidance import POTENTIALS, task_guidance
from dgpg_jax.tasks.ev.observation import candidate_observation, day_left, slot_observation
from dgpg_jax.tasks.ev.types import EVConfig, make_params
from dgpg_jax.task import Task


def make_task(config: EVConfig) -> Task:
    """The EV-charging Task of a validated `config`."""
    return Task(
        name="ev-charging", params=make_params(config), reset=reset, step=step, observe=candidate_observation,
        valid=lambda state: state.arrivals.valid, agent=lambda state: state.arrivals.agent,
        to_actions=lambda state, choice: choice,
        critic_inputs=slot_observation, clock=lambda state, params: day_left(params, state.time),
        guidance=task_guidance, potentials=POTENTIALS,
        record=lambda state, actions, reward, info: make_record(reward, info), summarise=summarise, pool=pool,
        reference=reference_metrics, reference_name="valley", cost_key="total_cost", baselines=BASELINES,
        exact_user_potentials=False, peak_rate=config.peak_arrival_probability)
