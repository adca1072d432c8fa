"""Pytrees of the cloud-scheduling environment: its configuration, params, state and jobs.

`CloudConfig` is the host-side description a user writes (plain Python numbers, validated
before anything is traced); `make_params` turns it into `CloudParams`, whose array sizes are
static fields and whose numeric settings are pytree leaves, so `jax.vmap` over params works.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import struct

from dgpg_jax.task import decision_rows
from dgpg_jax.tasks.cloud.fleet import FLEETS, fleet_capacity
from dgpg_jax.validation import (MAX_AGENTS, MAX_HORIZON, MAX_SERVERS, check, check_choice, check_episode_rows,
                                 check_integer, check_number)

CANDIDATE_SAMPLING = ("capacity", "uniform")
DECISIONS = ("simultaneous", "in_turn", "tentative")
# Largest response time, in mean job times, that the response-time histogram resolves
# (evaluate.HISTOGRAM_TOP); buffer_time and rejection_penalty bound every response time.
MAX_RESPONSE_TIME = 1e4


@dataclasses.dataclass(frozen=True)
class CloudConfig:
    """Settings of the environment. Times are in units of the mean job's service time
    on an average server (the "mean job time"), so `mean_job_steps` changes only the
    decision granularity."""

    view: ClassVar[str] = "dgpg_jax.tasks.cloud.view:VIEW"
    potential_names: ClassVar[str] = "dgpg_jax.tasks.cloud.guidance:POTENTIALS"
    presets: ClassVar[dict] = {
        # The paper's setting: backlog dropped every step, coarse steps, uniform candidates,
        # jobs deciding at once, the tracking (`split`) potential, which is aligned exactly there.
        "paper": ({"memoryless": True, "mean_job_steps": 0.6, "candidate_sampling": "uniform",
                   "decisions": "simultaneous"}, {"potential": "split"})}

    num_agents: int = 200
    """Dispatcher agents N; each receives at most one job per step."""
    servers_per_agent: float = 0.5
    """Servers per agent; M = ceil(servers_per_agent * N)."""
    num_candidates: int = 8
    """Servers each job may choose among (k); k >= M means all servers."""
    candidate_sampling: str = "capacity"
    """How candidates are drawn, with replacement: in proportion to capacity, or uniformly."""
    fleet: str = "catalog"
    """Server capacities: the AWS-like catalog mix, or homogeneous (all equal, same total)."""
    horizon: int = 1000
    """Steps per episode (one day); the episode ends by truncation."""
    mean_job_steps: float = 10.0
    """Mean job's service time on an average server, in steps (the time scale)."""
    utilisation: float = 0.75
    """Target mean utilisation rho: mean arriving work / total capacity."""
    diurnal_amplitude: float = 0.25
    """Relative amplitude of the daily sine of the arrival rate (low at step 0)."""
    burst_rate: float = 0.0
    """Expected bursts per mean job time (0 turns bursts off)."""
    burst_factor: float = 1.5
    """Arrival-rate multiplier during a burst."""
    burst_duration: float = 20.0
    """Length of a burst, in mean job times."""
    large_fraction: float = 0.1
    """Share of jobs drawn from the heavy (Pareto) mode."""
    small_sigma: float = 0.6
    """Log-standard deviation of the lognormal small jobs (median 1 before scaling)."""
    large_shape: float = 1.5
    """Pareto tail index of the large jobs."""
    large_scale: float = 4.0
    """Pareto minimum of the large jobs, relative to the small-job median."""
    large_clip: float = 12.5
    """Largest large job as a multiple of `large_scale`."""
    buffer_time: float = 100.0
    """Work a server may hold, in mean job times at that server's own speed."""
    rejection_penalty: float = 50.0
    """Response time charged for a rejected job, in mean job times."""
    utilisation_average_time: float = 5.0
    """Time constant of the recent-utilisation feature, in mean job times."""
    memoryless: bool = False
    """Drop all backlog after every step (only the same-step split matters)."""
    decisions: str = "in_turn"
    """How a step's jobs are decided: simultaneous (every job on the step-start queues),
    in_turn (in agent order, each job seeing the work the earlier jobs of its step sent,
    as a dispatcher that receives jobs one by one) or tentative (every job picks once on
    the step-start queues, then again seeing the others' first picks; the second counts).
    The dynamics are the same. In turn is the default: a learned policy beats Best-Fit
    only there (docs/results.md); the paper's rule is simultaneous."""

    def validate(self) -> "CloudConfig":
        """Raise ValueError naming the first invalid field, its value and the allowed range."""
        check_integer("num_agents", self.num_agents, 1, MAX_AGENTS)
        check_number("servers_per_agent", self.servers_per_agent, 0, low_open=True)
        check("servers_per_agent", self.servers_per_agent, self.num_servers <= MAX_SERVERS,
              f"at most {MAX_SERVERS / self.num_agents:g} at num_agents={self.num_agents} "
              f"(M = ceil(servers_per_agent x N) <= {MAX_SERVERS})")
        check_integer("num_candidates", self.num_candidates)
        check_choice("candidate_sampling", self.candidate_sampling, CANDIDATE_SAMPLING)
        check_choice("fleet", self.fleet, FLEETS)
        check_integer("horizon", self.horizon, 1, MAX_HORIZON)
        check_number("mean_job_steps", self.mean_job_steps, 0, low_open=True)
        check_number("utilisation", self.utilisation, 0, 1.5, low_open=True)
        check_number("diurnal_amplitude", self.diurnal_amplitude, 0, 1, high_open=True)
        check_number("burst_rate", self.burst_rate, 0)
        check_number("burst_factor", self.burst_factor, 1)
        check_number("burst_duration", self.burst_duration, 0, low_open=True)
        check_number("large_fraction", self.large_fraction, 0, 1)
        # Sizes are drawn in float32 and divided by their mean. These bounds keep every size
        # a positive normal float32: the smallest likely small job, exp(-6 sigma) >= 1e-13,
        # over the mean, at most exp(sigma^2 / 2) + large_scale * large_clip <= 1e15 + 3e5,
        # stays far above float32's 1e-38.
        check_number("small_sigma", self.small_sigma, 0, 5)
        check_number("large_shape", self.large_shape, 0, low_open=True)
        check_number("large_clip", self.large_clip, 1, 1e15)
        check_number("large_scale", self.large_scale, 0, 1e15 / self.large_clip, low_open=True)
        check_number("buffer_time", self.buffer_time, 0, MAX_RESPONSE_TIME, low_open=True)
        check_number("rejection_penalty", self.rejection_penalty, 0, MAX_RESPONSE_TIME)
        check_number("utilisation_average_time", self.utilisation_average_time, 0, low_open=True)
        check("memoryless", self.memoryless, isinstance(self.memoryless, bool), "True or False")
        check_choice("decisions", self.decisions, DECISIONS)
        peak = self.peak_arrival_probability
        if peak > 1:
            raise ValueError(
                f"peak arrival probability {peak:.3f} > 1: utilisation={self.utilisation}, "
                f"servers_per_agent={self.servers_per_agent}, mean_job_steps={self.mean_job_steps}, "
                f"diurnal_amplitude={self.diurnal_amplitude}, burst_factor={self.burst_factor} give more than one "
                "job per agent per step; raise mean_job_steps or servers_per_agent, or lower the others")
        check_episode_rows(self.horizon, self.num_rows, min(self.num_candidates, self.num_servers))
        return self

    def make_task(self):
        """This system as a `dgpg_jax.task.Task` (validated first)."""
        from dgpg_jax.tasks.cloud.task import make_task

        return make_task(self.validate())

    @property
    def num_servers(self) -> int:
        return max(1, math.ceil(self.servers_per_agent * self.num_agents - 1e-9))

    @property
    def mean_arrival_probability(self) -> float:
        """Per-agent arrival probability p0 (mean over the day, no bursts)."""
        return self.utilisation * self.num_servers / (self.num_agents * self.mean_job_steps)

    @property
    def peak_arrival_probability(self) -> float:
        factor = self.burst_factor if self.burst_rate > 0 else 1.0
        return self.mean_arrival_probability * (1 + self.diurnal_amplitude) * factor

    @property
    def num_rows(self) -> int:
        """Job rows materialised per step: N p + 6 sigma + 4 at the peak rate, at most N."""
        return decision_rows(self.num_agents, self.peak_arrival_probability)



