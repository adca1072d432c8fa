"""Learning-curve figures (headless, PNG)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_learning_curves(curves: dict[str, np.ndarray], levels: dict[str, float], path: Path, title: str,
                         reference: str = "best_fit",
                         ylabel: str = "mean response time / Best-Fit (same traces)") -> None:
    """Ratio to the reference per episode: the mean over seeds with a min-max band for each
    run in `curves` ([seeds, episodes]), and a horizontal line for each policy in `levels`
    (the reference itself is the line at 1)."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, ratio in curves.items():
        ratio = np.atleast_2d(ratio)
        episodes = np.arange(1, ratio.shape[1] + 1)
        (line,) = ax.plot(episodes, ratio.mean(0), marker="o", ms=3, label=name)
        ax.fill_between(episodes, ratio.min(0), ratio.max(0), color=line.get_color(), alpha=0.2)
    ax.axhline(1.0, color="black", lw=1.2, label=reference)
    for i, (name, level) in enumerate(levels.items()):
        ax.axhline(level, color=f"C{(i + len(curves)) % 10}", lw=1, ls="--", label=name)
    ax.set_xlabel("episode")
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
