"""What the experiment scripts share: the repository root, and JSON-lines files of rows
(appended one row at a time, so that a killed run keeps what it finished)."""

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON-lines file; none when it does not exist yet."""
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def append_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def save_figure(fig, directory: Path, name: str) -> None:
    """Lay out `fig`, write it as directory/name (the directory created) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    Path(directory).mkdir(parents=True, exist_ok=True)
    fig.savefig(Path(directory) / name, dpi=120)
    plt.close(fig)
