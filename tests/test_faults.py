"""Nothing lost, nothing mistaken: checkpoints that are never absent, resumes that keep
every logged episode, run directories that know their kind and their writer, and
file-system faults as one line.

Faults are injected between file operations (a patched function that raises), not by
timed kills, so each test is deterministic. Most tests need no compiled program: the
checkpoint functions take any pytree, and refusals come before compiling. The tests
that need a trained run (a resume over damaged files, a fault during training) are in
test_train.py, beside its saved run.
"""

import contextlib
import errno
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import orbax.checkpoint as ocp
import pytest

from dgpg_jax import checkpoint, cli, rundir, runner, train
from conftest import Fault, one_line
from test_train import BASE

TREE = {"w": jnp.arange(6.0).reshape(2, 3), "episode": jnp.int32(0)}


# ----------------------------------------------------------------------------- checkpoints


def tree(value: float) -> dict:
    return {"w": TREE["w"] + value, "episode": jnp.int32(value)}


def restore(path: Path) -> dict:
    return ocp.StandardCheckpointer().restore(path.resolve(), TREE)


def test_a_fault_between_writing_and_removing_leaves_both_checkpoints(tmp_path, monkeypatch):
    checkpoint.save_runner(tmp_path, tree(1), 1)
    monkeypatch.setattr(checkpoint, "_remove_older", lambda run_dir, episodes: (_ for _ in ()).throw(Fault()))
    with pytest.raises(Fault):
        checkpoint.save_runner(tmp_path, tree(2), 2)
    found = checkpoint.checkpoints(tmp_path)
    assert [episode for episode, _ in found] == [1, 2]
    assert int(restore(found[-1][1])["episode"]) == 2
    monkeypatch.undo()
    checkpoint.save_runner(tmp_path, tree(3), 3)  # the next save removes both older ones
    assert [episode for episode, _ in checkpoint.checkpoints(tmp_path)] == [3]


def test_a_fault_while_writing_keeps_the_previous_checkpoint_and_no_temporary(tmp_path, monkeypatch):
    """A full disk midway through orbax's write: OSError naming the new checkpoint and the
    cause; the previous checkpoint is complete and no temporary directory is left."""
    checkpoint.save_runner(tmp_path, tree(1), 1)
    real_save = ocp.StandardCheckpointer.save

    def fill_disk(self, path, state, **kwargs):
        real_save(self, Path(f"{path}.orbax-checkpoint-tmp-1"), state)  # a partly written new checkpoint
        self.wait_until_finished()
        raise RuntimeError("RESOURCE_EXHAUSTED: Error writing file: No space left on device")

    monkeypatch.setattr(ocp.StandardCheckpointer, "save", fill_disk)
    with pytest.raises(OSError) as caught:
        checkpoint.save_runner(tmp_path, tree(2), 2)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename.endswith("episode_2")
    assert rundir.describe_os_error(caught.value).endswith("no space left on the device")
    assert [p.name for p in (tmp_path / "checkpoint").iterdir()] == ["episode_1"]
    assert int(restore(checkpoint.checkpoints(tmp_path)[-1][1])["episode"]) == 1


def test_a_checkpoint_without_its_manifest_is_not_complete(tmp_path):
    """orbax has renamed its directory but the manifest, written last, is missing (a kill
    in between): not a checkpoint to resume from, and removed as a leftover."""
    checkpoint.save_runner(tmp_path, tree(1), 1)
    checkpoint.save_runner(tmp_path, tree(2), 2)
    (tmp_path / "checkpoint" / "episode_2" / checkpoint.MANIFEST).unlink()
    (tmp_path / "checkpoint" / "episode_1").mkdir()  # as if its removal had not happened yet
    assert checkpoint.checkpoints(tmp_path) == []
    checkpoint.save_runner(tmp_path, tree(2), 2)  # the next save removes the leftovers first
    assert [p.name for p in (tmp_path / "checkpoint").iterdir()] == ["episode_2"]


