"""`dgpg_jax.trackers`: TensorBoard event files read back with an independent reader (TFRecord
framing and CRC-32C checked here, payloads parsed with the bundled `event_pb2`), W&B against
a fake `wandb` module that records its calls, and the checks of `--log`.

The columns: 2 runs x 3 episodes, value = 100 * run + episode + 0.1 (float32 rounding
matters: 0.1 is not exact), one NaN and one +inf left out, a histogram column left out.
"""

import dataclasses
import importlib.machinery
import struct
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from dgpg_jax import trackers
from conftest import at_once

pytest.importorskip("tensorboardX")
from tensorboardX.proto import event_pb2  # noqa: E402

RUNS = [("dgpg-n20-alpha0.4/seed_0", {"alpha": 0.4, "seed": 0}),
        ("dgpg-n20-alpha0.4/seed_1", {"alpha": 0.4, "seed": 1})]


def make_columns(num_episodes: int = 3, first_episode: int = 0) -> dict[str, np.ndarray]:
    runs = np.arange(2)[:, None]
    episodes = first_episode + np.arange(1, num_episodes + 1)[None, :]
    mean = (100.0 * runs + episodes + 0.1).astype(np.float32)
    entropy = (0.5 * mean).astype(np.float32)
    entropy[1, 0] = np.nan  # run 1, first episode of this call
    ratio = np.full((2, num_episodes), 0.75, np.float32)
    ratio[0, -1] = np.inf
    return {"mean_response_time": mean, "best_fit_mean_response_time": mean + np.float32(1.0),
            "num_jobs": np.full((2, num_episodes), 7, np.int32), "entropy": entropy, "ratio_to_best_fit": ratio,
            "response_time_histogram": np.ones((2, num_episodes, 4), np.int32)}


# --- an independent TFRecord / event reader ---------------------------------------------

def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bit by bit."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_records(path: Path) -> list[bytes]:
    """Payloads of a TFRecord file: uint64 length, uint32 masked CRC of the length, the
    payload, uint32 masked CRC of the payload (little-endian), both CRCs checked."""
    data, records, offset = path.read_bytes(), [], 0
    while offset < len(data):
        header = data[offset:offset + 8]
        (length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack("<I", data[offset + 8:offset + 12])
        payload = data[offset + 12:offset + 12 + length]
        (payload_crc,) = struct.unpack("<I", data[offset + 12 + length:offset + 16 + length])
        assert length_crc == masked_crc(header) and payload_crc == masked_crc(payload), path
        records.append(payload)
        offset += 16 + length
    return records


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] over the run's event files, in file-name order (TensorBoard's)."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    files = sorted(run_dir.glob("events.out.tfevents.*"))
    assert files, run_dir
    for path in files:
        events = [event_pb2.Event.FromString(record) for record in read_records(path)]
        assert events[0].file_version == "brain.Event:2"
        for event in events[1:]:
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def expected_scalars(columns: dict[str, np.ndarray], run: int, first_episode: int) -> dict[str, list]:
    """What the tracker should hold: float32 values, non-finite ones left out."""
    out: dict[str, list] = {}
    for name, value in columns.items():
        if value.ndim != 2:
            continue
        for e, x in enumerate(value[run]):
            if np.isfinite(x):
                out.setdefault(trackers.tag(name), []).append((first_episode + e + 1, float(np.float32(x))))
    return out


# --- TensorBoard --------------------------------------------------------------------------

def test_tensorboard_tags_steps_values_per_run(tmp_path):
    columns = make_columns()
    trackers.log_episodes("tensorboard", tmp_path, columns, 0, RUNS)
    for run, (run_name, _) in enumerate(RUNS):
        got = read_scalars(tmp_path / run_name)
        assert set(got) == {"train/mean_response_time", "best_fit/mean_response_time", "train/num_jobs",
                            "train/entropy", "train/ratio_to_best_fit"}  # no histogram
        assert got == expected_scalars(columns, run, 0)
    got0, got1 = read_scalars(tmp_path / RUNS[0][0]), read_scalars(tmp_path / RUNS[1][0])
    assert got0["train/mean_response_time"] == [(1, np.float32(1.1)), (2, np.float32(2.1)), (3, np.float32(3.1))]
    assert [step for step, _ in got1["train/entropy"]] == [2, 3]  # NaN at episode 1 left out
    assert [step for step, _ in got0["train/ratio_to_best_fit"]] == [1, 2]  # +inf at episode 3 left out
    assert got1["train/num_jobs"] == [(1, 7.0), (2, 7.0), (3, 7.0)]


