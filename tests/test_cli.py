"""The `dgpg` command line: eval, train, checkpoint evaluation, input errors and presets.

`cli.main(argv)` is called in-process (capsys captures its output); bad input must end
with exit status 2 and a one-line message on stderr, before anything is compiled.
"""

import contextlib
import io
import json
import math
import re

import numpy as np
import pytest

from dgpg_jax import cli
from dgpg_jax.evaluate import episodes_to_converge

EVAL_KEYS = {"policy", "num_agents", "episodes", "seeds", "num_jobs", "mean_return",
             "mean_response_time", "p95_response_time", "p99_response_time", "rejection_rate", "utilisation"}
TRAIN_KEYS = {"algo", "num_agents", "episodes", "seeds", "final_mean_response_time", "final_p99_response_time",
              "best_fit_final_p99_response_time", "final_ratio_to_best_fit", "episodes_to_converge", "wall_seconds",
              "compile_seconds"}
SMALL_EVAL = ["--episodes", "1", "--seeds", "1", "--horizon", "100", "--json"]


def json_lines(text: str) -> list[dict]:
    """Every non-empty line of stdout, each of which must be one JSON object."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_eval_json_prints_one_line_per_policy(capsys):
    assert cli.main(["eval", "--policy", "best_fit,random", "--num-agents", "20", *SMALL_EVAL]) == 0
    out = capsys.readouterr()
    rows = json_lines(out.out)
    assert [row["policy"] for row in rows] == ["best_fit", "random"]
    for row in rows:
        assert EVAL_KEYS <= set(row), EVAL_KEYS - set(row)
        assert (row["num_agents"], row["episodes"], row["seeds"]) == (20, 1, 1)
        assert row["ratio_to_reference"] == row["ratio_to_best_fit"]
        assert all(math.isfinite(row[key]) for key in EVAL_KEYS - {"policy"})
        assert row["mean_response_time"] > 0 and 0 <= row["rejection_rate"] <= 1 and 0 < row["utilisation"] <= 1
    best_fit, random = rows
    assert best_fit["ratio_to_best_fit"] == 1.0
    assert random["mean_response_time"] > best_fit["mean_response_time"]


@pytest.mark.parametrize(
    "argv, parameter",
    [
        (["eval", "--policy", "best_fit", "--num-agents", "0", *SMALL_EVAL], r"num[_-]agents"),
        (["eval", "--policy", "best_fit", "--utilisation", "2", *SMALL_EVAL], r"utilisation"),
        (["eval", "--policy", "best_fit", "--candidates", "0", *SMALL_EVAL], r"candidates"),
        (["eval", "--policy", "best_fit,fastest_guess", *SMALL_EVAL], r"policy"),
        (["eval", "--policy", "best_fit", "--horizon", "0", "--episodes", "1", "--seeds", "1"], r"horizon"),
        (["eval", "--policy", "best_fit", "--mean-job-steps", "-1", *SMALL_EVAL], r"mean[_-]job[_-]steps"),
        (["eval", "--policy", "best_fit", "--num-agents", "20", "--episodes", "0", "--seeds", "1"], r"episodes"),
        (["eval", "--policy", "greedy", "--beta", "0.5", *SMALL_EVAL], r"beta"),
        (["train", "--out", "unused", "--num-agents", "5", "--alpha", "1.5", "--episodes", "1"], r"alpha_start"),
        (["train", "--out", "unused", "--num-agents", "5", "--horizon", "100", "--updates-per-episode", "3"],
         r"updates_per_episode"),
        (["train", "--out", "unused", "--num-agents", "5", "--algo", "sac"], r"algo"),
        (["compare", "--out", "unused", "--num-agents", "5", "--algos", ","], r"algos"),
        (["compare", "--out", "unused", "--num-agents", "5", "--algos", "dgpg,dgpg"], r"algos"),
        (["eval", "--policy", ",", *SMALL_EVAL], r"policy"),
        (["eval", "--policy", "best_fit,best_fit", *SMALL_EVAL], r"policy"),
        (["eval", "--policy", "best_fit", "--beta", "-0.8", *SMALL_EVAL], r"beta"),
        (["eval", "--policy", "best_fit", "--large-shape", "nan", *SMALL_EVAL], r"large_shape"),
        (["eval", "--task", "ev-charging", "--policy", "greedy", "--beta", "-0.8", *SMALL_EVAL[:-3]], r"beta"),
        (["eval", "--task", "ev-charging", "--policy", "best_fit", *SMALL_EVAL[:-3]], r"policy"),
        (["eval", "--task", "ev-charging", "--preset", "paper", *SMALL_EVAL[:-3]], r"preset"),
        (["eval", "--task", "ev-charging", "--horizon", "1", *SMALL_EVAL[:-3]], r"horizon"),
        (["eval", "--task", "ev-charging", "--power-probabilities", "0.5", "0.2", "0.2", *SMALL_EVAL[:-3]],
         r"power_probabilities"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, parameter, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a stray output directory would land here
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("dgpg ")
    assert re.search(parameter, lines[0]), lines[0]
    assert not (tmp_path / "unused").exists()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tiny `dgpg train --json` run (two seeds) and what it printed."""
    out_dir = tmp_path_factory.mktemp("cli") / "run"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = cli.main(["train", "--algo", "dgpg", "--num-agents", "5", "--horizon", "100",
                         "--updates-per-episode", "2",
                         "--episodes", "2", "--seeds", "2", "--out", str(out_dir), "--json", "--log", "tensorboard"])
    return out_dir, code, stdout.getvalue()