@struct.dataclass
class CloudParams:
    """Everything `reset` and `step` read. Sizes are static; the rest are leaves."""

    num_agents: int = struct.field(pytree_node=False)
    num_servers: int = struct.field(pytree_node=False)
    num_candidates: int = struct.field(pytree_node=False)  # k, at most M
    num_rows: int = struct.field(pytree_node=False)  # J job rows per step
    horizon: int = struct.field(pytree_node=False)
    all_candidates: bool = struct.field(pytree_node=False)  # every job sees all M servers
    capacity_weighted: bool = struct.field(pytree_node=False)
    memoryless: bool = struct.field(pytree_node=False)
    decisions: str = struct.field(pytree_node=False)  # CloudConfig.decisions
    capacity: jax.Array  # (M,) float32, vCPU x speed relative to the fleet mean (mean 1)
    mean_job_steps: jax.Array  # () float32
    utilisation: jax.Array  # () float32
    diurnal_amplitude: jax.Array  # () float32
    burst_rate: jax.Array  # () float32, bursts per mean job time
    burst_factor: jax.Array  # () float32
    burst_duration: jax.Array  # () float32, mean job times
    large_fraction: jax.Array  # () float32
    small_sigma: jax.Array  # () float32
    large_shape: jax.Array  # () float32
    large_scale: jax.Array  # () float32
    large_clip: jax.Array  # () float32
    buffer_time: jax.Array  # () float32, mean job times
    rejection_penalty: jax.Array  # () float32, mean job times
    utilisation_average_time: jax.Array  # () float32, mean job times


