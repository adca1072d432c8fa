"""Descent-Guided Policy Gradient (DG-PG) for cooperative multi-agent systems, in JAX.

The public interface: a system is a `Task` (checked by `check_task`); `TrainConfig` and
`make_train` give a whole training run as one pure function of a key;
`evaluate_policies` and `scan_episode` roll out policies on common random numbers; `leave_one_out` is the
guidance of a potential of per-entity aggregates. docs/task.md has the contracts.
"""

from dgpg_jax.evaluate import evaluate_policies, scan_episode, seed_keys
from dgpg_jax.guidance import leave_one_out
from dgpg_jax.task import EpisodeCost, Task, check_task
from dgpg_jax.train import Hyper, TrainConfig, learned_policy, make_train

__all__ = ["Task", "check_task", "EpisodeCost", "TrainConfig", "Hyper", "make_train", "learned_policy",
           "evaluate_policies", "scan_episode", "seed_keys", "leave_one_out"]