def test_train_json_writes_the_run_directory(trained_run):
    out_dir, code, printed = trained_run
    assert code == 0
    for name in ("config.json", "metrics.jsonl", "learning_curve.png", "summary.json"):
        assert (out_dir / name).is_file(), name
    assert (out_dir / "checkpoint").is_dir()
    assert (out_dir / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json_lines((out_dir / "metrics.jsonl").read_text())
    assert [(m["seed"], m["episode"]) for m in metrics] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    config = json.loads((out_dir / "config.json").read_text())
    assert config["config"]["env"]["num_agents"] == 5 and config["seeds"] == 2

    rows = json_lines(printed)
    assert len(rows) == 1
    summary = rows[0]
    assert TRAIN_KEYS <= set(summary), TRAIN_KEYS - set(summary)
    assert (summary["algo"], summary["num_agents"], summary["episodes"], summary["seeds"]) == ("dgpg", 5, 2, 2)
    assert all(math.isfinite(summary[key]) for key in TRAIN_KEYS - {"algo"})
    ratio = np.array([[m["ratio_to_best_fit"] for m in metrics if m["seed"] == s] for s in (0, 1)])
    assert summary["episodes_to_converge"] == episodes_to_converge(ratio).mean()
    assert summary["wall_seconds"] >= summary["compile_seconds"] > 0
    assert summary == json.loads((out_dir / "summary.json").read_text())


def test_train_log_tensorboard_writes_each_seed_episode_by_episode(trained_run):
    """`--log tensorboard`: one event-file run per seed under OUT/logs, one point per
    episode (written after each jitted call), the values of metrics.jsonl."""
    from test_trackers import read_scalars

    out_dir, code, _ = trained_run
    assert code == 0
    assert sorted(p.name for p in (out_dir / "logs").iterdir()) == ["seed_0", "seed_1"]
    metrics = json_lines((out_dir / "metrics.jsonl").read_text())
    for s in (0, 1):
        scalars = read_scalars(out_dir / "logs" / f"seed_{s}")
        assert len(list((out_dir / "logs" / f"seed_{s}").glob("events.*"))) == 1
        for column, tag in (("ratio_to_best_fit", "train/ratio_to_best_fit"),
                            ("best_fit_mean_response_time", "best_fit/mean_response_time")):
            expected = [(m["episode"], m[column]) for m in metrics if m["seed"] == s]
            assert [step for step, _ in scalars[tag]] == [1, 2]
            np.testing.assert_allclose([v for _, v in scalars[tag]], [v for _, v in expected], rtol=1e-6)
        assert not any("histogram" in tag for tag in scalars)


def test_eval_of_a_checkpoint_at_another_size(trained_run, capsys):
    out_dir, code, _ = trained_run
    assert code == 0
    assert cli.main(["eval", "--policy", f"checkpoint:{out_dir}", "--num-agents", "20", *SMALL_EVAL]) == 0
    rows = json_lines(capsys.readouterr().out)
    assert rows and rows[0]["policy"] == f"checkpoint:{out_dir}"
    for row in rows:
        assert row["num_agents"] == 20
        assert all(math.isfinite(row[key]) for key in EVAL_KEYS - {"policy"})
        assert math.isfinite(row["ratio_to_best_fit"]) and row["ratio_to_best_fit"] > 0


def test_eval_of_a_missing_checkpoint_exits_2(tmp_path, capsys):
    assert cli.main(["eval", "--policy", f"checkpoint:{tmp_path / 'nothing'}", *SMALL_EVAL]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config.json" in err[0]


def test_paper_preset_and_overrides():
    parser = cli.build_parser()
    args = parser.parse_args(["train", "--out", "unused", "--preset", "paper"])
    env = cli.parser.make_env_config(args)
    assert env.memoryless is True
    assert env.mean_job_steps == 0.6
    assert env.candidate_sampling == "uniform"
    assert cli.parser.make_train_config(args, "dgpg").potential == "split"

    # explicit flags win over the preset
    args = parser.parse_args(["train", "--out", "unused", "--preset", "paper", "--mean-job-steps", "2",
                              "--no-memoryless", "--potential", "area"])
    env = cli.parser.make_env_config(args)
    assert (env.mean_job_steps, env.memoryless, env.candidate_sampling) == (2.0, False, "uniform")
    assert cli.parser.make_train_config(args, "dgpg").potential == "area"

    # without a preset: the CloudConfig defaults
    args = parser.parse_args(["eval", "--num-agents", "7"])
    env = cli.parser.make_env_config(args)
    assert (env.num_agents, env.memoryless, env.candidate_sampling, env.mean_job_steps) == (7, False, "capacity", 10.0)


def test_alpha_flag_sets_the_schedule():
    parser = cli.build_parser()
    constant = cli.parser.make_train_config(parser.parse_args(["train", "--out", "x", "--alpha", "0.4"]), "dgpg")
    assert (constant.alpha_start, constant.alpha_end, constant.alpha_schedule) == (0.4, 0.4, "constant")
    linear = cli.parser.make_train_config(parser.parse_args(["train", "--out", "x", "--alpha", "0.8", "0.1"]), "dgpg")
    assert (linear.alpha_start, linear.alpha_end, linear.alpha_schedule) == (0.8, 0.1, "linear")


@pytest.mark.slow
def test_compare_trains_evaluates_and_writes_one_table(tmp_path, capsys):
    """The whole `dgpg compare`: each algorithm trained, every baseline evaluated on the
    final episodes' traces, one JSON row each, the plot and summary.json written."""
    from dgpg_jax.tasks.cloud.baselines import BASELINES

    out_dir = tmp_path / "compare"
    argv = ["compare", "--algos", "dgpg", "--num-agents", "5", "--horizon", "20", "--updates-per-episode", "2",
            "--episodes", "2", "--seeds", "1", "--out", str(out_dir), "--json"]
    assert cli.main(argv) == 0
    rows = json_lines(capsys.readouterr().out)
    assert [row["policy"] for row in rows] == ["dgpg", *BASELINES]
    by_name = {row["policy"]: row for row in rows}
    assert by_name["best_fit"]["ratio_to_best_fit"] == 1.0
    assert all(row["mean_response_time"] > 0 and math.isfinite(row["ratio_to_best_fit"]) for row in rows)
    # one definition in the whole table: the ratio is the pooled mean over Best-Fit's, and the
    # learned row is the training run's own episodes, the baselines' traces
    for row in rows:
        assert row["ratio_to_best_fit"] == pytest.approx(row["mean_response_time"]
                                                         / by_name["best_fit"]["mean_response_time"], rel=1e-6)
    assert json.loads((out_dir / "summary.json").read_text()) == rows
    assert (out_dir / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out_dir / "dgpg" / "metrics.jsonl").is_file()


@pytest.mark.slow
def test_compilation_cache_makes_a_repeated_command_compile_nothing(tmp_path):
    """The CLI's persistent compilation cache: the first run fills $DGPG_COMPILATION_CACHE,
    and the same command again adds no entry (everything came from the cache)."""
    import os
    import subprocess
    import sys

    argv = [sys.executable, "-m", "dgpg_jax.cli", "eval", "--policy", "random", "--num-agents", "5",
            "--horizon", "20", "--episodes", "1", "--seeds", "1", "--json"]
    cache = tmp_path / "xla"

    def run(setting):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "DGPG_COMPILATION_CACHE": setting})
        assert done.returncode == 0, done.stderr[-2000:]
        return sorted(p.name for p in cache.iterdir()) if cache.exists() else []

    first = run(str(cache))
    assert first, "nothing was cached"
    assert run(str(cache)) == first


