"""Metric definitions (evaluate.py) on hand-made cases: the response-time histogram and
its percentiles, the episode summary, and pooling over episodes and seeds.

The definitions a queueing reader expects: the mean is total response time over total
jobs, percentiles are those of the pooled jobs, the ratio to Best-Fit is a ratio of
pooled means, and every arrived job counts (rejected and slot-overflow jobs at the
penalty)."""

import jax.numpy as jnp
import numpy as np
import pytest

from dgpg_jax import evaluate
from dgpg_jax.tasks.cloud import metrics as cloud_metrics
from dgpg_jax.tasks.cloud.metrics import (BINS_PER_DECADE, NUM_BINS, EpisodeMetrics, StepRecord, histogram_percentiles,
                                  pool, response_time_histogram, summarise)
from conftest import at_once

CLOUD = type("Cloud", (), {"pool": staticmethod(pool), "cost_key": "mean_response_time"})()
BIN = 10 ** (1 / BINS_PER_DECADE)  # one bin's width as a factor: the percentiles' resolution
PARAMS = type("Params", (), {"mean_job_steps": jnp.float32(2.0), "rejection_penalty": jnp.float32(50.0)})()


def histogram(values, counts=None) -> np.ndarray:
    values = jnp.asarray(values, jnp.float32)
    counts = jnp.ones(values.shape, jnp.int32) if counts is None else jnp.asarray(counts)
    return np.asarray(response_time_histogram(values, counts))


def test_histogram_bins_are_log_spaced_and_count_every_entry():
    edges = cloud_metrics.histogram_edges()
    assert edges[0] == pytest.approx(1e-4) and edges[-1] == pytest.approx(1e4) and len(edges) == NUM_BINS + 1
    h = histogram([1e-6, 1.0, 1.0, 50.0, 1e4], [1, 2, 0, 3, 1])
    assert h.sum() == 7  # the zero-count entry is left out
    assert h[0] == 1  # below the bottom: the first bin
    assert h[NUM_BINS - 1] == 1  # the top edge itself: the last bin
    assert h[4 * BINS_PER_DECADE] == 2  # 1.0 starts bin 4 decades above 1e-4
    assert h[int(np.floor((np.log10(50.0) + 4) * BINS_PER_DECADE))] == 3


def test_percentiles_of_one_to_a_hundred():
    """100 jobs at 1, 2, ..., 100: p95 and p99 within one bin of 95 and 99."""
    p95, p99 = histogram_percentiles(histogram(np.arange(1, 101)))
    assert 95 / BIN <= p95 <= 95 * BIN
    assert 99 / BIN <= p99 <= 99 * BIN
    # the jax path gives the numpy path's value
    j95, j99 = histogram_percentiles(jnp.asarray(histogram(np.arange(1, 101))))
    np.testing.assert_allclose([float(j95), float(j99)], [p95, p99], rtol=1e-5)
    assert histogram_percentiles(np.zeros(NUM_BINS)) == [0.0, 0.0]


def test_pooled_percentiles_are_not_the_mean_of_episode_percentiles():
    """Episode A: 50 jobs at 1, 50 at 10 (p99 = 10); episode B: 100 jobs at 1 (p99 = 1).
    The mean of the two p99s is 5.5; the p99 of the 200 pooled jobs is 10."""
    a = histogram([1.0, 10.0], [50, 50])
    b = histogram([1.0], [100])
    (_, p99_a), (_, p99_b) = histogram_percentiles(a), histogram_percentiles(b)
    assert 10 / BIN <= p99_a <= 10 * BIN and 1 / BIN <= p99_b <= 1 * BIN
    _, pooled = histogram_percentiles(a + b)
    assert 10 / BIN <= pooled <= 10 * BIN


def records(response_steps, valid, overflow, rejected) -> StepRecord:
    """Time-stacked records of a hand-made episode (T steps, J slots)."""
    response_steps, valid = jnp.asarray(response_steps, jnp.float32), jnp.asarray(valid)
    overflow = jnp.asarray(overflow, jnp.int32)
    arrived = valid.sum(1) + overflow
    return StepRecord(reward=jnp.zeros(len(overflow)), response_time=response_steps, valid=valid,
                      num_arrived=arrived, num_overflow=overflow,
                      num_rejected=jnp.asarray(rejected, jnp.int32) + overflow,
                      response_time_sum=jnp.where(valid, response_steps, 0.0).sum(1) + overflow * 100.0,
                      served_work=jnp.ones(len(overflow)), capacity_work=jnp.full(len(overflow), 2.0))


def test_summarise_counts_every_job_overflow_at_the_penalty():
    """Two steps of two slots, mean_job_steps 2, penalty 50 mean job times (100 steps):
    step 0 has jobs of 2 and 4 steps, step 1 one job of 6 steps, one empty row and one
    overflowed arrival. Mean = (2 + 4 + 6 + 100) / 4 jobs / 2 = 14 mean job times."""
    m = summarise(records([[2.0, 4.0], [6.0, 0.0]], [[True, True], [True, False]], [0, 1], [0, 0]), PARAMS)
    assert int(m.num_jobs) == 4 and int(m.num_rejected) == 1
    assert float(m.response_time_sum) == pytest.approx(56.0)
    assert float(m.mean_response_time) == pytest.approx(14.0)
    assert float(m.rejection_rate) == pytest.approx(0.25)
    assert float(m.utilisation) == pytest.approx(0.5)
    h = np.asarray(m.response_time_histogram)
    assert h.sum() == 4 and h[NUM_BINS - 1] == 0
    np.testing.assert_array_equal(h, histogram([1.0, 2.0, 3.0, 50.0]))  # in mean job times, overflow included
    assert 50 / BIN <= float(m.p99_response_time) <= 50 * BIN  # the overflowed job is the tail


