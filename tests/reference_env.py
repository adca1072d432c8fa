"""An independent plain-Python reference for one step of the environment's queues.

Written from the rules in docs/environment.md, job by job in row (agent) order, with
Python floats (double precision) and lists: no JAX, no prefix sums, no sorting. Used as
the oracle for `dgpg_jax.tasks.cloud.step` in tests/test_env.py.

Rules of one step:
- Job i (size w_i) goes to server s_i. Each server keeps `ahead_s`, the work sent to it
  earlier in this step, accepted or not (tail drop: once a job is rejected, the jobs after
  it at that server count its work too, so they are rejected as well).
- Buffer test: W_s + ahead_s + w_i <= buffer_time * mu_s * mean_job_steps.
- Accepted: response time (W_s + ahead_s + w_i) / mu_s steps. Rejected: the penalty
  rejection_penalty * mean_job_steps steps. Arrivals beyond the slots count as rejected.
- Service (Lindley): W_s' = max(0, W_s + accepted work_s - mu_s); served = the rest.
- Memoryless: the backlog left after service is dropped.
- Reward: -(sum of response times, overflow at the penalty) / mean_job_steps / N.
"""

from __future__ import annotations

import dataclasses

BOUNDARY_RTOL = 1e-5
"""A job whose buffer test is this close (relative) to equality, or `boundary_atol` close,
is `ambiguous`: float32 rounding in the library may decide it either way."""


@dataclasses.dataclass
class ReferenceStep:
    response_time: list[float]  # per row, steps; 0 for empty rows
    accepted: list[bool]
    rejected: list[bool]
    backlog_after: list[float]  # per server, after service, before the memoryless drop
    next_backlog: list[float]  # per server, what the next step starts from (no horizon reset)
    served_work: float
    reward: float
    response_time_sum: float
    ambiguous: bool  # some buffer test was within BOUNDARY_RTOL of equality


def reference_step(backlog, capacity, mean_job_steps, buffer_time, rejection_penalty, num_agents,
                   memoryless, sizes, valid, servers, num_overflow, boundary_atol=0.0) -> ReferenceStep:
    """One step of dispatch and service. `backlog`, `capacity`: per server; `sizes`,
    `valid`, `servers`: per slot in agent order; plain numbers or anything iterable.
    `boundary_atol`: absolute work margin of the `ambiguous` flag."""
    backlog = [float(b) for b in backlog]
    scale = float(mean_job_steps)
    mu = [float(c) / scale for c in capacity]
    buffer_work = [float(buffer_time) * m * scale for m in mu]
    penalty = float(rejection_penalty) * scale
    num_servers = len(backlog)

    ahead = [0.0] * num_servers
    arriving = [0.0] * num_servers
    response_time, accepted, rejected = [], [], []
    ambiguous = False
    for size, is_valid, server in zip(sizes, valid, servers):
        size, server = float(size), int(server)
        if not is_valid:
            response_time.append(0.0)
            accepted.append(False)
            rejected.append(False)
            continue
        finish_work = backlog[server] + ahead[server] + size
        limit = buffer_work[server]
        ambiguous |= abs(finish_work - limit) <= BOUNDARY_RTOL * max(limit, finish_work) + boundary_atol
        fits = finish_work <= limit
        accepted.append(fits)
        rejected.append(not fits)
        if fits:
            response_time.append(finish_work / mu[server])
            arriving[server] += size
        else:
            response_time.append(penalty)
        ahead[server] += size  # rejected work still counts as ahead (tail drop)

    backlog_after, served = [], 0.0
    for w, a, m in zip(backlog, arriving, mu):
        left = max(0.0, w + a - m)
        served += w + a - left
        backlog_after.append(left)
    next_backlog = [0.0] * num_servers if memoryless else list(backlog_after)
    response_sum = sum(response_time) + int(num_overflow) * penalty
    return ReferenceStep(response_time=response_time, accepted=accepted, rejected=rejected,
                         backlog_after=backlog_after, next_backlog=next_backlog, served_work=served,
                         reward=-response_sum / scale / int(num_agents), response_time_sum=response_sum,
                         ambiguous=ambiguous)