def test_compilation_cache_off_and_default_location(monkeypatch, tmp_path):
    import jax

    monkeypatch.setenv("DGPG_COMPILATION_CACHE", "off")
    assert cli.enable_compilation_cache() is None
    monkeypatch.setenv("DGPG_COMPILATION_CACHE", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    previous = jax.config.jax_compilation_cache_dir
    try:
        assert cli.enable_compilation_cache() == str(tmp_path / "dgpg_jax" / "xla")
    finally:
        jax.config.update("jax_compilation_cache_dir", previous)


def test_train_too_big_for_memory_exits_2_before_running(tmp_path, capsys):
    """A million seeds (within the seeds bound): refused with the estimate and what is
    available, from the compiled programs' memory analysis, before anything runs (the
    directory it created removed)."""
    out_dir = tmp_path / "big"
    argv = ["train", "--seeds", "1000000", "--num-agents", "5", "--horizon", "20", "--updates-per-episode", "2",
            "--episodes", "1", "--out", str(out_dir)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs about" in err[0] and "GiB is available" in err[0], err
    assert not out_dir.exists()


@pytest.mark.slow
def test_ev_charging_train_and_eval_through_the_same_commands(tmp_path, capsys):
    """`--task ev-charging`: train prints final_ratio_to_reference (the valley bound), its
    checkpoint's actor evaluates beside the EV baselines, and a cloud run's checkpoint is
    refused there."""
    out_dir = tmp_path / "ev"
    assert cli.main(["train", "--task", "ev-charging", "--num-agents", "20", "--episodes", "2", "--seeds", "1",
                     "--out", str(out_dir), "--json"]) == 0
    summary = json_lines(capsys.readouterr().out)[0]
    assert summary["task"] == "ev-charging" and summary["num_agents"] == 20
    assert summary["final_ratio_to_reference"] == summary["final_ratio_to_valley"] >= 1
    assert summary["final_total_cost"] == pytest.approx(summary["final_ratio_to_reference"]
                                                        * summary["valley_final_total_cost"], rel=1e-9)
    assert json.loads((out_dir / "config.json").read_text())["task"] == "ev-charging"
    assert cli.main(["eval", "--task", "ev-charging", "--num-agents", "30", "--episodes", "1", "--seeds", "1",
                     "--policy", f"arrival,greedy,checkpoint:{out_dir}", "--json"]) == 0
    rows = {row["policy"]: row for row in json_lines(capsys.readouterr().out)}
    assert set(rows) == {"arrival", "greedy", f"checkpoint:{out_dir}", f"checkpoint:{out_dir}:mode"}
    assert all(row["ratio_to_valley"] >= 1 and row["num_agents"] == 30 for row in rows.values())
    assert rows["arrival"]["ratio_to_valley"] > rows["greedy"]["ratio_to_valley"]
    assert cli.main(["eval", "--policy", f"checkpoint:{out_dir}", *SMALL_EVAL]) == 2
    assert "ev-charging run" in capsys.readouterr().err
