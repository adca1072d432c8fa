"""`dgpg_jax.sweep` and `dgpg sweep`: chunks, padding, restart, seeds as in train, shapes
sized for the largest utilisation, argument refusal, validation before compile, chunk
size from memory, 4 host devices, and the CLI's JSON line.

One pair of compiled programs (training and Best-Fit) serves most of the file: the sweeps
here share one (algo, N) config and chunk size 4 (the probe size of the memory analysis
too), so the in-process program cache compiles them once. N = 20 at 0.6 steps per mean job: the job rows J at utilisation
0.1 (15) are fewer than at 0.9 (20 = N), so a grid over both shows the slot sizing.
"""

import contextlib
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest

from dgpg_jax import cli, runlog, runner, sweep, train
from dgpg_jax.tasks.ev import EVConfig
from conftest import at_once

BASE = train.TrainConfig(env=at_once(num_agents=20, horizon=20, mean_job_steps=0.6), num_episodes=2,
                         updates_per_episode=2)
SWEEP = sweep.Sweep(BASE, algos=("dgpg",), num_agents=(20,), grid={"utilisation": (0.1, 0.9)}, seeds=3, seed=5)
CHUNK = 4  # 6 items: a chunk of 4 and one of 2 padded to 4
REPS = 50
KEY = ["algo", "num_agents", "grid_utilisation", "seed", "episode"]
FOUR_DEVICES = """
import json, sys
sys.path.insert(0, {tests!r})
import jax
from test_sweep import CHUNK, REPS, SWEEP
from dgpg_jax import sweep
assert len(jax.devices()) == 4, jax.devices()
result = sweep.run_sweep(SWEEP, {out!r}, chunk_seeds=CHUNK, bootstrap_reps=REPS)
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
    """The same sweep on 4 forced host devices, in a subprocess (requested before `full`,
    it compiles while this process does)."""
    out = tmp_path_factory.mktemp("four") / "sweep"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    code = FOUR_DEVICES.format(tests=str(Path(__file__).parent), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    yield proc, out
    if proc.poll() is None:
        proc.kill()


CLI_ARGV = ["sweep", "--algo", "dgpg", "--num-agents", "20", "--horizon", "20", "--mean-job-steps", "0.6",
            "--decisions", "simultaneous",
            "--updates-per-episode", "2", "--episodes", "2", "--seeds", "3", "--seed", "5",
            "--grid", "utilisation=0.1,0.9", "--chunk-seeds", str(CHUNK), "--bootstrap-reps", str(REPS), "--json"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_processes(out: Path) -> list[subprocess.Popen]:
    """`dgpg sweep` as two jax.distributed processes on localhost (one CPU device each)."""
    address = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    return [subprocess.Popen([sys.executable, "-m", "dgpg_jax.cli", *CLI_ARGV, "--out", str(out),
                              "--coordinator-address", address, "--num-processes", "2", "--process-id", str(i)],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]


def finish(procs: list[subprocess.Popen]) -> list[str]:
    outputs = [proc.communicate(timeout=600) for proc in procs]
    for proc, (_, stderr) in zip(procs, outputs):
        assert proc.returncode == 0, stderr[-3000:]
    return [stdout for stdout, _ in outputs]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """The same sweep as two processes of one jax.distributed run, started before `full`."""
    out = tmp_path_factory.mktemp("two") / "sweep"
    procs = start_processes(out)
    yield procs, out
    for proc in procs:
        if proc.poll() is None:
            proc.kill()


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The uninterrupted single-device sweep."""
    out = tmp_path_factory.mktemp("full") / "sweep"
    return out, sweep.run_sweep(SWEEP, out, chunk_seeds=CHUNK, bootstrap_reps=REPS)


def rows(out: Path) -> pd.DataFrame:
    frame = pd.read_json(out / "rows.jsonl", lines=True, precise_float=True)
    return frame.sort_values(KEY).reset_index(drop=True)


