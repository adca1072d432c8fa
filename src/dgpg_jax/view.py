"""How the command line shows a task's results: table columns, units, the baselines drawn
in learning-curve plots. A task's config class may name its own (`view`, a View or a
"module:attribute" string); `view_of` gives every other task a view of its cost."""

from __future__ import annotations

import dataclasses
from typing import Callable

from dgpg_jax import registry


@dataclasses.dataclass(frozen=True)
class View:
    """Table columns are (key, header, format) triples."""

    eval_columns: list
    summary_columns: list
    """Of a training run's summary (train) and of compare's rows."""
    sweep_columns: list
    """Of a sweep configuration's pooled final metrics."""
    units: str
    plotted: tuple
    """Baselines drawn as levels in the learning-curve plots."""
    ylabel: str
    reference: str
    """The reference as the progress bar and tables name it."""
    make_policy: Callable | None = None
    """`make_policy(name, beta) -> act`: a baseline with the `--beta` setting (None: the
    task's baselines as they are, and `--beta` is refused)."""
    beta_policies: tuple = ()
    """The baselines that `--beta` sets."""


RUN_COLUMNS = [("episodes_to_converge", "episodes to converge", ".1f"), ("wall_seconds", "wall s", ".1f"),
               ("compile_seconds", "compile s", ".1f")]


def default_view(task) -> View:
    """Columns of the task's cost and its ratio to the reference."""
    cost, ratio = task.cost_key, task.ratio_key
    return View(eval_columns=[("policy", "policy", ""), (cost, cost, ".4g"), (ratio, f"/ {task.reference_name}", ".3f")],
                summary_columns=[(cost, cost, ".4g"), (ratio, f"/ {task.reference_name}", ".3f")],
                sweep_columns=[(f"final_{cost}", cost, ".4g")], units=f"{cost}: mean over seeds and episodes",
                plotted=tuple(task.baselines), ylabel=f"{cost} / {task.reference_name}", reference=task.reference_name)


def view_of(env_config, task) -> View:
    """The view that `env_config`'s class names, else `default_view(task)`."""
    view = registry.resolve(getattr(type(env_config), "view", None))
    return view if view is not None else default_view(task)