def test_tensorboard_second_call_appends_later_episodes(tmp_path):
    first, later = make_columns(3, 0), make_columns(2, 3)
    trackers.log_episodes("tensorboard", tmp_path, first, 0, RUNS)
    trackers.log_episodes("tensorboard", tmp_path, later, 3, RUNS)  # within the same second, as a rule
    for run, (run_name, _) in enumerate(RUNS):
        assert len(list((tmp_path / run_name).glob("events.out.tfevents.*"))) == 2
        got = read_scalars(tmp_path / run_name)
        expected = expected_scalars(first, run, 0)
        for name, points in expected_scalars(later, run, 3).items():
            expected[name] = expected.get(name, []) + points
        assert got == expected
    assert [step for step, _ in read_scalars(tmp_path / RUNS[0][0])["train/mean_response_time"]] == [1, 2, 3, 4, 5]


def test_tensorboard_with_real_log_columns(tmp_path):
    """Every scalar of a real EpisodeLog gets a tag; the histograms do not."""
    from dgpg_jax import runlog, train
    from dgpg_jax.tasks.cloud.metrics import NUM_BINS, EpisodeMetrics

    def metrics(offset):
        fields = {f.name: np.full((1, 2), offset + i, np.float32)
                  for i, f in enumerate(dataclasses.fields(EpisodeMetrics))}
        fields["response_time_histogram"] = np.ones((1, 2, NUM_BINS), np.int32)
        return EpisodeMetrics(**fields)

    quantities = {name: np.full((1, 2), 0.5, np.float32) for name in train.EpisodeLog._fields[2:]}
    columns = runlog.log_columns(train.EpisodeLog(metrics(0.0), metrics(10.0), **quantities),
                                at_once(num_agents=5).make_task())
    trackers.log_episodes("tensorboard", tmp_path, columns, 4, [("seed_3", {})])
    got = read_scalars(tmp_path / "seed_3")
    names = [f.name for f in dataclasses.fields(EpisodeMetrics) if f.name != "response_time_histogram"]
    assert set(got) == ({f"train/{n}" for n in names} | {f"best_fit/{n}" for n in names}
                        | {f"train/{n}" for n in train.EpisodeLog._fields[2:] if n != "ratio_to_reference"}
                        | {"train/ratio_to_best_fit"})
    assert got["train/ratio_to_best_fit"] == [(5, 0.5), (6, 0.5)]
    assert got["best_fit/mean_response_time"] == [(5, 14.0), (6, 14.0)]  # offset 10 + index 4


def test_ev_charging_reference_tagged_valley(tmp_path):
    """EV charging's reference columns (valley_*) go under "valley/", not "train/"."""
    from dgpg_jax import runlog, train
    from dgpg_jax.tasks.ev import EVConfig
    from dgpg_jax.tasks.ev.evaluate import EpisodeMetrics

    def metrics(offset):
        return EpisodeMetrics(**{f.name: np.full((1, 2), offset + i, np.float32)
                                 for i, f in enumerate(dataclasses.fields(EpisodeMetrics))})

    task = EVConfig(num_agents=5).make_task()
    quantities = {name: np.full((1, 2), 0.5, np.float32) for name in train.EpisodeLog._fields[2:]}
    columns = runlog.log_columns(train.EpisodeLog(metrics(0.0), metrics(10.0), **quantities), task)
    trackers.log_episodes("tensorboard", tmp_path, columns, 0, [("seed_0", {})], task.reference_name)
    got = read_scalars(tmp_path / "seed_0")
    names = [f.name for f in dataclasses.fields(EpisodeMetrics)]
    assert {f"valley/{n}" for n in names} | {f"train/{n}" for n in names} | {"train/ratio_to_valley"} <= set(got)
    assert not any(tag.startswith("train/valley") for tag in got)
    cost = 10.0 + names.index("total_cost")
    assert got["valley/total_cost"] == [(1, cost), (2, cost)]


def test_none_writes_nothing(tmp_path):
    trackers.log_episodes("none", tmp_path, make_columns(), 0, RUNS)
    with trackers.open_tracker("none", tmp_path, "seed_0", {}) as tracker:
        tracker.log_scalars(1, {"train/entropy": 1.0})
    assert list(tmp_path.iterdir()) == []


def test_bad_columns_refused_before_a_run_is_opened(tmp_path):
    with pytest.raises(ValueError, match="columns of 2 runs are invalid for 1 named runs"):
        trackers.log_episodes("tensorboard", tmp_path, make_columns(), 0, RUNS[:1])
    columns = make_columns()
    columns["entropy"] = columns["entropy"][:, :2]
    with pytest.raises(ValueError, match=r"allowed one shape \[runs, episodes\]"):
        trackers.log_episodes("tensorboard", tmp_path, columns, 0, RUNS)
    with pytest.raises(ValueError, match="first_episode=-1 is invalid"):
        trackers.log_episodes("tensorboard", tmp_path, make_columns(), -1, RUNS)
    assert list(tmp_path.iterdir()) == []


