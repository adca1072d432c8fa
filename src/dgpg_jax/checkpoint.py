"""Saving and resuming runs: config.json beside orbax checkpoints of the runner state.

A run directory holds config.json (the TrainConfig plus seed and seeds), metrics.jsonl
(one line per seed and episode) and checkpoint/episode_<E>/ (the [seeds]-batched
RunnerState after E episodes). After each call of episodes the metrics are replaced
first, then the new checkpoint is written beside the old one, then the old one is
removed: at every instant a complete checkpoint exists and metrics.jsonl holds at least
its episodes. A resume continues from the newest complete checkpoint and keeps the
metrics of its episodes (the lines after it are written again by the episodes rerun).
"""

import dataclasses
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from dgpg_jax import registry, rundir
from dgpg_jax.configs import config_from_dict, config_to_dict, flatten
from dgpg_jax.evaluate import seed_keys
from dgpg_jax.networks import Actor
from dgpg_jax.train import RunnerState, TrainConfig, default_hyper, init_runner, make_learner

RESUMABLE_DIFFERENCES = ("num_episodes",)


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
    old, new = flatten(dataclasses.asdict(saved_config)), flatten(dataclasses.asdict(config))
    differing = [k for k in new if k not in RESUMABLE_DIFFERENCES and new[k] != old.get(k)]
    if differing:
        name = differing[0]
        raise ValueError(f"resume: {name}={new[name]!r} differs from the checkpoint's {old[name]!r}: "
                         f"allowed only a change of {', '.join(RESUMABLE_DIFFERENCES)}")


def resume_point(run_dir: Path, wanted: tuple[TrainConfig, int, int]) -> int:
    """The episodes done by the newest complete checkpoint of the run in `run_dir`, which
    `wanted` (config, seed, seeds) must continue; 0 for a run killed before its first
    checkpoint that logged nothing. Raises ValueError for a run that cannot be continued:
    another config, metrics without a checkpoint (a resume would start again from episode
    0 over them), or more episodes done than asked for."""
    check_resumable(load_config(run_dir), wanted)
    found = checkpoints(run_dir)
    metrics = Path(run_dir) / "metrics.jsonl"
    if not found:
        logged = metrics.is_file() and any(line.strip() for line in metrics.read_text().splitlines())
        if logged:
            raise ValueError(f"resume: {str(run_dir)!r} has metrics but no complete checkpoint, so it would start "
                             f"again from episode 0 over them: allowed --overwrite (without --resume) to start it "
                             "again, or another directory")
        return 0
    if not metrics.is_file():
        raise ValueError(f"resume directory {str(run_dir)!r} has no metrics.jsonl: allowed a directory written by "
                         "`dgpg train`")
    done = found[-1][0]
    if done > wanted[0].num_episodes:
        raise ValueError(f"num_episodes={wanted[0].num_episodes} is invalid for this resume: the run in "
                         f"{str(run_dir)!r} has done {done}; allowed at least {done}")
    return done


