"""Running a sweep: plan each (algo, N) group (its chunk size, the chunks left to do, its
programs checked to fit), run the chunks N by N, write each as it finishes, summarise.

Seed s is the run key `evaluate.seed_keys(s, 1)[0]`: the run of `dgpg train --seed s
--seeds 1` with the same flags (and the grid point's values), whatever the chunk size and
the device count. A sweep's seeds are seed, seed + 1, ..., seed + seeds - 1. Every
algorithm and grid point on the same traces reuses one reference (groups run N by N, so
the host keeps the references of one N).

DIR is locked while a sweep runs in it (`rundir.hold_lock`): a second sweep into it is
refused, naming the first's PID. Several processes (`distributed.initialize`, one per
host) run one sweep: the mesh spans every process's devices, each process writes the
items on its own devices, and process 0 writes sweep.json, rows.jsonl, summary.json and
the plot; DIR must be on a filesystem every process sees.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from dgpg_jax import distributed, evaluate, memory, rundir, registry, trackers, train
from dgpg_jax.rundir import write_atomic
from dgpg_jax.runlog import FINAL_WINDOW, json_safe, log_columns, metric_columns
from dgpg_jax.sweep.programs import (_batch_sharding, _global_array, _inputs, _local_part, _round_up,
                                     choose_chunk_size, chunk_program, make_mesh, reference_program)
from dgpg_jax.sweep.spec import Sweep, _group_name, configuration, run_name
from dgpg_jax.sweep.store import (_classify, _expected, _open_dir, _set_aside, _write_rows, chunk_hash, chunk_path,
                                  read_chunks, write_chunk)
from dgpg_jax.sweep.summary import plot_final_ratio, summarise
from dgpg_jax.validation import check_integer


def _chunk_doc(sweep: Sweep, group_index: int, algo: str, n: int, index: int, items: list[tuple[int, int]],
               logs: train.EpisodeLog) -> dict:
    """The rows of one chunk (one per item and episode, the scalar columns of
    `runlog.log_columns`) and, per item, every metric column (arrays such as histograms
    included) of its final FINAL_WINDOW episodes, which `summarise` pools."""
    points, seeds = sweep.points(), sweep.seed_values
    task = sweep.base.env.make_task()
    columns = log_columns(logs, task)
    scalars = {k: v for k, v in columns.items() if np.ndim(v) == 2}
    metric_names = list(metric_columns(logs.metrics, logs.reference, task))
    window = min(FINAL_WINDOW, sweep.episodes)
    rows, finals = [], []
    for b, (p, s) in enumerate(items):
        config = configuration(algo, n, points[p])
        for e in range(sweep.episodes):
            values = {k: _json_number(np.asarray(v[b, e]).item()) for k, v in scalars.items()}
            rows.append({**config, "seed": seeds[s], "episode": e + 1, **values})
        finals.append({**config, "seed": seeds[s],
                       "columns": {k: np.asarray(columns[k][b, -window:]).tolist() for k in metric_names}})
    return {"group": _group_name(algo, n), "group_index": group_index, "index": index,
            "items": [list(item) for item in items], "rows": rows, "final_metrics": finals}


def _json_number(x):
    return None if isinstance(x, float) and not math.isfinite(x) else x


def run_sweep(sweep: Sweep, out_dir: Path, chunk_seeds: int | None = None, max_chunks: int | None = None,
              on_progress: Callable[[dict], None] | None = None, bootstrap_reps: int = 2000,
              log: str = "none") -> dict:
    """Run (or continue) `sweep` into `out_dir`; returns the result (also summary.json).

    chunk_seeds: items per chunk (rounded up to a multiple of the device count); None
    chooses it from the compiled program's memory analysis (`choose_chunk_size`). The
    choice is saved in sweep.json and reused by a restart. max_chunks: stop after running
    that many chunks (the rest stay to do). on_progress(event): called with
    {"event": "planned", "total", "skipped"} once, {"event": "compiling", "group"} before
    each compile, {"event": "stale", "path", "reason"} for each chunk file set aside to be
    run again, and {"event": "chunk", "group", "index", "done", "total"} after each chunk
    (this process's part of it) is written; groups run sorted by N. log: one of
    `trackers.TRACKERS`; each finished chunk's runs also go to TensorBoard or W&B under
    DIR/logs, one tracker run per (configuration, seed), named like
    "dgpg-n200-alpha0.4/seed_3", before the chunk file is written (a crash repeats
    points rather than losing them). Raises ValueError, before anything runs, for invalid
    settings and for chunks whose programs cannot fit the free memory. With several
    processes, only process 0 writes the shared files."""
    sweep.validate()
    trackers.check_tracker(log)
    if chunk_seeds is not None:
        check_integer("chunk_seeds", chunk_seeds)
    if max_chunks is not None:
        check_integer("max_chunks", max_chunks, minimum=0)
    check_integer("bootstrap_reps", bootstrap_reps)
    with rundir.open_run(out_dir, "sweep", continues=True, lock=distributed.is_main()) as out_dir:
        return _run(sweep, out_dir, chunk_seeds, max_chunks, on_progress or (lambda event: None), bootstrap_reps,
                    log)




def _run(sweep: Sweep, out_dir: Path, chunk_seeds: int | None, max_chunks: int | None,
         notify: Callable[[dict], None], bootstrap_reps: int, log: str) -> dict:
    """`run_sweep` in its checked and locked directory."""
    saved, fresh = _open_dir(sweep, out_dir, chunk_seeds)
    distributed.check_shared(out_dir)
    mesh = make_mesh()
    groups = [_plan_group(sweep, out_dir, g, algo, n, saved, fresh, chunk_seeds, mesh, notify)
              for g, (algo, n) in enumerate(sweep.groups())]
    stale = _set_aside(out_dir, _classify(out_dir, _expected(sweep, saved["plans"]))[1]) if distributed.is_main() else []
    for path, reason in stale:
        notify({"event": "stale", "path": str(path), "reason": reason})
    skipped = sum(group["chunks"] - len(group["todo"]) for group in groups)
    total = sum(group["chunks"] for group in groups)
    notify({"event": "planned", "total": total, "skipped": skipped})

    run, start = 0, time.perf_counter()
    key_data = np.asarray(jax.jit(jax.vmap(lambda s: jax.random.key_data(evaluate.seed_keys(s, 1)[0])))(
        np.arange(sweep.seed, sweep.seed + sweep.seeds, dtype=np.uint32)))  # seed s's run key, in one program
    reports = [None] * len(groups)
    references: dict[tuple[float, int], object] = {}  # (utilisation, seed index) -> reference metrics [E], one N
    last_n = None
    for group in sorted(groups, key=lambda group: group["num_agents"]):  # N by N: the references are per N
        if group["num_agents"] != last_n:
            references.clear()
        last_n = group["num_agents"]
        report = {"algo": group["algo"], "num_agents": group["num_agents"], "chunk_seeds": group["chunk_seeds"],
                  "batch": group["batch"], "devices": mesh.devices.size, "processes": jax.process_count(),
                  "chunks": group["chunks"], "chunks_skipped": group["chunks"] - len(group["todo"]), "chunks_run": 0,
                  "plan": group["plan"], "compile_seconds": 0.0, "run_seconds": 0.0, "references_run": 0}
        reports[group["index"]] = report
        todo = group["todo"] if max_chunks is None else group["todo"][:max_chunks - run]  # the chunks left to run
        if not todo:
            continue
        for index in _run_group(sweep, out_dir, group, todo, report, mesh, key_data, references, log):
            run += 1
            notify({"event": "chunk", "group": _group_name(group["algo"], group["num_agents"]), "index": index,
                    "done": skipped + run, "total": total})
    return _finish(sweep, out_dir, groups, reports, stale, run=run, skipped=skipped, total=total, start=start,
                   bootstrap_reps=bootstrap_reps)


def _plan_group(sweep: Sweep, out_dir: Path, g: int, algo: str, n: int, saved: dict, fresh: bool,
                chunk_seeds: int | None, mesh: jax.sharding.Mesh, notify: Callable[[dict], None]) -> dict:
    """Group g, (algo, N): its chunk size (`_chunk_plan`), count and hash, the chunks left
    to do (those any process misses) and, when there are any, its programs compiled and
    checked to fit. Saves a new plan to sweep.json."""
    devices = mesh.devices.size
    total_items = len(sweep.points()) * sweep.seeds
    learner = train.make_learner(sweep.group_config(algo, n))
    name = _group_name(algo, n)
    plan = _chunk_plan(sweep, learner, name, saved, chunk_seeds, mesh, notify)
    size = int(plan["chunk_seeds"])
    count = math.ceil(total_items / size)
    config_hash = chunk_hash(sweep, algo, n, size)
    done = {key for key in _classify(out_dir, {name: (config_hash, count)})[0] if key[0] == name}
    # a chunk is left to do if any process misses it (they must all run the same programs)
    missing_chunks = distributed.gather(np.array([(name, i) not in done for i in range(count)])).any(axis=0)
    group = {"algo": algo, "num_agents": n, "learner": learner, "index": g, "chunk_seeds": size, "hash": config_hash,
             "batch": _round_up(size, devices), "chunks": count,
             "todo": [i for i in range(count) if missing_chunks[i]], "plan": plan}
    if group["todo"]:  # refuse what cannot fit before anything runs (and before the plan is saved)
        _compile_and_check(sweep, out_dir, group, fresh, mesh, notify)
    if name not in saved["plans"]:
        saved["plans"][name] = plan
        if distributed.is_main():
            write_atomic(out_dir / "sweep.json", json.dumps(saved, indent=2) + "\n")
    return group


def _chunk_plan(sweep: Sweep, learner: train.Learner, name: str, saved: dict, chunk_seeds: int | None,
                mesh: jax.sharding.Mesh, notify: Callable[[dict], None]) -> dict:
    """The chunk size of group `name` and where it comes from: process 0's sweep.json, else
    --chunk-seeds, else the memory analysis (the smallest over the processes)."""
    devices = mesh.devices.size
    total_items = len(sweep.points()) * sweep.seeds
    plan = saved["plans"].get(name)
    saved_size = int(distributed.from_main(plan["chunk_seeds"] if plan else 0))  # process 0's sweep.json decides
    if saved_size:
        plan = plan or {"chunk_seeds": saved_size, "source": "sweep.json of process 0"}
    elif chunk_seeds is not None:
        plan = {"chunk_seeds": _round_up(chunk_seeds, devices), "source": "--chunk-seeds"}
    else:
        notify({"event": "compiling", "group": name})
        size, estimate, error = 0, None, None
        try:
            size, estimate = choose_chunk_size(learner, sweep.episodes, total_items, mesh)
        except ValueError as refused:
            error = refused
        distributed.agree(error)
        # every process must run the same chunks: the size that fits them all
        plan = {"chunk_seeds": int(distributed.gather(size).min()), "source": "memory analysis",
                "memory": estimate}
    return plan


def _compile_and_check(sweep: Sweep, out_dir: Path, group: dict, fresh: bool, mesh: jax.sharding.Mesh,
                       notify: Callable[[dict], None]) -> None:
    """Compile the group's programs (recording the seconds and their bytes in `group`);
    ValueError on every process when one cannot fit the free memory, after removing the
    sweep.json this call created (nothing ran: the same DIR may be retried)."""
    devices = mesh.devices.size
    learner = group["learner"]
    name = _group_name(group["algo"], group["num_agents"])
    notify({"event": "compiling", "group": name})
    t0 = time.perf_counter()
    programs = (chunk_program(learner, sweep.episodes, group["batch"], mesh),
                reference_program(learner, sweep.episodes, group["batch"], mesh))
    group["compile_seconds"] = time.perf_counter() - t0
    error = None
    try:
        group["program_bytes"] = [memory.check_fits(
            program, f"a chunk of {group['batch']} {what} of {name} ({group['batch'] // devices} per device)",
            "a smaller --chunk-seeds (in another --out), or none to size chunks from memory")
            for program, what in zip(programs, ("runs", f"{learner.task.reference_name} references"))]
    except ValueError as refused:
        error = refused
    if error is not None and fresh and distributed.is_main():
        (out_dir / "sweep.json").unlink(missing_ok=True)  # nothing ran: the same DIR may be retried
    distributed.agree(error)


def _run_group(sweep: Sweep, out_dir: Path, group: dict, todo: list[int], report: dict, mesh: jax.sharding.Mesh,
               key_data: np.ndarray, references: dict, log: str):
    """Run the chunks `todo` of one group, adding to its `report`; yields each index once
    this process's part of the chunk (and on process 0 rows.jsonl) is written."""
    process, processes = jax.process_index(), jax.process_count()
    report["compile_seconds"] = group["compile_seconds"]
    report["program_bytes"], report["reference_program_bytes"] = group["program_bytes"]
    hypers = np.array([[np.asarray(leaf) for leaf in train.default_hyper(
        sweep.point_config(group["algo"], group["num_agents"], p))] for p in sweep.points()], np.float32)
    programs = (chunk_program(group["learner"], sweep.episodes, group["batch"], mesh),
                reference_program(group["learner"], sweep.episodes, group["batch"], mesh))
    sharding = _batch_sharding(mesh)
    for index in todo:
        t0 = time.perf_counter()
        items, positions, logs = _run_chunk(sweep, group, index, hypers, programs, key_data, references, report,
                                            sharding)
        doc = _chunk_doc(sweep, group["index"], group["algo"], group["num_agents"], index,
                         [items[p] for p in positions], logs)
        doc["run_seconds"] = time.perf_counter() - t0  # this chunk, its references included
        if log != "none" and positions:
            runs = [(f"{run_name(sweep, group['algo'], group['num_agents'], p)}/seed_{sweep.seed_values[s]}",
                     {**configuration(group["algo"], group["num_agents"], sweep.points()[p]),
                      "seed": sweep.seed_values[s]}) for p, s in (items[q] for q in positions)]
            task = group["learner"].task
            trackers.log_episodes(log, out_dir / "logs", log_columns(logs, task), 0, runs, task.reference_name)
        write_chunk(chunk_path(out_dir, group["algo"], group["num_agents"], index, process, processes),
                    group["hash"], doc)
        if distributed.is_main():
            _write_rows(out_dir, read_chunks(out_dir, sweep))
        report["chunks_run"] += 1
        report["run_seconds"] += time.perf_counter() - t0
        yield index


def _run_chunk(sweep: Sweep, group: dict, index: int, hypers: np.ndarray, programs: tuple, key_data: np.ndarray,
               references: dict, report: dict, sharding: jax.sharding.NamedSharding) -> tuple[list, list[int], object]:
    """Chunk `index` of a group on every device: its items (point index, seed index), the
    batch positions of this process's devices and their EpisodeLog. First the reference on
    each trace no earlier chunk at this N has seen, kept in `references`
    ((utilisation, seed index) -> reference metrics [E])."""
    program, references_program = programs
    total_items = len(sweep.points()) * sweep.seeds
    first = index * group["chunk_seeds"]
    items = [divmod(i, sweep.seeds) for i in range(first, min(first + group["chunk_seeds"], total_items))]
    padded = items + [items[-1]] * (group["batch"] - len(items))  # repeats, dropped below
    points, seeds = (np.array(column) for column in zip(*padded))
    table = hypers[points]
    traces = [(float(u), int(s)) for u, s in zip(table[:, train.Hyper._fields.index("utilisation")], seeds)]
    first_of = {}
    for position, trace in enumerate(traces):
        first_of.setdefault(trace, position)
    new_traces = [trace for trace in first_of if trace not in references]
    if new_traces:  # the reference on the traces no earlier chunk (of any algo at this N) has seen
        report["references_run"] += len(new_traces)
        rows = [first_of[trace] for trace in new_traces]
        rows += [rows[-1]] * (group["batch"] - len(rows))
        computed = distributed.to_host(references_program(*_inputs(key_data, seeds[rows], table[rows], sharding)))
        for i, trace in enumerate(new_traces):
            references[trace] = jax.tree.map(lambda x, i=i: x[i], computed)
    reference = jax.tree.map(lambda *xs: _global_array(np.stack(xs), sharding),
                             *[references[trace] for trace in traces])
    positions, logs = _local_part(program(*_inputs(key_data, seeds, table, sharding), reference), len(items))
    return items, positions, logs


def _finish(sweep: Sweep, out_dir: Path, groups: list[dict], reports: list[dict], stale: list[tuple[Path, str]], *,
            run: int, skipped: int, total: int, start: float, bootstrap_reps: int) -> dict:
    """The result, from every chunk of DIR once every process has written its parts; process
    0 also writes rows.jsonl, summary.json and the plot."""
    distributed.barrier("dgpg-sweep-done")  # every part written before the summary reads them
    docs = read_chunks(out_dir, sweep)
    done_chunks = len(docs)
    configurations = summarise(sweep, docs, bootstrap_reps)
    result = {"out": str(out_dir), "task": registry.task_name(sweep.base.env),
              "reference": groups[0]["learner"].task.reference_name, "chunks_run": run, "chunks_skipped": skipped, "chunks_total": total,
              "complete": done_chunks == total, "seeds": sweep.seeds, "episodes": sweep.episodes,
              "final_window": min(FINAL_WINDOW, sweep.episodes), "grid": list(sweep.grid_names),
              "processes": jax.process_count(), "wall_seconds": time.perf_counter() - start, "groups": reports,
              "stale_chunks": [{"path": str(path), "reason": reason} for path, reason in stale],
              "configurations": configurations}
    result = json_safe(result)
    if distributed.is_main():
        _write_rows(out_dir, docs)
        write_atomic(out_dir / "summary.json", json.dumps(result, indent=2, allow_nan=False) + "\n")
        plot_final_ratio(configurations, sweep.grid_names, out_dir / "final_ratio.png",
                         groups[0]["learner"].task.reference_name)
    return result
