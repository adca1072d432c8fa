"""The cloud-scheduling env step in NumPy, batched over seeds, for the throughput benchmark.

The same model as `dgpg_jax.tasks.cloud` (without bursts or the memoryless option), written the way
a NumPy user would: arrays with a leading seed axis, every step vectorised over seeds,
agents, jobs and candidates, a Python loop only over time. All seeds share one generator and
one clock. Not bit-identical to JAX (other random numbers), same cost structure: Bernoulli
arrivals for all N agents, the first J in agent order, bimodal sizes, capacity-weighted
candidates (or uniform, or all M servers when k >= M), FIFO dispatch with tail drop by
sorting and prefix sums, Lindley service, and the (J, k, 10) job observation.
"""

import math

import numpy as np

from dgpg_jax.tasks.cloud import NUM_JOB_FEATURES, CloudConfig, make_params

F32 = np.float32


def raw_mean_size(config: CloudConfig) -> float:
    """Mean of the unscaled bimodal size: lognormal(0, sigma) and a Pareto clipped at xm * clip."""
    a, xm, clip = config.large_shape, config.large_scale, config.large_clip
    tail = xm * math.log(clip) if a == 1 else xm**a * ((xm * clip) ** (1 - a) - xm ** (1 - a)) / (1 - a)
    small = math.exp(config.small_sigma**2 / 2)
    return (1 - config.large_fraction) * small + config.large_fraction * (xm + tail)


