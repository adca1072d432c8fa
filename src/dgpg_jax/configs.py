"""A TrainConfig as JSON (config.json, sweep.json): its fields, with the task named as
the registry names it, and back; and the flat `env.num_agents` names that resumes and
sweeps compare field by field."""

import dataclasses

from dgpg_jax import registry
from dgpg_jax.train import TrainConfig


def config_to_dict(config: TrainConfig, seed: int, num_seeds: int) -> dict:
    """config.json of a run: its task's name, the TrainConfig's fields, seed and seeds."""
    if callable(config.potential):
        raise ValueError("potential is a function: only runs with a named potential can be saved")
    return {"task": registry.task_name(config.env), "config": dataclasses.asdict(config), "seed": seed,
            "seeds": num_seeds}


def env_from_fields(env_class: type, fields: dict):
    """A task config from its JSON fields: lists become tuples, and a field renamed since
    the file was written (the class's `renamed_fields`, old name -> new) takes its new name."""
    renamed = getattr(env_class, "renamed_fields", {})
    return env_class(**{renamed.get(k, k): tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def config_from_dict(data: dict) -> tuple[TrainConfig, int, int]:
    """The inverse of `config_to_dict`; ValueError (naming what is wrong) for anything else."""
    try:
        fields = dict(data["config"])
        fields["env"] = env_from_fields(registry.config_class(data.get("task", registry.DEFAULT_TASK)), fields["env"])
        fields["hidden"] = tuple(fields["hidden"])
        return TrainConfig(**fields), int(data["seed"]), int(data["seeds"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"config.json does not describe a dgpg run ({type(error).__name__}: {error}): "
                         "allowed a file written by `dgpg train`") from None


def flatten(fields: dict, prefix: str = "") -> dict:
    """{"env": {"num_agents": 5}} -> {"env.num_agents": 5}."""
    out = {}
    for key, value in fields.items():
        out.update(flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out
