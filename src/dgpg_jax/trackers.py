"""Per-episode metrics sent to the experiment trackers JAX-RL users read: TensorBoard event
files (through tensorboardX) and Weights & Biases in offline mode, each an optional extra.

The arrays come from `runlog.log_columns` on the host, after a jitted call returns; nothing
is sent from inside a traced program. Every run (one seed, or one seed of a sweep point)
is its own tracker run, its steps the 1-based episode numbers, so TensorBoard overlays
seeds. The backends are imported only when a tracker is opened.
"""

import importlib.util
import math
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from dgpg_jax.validation import check_choice, check_integer

TRACKERS = ("none", "tensorboard", "wandb")
_BACKENDS = {"tensorboard": "tensorboardX", "wandb": "wandb"}  # tracker -> module; the pip extra is the tracker
WANDB_PROJECT = "dgpg-jax"


def check_tracker(name: str) -> None:
    """Raise ValueError unless `name` is one of TRACKERS and its backend is installed.

    Looks the package up without importing it, so it is cheap enough to call before
    anything is compiled."""
    check_choice("log", name, TRACKERS)
    module = _BACKENDS.get(name)
    if module is not None and not _importable(module):
        raise ValueError(f"log={name!r} needs the {module} package, which is not installed: "
                         f"pip install -e '.[{name}]'")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # already in sys.modules without a spec (a module made at run time)
        return sys.modules.get(module) is not None


class Tracker:
    """One tracker run. This base logs nothing: it is the tracker of `--log none`."""

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        """Record `scalars` (tag -> value) at `step`; non-finite values are left out."""

    def close(self) -> None:
        """Write out what is buffered and end the run."""

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _finite(scalars: dict[str, float]) -> dict[str, float]:
    return {tag: float(value) for tag, value in scalars.items() if math.isfinite(value)}


class TensorBoardTracker(Tracker):
    """Scalars in a TensorBoard event file under `run_dir`, flushed after every step.

    Every tracker opened on a directory writes a new event file (TensorBoard reads them
    all); the name ends with the time in nanoseconds, so two opened within a second, which
    tensorboardX would give the same name, neither collide nor sort out of order."""

    def __init__(self, run_dir: Path):
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(logdir=str(run_dir), filename_suffix=f".{time.time_ns()}.{os.getpid()}")

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        for tag, value in _finite(scalars).items():
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker(Tracker):
    """An offline W&B run under `log_dir`/wandb, grouped by the part of `run_name` before
    its last "/" (the sweep point), else by `log_dir`'s name (the training run).

    Several runs may be open at once (`reinit="create_new"`, wandb >= 0.19.10). Offline
    runs cannot be resumed (wandb ignores `resume` offline), so every tracker opened is a
    new W&B run: hold one open for the whole process rather than one per call."""

    def __init__(self, log_dir: Path, run_name: str, config: dict):
        import wandb

        Path(log_dir).mkdir(parents=True, exist_ok=True)
        group = run_name.rpartition("/")[0] or Path(log_dir).resolve().name
        self.run = wandb.init(mode="offline", dir=str(log_dir), project=WANDB_PROJECT, name=run_name, group=group,
                              config=config, reinit="create_new", settings=wandb.Settings(console="off"))

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        finite = _finite(scalars)
        if finite:
            self.run.log(finite, step=step)

    def close(self) -> None:
        self.run.finish()


def open_tracker(name: str, log_dir: Path, run_name: str, config: dict) -> Tracker:
    """The tracker `name` for run `run_name` ("seed_3", "dgpg-n200-alpha0.4/seed_3"):
    TensorBoard writes to log_dir/run_name, W&B to log_dir/wandb with `config` attached
    (TensorBoard leaves `config` to the run's config.json)."""
    check_tracker(name)
    if name == "tensorboard":
        return TensorBoardTracker(Path(log_dir) / run_name)
    if name == "wandb":
        return WandbTracker(Path(log_dir), run_name, config)
    return Tracker()


def open_trackers(name: str, log_dir: Path, runs: Sequence[tuple[str, dict]]) -> list[Tracker]:
    """One tracker per (run_name, config) of `runs`; closes those opened if one fails."""
    trackers: list[Tracker] = []
    try:
        for run_name, config in runs:
            trackers.append(open_tracker(name, log_dir, run_name, config))
    except BaseException:
        close_trackers(trackers)
        raise
    return trackers


def close_trackers(trackers: Sequence[Tracker]) -> None:
    for tracker in trackers:
        tracker.close()


def tag(column: str, reference: str = "best_fit") -> str:
    """Tracker tag of a `runlog.log_columns` name: the reference's columns under
    "<reference>/" ("best_fit/", "valley/"), the learner's metrics and quantities under
    "train/"."""
    if column.startswith(f"{reference}_"):
        return f"{reference}/" + column.removeprefix(f"{reference}_")
    return "train/" + column


def _scalar_columns(columns: dict[str, np.ndarray], num_runs: int, first_episode: int) -> dict[str, np.ndarray]:
    """The [S, E] columns of `columns` as float64, checked against `num_runs` runs."""
    check_integer("first_episode", first_episode, minimum=0)
    scalar = {name: np.asarray(value, np.float64) for name, value in columns.items() if np.ndim(value) == 2}
    shapes = sorted({value.shape for value in scalar.values()})
    if len(shapes) > 1:
        raise ValueError(f"columns={shapes} is invalid: allowed one shape [runs, episodes] for every column")
    if shapes and shapes[0][0] != num_runs:
        raise ValueError(f"columns of {shapes[0][0]} runs are invalid for {num_runs} named runs: allowed one name "
                         "per run")
    return scalar


def write_episodes(trackers: Sequence[Tracker], columns: dict[str, np.ndarray], first_episode: int,
                   reference: str = "best_fit") -> None:
    """Log episodes first_episode + 1, first_episode + 2, ... of run s to `trackers[s]`.

    `columns` is `runlog.log_columns(logs, task)`: arrays [S, E] per name for the S runs
    and E episodes; columns with more axes (histograms [S, E, NUM_BINS]) are left out, and
    so are NaN and infinite values. `reference` is the task's `reference_name` (`tag`)."""
    scalar = _scalar_columns(columns, len(trackers), first_episode)
    num_episodes = next(iter(scalar.values())).shape[1] if scalar else 0
    for s, tracker in enumerate(trackers):
        for e in range(num_episodes):
            tracker.log_scalars(first_episode + e + 1,
                                {tag(name, reference): value[s, e] for name, value in scalar.items()})


def log_episodes(tracker_name: str, log_dir: Path, columns: dict[str, np.ndarray], first_episode: int,
                 runs: Sequence[tuple[str, dict]], reference: str = "best_fit") -> None:
    """Open a tracker per run of `runs` (`(run_name, config)` of run s), log its episodes
    first_episode + 1, ... from `columns` (see `write_episodes`), and close them.

    Safe to call again as episodes arrive, with later `first_episode`: TensorBoard adds an
    event file per call and shows the steps in order. A call that repeats steps already
    written (a resume from a checkpoint older than the last log, after a crash) leaves
    TensorBoard two points at those steps. For W&B every call is a new offline run, so a
    training loop should `open_trackers` once, `write_episodes` after each call, and
    `close_trackers` at the end; this function suits a sweep's finished chunks."""
    check_tracker(tracker_name)
    _scalar_columns(columns, len(runs), first_episode)  # refuse bad input before a run is opened
    if tracker_name == "none":
        return
    trackers = open_trackers(tracker_name, log_dir, runs)
    try:
        write_episodes(trackers, columns, first_episode, reference)
    finally:
        close_trackers(trackers)