# --- W&B, against a fake module ---------------------------------------------------------

class FakeRun:
    def __init__(self, calls, kwargs):
        self.calls, self.name = calls, kwargs["name"]
        calls.append(("init", self.name, kwargs))

    def log(self, data, step=None):
        self.calls.append(("log", self.name, dict(data), step))

    def finish(self):
        self.calls.append(("finish", self.name))


@pytest.fixture
def fake_wandb(monkeypatch):
    calls: list = []
    module = types.ModuleType("wandb")
    module.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    module.init = lambda **kwargs: FakeRun(calls, kwargs)
    module.Settings = lambda **kwargs: ("Settings", kwargs)
    monkeypatch.setitem(sys.modules, "wandb", module)
    return calls


def test_wandb_offline_runs_log_and_finish(tmp_path, fake_wandb):
    trackers.check_tracker("wandb")
    columns = make_columns()
    trackers.log_episodes("wandb", tmp_path, columns, 0, RUNS)
    inits = [call for call in fake_wandb if call[0] == "init"]
    assert [call[1] for call in inits] == [name for name, _ in RUNS]
    for (_, name, kwargs), (run_name, config) in zip(inits, RUNS):
        assert kwargs == {"mode": "offline", "dir": str(tmp_path), "project": trackers.WANDB_PROJECT,
                          "name": run_name, "group": "dgpg-n20-alpha0.4", "config": config, "reinit": "create_new",
                          "settings": ("Settings", {"console": "off"})}
    for run, (run_name, _) in enumerate(RUNS):
        logs = [(call[3], call[2]) for call in fake_wandb if call[0] == "log" and call[1] == run_name]
        assert [step for step, _ in logs] == [1, 2, 3]
        for step, data in logs:
            expected = {tag: value for tag, points in expected_scalars(columns, run, 0).items()
                        for s, value in points if s == step}
            assert data.keys() == expected.keys()
            np.testing.assert_allclose([data[k] for k in expected], list(expected.values()), rtol=1e-7)
    assert "train/entropy" not in dict(next(c[2] for c in fake_wandb if c[0] == "log" and c[1] == RUNS[1][0]))
    assert [call for call in fake_wandb if call[0] == "finish"] == [("finish", name) for name, _ in RUNS]
    assert fake_wandb[-2:] == [("finish", RUNS[0][0]), ("finish", RUNS[1][0])]  # after every log


def test_wandb_held_open_across_calls_is_one_run(tmp_path, fake_wandb):
    runs = [("seed_0", {"seed": 0})]
    opened = trackers.open_trackers("wandb", tmp_path / "train_run", runs)
    trackers.write_episodes(opened, {"entropy": np.array([[0.25]], np.float32)}, 0)
    trackers.write_episodes(opened, {"entropy": np.array([[np.nan, 0.5]], np.float32)}, 1)
    trackers.close_trackers(opened)
    assert [call[0] for call in fake_wandb] == ["init", "log", "log", "finish"]
    assert fake_wandb[0][2]["group"] == "train_run"  # no "/" in the run name: the directory's name
    assert fake_wandb[1][2:] == ({"train/entropy": 0.25}, 1)
    assert fake_wandb[2][2:] == ({"train/entropy": 0.5}, 3)  # step 2 was all NaN: not logged


# --- check_tracker ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mlflow", "", "TensorBoard", None])
def test_check_tracker_refuses_unknown_names(name):
    with pytest.raises(ValueError, match=r"log=.* is invalid: allowed one of \('none', 'tensorboard', 'wandb'\)"):
        trackers.check_tracker(name)


@pytest.mark.parametrize("name, module", [("tensorboard", "tensorboardX"), ("wandb", "wandb")])
def test_check_tracker_names_the_extra_when_the_package_is_missing(monkeypatch, name, module):
    monkeypatch.setitem(sys.modules, module, None)  # an import of it now fails
    with pytest.raises(ValueError, match=rf"needs the {module} package.*pip install -e '\.\[{name}\]'"):
        trackers.check_tracker(name)
    with pytest.raises(ValueError, match=rf"pip install -e '\.\[{name}\]'"):
        trackers.open_tracker(name, Path("unused"), "seed_0", {})


def test_check_tracker_accepts_installed_backends():
    trackers.check_tracker("none")
    trackers.check_tracker("tensorboard")