def metrics_of(jobs, sums) -> EpisodeMetrics:
    """EpisodeMetrics with the given job counts and response-time sums per episode (the
    histogram: every job at its episode's mean)."""
    jobs, sums = np.asarray(jobs), np.asarray(sums, np.float32)
    hist = np.stack([histogram([s / n], [n]) for n, s in zip(jobs, sums)])
    return EpisodeMetrics(episode_return=-sums, num_jobs=jobs, num_rejected=np.zeros_like(jobs),
                          response_time_sum=sums, mean_response_time=sums / jobs, p95_response_time=sums / jobs,
                          p99_response_time=sums / jobs, rejection_rate=np.zeros(len(jobs)),
                          utilisation=np.full(len(jobs), 0.5), response_time_histogram=hist)


def test_pool_is_a_ratio_of_sums_and_the_ratio_is_of_pooled_means():
    """A policy: episodes of 10 jobs (sum 10) and 90 jobs (sum 180): episode means 1 and 2,
    whose mean is 1.5, but the pooled mean is 190 / 100 = 1.9. Best-Fit on the same
    traces: sums 5 and 90 (means 0.5 and 1). Ratio of pooled means 1.9 / 0.95 = 2; the mean
    of the episode ratios would be (2 + 2) / 2 = 2 as well, so a third episode breaks the
    tie: 100 jobs at 1 against Best-Fit's 0.25 (ratio 4)."""
    policy, best = metrics_of([10, 90, 100], [10, 180, 100]), metrics_of([10, 90, 100], [5, 90, 25])
    pooled = pool(policy)
    assert pooled["num_jobs"] == 200
    assert pooled["mean_response_time"] == pytest.approx(290 / 200)
    assert evaluate.ratio_of_means(CLOUD, policy, best) == pytest.approx((290 / 200) / (120 / 200))
    assert evaluate.ratio_of_means(CLOUD, policy, best) != pytest.approx(np.mean([2, 2, 4]))
    assert 2.0 / BIN <= pooled["p99_response_time"] <= 2.0 * BIN  # 90 of the 200 jobs sit at 2
    assert pooled["utilisation"] == pytest.approx(0.5)


def test_seed_batches_give_the_same_metrics():
    """evaluate over batches of seeds (what a request too big for memory is split into)
    equals evaluate over all seeds at once: the same jobs exactly, the float32 sums up to
    rounding (a batch of another size is compiled differently)."""
    import jax

    from dgpg_jax.tasks.cloud import baselines

    task = at_once(num_agents=5, horizon=20).make_task()
    keys = evaluate.seed_keys(0, 4)
    run = jax.jit(lambda k, b: evaluate.evaluate(baselines.BASELINES["jsq"], task, k, 2, seeds_per_batch=b),
                  static_argnums=1)
    whole, batched = run(keys, None), run(keys, 3)  # 3 does not divide 4: a remainder batch too
    np.testing.assert_array_equal(whole.num_jobs, batched.num_jobs)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5), whole, batched)


@pytest.mark.slow
def test_per_run_actors_equal_evaluating_each_seed_alone():
    """evaluate_per_run gives run s the s-th actor on run s's traces: the same metrics as
    evaluating that actor alone on that run key, and another actor's metrics differ."""
    import jax

    from dgpg_jax import train

    learner = train.make_learner(train.TrainConfig(env=at_once(num_agents=10, horizon=24)))
    task, keys = learner.task, evaluate.seed_keys(3, 2)
    initial = train.init_runner(learner, keys[0], train.default_hyper(learner.config)).params["actor"]
    # two actors far apart (the initial ones all start at the uniform policy)
    actors = jax.tree.map(lambda x: x + jax.random.normal(jax.random.key(x.size), (2,) + x.shape), initial)
    policy = lambda p: train.learned_policy(task, learner.actor, p)  # noqa: E731
    both = jax.jit(lambda a, k: evaluate.evaluate_per_run(policy, a, task, k, 1, 5))(actors, keys)
    alone = jax.jit(lambda a, k: evaluate.evaluate(policy(a), task, k, 1, 5))
    for s in range(2):
        mine = alone(jax.tree.map(lambda x, s=s: x[s], actors), keys[s:s + 1])
        np.testing.assert_array_equal(both.num_jobs[s], mine.num_jobs[0])
        np.testing.assert_allclose(both.mean_response_time[s], mine.mean_response_time[0], rtol=1e-5)
    swapped = alone(jax.tree.map(lambda x: x[1], actors), keys[:1])
    assert not np.allclose(swapped.mean_response_time[0], both.mean_response_time[0], rtol=1e-5)


def test_a_request_too_big_for_memory_is_refused_with_the_estimate(monkeypatch):
    from dgpg_jax import memory
    from dgpg_jax.tasks.cloud import baselines

    monkeypatch.setattr(memory, "available_bytes", lambda device=None: 1000)
    task = at_once(num_agents=5, horizon=20).make_task()
    with pytest.raises(ValueError, match=r"needs about .* GiB of memory and 0.0 GiB is available"):
        evaluate.evaluate_policies([("jsq", baselines.BASELINES["jsq"])], task, evaluate.seed_keys(0, 2), 1)
