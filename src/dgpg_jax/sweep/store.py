"""A sweep's directory: sweep.json (the arguments, and the chunk size chosen per (algo, N)),
chunks/<algo>-n<N>-<index>.json (one per finished chunk, written atomically, its items
in order) and rows.jsonl (every chunk's rows:
`pandas.read_json(DIR / "rows.jsonl", lines=True, precise_float=True)`).

Each chunk file describes itself: a header line with the hash of the configuration that
decides its rows (`chunk_hash`) and a checksum of the file, then its content. A
restarted sweep skips every chunk whose file matches both; it moves every other chunk
file (damaged, edited, of an earlier version or of another configuration) into
chunks/stale/, names it, and runs that chunk again. With P processes, process k writes
its part of chunk i as chunks/<algo>-n<N>-<i>.p<k>of<P>.json; a chunk is done when all
P parts exist.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

from dgpg_jax import distributed
from dgpg_jax.rundir import write_atomic
from dgpg_jax.configs import flatten
from dgpg_jax.sweep.spec import ADDED_FIELDS, Sweep, _group_name


def chunk_path(out_dir: Path, algo: str, n: int, index: int, process: int = 0, processes: int = 1) -> Path:
    """One chunk's file, or process `process`'s part of it when the sweep runs in `processes`."""
    part = "" if processes == 1 else f".p{process}of{processes}"
    return Path(out_dir) / "chunks" / f"{_group_name(algo, n)}-{index}{part}.json"


_CHUNK_FILE = re.compile(r"^(?P<group>.+-n\d+)-(?P<index>\d+)(?:\.p(?P<part>\d+)of(?P<parts>\d+))?\.json$")
STALE = "stale"
"""Subdirectory of chunks/ where a restart moves the chunk files it cannot use."""


def chunk_hash(sweep: Sweep, algo: str, num_agents: int, chunk_seeds: int) -> str:
    """The hash of everything that decides a chunk's rows: the task, the config, the grid,
    the seeds, the episodes, the (algo, N) and the chunk size (which items chunk i holds)."""
    return arguments_hash(sweep.arguments(None), algo, num_agents, chunk_seeds)


def arguments_hash(arguments: dict, algo: str, num_agents: int, chunk_seeds: int) -> str:
    """`chunk_hash` from a sweep's recorded arguments (`Sweep.arguments`, as in sweep.json)."""
    fields = {key: arguments[key] for key in ("task", "grid", "seeds", "seed", "episodes", "config")}
    text = json.dumps({**fields, "algo": algo, "num_agents": num_agents, "chunk_seeds": chunk_seeds}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _checksum(config_hash: str, body: str) -> str:
    return hashlib.sha256(f"{config_hash}\n{body}".encode()).hexdigest()


def write_chunk(path: Path, config_hash: str, doc: dict) -> None:
    """A chunk file: a header line {"config_hash", "sha256"} (the checksum covers the hash
    and the content), then the content line; written atomically."""
    body = json.dumps(doc)
    header = json.dumps({"config_hash": config_hash, "sha256": _checksum(config_hash, body)})
    write_atomic(path, f"{header}\n{body}\n")


def read_chunk(path: Path, config_hash: str | None = None) -> dict:
    """The content of a chunk file; ValueError naming the file when it has no header (an
    earlier version's or a damaged file), when its content does not match its checksum
    (truncated or edited), or when it was written for another configuration than
    `config_hash`."""
    header_line, _, body = Path(path).read_text().partition("\n")
    try:
        header = json.loads(header_line)
    except json.JSONDecodeError:
        header = None
    if not (isinstance(header, dict) and isinstance(header.get("config_hash"), str) and "sha256" in header):
        raise ValueError(f"chunk {path} has no checksum header: it is damaged or was written by an earlier version")
    body = body.removesuffix("\n")
    if _checksum(header["config_hash"], body) != header["sha256"]:
        raise ValueError(f"chunk {path} does not match its checksum: it is truncated or was edited")
    if config_hash is not None and header["config_hash"] != config_hash:
        raise ValueError(f"chunk {path} was written by another configuration (hash {header['config_hash']}, "
                         f"this sweep's {config_hash})")
    return json.loads(body)


def _chunk_files(out_dir: Path) -> dict[tuple[str, int], dict[int, list[Path]]]:
    """(group, index) -> {processes P: the part files of that layout, by part}."""
    files: dict[tuple[str, int], dict[int, dict[int, Path]]] = {}
    for path in (Path(out_dir) / "chunks").glob("*.json"):
        match = _CHUNK_FILE.match(path.name)
        if match:
            layout = files.setdefault((match["group"], int(match["index"])), {})
            layout.setdefault(int(match["parts"] or 1), {})[int(match["part"] or 0)] = path
    return {key: {total: [parts[p] for p in sorted(parts)] for total, parts in layouts.items()}
            for key, layouts in files.items()}


def _usable(files: list[Path], config_hash: str) -> str | None:
    """None if every part file is a sound chunk of `config_hash`, else why not."""
    for path in files:
        try:
            read_chunk(path, config_hash)
        except ValueError as error:
            return str(error)
    return None


def _classify(out_dir: Path, expected: dict[str, tuple[str, int]]) -> tuple[dict, list[tuple[Path, str]]]:
    """The chunks of DIR this sweep can use, (group, index) -> part files (every part of
    one process layout, part 0 first), and every other chunk file with the reason: damaged,
    of an earlier version, of another configuration, or no chunk of this sweep.
    `expected`: group -> (its config hash, its chunk count)."""
    usable, unusable = {}, []
    for (group, index), layouts in sorted(_chunk_files(out_dir).items()):
        for total, files in sorted(layouts.items()):
            if group not in expected or index >= expected[group][1]:
                reason = f"chunk {files[0]} is no chunk of this sweep"
            elif len(files) != total:
                continue  # parts still being written by other processes, or a killed run's: redone in place
            else:
                reason = _usable(files, expected[group][0])
            if reason is None and (group, index) not in usable:
                usable[(group, index)] = files
            elif reason is not None:
                unusable += [(path, reason) for path in files]
    return usable, unusable


def _set_aside(out_dir: Path, unusable: list[tuple[Path, str]]) -> list[tuple[Path, str]]:
    """Move each unusable chunk file into chunks/stale/ (kept, never read again), a
    counter added to a name already there; returns (new path, reason) pairs."""
    moved = []
    for path, reason in unusable:
        target = Path(out_dir) / "chunks" / STALE / path.name
        target.parent.mkdir(exist_ok=True)
        count = 1
        while target.exists():
            target = target.with_name(f"{path.stem}.{count}{path.suffix}")
            count += 1
        path.rename(target)
        moved.append((target, reason))
    return moved


def _expected(sweep: Sweep, plans: dict) -> dict[str, tuple[str, int]]:
    """group -> (config hash, chunk count) of the groups planned in sweep.json."""
    total_items = len(sweep.points()) * sweep.seeds
    out = {}
    for algo, n in sweep.groups():
        plan = plans.get(_group_name(algo, n))
        if plan:
            size = int(plan["chunk_seeds"])
            out[_group_name(algo, n)] = (chunk_hash(sweep, algo, n, size), math.ceil(total_items / size))
    return out


def _with_added_fields(old: dict, new: dict) -> dict:
    """`old` arguments with the fields added since they were written (ADDED_FIELDS) at the
    value they meant, where the new arguments have them."""
    added = {k: v for k, v in ADDED_FIELDS.items() if k in new["config"] and k not in old.get("config", {})}
    return {**old, "config": {**old.get("config", {}), **added}} if added else old


def _open_dir(sweep: Sweep, out_dir: Path, chunk_seeds: int | None) -> tuple[dict, bool]:
    """Create or reopen DIR; refuse other arguments. Returns sweep.json's content and
    whether this call created it."""
    (out_dir / "chunks").mkdir(exist_ok=True)
    if distributed.is_main():  # another process's file may be in flight otherwise
        for stale in (out_dir / "chunks").glob(".*.tmp"):
            stale.unlink(missing_ok=True)
    arguments = sweep.arguments(chunk_seeds)
    path = out_dir / "sweep.json"
    if path.exists():
        try:
            saved = json.loads(path.read_text())
            old = _with_added_fields(saved["arguments"], arguments)
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise ValueError(f"out={str(out_dir)!r} holds a sweep.json not written by `dgpg sweep`: "
                             "allowed another directory") from None
        if old != arguments:
            flat_old, flat_new = flatten(old), flatten(arguments)
            name = next(k for k in list(flat_new) + list(flat_old) if flat_new.get(k) != flat_old.get(k))
            raise ValueError(f"out={str(out_dir)!r} holds a sweep with other arguments: {name}="
                             f"{flat_new.get(name)!r} differs from its {flat_old.get(name)!r}; allowed the same "
                             "arguments (to continue it) or another directory")
        return saved, False
    saved = {"arguments": arguments, "plans": {}}
    if distributed.is_main():
        write_atomic(path, json.dumps(saved, indent=2) + "\n")
    return saved, True


def read_chunks(out_dir: Path, sweep: Sweep | None = None) -> list[dict]:
    """Every finished chunk of DIR (parts joined in process order, which is the mesh's and so
    the items' order), in group order then index order. Each file is checked against its
    checksum and, given the `sweep` that DIR holds, against the configuration hash of its
    group (only that sweep's chunks are read): ValueError naming the first that fails."""
    complete = {}
    for key, layouts in _chunk_files(out_dir).items():
        layout = next((files for total, files in sorted(layouts.items()) if len(files) == total), None)
        if layout is not None:
            complete[key] = layout
    hashes: dict[str, str] = {}
    if sweep is not None:
        expected = _expected(sweep, json.loads((Path(out_dir) / "sweep.json").read_text())["plans"])
        complete = {key: files for key, files in complete.items()
                    if key[0] in expected and key[1] < expected[key[0]][1]}
        hashes = {group: value[0] for group, value in expected.items()}
    docs = []
    for (group, _), files in sorted(complete.items()):
        parts = [read_chunk(path, hashes.get(group)) for path in files]
        doc = dict(parts[0])
        for key in ("items", "rows", "final_metrics"):
            doc[key] = [x for part in parts for x in part[key]]
        docs.append(doc)
    return sorted(docs, key=lambda d: (d["group_index"], d["index"]))


def _write_rows(out_dir: Path, docs: list[dict]) -> None:
    lines = [json.dumps(row, allow_nan=False) for doc in docs for row in doc["rows"]]
    write_atomic(Path(out_dir) / "rows.jsonl", "".join(line + "\n" for line in lines))
