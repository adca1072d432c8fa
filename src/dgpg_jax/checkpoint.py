"""Saving and resuming runs: config.json beside an orbax checkpoint of the runner state.

A run directory holds config.json (the TrainConfig plus seed and seeds), metrics.jsonl
(one line per seed and episode) and checkpoint/ (the [seeds]-batched RunnerState).
"""

import dataclasses
import json
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from dgpg_jax.env import EnvConfig
from dgpg_jax.train import RunnerState, TrainConfig

RESUMABLE_DIFFERENCES = ("num_episodes",)


def config_to_dict(config: TrainConfig, seed: int, num_seeds: int) -> dict:
    if callable(config.potential):
        raise ValueError("potential is a function: only runs with a named potential can be saved")
    return {"config": dataclasses.asdict(config), "seed": seed, "seeds": num_seeds}


def config_from_dict(data: dict) -> tuple[TrainConfig, int, int]:
    fields = dict(data["config"])
    fields["env"] = EnvConfig(**fields["env"])
    fields["hidden"] = tuple(fields["hidden"])
    return TrainConfig(**fields), int(data["seed"]), int(data["seeds"])


def save_config(run_dir: Path, config: TrainConfig, seed: int, num_seeds: int) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config_to_dict(config, seed, num_seeds), indent=2) + "\n")


def load_config(run_dir: Path) -> tuple[TrainConfig, int, int]:
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise ValueError(f"resume directory {str(run_dir)!r} has no config.json: allowed a directory written by `dgpg train`")
    return config_from_dict(json.loads(path.read_text()))


def check_resumable(saved: tuple[TrainConfig, int, int], wanted: tuple[TrainConfig, int, int]) -> None:
    """Raise ValueError unless `wanted` continues `saved` (only num_episodes may grow)."""
    (saved_config, saved_seed, saved_seeds), (config, seed, seeds) = saved, wanted
    if (saved_seed, saved_seeds) != (seed, seeds):
        raise ValueError(f"resume: the checkpoint has seed={saved_seed}, seeds={saved_seeds}; "
                         f"this run asks for seed={seed}, seeds={seeds}: allowed the same seed and seeds")
    old, new = _flatten(dataclasses.asdict(saved_config)), _flatten(dataclasses.asdict(config))
    differing = [k for k in new if k not in RESUMABLE_DIFFERENCES and new[k] != old.get(k)]
    if differing:
        name = differing[0]
        raise ValueError(f"resume: {name}={new[name]!r} differs from the checkpoint's {old[name]!r}: "
                         f"allowed only a change of {', '.join(RESUMABLE_DIFFERENCES)}")


def _flatten(fields: dict, prefix: str = "") -> dict:
    """{"env": {"num_agents": 5}} -> {"env.num_agents": 5}."""
    out = {}
    for key, value in fields.items():
        out.update(_flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def save_runner(run_dir: Path, runner: RunnerState) -> None:
    """Write the runner state to run_dir/checkpoint (absolute path, overwritten, waited for)."""
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save((Path(run_dir) / "checkpoint").resolve(), runner, force=True)
    checkpointer.wait_until_finished()


def load_runner(run_dir: Path, like: RunnerState) -> RunnerState:
    """Restore the runner state saved in run_dir, with the structure and shapes of `like`."""
    path = (Path(run_dir) / "checkpoint").resolve()
    if not path.exists():
        raise ValueError(f"resume directory {str(run_dir)!r} has no checkpoint/: allowed a directory written by `dgpg train`")
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    return ocp.StandardCheckpointer().restore(path, target)