def test_a_read_only_checkpoint_directory_is_refused_before_compiling(tmp_path, monkeypatch):
    """A probe file in checkpoint/ (root ignores permission bits, so the fault is patched
    in): save_runner raises naming the directory before orbax starts, and a run into it is
    refused before anything compiles."""
    real_write = Path.write_bytes

    def read_only(self, data):
        if self.name.startswith(".write-test"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", read_only)
    with pytest.raises(OSError) as caught:
        checkpoint.save_runner(tmp_path, tree(1), 1)
    assert caught.value.errno == errno.EACCES and caught.value.filename.endswith("checkpoint")
    assert list((tmp_path / "checkpoint").iterdir()) == []
    monkeypatch.setattr(train, "init_runner", lambda *args: pytest.fail("compiled before refusing"))
    with pytest.raises(ValueError, match="out=.*permission denied; allowed a writable directory"):
        runner.run_training(BASE, 0, 1, out_dir=tmp_path / "new")
    assert not (tmp_path / "new").exists()


# ----------------------------------------------------------------------------- run directories


@pytest.mark.parametrize("command", ["train", "compare", "sweep"])
def test_out_empty_or_the_current_directory_is_refused(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "logs").mkdir()  # what --overwrite used to delete from the current directory
    base = [command, "--num-agents", "5", "--horizon", "40", "--episodes", "1", "--seeds", "1"]
    assert cli.main([*base, "--out", ""]) == 2
    assert "out=''" in one_line(capsys)
    for out in (".", str(tmp_path)):
        extra = [] if command == "sweep" else ["--overwrite"]
        assert cli.main([*base, "--out", out, *extra]) == 2
        assert "current directory" in one_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs"]


def test_a_fresh_empty_current_directory_is_accepted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert rundir.check_out(".", "train") == Path(".")


@pytest.mark.parametrize("kind", ["train", "compare", "sweep"])
def test_each_command_refuses_another_kinds_directory(kind, tmp_path, capsys):
    out = tmp_path / "other"
    out.mkdir()
    (out / rundir.KINDS[kind]).write_text("{}")
    before = sorted(p.name for p in out.iterdir())
    for command in set(rundir.KINDS) - {kind}:
        argv = [command, "--out", str(out), "--num-agents", "5", "--horizon", "40", "--episodes", "1", "--seeds", "1"]
        assert cli.main([*argv] + ([] if command == "sweep" else ["--overwrite"])) == 2
        assert f"holds a `dgpg {kind}` directory" in one_line(capsys)
    assert sorted(p.name for p in out.iterdir()) == before


def test_a_refused_run_leaves_no_directory(tmp_path, monkeypatch):
    """A run refused after its directory was created (here: the learner cannot be built)
    removes the directory it created, and keeps one that was there."""
    monkeypatch.setattr(runner, "_train", lambda *args: (_ for _ in ()).throw(ValueError("refused")))
    with pytest.raises(ValueError, match="refused"):
        runner.run_training(BASE, 0, 1, out_dir=tmp_path / "new")
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    with pytest.raises(ValueError, match="refused"):
        runner.run_training(BASE, 0, 1, out_dir=tmp_path / "kept")
    assert (tmp_path / "kept").is_dir()


@contextlib.contextmanager
def locked_by_another_process(path: Path):
    """`path` locked by a second Python process (its PID yielded) until the block ends."""
    code = ("import sys\nfrom dgpg_jax import rundir\nwith rundir.hold_lock(sys.argv[1]):\n"
            "    print('held', flush=True)\n    sys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc.pid
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)


def test_a_second_sweep_into_a_locked_directory_is_refused_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "sweep"
    out.mkdir()
    argv = ["sweep", "--out", str(out), "--num-agents", "5", "--horizon", "40", "--episodes", "1", "--seeds", "1"]
    with locked_by_another_process(out) as pid:
        assert cli.main(argv) == 2
        assert f"in use by another dgpg process (PID {pid} on " in one_line(capsys)
        with pytest.raises(ValueError, match=f"PID {pid}"):
            runner.run_training(BASE, 0, 1, out_dir=out)
    assert [p.name for p in out.iterdir()] == []  # nothing written; the lock file gone with its holder
    with rundir.hold_lock(out), rundir.hold_lock(out):  # free again, and re-entrant within one process
        assert (out / rundir.LOCK).read_text().startswith(f"PID {os.getpid()} on ")


# ----------------------------------------------------------------------------- file writes


def test_a_failed_atomic_write_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "rows.jsonl"
    path.write_text("old\n")

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError):
        rundir.write_atomic(path, "new\n")
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["rows.jsonl"]


@pytest.mark.parametrize("code, cause", [(errno.ENOSPC, "no space left on the device"),
                                         (errno.EROFS, "read-only file system"), (errno.EACCES, "permission denied")])
def test_file_system_faults_are_one_line_naming_path_and_cause(code, cause):
    error = rundir.as_os_error(OSError(code, os.strerror(code)), Path("R/checkpoint/episode_3"))
    assert rundir.describe_os_error(error) == f"file-system error at 'R/checkpoint/episode_3': {cause}"
    wrapped = rundir.as_os_error(RuntimeError(f"RESOURCE_EXHAUSTED: {os.strerror(code)}"), Path("R"))
    assert wrapped.errno == code and wrapped.filename == "R"


# ----------------------------------------------------------------------------- smaller refusals


def test_variance_with_an_empty_checkpoint_is_refused(capsys):
    assert cli.main(["variance", "--num-agents", "5", "--horizon", "40", "--checkpoint", ""]) == 2
    assert "checkpoint=''" in one_line(capsys)


def test_a_flag_of_another_task_is_named_as_such(capsys):
    assert cli.main(["eval", "--task", "ev-charging", "--utilisation", "0.5"]) == 2
    line = one_line(capsys)
    assert "--utilisation is a flag of the cloud-scheduling task" in line and "--task cloud-scheduling" in line


def test_non_finite_results_fail_the_command():
    columns = [("policy", "policy", ""), ("mean_response_time", "mean RT", ".3f")]
    cli.output.check_finite([{"policy": "best_fit", "mean_response_time": 1.0}], columns, "policy")
    with pytest.raises(cli.RunFailed, match="mean RT \\(mean_response_time\\) of best_fit is nan"):
        cli.output.check_finite([{"policy": "best_fit", "mean_response_time": float("nan")}], columns, "policy")


def test_a_reference_of_cost_zero_fails_the_command_in_one_line(capsys):
    """4 agents for 4 steps receive no job: Best-Fit's mean response time is 0, so no ratio
    exists; the command says so (exit status 1), no ZeroDivisionError."""
    assert cli.main(["eval", "--num-agents", "4", "--horizon", "4", "--episodes", "1", "--seeds", "1",
                     "--policy", "random"]) == 1
    assert "ratio_to_best_fit) of random is nan" in one_line(capsys)
