"""Tasks by name: the command line (`--task`) and saved runs (config.json, sweep.json)
name a system's config class here, and nothing else in the core imports a system.

A name is a registered one (`cloud-scheduling`, `ev-charging`, or one added with
`register`) or `module:attribute`, the config class of a user's own task
(`examples.traffic:TrafficConfig`), imported when first named. A config class is a frozen
dataclass with `validate()` (ValueError for a bad setting) and `make_task()` (a
`dgpg_jax.task.Task`), and `num_agents` and `horizon` fields or properties. Optional
class attributes: `view` (a `dgpg_jax.view.View`, how the CLI shows its results),
`presets` (named settings: {name: (config fields, TrainConfig fields)}),
`potential_names` (the names `--potential` accepts) and `renamed_fields` (old -> new
field names, for runs saved before a rename); `view` and `potential_names` may be
"module:attribute" strings, imported when used.
"""

import importlib
import sys

TASKS = {"cloud-scheduling": "dgpg_jax.tasks.cloud:CloudConfig", "ev-charging": "dgpg_jax.tasks.ev:EVConfig"}
DEFAULT_TASK = "cloud-scheduling"


def register(name: str, target: str) -> None:
    """Name the config class `target` ("module:attribute") `name` for `--task` and saved runs."""
    if ":" not in target:
        raise ValueError(f"target={target!r} is invalid: allowed 'module:attribute'")
    TASKS[name] = target


def config_class(name: str) -> type:
    """The config class of task `name` (registered, or `module:attribute`), checked."""
    target = TASKS.get(name, name)
    module_name, colon, attribute = target.partition(":")
    if not colon or not module_name or not attribute:
        raise ValueError(f"task={name!r} is invalid: allowed one of {tuple(TASKS)} or 'module:attribute' naming a "
                         "task's config class")
    try:
        cls = getattr(importlib.import_module(module_name), attribute)
    except ImportError as error:
        raise ValueError(f"task={name!r} is invalid: module {module_name!r} cannot be imported ({error}); allowed "
                         f"one of {tuple(TASKS)} or an importable 'module:attribute'") from None
    except AttributeError:
        raise ValueError(f"task={name!r} is invalid: module {module_name!r} has no {attribute!r}; allowed one of "
                         f"{tuple(TASKS)} or 'module:attribute' naming a config class") from None
    if not (isinstance(cls, type) and callable(getattr(cls, "make_task", None))
            and callable(getattr(cls, "validate", None))):
        raise ValueError(f"task={name!r} is invalid: {target} is not a task's config class; allowed a dataclass with "
                         "validate() and make_task() (docs/task.md)")
    return cls


def task_name(env_config) -> str:
    """The name that finds `env_config`'s class again: its registered name, else
    `module:qualname`."""
    cls = type(env_config)
    for name, target in TASKS.items():  # a module not imported yet cannot hold the class
        if target.partition(":")[0] in sys.modules and config_class(name) is cls:
            return name
    return f"{cls.__module__}:{cls.__qualname__}"


def default_config():
    """The default task's default config (cloud scheduling)."""
    return config_class(DEFAULT_TASK)()


def resolve(value):
    """`value`, or the object it names when it is a "module:attribute" string (a config
    class names its view and potentials so, to import them only when used)."""
    if not isinstance(value, str):
        return value
    module, _, attribute = value.partition(":")
    return getattr(importlib.import_module(module), attribute)


def potential_names(cls: type) -> tuple[str, ...] | None:
    """The potentials a task's config class names (`potential_names`), None when it does
    not say."""
    names = resolve(getattr(cls, "potential_names", None))
    return None if names is None else tuple(names)


def presets(cls: type) -> dict:
    """A config class's named settings, with `default` (no change) first."""
    return {"default": ({}, {}), **getattr(cls, "presets", {})}