def test_every_row_exactly_once_and_padding_dropped(full):
    out, result = full
    frame = rows(out)
    expected = {("dgpg", 20, u, s, e) for u in (0.1, 0.9) for s in (5, 6, 7) for e in (1, 2)}
    assert len(frame) == len(expected) == 12
    assert set(map(tuple, frame[KEY].itertuples(index=False))) == expected
    chunks = sorted((out / "chunks").glob("*.json"))
    assert [p.name for p in chunks] == ["dgpg-n20-0.json", "dgpg-n20-1.json"]
    docs = [sweep.read_chunk(p, sweep.chunk_hash(SWEEP, "dgpg", 20, CHUNK)) for p in chunks]
    items = [tuple(item) for doc in docs for item in doc["items"]]
    assert [len(doc["items"]) for doc in docs] == [4, 2]
    assert sorted(items) == [(p, s) for p in (0, 1) for s in (0, 1, 2)]
    assert sum(len(doc["final_metrics"]) for doc in docs) == 6
    assert (result["chunks_run"], result["chunks_skipped"], result["complete"]) == (2, 0, True)
    assert result["groups"][0]["batch"] == 4 and result["groups"][0]["plan"]["chunk_seeds"] == CHUNK
    assert [c["seeds_done"] for c in result["configurations"]] == [3, 3]
    assert "response_time_histogram" not in frame.columns and "ratio_to_best_fit" in frame.columns
    assert (out / "final_ratio.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "summary.json").read_text()) == result


def test_seed_s_is_train_with_that_seed_and_high_load_is_sized(full):
    """Seed 6 at utilisation 0.9 equals `run_training(seed=6, num_seeds=1)` at 0.9, slot
    overflow (charged as rejections) included: the program's J is the 0.9 run's, not the
    0.1 one's (which overflows at that load)."""
    out, result = full
    config = SWEEP.point_config("dgpg", 20, {"utilisation": 0.9})
    assert train.make_learner(SWEEP.group_config("dgpg", 20)).task.params.num_rows == \
        train.make_learner(config).task.params.num_rows == 20
    assert train.make_learner(SWEEP.point_config("dgpg", 20, {"utilisation": 0.1})).task.params.num_rows < 20
    single = runner.run_training(config, seed=6, num_seeds=1, episodes_per_call=2)
    columns = runlog.log_columns(single.logs, single.task)
    frame = rows(out)
    mine = frame[(frame.grid_utilisation == 0.9) & (frame.seed == 6)].sort_values("episode")
    for name, values in columns.items():
        if np.ndim(values) > 2:  # histograms: only in the chunks' final metrics
            continue
        np.testing.assert_allclose(mine[name].to_numpy(np.float64), np.asarray(values[0], np.float64),
                                   rtol=2e-5, atol=1e-6, err_msg=name)
    np.testing.assert_array_equal(mine["num_rejected"], np.asarray(single.logs.metrics.num_rejected[0]))
    high = result["configurations"][1]
    assert high["grid_utilisation"] == 0.9 and high["seeds"] == [5, 6, 7]
    np.testing.assert_allclose(high["final_ratio_to_reference_per_seed"][1],
                               single.summary()["final_ratio_to_reference_per_seed"][0], rtol=2e-5)


def test_interrupted_sweep_resumes_without_redoing_a_chunk(full, tmp_path):
    out = tmp_path / "sweep"

    class Killed(Exception):
        pass

    def stop(event):
        if event["event"] == "chunk":
            raise Killed

    with pytest.raises(Killed):
        sweep.run_sweep(SWEEP, out, chunk_seeds=CHUNK, bootstrap_reps=REPS, on_progress=stop)
    first = out / "chunks" / "dgpg-n20-0.json"
    assert [p.name for p in (out / "chunks").glob("*.json")] == [first.name]
    assert len(rows(out)) == 8  # the finished chunk's rows are already loadable
    stamp = first.stat().st_mtime_ns
    result = sweep.run_sweep(SWEEP, out, chunk_seeds=CHUNK, bootstrap_reps=REPS)
    assert (result["chunks_run"], result["chunks_skipped"], result["complete"]) == (1, 1, True)
    assert first.stat().st_mtime_ns == stamp
    assert result["configurations"] == full[1]["configurations"]
    pd.testing.assert_frame_equal(rows(out), rows(full[0]))
    again = sweep.run_sweep(SWEEP, out, chunk_seeds=CHUNK, bootstrap_reps=REPS)
    assert (again["chunks_run"], again["chunks_skipped"]) == (0, 2)


def test_best_fit_reference_runs_once_per_seed_and_utilisation(full, tmp_path):
    """A grid over alpha has the same traces at every point: Best-Fit runs once per seed
    (3), not once per run (6), and every run's ratio uses it. The base sits at the full
    sweep's largest utilisation, so the compiled programs are the same."""
    base = dataclasses.replace(BASE, env=dataclasses.replace(BASE.env, utilisation=0.9))
    grid = dataclasses.replace(SWEEP, base=base, grid={"alpha": (0.2, 0.6)})
    result = sweep.run_sweep(grid, tmp_path / "alpha", chunk_seeds=CHUNK, bootstrap_reps=REPS)
    assert result["groups"][0]["references_run"] == 3
    assert full[1]["groups"][0]["references_run"] == 6  # two utilisations: two traces per seed
    frame, reference = pd.read_json(tmp_path / "alpha" / "rows.jsonl", lines=True, precise_float=True), rows(full[0])
    high = reference[reference.grid_utilisation == 0.9].sort_values(["seed", "episode"])
    for alpha in (0.2, 0.6):
        mine = frame[frame.grid_alpha == alpha].sort_values(["seed", "episode"])
        for name in ("best_fit_mean_response_time", "best_fit_num_jobs", "best_fit_p99_response_time"):
            np.testing.assert_allclose(mine[name].to_numpy(np.float64), high[name].to_numpy(np.float64),
                                       rtol=2e-5, err_msg=name)
        np.testing.assert_allclose(mine["ratio_to_best_fit"],
                                   mine["mean_response_time"] / mine["best_fit_mean_response_time"], rtol=1e-5)


def test_forced_chunk_that_cannot_fit_is_refused_before_running(full, tmp_path, monkeypatch):
    """A --chunk-seeds whose program needs more than the free memory: refused (naming the
    flag) before any chunk runs, and the fresh DIR can be retried."""
    from dgpg_jax import memory

    out = tmp_path / "small"
    with monkeypatch.context() as patch:
        patch.setattr(memory, "available_bytes", lambda device=None: 1024)
        with pytest.raises(ValueError, match="chunk-seeds"):
            sweep.run_sweep(SWEEP, out, chunk_seeds=CHUNK, bootstrap_reps=REPS)
    assert not list((out / "chunks").glob("*.json")) and not (out / "sweep.json").exists()
    result = sweep.run_sweep(SWEEP, out, chunk_seeds=CHUNK, max_chunks=0, bootstrap_reps=REPS)  # memory back
    assert result["groups"][0]["plan"]["chunk_seeds"] == CHUNK and result["chunks_run"] == 0


def no_compile(*args, **kwargs):
    raise AssertionError("compiled before refusing")


def test_other_arguments_into_the_same_directory_refused(full, monkeypatch):
    out, _ = full
    monkeypatch.setattr(sweep.loop, "chunk_program", no_compile)
    before = (out / "sweep.json").read_text()
    with pytest.raises(ValueError, match="seeds=4"):
        sweep.run_sweep(dataclasses.replace(SWEEP, seeds=4), out, chunk_seeds=CHUNK)
    with pytest.raises(ValueError, match="chunk_seeds"):
        sweep.run_sweep(SWEEP, out, chunk_seeds=2)
    with pytest.raises(ValueError, match="learning_rate"):
        sweep.run_sweep(dataclasses.replace(SWEEP, base=dataclasses.replace(BASE, learning_rate=1e-3)), out,
                        chunk_seeds=CHUNK)
    assert (out / "sweep.json").read_text() == before


def test_sweep_written_before_a_config_field_existed_resumes(full, tmp_path, monkeypatch):
    """A sweep.json without `env.decisions` (written before it existed) meant simultaneous
    decisions: the same sweep resumes from it, skipping every chunk; in_turn is refused."""
    out = tmp_path / "sweep"
    shutil.copytree(full[0], out)
    saved = json.loads((out / "sweep.json").read_text())
    del saved["arguments"]["config"]["env.decisions"]
    (out / "sweep.json").write_text(json.dumps(saved))
    monkeypatch.setattr(sweep.loop, "chunk_program", no_compile)
    result = sweep.run_sweep(SWEEP, out, chunk_seeds=CHUNK, bootstrap_reps=REPS)
    assert (result["chunks_run"], result["chunks_skipped"]) == (0, 2)
    in_turn = dataclasses.replace(BASE, env=dataclasses.replace(BASE.env, decisions="in_turn"))
    with pytest.raises(ValueError, match="env.decisions='in_turn' differs from its 'simultaneous'"):
        sweep.run_sweep(dataclasses.replace(SWEEP, base=in_turn), out, chunk_seeds=CHUNK)


@pytest.mark.parametrize("grid, parameter", [
    ({"alpha": (0.5, 1.5)}, r"grid alpha=1\.5.*alpha_start"),
    ({"learning_rate": (0.0,)}, r"grid learning_rate=0\.0.*learning_rate"),
    ({"utilisation": (0.5, 1.2)}, r"grid utilisation=1\.2.*peak arrival"),
    ({"gamma": (0.9,)}, r"grid='gamma'"),
    ({"alpha": (0.5,), "alpha_end": (0.1,)}, r"grid alpha"),
    ({"alpha": (0.5, 0.5)}, r"grid alpha.*at most once"),
])
def test_grid_validated_before_compile(grid, parameter, tmp_path, monkeypatch):
    monkeypatch.setattr(sweep.loop, "chunk_program", no_compile)
    with pytest.raises(ValueError, match=parameter):
        sweep.run_sweep(dataclasses.replace(SWEEP, grid=grid), tmp_path / "sweep", chunk_seeds=CHUNK)
    assert not (tmp_path / "sweep").exists()


def test_cli_bad_grid_exits_2_with_one_line(tmp_path, capsys):
    argv = ["sweep", "--num-agents", "20", "--horizon", "20", "--updates-per-episode", "2",
            "--out", str(tmp_path / "s"), "--json"]
    for grid, parameter in (("alpha=0.5,x", "grid alpha"), ("alpha", "grid"), ("alpha=0.2,0.2", "grid alpha"),
                            ("utilisation=0.5,1.6", "utilisation")):
        assert cli.main([*argv, "--grid", grid]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and parameter in err[0] and "Traceback" not in err[0], err
    assert not (tmp_path / "s").exists()


def test_cli_bad_process_flags_exit_2_with_one_line(tmp_path, capsys):
    """Refused before jax.distributed starts (a valid set would start it in this process)."""
    argv = ["sweep", "--num-agents", "20", "--horizon", "20", "--updates-per-episode", "2",
            "--out", str(tmp_path / "s")]
    for flags, parameter in ((["--num-processes", "0"], "num_processes"),
                             (["--num-processes", "2", "--process-id", "5"], "process_id"),
                             (["--process-id", "-1"], "process_id"),
                             (["--coordinator-address", "garbage"], "coordinator_address"),
                             (["--coordinator-address", "host:99999"], "coordinator_address"),
                             (["--log", "mlflow"], None)):
        with pytest.raises(SystemExit) if parameter is None else contextlib.nullcontext():
            assert cli.main([*argv, *flags]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert parameter is None or (len(err) == 1 and parameter in err[0] and "Traceback" not in err[0]), err
    assert jax.process_count() == 1 and not (tmp_path / "s").exists()


@pytest.mark.slow
def test_chunk_size_from_memory_analysis_and_forced(full, tmp_path):
    learner = train.make_learner(SWEEP.group_config("dgpg", 20))
    mesh = sweep.make_mesh()
    size, memory = sweep.choose_chunk_size(learner, SWEEP.episodes, 6, mesh)  # the probe (4) is the cached program
    assert 1 <= size <= 6 and size % len(jax.devices()) == 0
    assert memory["bytes_per_item"] > 0 and memory["available_bytes"] > 0 and memory["largest_chunk"] >= 1
    big, _ = sweep.choose_chunk_size(learner, SWEEP.episodes, 10**6, mesh)
    assert 1 <= big <= memory["largest_chunk"]
    assert memory["largest_chunk"] * memory["bytes_per_item"] <= memory["available_bytes"] * sweep.MEMORY_FRACTION
    auto = sweep.run_sweep(SWEEP, tmp_path / "auto", max_chunks=0, bootstrap_reps=REPS)
    plan = auto["groups"][0]["plan"]
    assert plan["source"] == "memory analysis" and plan["chunk_seeds"] == size and plan["memory"]["bytes_per_item"] > 0
    assert auto["chunks_run"] == 0 and not auto["complete"]
    forced = sweep.run_sweep(SWEEP, tmp_path / "forced", chunk_seeds=3, max_chunks=0, bootstrap_reps=REPS)
    assert forced["groups"][0]["plan"]["chunk_seeds"] == 3 and forced["chunks_total"] == 2
    assert full[1]["groups"][0]["program_bytes"] > 0


@pytest.mark.slow
def test_cli_json_last_line(full, tmp_path, capsys):
    from test_trackers import read_scalars

    out = tmp_path / "cli"
    argv = [*CLI_ARGV, "--out", str(out), "--log", "tensorboard"]
    assert cli.main(argv) == 0
    names = sorted(str(p.relative_to(out / "logs")) for p in (out / "logs").glob("*/*"))
    assert names == [f"dgpg-n20-utilisation{u}/seed_{s}" for u in (0.1, 0.9) for s in (5, 6, 7)]
    frame = rows(out)
    mine = frame[(frame.grid_utilisation == 0.9) & (frame.seed == 6)]
    logged = read_scalars(out / "logs" / "dgpg-n20-utilisation0.9" / "seed_6")["train/ratio_to_best_fit"]
    assert [step for step, _ in logged] == [1, 2]
    np.testing.assert_allclose([v for _, v in logged], mine["ratio_to_best_fit"], rtol=1e-6)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 1
    result = json.loads(lines[-1])
    assert {"chunks_run", "chunks_skipped", "configurations"} <= set(result)
    assert (result["chunks_run"], result["chunks_skipped"]) == (2, 0)
    for item in result["configurations"]:
        assert {"algo", "num_agents", "grid_utilisation", "seeds_done", "final_ratio_to_reference_mean",
                "final_ratio_to_reference_ci95", "final_ratio_to_reference_iqm", "episodes_to_converge_mean"} <= set(item)
        low, high = item["final_ratio_to_reference_ci95"]
        assert low <= item["final_ratio_to_reference_mean"] <= high and item["seeds_done"] == 3
    assert result["configurations"] == full[1]["configurations"]
    assert cli.main([a for a in argv if a != "--json"]) == 0  # the table form, a restart: nothing to run
    assert "2 skipped" in capsys.readouterr().out


def assert_same_sweep(full, out: Path, result: dict) -> None:
    mine, theirs = rows(full[0]), rows(out)
    assert list(mine[KEY].itertuples(index=False)) == list(theirs[KEY].itertuples(index=False))
    for name in mine.columns:
        if name not in KEY:
            np.testing.assert_allclose(theirs[name].to_numpy(np.float64), mine[name].to_numpy(np.float64),
                                       rtol=2e-5, atol=1e-6, err_msg=name)
    assert len(result["configurations"]) == len(full[1]["configurations"])
    for a, b in zip(result["configurations"], full[1]["configurations"]):
        assert a["seeds_done"] == b["seeds_done"] == 3
        for name in ("final_ratio_to_reference_mean", "final_mean_response_time", "final_p99_response_time"):
            np.testing.assert_allclose(a[name], b[name], rtol=2e-5, err_msg=name)


@pytest.mark.slow
def test_four_devices_equal_one(four_devices, full):
    proc, out = four_devices
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["groups"][0]["devices"] == 4 and result["groups"][0]["batch"] == 4
    assert_same_sweep(full, out, result)


@pytest.mark.slow
def test_two_processes_equal_one_and_restart_skips_everything(two_processes, full):
    """Each process writes the part of each chunk on its own device; process 0 alone prints
    and writes the shared files; a restart of both runs no chunk."""
    procs, out = two_processes
    stdouts = finish(procs)
    assert not any(line.startswith("{") for line in stdouts[1].splitlines())  # gloo's own lines only
    result = json.loads(stdouts[0].strip().splitlines()[-1])
    assert result["processes"] == 2 and result["groups"][0]["devices"] == 2
    assert (result["chunks_run"], result["chunks_skipped"], result["complete"]) == (2, 0, True)
    assert sorted(p.name for p in (out / "chunks").glob("*.json")) == [
        f"dgpg-n20-{i}.p{k}of2.json" for i in (0, 1) for k in (0, 1)]
    part = sweep.read_chunk(out / "chunks" / "dgpg-n20-1.p1of2.json")
    assert part["items"] == [] and part["rows"] == []  # chunk 1's two runs are on process 0; padding on 1
    assert_same_sweep(full, out, result)
    again = json.loads(finish(start_processes(out))[0].strip().splitlines()[-1])
    assert (again["chunks_run"], again["chunks_skipped"]) == (0, 2)


@pytest.mark.slow
def test_ev_charging_sweep_equals_train_and_refuses_a_load_grid(tmp_path, capsys):
    """The sweep engine runs any task: an EV-charging sweep's per-seed final ratio to the
    valley-filling bound and its rows equal `dgpg train --task ev-charging` with that seed;
    a grid over utilisation is refused (the task has no traced load), before compiling."""
    argv = ["sweep", "--task", "ev-charging", "--algo", "dgpg", "--num-agents", "10", "--horizon", "24",
            "--episodes", "2", "--updates-per-episode", "2", "--seeds", "2", "--seed", "3",
            "--bootstrap-reps", str(REPS), "--out", str(tmp_path / "ev"), "--json"]
    assert cli.main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (result["task"], result["reference"]) == ("ev-charging", "valley")
    (item,) = result["configurations"]
    config = train.TrainConfig(env=EVConfig(num_agents=10, horizon=24), num_episodes=2, updates_per_episode=2)
    single = runner.run_training(config, seed=4, num_seeds=1)
    summary = single.summary()
    np.testing.assert_allclose(item["final_ratio_to_reference_per_seed"][1],
                               summary["final_ratio_to_reference_per_seed"][0], rtol=2e-5)
    assert item["final_ratio_to_reference_per_seed"][0] != item["final_ratio_to_reference_per_seed"][1]
    frame = pd.read_json(tmp_path / "ev" / "rows.jsonl", lines=True, precise_float=True)
    mine = frame.query("seed == 4").sort_values("episode")
    np.testing.assert_allclose(mine["ratio_to_valley"], single.logs.ratio_to_reference[0], rtol=2e-5)
    np.testing.assert_allclose(mine["valley_total_cost"], single.logs.reference.total_cost[0], rtol=2e-5)
    assert item["final_total_cost"] > item["valley_final_total_cost"] > 0

    assert cli.main([*argv[:-2], str(tmp_path / "ev2"), "--json", "--grid", "utilisation=0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "grid utilisation" in err[0] and "ev-charging" in err[0], err
    assert not (tmp_path / "ev2").exists()


# ----------------------------------------------------------------------------- self-describing chunks


def damage_body(path: Path, change) -> None:
    """Rewrite the content line of a chunk file through `change(doc)`, keeping its header."""
    header, body = path.read_text().split("\n", 1)
    doc = json.loads(body)
    change(doc)
    path.write_text(f"{header}\n{json.dumps(doc)}\n")


def edit_a_value(doc: dict) -> None:
    doc["rows"][0]["ratio_to_best_fit"] *= 2


@pytest.mark.parametrize("damages", [
    {0: lambda path: path.write_text(path.read_text()[:4622]), 1: lambda path: damage_body(path, edit_a_value)},
    {0: lambda path: path.write_text("{}"),
     1: lambda path: sweep.write_chunk(path, "0" * 16, sweep.read_chunk(path))},
    {0: lambda path: path.write_text(path.read_text().split("\n", 1)[1])},  # an earlier version's file: no header
])
def test_damaged_edited_or_foreign_chunks_are_named_set_aside_and_run_again(full, tmp_path, damages):
    """A truncated chunk, one with an edited value, `{}`, one of another configuration
    (a valid file with a foreign hash) and one without a header: each is named, moved to
    chunks/stale/ and run again; the result equals the uninterrupted sweep."""
    out = tmp_path / "sweep"
    shutil.copytree(full[0], out)
    for index, damage in damages.items():
        damage(out / "chunks" / f"dgpg-n20-{index}.json")
    with pytest.raises(ValueError, match="dgpg-n20-0.json"):
        sweep.read_chunks(out, SWEEP)
    events = []
    result = sweep.run_sweep(SWEEP, out, chunk_seeds=CHUNK, bootstrap_reps=REPS, on_progress=events.append)
    stale = [event for event in events if event["event"] == "stale"]
    assert sorted(Path(event["path"]).name for event in stale) == [f"dgpg-n20-{i}.json" for i in sorted(damages)]
    assert all(Path(event["path"]).parent == out / "chunks" / "stale" for event in stale)
    assert all(f"dgpg-n20-{i}.json" in event["reason"] for i, event in zip(sorted(damages), stale))
    assert (result["chunks_run"], result["complete"]) == (len(damages), True)
    assert result["configurations"] == full[1]["configurations"]
    pd.testing.assert_frame_equal(rows(out), rows(full[0]))


def test_chunks_of_other_arguments_are_not_taken_for_this_sweep(full, tmp_path, capsys):
    """sweep.json lost, then the same directory swept from seed 6: every chunk of seed 5
    is foreign (its hash), set aside and run again, and the summary holds seeds 6-8 only."""
    out = tmp_path / "sweep"
    shutil.copytree(full[0], out)
    (out / "sweep.json").unlink()
    other = dataclasses.replace(SWEEP, seed=6)
    result = sweep.run_sweep(other, out, chunk_seeds=CHUNK, bootstrap_reps=REPS)
    assert (result["chunks_run"], result["chunks_skipped"], result["complete"]) == (2, 0, True)
    assert [len(entry["reason"]) > 0 and "another configuration" in entry["reason"]
            for entry in result["stale_chunks"]] == [True, True]
    assert sorted(rows(out).seed.unique()) == [6, 7, 8]
    assert all(c["seeds"] == [6, 7, 8] for c in result["configurations"])
    hashes = {sweep.chunk_hash(changed, "dgpg", 20, size) for changed, size in [
        (SWEEP, CHUNK), (SWEEP, 2), (other, CHUNK), (dataclasses.replace(SWEEP, base=dataclasses.replace(
            BASE, num_episodes=3)), CHUNK), (dataclasses.replace(SWEEP, base=dataclasses.replace(
                BASE, learning_rate=1e-3)), CHUNK)]}
    assert len(hashes) == 5  # the chunk size, seeds, episodes and a learning rate each change the hash


def test_a_full_disk_during_a_sweep_is_one_line_and_leaves_no_temporary(full, tmp_path, monkeypatch, capsys):
    """All chunks done: the restart writes rows.jsonl and summary.json only. A full disk
    there: exit 1, one line naming the file and the cause, the old files intact."""
    out = tmp_path / "sweep"
    shutil.copytree(full[0], out)
    before = (out / "rows.jsonl").read_text()

    def full_disk(fd):
        raise OSError(28, os.strerror(28))

    monkeypatch.setattr(os, "fsync", full_disk)
    assert cli.main([*CLI_ARGV, "--out", str(out)]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line or "Traceback" in line]
    assert len(errors) == 1 and errors[0].startswith("dgpg sweep: error: file-system error at "), errors
    assert "rows.jsonl" in errors[0] and errors[0].endswith("no space left on the device")
    assert (out / "rows.jsonl").read_text() == before
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp") or p.name == "dgpg.lock"]
