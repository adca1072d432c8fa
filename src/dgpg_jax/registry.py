"""The systems that ship with dgpg_jax, by name: the config class of each Task.

The command line (`--task`) and saved runs (config.json) name a task through this
table; the learner itself only sees the `Task` a config builds (`config.make_task()`).
"""

from dgpg_jax.tasks.cloud import EnvConfig, guidance
from dgpg_jax.tasks.ev import EVConfig
from dgpg_jax.tasks.ev import guidance as ev_guidance

TASKS = {"cloud-scheduling": EnvConfig, "ev-charging": EVConfig}
DEFAULT_TASK = "cloud-scheduling"
POTENTIAL_NAMES = {"cloud-scheduling": tuple(guidance.POTENTIALS), "ev-charging": tuple(ev_guidance.POTENTIALS)}
"""Each task's named potentials (known without building a Task, which would start JAX);
the first is EV charging's default, cloud scheduling's depends on the decisions
(`env.task.potentials`)."""


def config_class(name: str) -> type:
    """The config class of task `name`, checked."""
    if name not in TASKS:
        raise ValueError(f"task={name!r} is invalid: allowed one of {tuple(TASKS)}")
    return TASKS[name]


def task_name(env_config) -> str:
    """The name of the task whose config `env_config` is."""
    for name, cls in TASKS.items():
        if type(env_config) is cls:
            return name
    raise ValueError(f"env={type(env_config).__name__} is not a built-in task's config: allowed one of "
                     f"{tuple(cls.__name__ for cls in TASKS.values())} (a user's own task runs through the "
                     "Python API, not saved runs)")