class NumpyEnv:
    """`num_seeds` copies of the env stepped together; state arrays are (S, M), jobs (S, J)."""

    def __init__(self, config: CloudConfig, num_seeds: int):
        params = make_params(config)
        if config.burst_rate > 0 or config.memoryless:
            raise ValueError("NumpyEnv implements neither bursts nor the memoryless option: "
                             f"burst_rate={config.burst_rate}, memoryless={config.memoryless}")
        self.config = config
        self.all_candidates, self.capacity_weighted = params.all_candidates, params.capacity_weighted
        self.s, self.n, self.m = num_seeds, params.num_agents, params.num_servers
        self.j, self.k = params.num_rows, params.num_candidates
        scale = config.mean_job_steps
        capacity = np.asarray(params.capacity)
        self.mu = capacity / F32(scale)
        self.log_capacity = np.log(capacity)
        self.cumulative = np.cumsum(capacity) / capacity.sum()
        self.buffer_work = F32(config.buffer_time * scale) * self.mu
        self.penalty = config.rejection_penalty * scale
        self.blend = min(1.0, 1.0 / (config.utilisation_average_time * scale))
        self.p0 = config.utilisation * float(capacity.sum()) / (self.n * scale)
        self.size_scale = raw_mean_size(config)
        mu_sorted = np.sort(self.mu)[::-1]  # the reference split's fastest-first order
        self.root_sorted = np.sqrt(mu_sorted)
        self.mu_cumsum, self.root_cumsum = np.cumsum(mu_sorted), np.cumsum(self.root_sorted)
        self.seed_row = np.arange(self.s)[:, None]

    def arrival_probability(self) -> float:
        """Per-agent job probability at the current step: the daily sine, lowest at step 0."""
        return self.p0 * (1 - self.config.diurnal_amplitude * math.cos(2 * math.pi * self.time / self.config.horizon))

    def reset(self, seed: int) -> np.ndarray:
        """Empty queues, step 0, a fresh generator; returns the (S, J, k, 10) observation."""
        self.rng = np.random.default_rng(seed)
        self.time = 0
        self.backlog = np.zeros((self.s, self.m), F32)
        self.recent_utilisation = np.zeros((self.s, self.m), F32)
        self.sample_jobs()
        return self.observation()

    def sample_jobs(self) -> None:
        """This step's jobs: the first J arrivals in agent order, their sizes and candidates."""
        s, n, j, c = self.s, self.n, self.j, self.config
        arrives = self.rng.random((s, n), dtype=F32) < self.arrival_probability()
        slot = np.cumsum(arrives, axis=1) - 1
        seed, agent = np.nonzero(arrives & (slot < j))
        self.agent = np.full((s, j), n)
        self.agent[seed, slot[seed, agent]] = agent
        self.valid = self.agent < n
        self.num_overflow = arrives.sum(axis=1) - self.valid.sum(axis=1)
        small = np.exp(c.small_sigma * self.rng.standard_normal((s, j), dtype=F32))
        u = 1 - self.rng.random((s, j), dtype=F32)  # in (0, 1]
        large = np.minimum(c.large_scale * u ** (-1 / c.large_shape), c.large_scale * c.large_clip)
        is_large = self.rng.random((s, j), dtype=F32) < c.large_fraction
        self.size = np.where(self.valid, np.where(is_large, large, small) / self.size_scale, F32(0))
        self.candidates = self.sample_candidates()

    def sample_candidates(self) -> np.ndarray:
        """(S, J, k) candidate servers per job, with replacement, by capacity or uniformly; all M if k >= M."""
        shape = (self.s, self.j, self.k)
        if self.all_candidates:
            return np.broadcast_to(np.arange(self.m), shape)
        if self.capacity_weighted:
            u = self.rng.random(shape, dtype=F32)
            return np.minimum(np.searchsorted(self.cumulative, u, side="right"), self.m - 1)
        return self.rng.integers(0, self.m, shape)

    def random_policy(self) -> np.ndarray:
        """(S, J) server of a uniformly random candidate of each job."""
        index = self.rng.integers(0, self.k, (self.s, self.j))
        return np.take_along_axis(self.candidates, index[..., None], axis=2)[..., 0]

    def per_server_sum(self, server: np.ndarray, values: np.ndarray) -> np.ndarray:
        """(S, M + 1) sum of `values` (S, J) by server; index M collects the empty slots."""
        flat = (self.seed_row * (self.m + 1) + server).ravel()
        totals = np.bincount(flat, values.ravel(), minlength=self.s * (self.m + 1))
        return totals.reshape(self.s, self.m + 1).astype(F32)

    def work_ahead(self, server: np.ndarray, size: np.ndarray) -> np.ndarray:
        """(S, J) work sent to the same server by earlier slots: sort by server, prefix sums."""
        order = np.argsort(server, axis=1, kind="stable")
        sorted_size = np.take_along_axis(size, order, axis=1)
        before = np.cumsum(sorted_size, axis=1) - sorted_size
        per_server = self.per_server_sum(server, size)
        server_start = np.cumsum(per_server, axis=1) - per_server
        ahead = np.empty_like(size)
        sorted_server = np.take_along_axis(server, order, axis=1)
        np.put_along_axis(ahead, order, before - np.take_along_axis(server_start, sorted_server, axis=1), axis=1)
        return ahead

    def step(self, actions: np.ndarray):
        """Dispatch this step's jobs to servers `actions` (S, J), serve one step, draw the next
        jobs. Returns (obs, reward, truncated, info) like `dgpg_jax.tasks.cloud.step`, info trimmed."""
        target = np.where(self.valid, actions, self.m)
        ahead = self.work_ahead(target, self.size)
        finish_work = np.take_along_axis(self.backlog, actions, axis=1) + ahead + self.size
        accepted = self.valid & (finish_work <= self.buffer_work[actions])
        rejected = self.valid & ~accepted
        penalty = np.where(rejected, F32(self.penalty), F32(0))
        response_time = np.where(accepted, finish_work / self.mu[actions], penalty)
        arriving = self.per_server_sum(target, np.where(accepted, self.size, F32(0)))[:, :self.m]
        total = self.backlog + arriving
        busy = np.minimum(total / self.mu, F32(1))
        self.recent_utilisation += self.blend * (busy - self.recent_utilisation)
        self.backlog = total - np.minimum(total, self.mu)
        response_sum = response_time.sum(axis=1) + self.num_overflow * self.penalty
        info = {"response_time_sum": response_sum, "num_arrived": self.valid.sum(axis=1) + self.num_overflow}
        self.time += 1
        truncated = self.time >= self.config.horizon
        if truncated:
            self.time = 0
            self.backlog[:] = 0
            self.recent_utilisation[:] = 0
        self.sample_jobs()
        reward = -response_sum / self.config.mean_job_steps / self.n
        return self.observation(), reward, truncated, info

    def reference_share(self) -> np.ndarray:
        """(M,) utilisation of each server under the delay-optimal split of the expected work rate
        (square-root rule with water filling, as `dgpg_jax.tasks.cloud.analytical.reference_split`)."""
        rate = self.n * self.arrival_probability()
        if rate >= self.mu_cumsum[-1]:
            return np.ones(self.m, F32)
        level = (self.mu_cumsum - rate) / self.root_cumsum
        num_active = int(np.cumprod(self.root_sorted > level).sum())
        if num_active == 0:
            return np.zeros(self.m, F32)
        return np.maximum(self.mu - np.sqrt(self.mu) * level[num_active - 1], 0) / self.mu

    def observation(self) -> np.ndarray:
        """(S, J, k, 10) features of every candidate of every job, as `job_observation`."""
        cand, scale = self.candidates, self.config.mean_job_steps
        seed = self.seed_row[:, :, None]
        cand_mu = self.mu[cand]
        wait = self.backlog[seed, cand] / cand_mu / scale
        service = self.size[..., None] / cand_mu / scale
        finish = wait + service
        phase = 2 * math.pi * self.time / self.config.horizon
        obs = np.empty(cand.shape + (NUM_JOB_FEATURES,), F32)
        obs[..., 0] = np.log1p(wait)
        obs[..., 1] = np.log1p(service)
        obs[..., 2] = np.log1p(finish)
        obs[..., 3] = np.log1p(finish - finish.min(axis=2, keepdims=True))
        obs[..., 4] = self.log_capacity[cand]
        obs[..., 5] = self.recent_utilisation[seed, cand]
        obs[..., 6] = self.reference_share()[cand]
        obs[..., 7] = np.log(np.maximum(self.size, 1e-6))[..., None]
        obs[..., 8] = math.sin(phase)
        obs[..., 9] = math.cos(phase)
        obs[~self.valid] = 0
        return obs


def rollout(env: NumpyEnv, num_steps: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Reset, then `num_steps` random-policy steps. Per-seed totals: response time (steps),
    jobs arrived, jobs dispatched, and the observation sum."""
    env.reset(seed)
    totals = {"response": np.zeros(env.s), "arrived": np.zeros(env.s, int), "dispatched": np.zeros(env.s, int),
              "obs": np.zeros(env.s)}
    for _ in range(num_steps):
        totals["dispatched"] += env.valid.sum(axis=1)
        obs, _, _, info = env.step(env.random_policy())
        totals["response"] += info["response_time_sum"]
        totals["arrived"] += info["num_arrived"]
        totals["obs"] += obs.sum(axis=(1, 2, 3))
    return totals
