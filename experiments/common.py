"""What the experiment scripts share: the repository root, the cloud settings,
JSON-lines files of rows (appended one row at a time, so that a killed run keeps what it
finished), resumable sweeps and their tables, and figures."""

import json
from pathlib import Path

from dgpg_jax import train
from dgpg_jax.tasks.cloud import CloudConfig

ROOT = Path(__file__).resolve().parent.parent
PAPER = CloudConfig.presets["paper"]
SETTINGS = {
    # jobs deciding at once on the step-start queues, as in the paper (every experiment
    # of the paper's claims runs in this setting or the paper's)
    "queueing": train.TrainConfig(env=CloudConfig(decisions="simultaneous")),
    # the paper preset; its day is 200 steps (backlog does not carry over, so the day's
    # length sets only the decisions per episode, and the default 1000 costs 5x more)
    "paper": train.TrainConfig(env=CloudConfig(horizon=200, **PAPER[0]), **PAPER[1]),
    # the defaults: the queueing setting with jobs deciding in turn, each seeing the earlier
    # jobs of its step, and the light congestion potential
    "in_turn": train.TrainConfig(env=CloudConfig(decisions="in_turn"), potential="light_congestion"),
}
ALGOS = ("dgpg", "mappo", "ippo")


def parse_settings(text: str) -> list[str]:
    """The comma list of --settings, each checked against SETTINGS."""
    names = text.split(",")
    for name in names:
        if name not in SETTINGS:
            raise SystemExit(f"--settings: {name!r} is invalid: allowed {', '.join(SETTINGS)}")
    return names


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON-lines file; none when it does not exist yet."""
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def append_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend: every figure is a file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def setting_panels(summary: dict, width: float, height: float):
    """A figure of one panel per setting of summary["by_setting"]: (figure, [(axes,
    setting, that setting's rows)])."""
    settings = list(summary["by_setting"])
    fig, axes = pyplot().subplots(1, len(settings), figsize=(width * len(settings), height), squeeze=False)
    return fig, [(ax, setting, summary["by_setting"][setting]) for ax, setting in zip(axes[0], settings)]


def write_json(path: Path, data) -> None:
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


def experiment_parser(doc: str, out: Path, figures: Path, settings: str | None = None, seeds: int | None = None,
                      episodes: int | None = None):
    """The arguments every experiment script takes: --out, --figures and --plot, and where a
    default is given --settings (a comma list of SETTINGS), --seeds and --episodes."""
    import argparse

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if settings is not None:
        parser.add_argument("--settings", default=settings)
    if seeds is not None:
        parser.add_argument("--seeds", type=int, default=seeds)
    if episodes is not None:
        parser.add_argument("--episodes", type=int, default=episodes)
    parser.add_argument("--out", default=str(out), help=f"results directory (default {Path(out).relative_to(ROOT)})")
    parser.add_argument("--figures", default=str(figures), help=f"figure directory (default {Path(figures).relative_to(ROOT)})")
    parser.add_argument("--plot", action="store_true",
                        help="only summarise and redraw from the results written so far (the same other arguments)")
    return parser


def save_figure(fig, directory: Path, name: str) -> None:
    """Lay out `fig`, write it as directory/name (the directory created) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    Path(directory).mkdir(parents=True, exist_ok=True)
    fig.savefig(Path(directory) / name, dpi=120)
    plt.close(fig)


def run_sweep(spec, directory: Path) -> None:
    """Run (or resume) the sweep `spec` into `directory`, one chunk of all seeds per (algo, N)
    and grid point, printing each chunk's progress."""
    from dgpg_jax import sweep

    Path(directory).mkdir(parents=True, exist_ok=True)
    sweep.run_sweep(spec, Path(directory), chunk_seeds=spec.seeds,
                    on_progress=lambda e: print(json.dumps(e), flush=True) if e["event"] != "planned" else None)


def sweep_table(spec, directory: Path) -> list[dict]:
    """One row per configuration of `spec` with finished seeds, from the chunk files written
    so far (a killed sweep included): algo, num_agents, grid_<name>, the final ratio to the
    reference with its 95% CI and per seed, the task's pooled final metrics (`final_<metric>`),
    episodes to converge, seeds, and the seconds to run all chunks of its (algo, N), compile
    excluded (the first algo at each N also runs the references)."""
    from dgpg_jax import sweep

    docs = sweep.read_chunks(Path(directory), spec)
    seconds: dict[tuple, float] = {}
    for doc in docs:
        algo, n = doc["group"].rsplit("-n", 1)
        seconds[(algo, int(n))] = seconds.get((algo, int(n)), 0.0) + doc["run_seconds"]
    rows = []
    for c in sweep.summarise(spec, docs):
        if c.get("final_ratio_to_reference_mean") is None:
            continue
        rows.append({
            "algo": c["algo"], "num_agents": c["num_agents"], **{k: v for k, v in c.items() if k.startswith("grid_")},
            "final_ratio": c["final_ratio_to_reference_mean"], "final_ratio_ci95": c["final_ratio_to_reference_ci95"],
            "final_ratio_per_seed": c["final_ratio_to_reference_per_seed"],
            **{k: v for k, v in c.items() if k.startswith("final_") and not k.startswith("final_ratio")},
            "episodes_to_converge": c["episodes_to_converge_mean"], "seeds": c["seeds_done"],
            "run_seconds": seconds.get((c["algo"], c["num_agents"]))})
    return rows


def baseline_rows(env_config, policies, seeds: int, episodes: int) -> list[dict]:
    """`compare.final_baselines` rows of the named baselines for seeds 0..seeds-1 (each its
    own master seed, as the sweeps' seeds), pooled over seeds."""
    import jax

    from dgpg_jax import compare, evaluate

    task = env_config.make_task()
    run_keys = jax.numpy.stack([evaluate.seed_keys(s, 1)[0] for s in range(seeds)])
    return compare.final_baselines(task, [(name, task.baselines[name]) for name in policies], run_keys, episodes)
