"""The Task interface as a user meets it: the core imports no system, a task of a few
functions gets every default, `check_task` names what is wrong before anything compiles,
the generic leave-one-out guidance, and a user's own task (tests/links_task.py, the
route-choice example) through the command line: train, resume, evaluate its checkpoint,
sweep, variance. Runs saved before the redesign still load."""

import ast
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgpg_jax import check_task, checkpoint, cli, leave_one_out, registry
from dgpg_jax.runlog import read_metrics
import links_task
from conftest import one_line

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "dgpg_jax"


def test_core_imports_no_task_package():
    """No module outside tasks/ imports a system, statically or when imported."""
    offenders = []
    for path in SRC.rglob("*.py"):
        if "tasks" in path.relative_to(SRC).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(SRC)}: {name}" for name in names if name.startswith("dgpg_jax.tasks")]
    assert not offenders
    loaded = subprocess.run([sys.executable, "-c", "import sys, dgpg_jax, dgpg_jax.cli, dgpg_jax.runner, "
                             "dgpg_jax.sweep, dgpg_jax.compare, dgpg_jax.diagnostics, dgpg_jax.checkpoint; "
                             "print([m for m in sys.modules if m.startswith('dgpg_jax.tasks')])"],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"


def test_a_task_of_five_functions_gets_every_default():
    task = check_task(links_task.LinkConfig(num_agents=3, horizon=4).make_task())
    obs, state = task.reset(jax.random.key(0), task.params)
    assert task.rows == 3 and task.episode_rows == 4 * 3 * 2
    np.testing.assert_array_equal(task.valid(state), [True, True, True])
    np.testing.assert_array_equal(task.agent(state), [0, 1, 2])
    np.testing.assert_array_equal(task.to_actions(state, jnp.array([1, 0, 1])), [1, 0, 1])
    assert float(task.clock(state, task.params)) == 1.0
    entities, global_features = task.critic_inputs(state, task.params)
    assert entities.shape == (6, 1) and global_features.shape == (1,)
    # no reference: a unit one, so the ratio is the absolute cost
    reference = task.reference(task.params, jax.random.key(0))
    assert float(task.cost(reference)) == 1.0 and task.reference_name == "unit"
    # guidance from the aggregates: all three on link 0 (load 3, 0); moving one to link 1
    # changes minus the total latency 3 (1 + 3/3) = 6 into 2 (1 + 2/3) + 1 (1 + 1/3) = 4.67
    change = task.guidance(task.get_potential(None), state, jnp.zeros(3, jnp.int32), task.params, True)
    np.testing.assert_allclose(change, [[0.0, 6 - 14 / 3]] * 3, rtol=1e-6)


def _broken(**replace):
    return dataclasses.replace(links_task.LinkConfig().make_task(), **replace)


@pytest.mark.parametrize("replace, named", [
    ({"step": lambda k, s, a, p: links_task.step(k, s, a, p)[:4] + ({},)}, 'info["truncated"]'),
    ({"observe": lambda s, p: jnp.ones((4, 2))}, "observe(state, params)"),
    ({"reset": lambda k, p: (jnp.ones((4, 2)), links_task.LinkState(jnp.zeros((), jnp.int32)))}, "reset's obs"),
    ({"params": {"num_agents": 4}}, "params.num_agents"),
    ({"valid": lambda s: jnp.ones(4)}, "valid(state)"),
    ({"cost_key": "latency"}, "summarise(records, params)"),
])
def test_check_task_names_the_field(replace, named):
    with pytest.raises(ValueError) as error:
        check_task(_broken(**replace))
    assert named in str(error.value) and "expected" in str(error.value)


def test_leave_one_out_against_recomputation():
    """Each (row, candidate) against G recomputed from scratch with that row moved."""
    rng = np.random.default_rng(0)
    base, contribution = rng.random(5), rng.random((4, 3, 5))
    choice, valid = np.array([2, 0, 1, 1]), np.array([True, True, False, True])
    potential = lambda load, params: -jnp.sum(load**3)  # noqa: E731

    def g(choices):
        return -np.sum((base + sum(contribution[i, c] for i, c in enumerate(choices) if valid[i])) ** 3)

    got = leave_one_out(potential, base, contribution, choice, valid, None)
    want = [[g([b if j == i else c for j, c in enumerate(choice)]) - g(choice) if valid[i] else 0.0 for b in range(3)]
            for i in range(4)]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    linear = lambda load, params: jnp.sum(load * jnp.arange(5.0))  # noqa: E731
    np.testing.assert_allclose(leave_one_out(linear, base, contribution, choice, valid, None, exact=False),
                               leave_one_out(linear, base, contribution, choice, valid, None), rtol=1e-5, atol=1e-5)


def test_registry_names_a_users_task_and_refuses_what_is_not_one():
    assert registry.config_class("links_task:LinkConfig") is links_task.LinkConfig
    assert registry.task_name(links_task.LinkConfig()) == "links_task:LinkConfig"
    for name, says in [("links_task:Nope", "has no 'Nope'"), ("links_task:total_latency", "not a task's"),
                       ("no_such_module:X", "cannot be imported"), ("cloud", "allowed one of")]:
        with pytest.raises(ValueError, match=says):
            registry.config_class(name)


def test_saved_runs_from_before_the_redesign_load(tmp_path):
    """Runs written by the code before the tasks/ packages (config.json names the task;
    EV's `decision_slots` is now `decision_rows`) load with their metrics and actor."""
    for name, task_name in (("cloud", "cloud-scheduling"), ("ev", "ev-charging")):
        run = shutil.copytree(ROOT / "tests" / "data" / "saved_runs" / name, tmp_path / name)
        config, seed, seeds = checkpoint.load_config(run)
        assert registry.task_name(config.env) == task_name and (seed, seeds) == (0, 1)
        logs = read_metrics(run / "metrics.jsonl", config.env.make_task(), seeds, 2)
        assert logs.ratio_to_reference.shape == (1, 2)
        actor, params = checkpoint.load_actor(run, task_name)
        assert jax.tree.leaves(params)
    assert checkpoint.load_config(tmp_path / "ev")[0].env.decision_rows == 4


def _cli(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


USER = ("--task", "links_task:LinkConfig", "--num-agents", "4", "--horizon", "4", "--seeds", "2")
TRAIN = USER + ("--updates-per-episode", "1")


def test_a_users_task_trains_resumes_and_evaluates_from_the_command_line(tmp_path, capsys):
    run = tmp_path / "run"
    first = json.loads(_cli(capsys, "train", *TRAIN, "--episodes", "2", "--out", str(run), "--json"))
    assert first["task"] == "links" and first["final_ratio_to_unit"] == first["final_cost"] > 0
    assert json.loads((run / "config.json").read_text())["task"] == "links_task:LinkConfig"
    resumed = json.loads(_cli(capsys, "train", *TRAIN, "--episodes", "3", "--out", str(run), "--resume", str(run),
                              "--json"))
    assert resumed["episodes"] == 3
    rows = [json.loads(line) for line in _cli(capsys, "eval", *USER, "--episodes", "1", "--policy",
                                              f"checkpoint:{run}", "--json").splitlines()]
    assert [row["policy"] for row in rows] == [f"checkpoint:{run}", f"checkpoint:{run}:mode"]
    assert cli.main(["train", *TRAIN, "--potential", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "potential='nope' is invalid" in one_line(capsys)


def test_the_route_choice_example_trains_from_the_command_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    summary = json.loads(_cli(capsys, "train", "--task", "examples.traffic:TrafficConfig", "--num-agents", "10",
                              "--horizon", "8", "--updates-per-episode", "2", "--episodes", "3", "--seeds", "1",
                              "--out", str(tmp_path / "traffic"), "--json"))
    assert summary["task"] == "traffic" and 1.0 <= summary["final_ratio_to_optimum"] < 2.0


@pytest.mark.slow
def test_a_users_task_sweeps_and_measures_variance(tmp_path, capsys):
    result = json.loads(_cli(capsys, "sweep", *TRAIN[:6], "--updates-per-episode", "1", "--algo", "dgpg,mappo",
                             "--episodes", "2", "--seeds", "2", "--out", str(tmp_path / "sweep"), "--json"))
    assert result["task"] == "links_task:LinkConfig" and len(result["configurations"]) == 2
    variance = json.loads(_cli(capsys, "variance", *TRAIN[:6], "--rollouts", "4", "--json"))
    assert variance["num_agents"] == 4
