"""Cloud-scheduling environment: N dispatcher agents route jobs to M heterogeneous servers."""

from dgpg_jax.tasks.cloud.arrivals import expected_work_rate, sample_jobs
from dgpg_jax.tasks.cloud.core import reset, step
from dgpg_jax.tasks.cloud.dynamics import dispatch, serve
from dgpg_jax.tasks.cloud.fleet import FLEETS, SERVER_CATALOG, fleet_capacity
from dgpg_jax.tasks.cloud.observation import (NUM_GLOBAL_FEATURES, NUM_JOB_FEATURES, NUM_SERVER_FEATURES, day_left,
                                      job_observation, server_observation)
from dgpg_jax.tasks.cloud.types import CloudConfig, CloudParams, CloudState, Jobs, make_params, service_rate

__all__ = [
    "CloudConfig", "CloudParams", "CloudState", "Jobs", "make_params", "reset", "step", "service_rate",
    "job_observation", "server_observation", "day_left", "expected_work_rate", "sample_jobs", "dispatch", "serve",
    "FLEETS", "SERVER_CATALOG", "fleet_capacity", "NUM_JOB_FEATURES", "NUM_SERVER_FEATURES", "NUM_GLOBAL_FEATURES",
]