@struct.dataclass
class Jobs:
    """The jobs arriving in one step, one row per row, in agent order."""

    size: jax.Array  # (J,) float32, work (mean 1); 0 for an empty row
    candidates: jax.Array  # (J, k) int32, server indices the job may go to
    valid: jax.Array  # (J,) bool, row holds a job
    num_overflow: jax.Array  # () int32, arrivals beyond J, rejected
    agent: jax.Array  # (J,) int32, the agent that received the job; N for an empty row


@struct.dataclass
class CloudState:
    backlog: jax.Array  # (M,) float32, unfinished work at each server
    recent_utilisation: jax.Array  # (M,) float32, moving average of each server's busy fraction
    burst_steps_left: jax.Array  # () int32, steps left in the current burst
    time: jax.Array  # () int32, step index within the day
    jobs: Jobs  # the jobs to dispatch at this step


def make_params(config: CloudConfig = CloudConfig()) -> CloudParams:
    """Validate `config` and build the params pytree."""
    config.validate()
    m = config.num_servers
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    return CloudParams(
        num_agents=config.num_agents,
        num_servers=m,
        num_candidates=min(config.num_candidates, m),
        num_rows=config.num_rows,
        horizon=config.horizon,
        all_candidates=config.num_candidates >= m,
        capacity_weighted=config.candidate_sampling == "capacity",
        memoryless=config.memoryless,
        decisions=config.decisions,
        capacity=fleet_capacity(m, config.fleet),
        mean_job_steps=f32(config.mean_job_steps),
        utilisation=f32(config.utilisation),
        diurnal_amplitude=f32(config.diurnal_amplitude),
        burst_rate=f32(config.burst_rate),
        burst_factor=f32(config.burst_factor),
        burst_duration=f32(config.burst_duration),
        large_fraction=f32(config.large_fraction),
        small_sigma=f32(config.small_sigma),
        large_shape=f32(config.large_shape),
        large_scale=f32(config.large_scale),
        large_clip=f32(config.large_clip),
        buffer_time=f32(config.buffer_time),
        rejection_penalty=f32(config.rejection_penalty),
        utilisation_average_time=f32(config.utilisation_average_time),
    )


def service_rate(params: CloudParams) -> jax.Array:
    """(M,) work each server completes per step; an average server does 1/mean_job_steps."""
    return params.capacity / params.mean_job_steps
