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
