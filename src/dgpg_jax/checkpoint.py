"""Saving and resuming runs: config.json beside an orbax checkpoint of the runner state.

A run directory holds config.json (the TrainConfig plus seed and seeds), metrics.jsonl
(one line per seed and episode) and checkpoint/ (the [seeds]-batched RunnerState).
"""

import dataclasses
import json
import os
import shutil
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from dgpg_jax import tasks
from dgpg_jax.evaluate import seed_keys
from dgpg_jax.networks import Actor
from dgpg_jax.train import RunnerState, TrainConfig, default_hyper, init_runner, make_learner

RESUMABLE_DIFFERENCES = ("num_episodes",)


def config_to_dict(config: TrainConfig, seed: int, num_seeds: int) -> dict:
    if callable(config.potential):
        raise ValueError("potential is a function: only runs with a named potential can be saved")
    return {"task": tasks.task_name(config.env), "config": dataclasses.asdict(config), "seed": seed,
            "seeds": num_seeds}


def config_from_dict(data: dict) -> tuple[TrainConfig, int, int]:
    """The inverse of `config_to_dict`; ValueError (naming what is wrong) for anything else."""
    try:
        fields = dict(data["config"])
        env_class = tasks.config_class(data.get("task", tasks.DEFAULT_TASK))
        fields["env"] = env_class(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields["env"].items()})
        fields["hidden"] = tuple(fields["hidden"])
        return TrainConfig(**fields), int(data["seed"]), int(data["seeds"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"config.json does not describe a dgpg run ({type(error).__name__}: {error}): "
                         "allowed a file written by `dgpg train`") from None


def prepare_run_dir(run_dir: Path, resume: Path | None = None, overwrite: bool = False) -> Path:
    """Create `run_dir` for a run, or raise ValueError before anything is computed: it must
    be a writable directory, and one that already holds a run is refused unless the run
    continues it (`resume` is that directory) or `overwrite` is given."""
    if not str(run_dir).strip():
        raise ValueError("out='' is invalid: allowed a directory path")
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"out={str(run_dir)!r} is invalid: it is a file; allowed a directory path")
    continues = resume is not None and Path(resume).resolve() == run_dir.resolve()
    if (run_dir / "config.json").exists() and not (continues or overwrite):
        raise ValueError(f"out={str(run_dir)!r} already holds a run: allowed --resume {run_dir} to continue it, "
                         "--overwrite to replace it, or another directory")
    if overwrite and (run_dir / "logs").is_dir():
        shutil.rmtree(run_dir / "logs")  # the replaced run's tracker files
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"out={str(run_dir)!r} is invalid: {error.strerror}; "
                         "allowed a writable directory path") from None
    if not os.access(run_dir, os.W_OK):
        raise ValueError(f"out={str(run_dir)!r} is invalid: not writable; allowed a writable directory path")
    return run_dir


def save_config(run_dir: Path, config: TrainConfig, seed: int, num_seeds: int) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config_to_dict(config, seed, num_seeds), indent=2) + "\n")


def load_config(run_dir: Path) -> tuple[TrainConfig, int, int]:
    """(config, seed, seeds) of the run saved in `run_dir`."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ValueError(f"run directory {str(run_dir)!r} has no config.json: "
                         "allowed a directory written by `dgpg train`")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}): allowed a file written by `dgpg train`") from None
    return config_from_dict(data)


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
        raise ValueError(f"run directory {str(run_dir)!r} has no checkpoint/: "
                         "allowed a directory written by `dgpg train`")
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    try:
        return ocp.StandardCheckpointer().restore(path, target)
    except Exception as error:  # orbax raises several types, with pages of detail
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"the checkpoint in {str(run_dir)!r} does not match its config.json ({first[:200]}): "
                         "allowed a directory written by `dgpg train`") from None


def load_actor(run_dir: Path, task: str | None = None) -> tuple[Actor, dict]:
    """The actor network and seed 0's trained actor parameters of a saved run (they run
    at any size of its task: `train.learned_policy(task, actor, params)`). With `task`,
    a run of another task is refused."""
    config, seed, num_seeds = load_config(run_dir)
    if task is not None and tasks.task_name(config.env) != task:
        raise ValueError(f"checkpoint {str(run_dir)!r} holds a {tasks.task_name(config.env)} run: allowed a run "
                         f"of the {task} task")
    learner = make_learner(config)
    like = jax.eval_shape(jax.vmap(lambda k: init_runner(learner, k, default_hyper(config))),
                          seed_keys(seed, num_seeds))
    runner = load_runner(run_dir, like)
    return learner.actor, jax.tree.map(lambda x: x[0], runner.params["actor"])
