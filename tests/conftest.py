"""Shared fixtures: a tiny hand-built fleet (2 agents, 3 servers) and hypothesis profiles.

The tiny fleet (`tiny_params`), with the numbers the hand-worked tests use:

    num_agents N = 2, servers_per_agent 1.5  ->  M = ceil(1.5 * 2) = 3 servers
    num_candidates 3 >= M                    ->  every job sees all 3 servers (k = 3)
    num_rows J = min(N, ...) = 2            ->  one row per agent
    mean_job_steps 2                         ->  time unit: 2 steps per mean job
    capacity (hand-set)        = [0.5,  1.0,  1.5 ]   (mean 1, sum 3)
    service rate mu = cap / 2  = [0.25, 0.5,  0.75]   work per step
    buffer_time 2 -> buffer work = 2 * mu * 2 = [1.0, 2.0, 3.0]
    rejection_penalty 5 -> penalty = 5 * 2 = 10 steps
    reward = -(sum of response times in steps) / 2 (mean_job_steps) / 2 (N)

All the values above are dyadic, so float32 holds them exactly and the hand-worked
results are exact.

Hypothesis: `fast` (default) runs few, derandomised examples so the suite stays quick;
`HYPOTHESIS_PROFILE=thorough` runs many more (tests that want more than the profile's
count scale it with `settings.default.max_examples`).
"""

import os

os.environ.setdefault("DGPG_COMPILATION_CACHE", "off")  # tests compile for themselves (see test_cli)

import jax.numpy as jnp  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from dgpg_jax.tasks import cloud as env  # noqa: E402

settings.register_profile("fast", max_examples=8, deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("thorough", max_examples=100, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))

class Fault(Exception):
    """Stands for a kill or a crash at the point where a patched function raises it."""


def one_line(capsys) -> str:
    """The single line a refused command wrote to stderr (no traceback)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def at_once(**fields) -> env.CloudConfig:
    """A CloudConfig whose jobs decide simultaneously (the tests of that mode and of the
    learner's machinery, written and stored before in-turn decisions became the default)."""
    return env.CloudConfig(decisions="simultaneous", **fields)


TINY_CONFIG = env.CloudConfig(num_agents=2, servers_per_agent=1.5, num_candidates=3, mean_job_steps=2.0,
                            buffer_time=2.0, rejection_penalty=5.0)
TINY_CAPACITY = (0.5, 1.0, 1.5)


def make_tiny_params(**overrides) -> env.CloudParams:
    """The tiny fleet of the table above; `overrides` change CloudConfig fields."""
    config = TINY_CONFIG if not overrides else env.CloudConfig(**{**TINY_CONFIG.__dict__, **overrides})
    return env.make_params(config).replace(capacity=jnp.array(TINY_CAPACITY, jnp.float32))


@pytest.fixture(scope="session")
def tiny_params() -> env.CloudParams:
    return make_tiny_params()


@pytest.fixture(scope="session")
def tiny_memoryless_params() -> env.CloudParams:
    return make_tiny_params(memoryless=True)
