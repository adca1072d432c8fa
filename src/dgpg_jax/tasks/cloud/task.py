"""Cloud scheduling as a `Task`: jobs are the decision rows, their k candidate servers
the candidates, per-server aggregates the potentials' input, Best-Fit the reference."""

import jax

from dgpg_jax.tasks.cloud import baselines, guidance
from dgpg_jax.tasks.cloud.arrivals import expected_work_rate
from dgpg_jax.tasks.cloud.core import reset, step
from dgpg_jax.tasks.cloud.dynamics import earlier_work, server_totals
from dgpg_jax.tasks.cloud.metrics import make_record, pool, summarise
from dgpg_jax.tasks.cloud.observation import DECIDE, day_left, job_observation, server_observation
from dgpg_jax.tasks.cloud.types import CloudConfig, CloudParams, CloudState, make_params, service_rate
from dgpg_jax.evaluate import scan_episode
from dgpg_jax.task import Task


def to_servers(state: CloudState, choice: jax.Array) -> jax.Array:
    """(J,) server of each job's chosen candidate column."""
    return baselines.pick_candidate(state.jobs.candidates, choice)


def step_guidance(potential: guidance.Potential, state: CloudState, choice: jax.Array, params: CloudParams,
                  exact: bool = True) -> jax.Array:
    """(J, k) guidance of every job at every candidate, the step's jobs sent to `choice`:
    leave-one-out (simultaneous and tentative decisions), from the earlier jobs' work in turn."""
    jobs = state.jobs
    server = to_servers(state, choice)
    mu = service_rate(params)
    agg = guidance.make_aggregates(state.backlog, server_totals(server, jobs.size, jobs.valid, params.num_servers), mu,
                                   expected_work_rate(params, state.time, state.burst_steps_left > 0))
    before = None
    if params.decisions == "in_turn":  # a job's change starts from the queues it saw: the earlier jobs' work
        before = earlier_work(server, jobs.size, jobs.valid, jobs.candidates)
    return guidance.candidate_guidance(potential, agg, jobs.size, jobs.candidates, server, jobs.valid, exact=exact,
                                       before=before)


def best_fit_metrics(params: CloudParams, episode_key: jax.Array):
    """Best-Fit's metrics on one episode: the reference of the ratio."""
    _, records = scan_episode(reset, step, _record, baselines.BASELINES["best_fit"], params, episode_key)
    return summarise(records, params)


def _record(state, actions, reward, info):
    return make_record(state, reward, info)


def potentials(decisions: str) -> dict:
    """The named potentials, the default first: `light_congestion` for in-turn decisions
    (the measured best there), `area` otherwise."""
    first = "light_congestion" if decisions == "in_turn" else "area"
    return {first: guidance.POTENTIALS[first], **guidance.POTENTIALS}


def make_task(config: CloudConfig) -> Task:
    """The cloud-scheduling Task of a validated `config`."""
    params = make_params(config)
    return Task(
        name="cloud-scheduling", params=params, reset=reset, step=step, observe=job_observation,
        valid=lambda state: state.jobs.valid, agent=lambda state: state.jobs.agent, to_actions=to_servers, critic_inputs=server_observation,
        clock=lambda state, params: day_left(params, state.time), guidance=step_guidance,
        potentials=potentials(config.decisions), record=_record, summarise=summarise, pool=pool,
        reference=best_fit_metrics, reference_name="best_fit", cost_key="mean_response_time",
        baselines=baselines.BASELINES, sizes={"num_servers": params.num_servers}, traced_load="utilisation",
        decide=DECIDE.get(config.decisions), peak_rate=config.peak_arrival_probability)