CHECKPOINTS = "checkpoint"
MANIFEST = "dgpg_manifest.json"
"""Written last into a checkpoint directory: the SHA-256 of each of its files."""
_STEP = re.compile(r"^episode_(\d+)$")


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """The complete checkpoints of a run, (episodes done, directory), oldest first: the
    directories checkpoint/episode_<E> that orbax has finalised (it writes a temporary
    directory and renames it when every file is written) and that hold their manifest
    (written after orbax is done)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(match[1]), path) for path in root.iterdir() if (match := _STEP.match(path.name))]
    return sorted((episode, path) for episode, path in found
                  if (path / MANIFEST).is_file() and ocp.utils.is_checkpoint_finalized(path))


def _digests(path: Path) -> dict[str, str]:
    return {str(file.relative_to(path)): hashlib.sha256(file.read_bytes()).hexdigest()
            for file in sorted(path.rglob("*")) if file.is_file() and file.name != MANIFEST}


def check_writable(run_dir: Path) -> None:
    """Create and remove a file in run_dir/checkpoint (run_dir before the first checkpoint):
    OSError naming the directory when it cannot be written (read-only, no permission), before orbax starts threads that would
    report the same fault at length."""
    root = Path(run_dir) / CHECKPOINTS
    where = root if root.is_dir() else Path(run_dir)
    probe = where / f".write-test.{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise OSError(error.errno, error.strerror, str(where.resolve())) from None


def save_runner(run_dir: Path, runner: RunnerState, episodes: int) -> None:
    """Write the runner state after `episodes` episodes as checkpoint/episode_<episodes>
    (orbax's files, then the manifest of their checksums), then remove the older
    checkpoints: at every instant a complete checkpoint exists. A failed write leaves the
    previous checkpoint and no temporary files, and raises OSError naming the path and
    the cause."""
    root = Path(run_dir) / CHECKPOINTS
    try:
        root.mkdir(exist_ok=True)
    except OSError as error:
        raise rundir.as_os_error(error, root.resolve()) from None
    check_writable(run_dir)
    remove_temporary(run_dir)  # a killed write's leftovers, this episode's among them
    path = root.resolve() / f"episode_{episodes}"
    try:
        with rundir.quiet_absl(), ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(path, runner)
            checkpointer.wait_until_finished()
        rundir.write_atomic(path / MANIFEST, json.dumps(_digests(path), indent=1) + "\n")
    except Exception as error:  # orbax and tensorstore raise several types for one disk fault
        remove_temporary(run_dir)
        raise rundir.as_os_error(error, path) from None
    _remove_older(run_dir, episodes)


def _remove_older(run_dir: Path, episodes: int) -> None:
    for done, path in checkpoints(run_dir):
        if done < episodes:
            shutil.rmtree(path)


def remove_temporary(run_dir: Path) -> None:
    """Remove what a write killed or failed midway left in checkpoint/: orbax's temporary
    directories and checkpoints without their manifest (never a complete checkpoint)."""
    root = Path(run_dir) / CHECKPOINTS
    complete = {path for _, path in checkpoints(run_dir)}
    for path in root.iterdir() if root.is_dir() else ():
        if path.is_dir() and path not in complete and (ocp.utils.is_tmp_checkpoint(path) or _STEP.match(path.name)):
            shutil.rmtree(path, ignore_errors=True)


def clear_run(run_dir: Path) -> None:
    """Remove the files of a `dgpg train` run in `run_dir` (its checkpoints, metrics,
    summary, plot and tracker logs), for a run that replaces it."""
    for name in (CHECKPOINTS, "logs"):
        if (Path(run_dir) / name).is_dir():
            shutil.rmtree(Path(run_dir) / name)
    for name in ("config.json", "metrics.jsonl", "summary.json", "learning_curve.png"):
        (Path(run_dir) / name).unlink(missing_ok=True)


def load_runner(run_dir: Path, like: RunnerState) -> RunnerState:
    """Restore the newest complete checkpoint of run_dir, with the structure and shapes of
    `like`."""
    found = checkpoints(run_dir)
    if not found:
        raise ValueError(f"run directory {str(run_dir)!r} has no complete checkpoint: "
                         "allowed a directory written by `dgpg train`")
    path = found[-1][1].resolve()
    manifest = json.loads((path / MANIFEST).read_text())
    damaged = sorted(name for name, digest in _digests(path).items() if manifest.get(name) != digest)
    damaged += sorted(set(manifest) - set(_digests(path)))
    if damaged:
        raise ValueError(f"checkpoint {str(path)!r} is damaged ({damaged[0]} does not match its manifest): allowed "
                         "--overwrite to start the run again")
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    try:
        with rundir.quiet_absl(), ocp.StandardCheckpointer() as checkpointer:
            return checkpointer.restore(path, target)
    except Exception as error:  # orbax raises several types, with pages of detail
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"checkpoint {str(path)!r} cannot be read ({first[:200]}): it is damaged, or does not "
                         "match its run's config.json; allowed --overwrite to start the run again") from None


def load_actor(run_dir: Path, task: str | None = None) -> tuple[Actor, dict]:
    """The actor network and seed 0's trained actor parameters of a saved run (they run
    at any size of its task: `train.learned_policy(task, actor, params)`). With `task`,
    a run of another task is refused."""
    config, seed, num_seeds = load_config(run_dir)
    if task is not None and registry.task_name(config.env) != task:
        raise ValueError(f"checkpoint {str(run_dir)!r} holds a {registry.task_name(config.env)} run: allowed a run "
                         f"of the {task} task")
    learner = make_learner(config)
    like = jax.eval_shape(jax.vmap(lambda k: init_runner(learner, k, default_hyper(config))),
                          seed_keys(seed, num_seeds))
    runner = load_runner(run_dir, like)
    return learner.actor, jax.tree.map(lambda x: x[0], runner.params["actor"])
