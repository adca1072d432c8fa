"""IPPO, MAPPO and DG-PG as settings of one PPO core.

They differ only in the critic's input (local job observation for IPPO, pooled server
state for MAPPO and DG-PG) and in one advantage term (DG-PG adds alpha times the
normalised guidance advantage). The choice is static, made in Python at trace time.
"""

import jax
import jax.numpy as jnp

from dgpg_jax.ppo import masked_mean

ALGORITHMS = ("dgpg", "mappo", "ippo")
ADVANTAGE_FORMS = ("additive", "convex")
ALPHA_SCHEDULES = ("linear", "constant")


def uses_central_critic(algo: str) -> bool:
    return algo != "ippo"


def uses_guidance(algo: str) -> bool:
    return algo == "dgpg"


def alpha_at(episode: jax.Array, decay_episodes: int, alpha_start: jax.Array, alpha_end: jax.Array,
             schedule: str) -> jax.Array:
    """Guidance weight at `episode` (0-based): linear from alpha_start at episode 0 to
    alpha_end at episode max(decay_episodes - 1, 1) and after, or alpha_start throughout."""
    if schedule == "constant":
        return jnp.asarray(alpha_start, jnp.float32)
    fraction = jnp.minimum(episode / max(decay_episodes - 1, 1), 1.0)
    return alpha_start + (alpha_end - alpha_start) * fraction


def policy_weight(alpha: jax.Array, form: str) -> jax.Array:
    """Weight of the return advantage: 1 (additive) or 1 - alpha (convex)."""
    return jnp.ones_like(alpha) if form == "additive" else 1.0 - alpha


def combine_advantages(return_advantage: jax.Array, guidance_advantage: jax.Array, alpha: jax.Array,
                       form: str) -> jax.Array:
    """DG-PG's advantage, both inputs already normalised: A + alpha A_g (additive) or
    (1 - alpha) A + alpha A_g (convex). alpha = 0 returns `return_advantage` itself,
    bit for bit, whatever the guidance holds."""
    combined = policy_weight(alpha, form) * return_advantage + alpha * guidance_advantage
    return jnp.where(alpha == 0, return_advantage, combined)


def expected_guidance_loss(logits: jax.Array, guidance: jax.Array, valid: jax.Array, alpha: jax.Array) -> jax.Array:
    """Exact-guidance term of the loss (to minimise): -alpha times the mean over valid jobs
    of sum_b pi(b) g(b). Its gradient in job i's logits is -alpha pi (g - E_pi g) / count:
    the guidance advantage of every candidate at once, with no sampling noise.

    Args:
      logits, guidance: (..., k); valid: (...) bool; alpha: ().
    """
    expected = (jax.nn.softmax(logits, axis=-1) * guidance).sum(-1)
    return -alpha * masked_mean(expected, valid)


def centred_guidance(guidance: jax.Array, probs: jax.Array) -> jax.Array:
    """(J, k) g_i(b) - sum_b' pi(b') g_i(b'): the guidance advantage of each candidate."""
    return guidance - (probs * guidance).sum(axis=-1, keepdims=True)


def normalise(x: jax.Array, mask: jax.Array, centre: bool = True, eps: float = 1e-8) -> jax.Array:
    """Scale the masked entries to unit second moment, after subtracting their mean if
    `centre` (for an already-centred quantity such as the guidance, `centre=False` keeps
    its centring); zeros where masked out. The result is zero only where the shifted x
    is, so alpha x normalise(...) is an exact zero at alpha = 0, never NaN."""
    count = jnp.maximum(mask.sum(), 1)
    mean = jnp.where(mask, x, 0.0).sum() / count if centre else 0.0
    shifted = jnp.where(mask, x - mean, 0.0)
    return shifted / jnp.sqrt((shifted**2).sum() / count + eps)
