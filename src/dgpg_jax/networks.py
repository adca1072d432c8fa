"""Actor and critics whose weights do not depend on N, M or k.

The actor scores every candidate of a job with one shared MLP (permutation-equivariant
over candidates), so weights trained at one N run at any other. The centralised critic
(MAPPO, DG-PG) embeds each server, mean-pools over servers and adds the global features;
the local critic (IPPO) embeds the candidates of one job and mean-pools over them.
"""

from typing import Sequence

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp


def orthogonal(scale: float) -> nn.initializers.Initializer:
    """Orthogonal initialiser whose QR stays unbatched under `vmap` over seeds: a batched
    LAPACK call splits over XLA's intra-op threads and can deadlock on a 2-core CPU."""
    base = nn.initializers.orthogonal(scale)

    def init(key, shape, dtype=jnp.float32):
        return jax.custom_batching.sequential_vmap(lambda k: base(k, shape, dtype))(key)

    return init


class MLP(nn.Module):
    """Tanh MLP acting on the last axis."""

    hidden: Sequence[int]
    out: int
    output_bias: bool = True

    @nn.compact
    def __call__(self, x):
        for width in self.hidden:
            x = nn.tanh(nn.Dense(width, kernel_init=orthogonal(2.0**0.5))(x))
        return nn.Dense(self.out, use_bias=self.output_bias, kernel_init=orthogonal(0.01))(x)


class Actor(nn.Module):
    """(..., k, F) candidate features -> (..., k) logits. No output bias: a bias shared by
    all candidates cancels in the softmax, so its gradient is rounding noise that Adam
    would turn into drift."""

    hidden: Sequence[int] = (64, 64)

    @nn.compact
    def __call__(self, obs):
        return MLP(self.hidden, 1, output_bias=False)(obs)[..., 0]


class CentralCritic(nn.Module):
    """(M, Fs) server features and (Fg,) global features -> () normalised value."""

    hidden: Sequence[int] = (64, 64)

    @nn.compact
    def __call__(self, server_features, global_features):
        embedding = MLP(self.hidden[:1], self.hidden[0])(server_features).mean(axis=-2)
        return MLP(self.hidden, 1)(jnp.concatenate([embedding, global_features], axis=-1))[..., 0]


class LocalCritic(nn.Module):
    """(J, k, F) one job's candidate features and () fraction of the day left -> (J,)
    normalised value per job (the clock is local information: every agent has it). The
    clock is () for one step or (J,) for packed rows of several steps."""

    hidden: Sequence[int] = (64, 64)

    @nn.compact
    def __call__(self, obs, day_left):
        embedding = MLP(self.hidden[:1], self.hidden[0])(obs).mean(axis=-2)
        clock = jnp.broadcast_to(jnp.asarray(day_left)[..., None], embedding.shape[:-1] + (1,))
        return MLP(self.hidden, 1)(jnp.concatenate([embedding, clock], axis=-1))[..., 0]


def policy_distribution(logits: jax.Array) -> distrax.Categorical:
    """The categorical policy over a job's candidates (the one place distrax is used)."""
    return distrax.Categorical(logits=logits)
