"""GRPO's swappable parts as registered pure functions, chosen by config strings.

Shapes: N = B * G sequences (rows b * G + g: the G samples of prompt b are adjacent), T completion tokens.
`mask_NT` is 1.0 on completion tokens that count (up to and including the stop token), 0.0 on padding.

Registries:
  ADVANTAGES[name](rewards_N, G) -> advantages_N
  POLICY_LOSSES[name](logp_NT, old_logp_NT, adv_NT, **kw) -> (loss_NT, clipped_NT)
  AGGREGATIONS[name](x_NT, mask_NT, **kw) -> scalar
  KL_ESTIMATORS[name](logp_NT, ref_logp_NT) -> kl_NT
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

ADVANTAGES: dict[str, Callable] = {}
POLICY_LOSSES: dict[str, Callable] = {}
AGGREGATIONS: dict[str, Callable] = {}
KL_ESTIMATORS: dict[str, Callable] = {}


def _register(table: dict, name: str):
  def deco(fn):
    table[name] = fn
    return fn
  return deco


def lookup(table: dict, name: str, what: str):
  """`table[name]` with an error that lists the registered names."""
  if name not in table:
    raise ValueError(f"unknown {what} {name!r}; registered: {', '.join(sorted(table))}")
  return table[name]


# ---- advantages --------------------------------------------------------------------------------------------------


def _groups(r_N, G):
  if r_N.shape[0] % G:
    raise ValueError(f"{r_N.shape[0]} rewards do not split into groups of G={G}")
  return r_N.reshape(-1, G)


@_register(ADVANTAGES, "grpo")
def grpo_advantages(rewards_N, G: int, eps: float = 1e-6):
  """A_i = (r_i - mean_G(r)) / (std_G(r) + eps), std over the group (population std). Zero-variance groups -> 0."""
  r = _groups(rewards_N.astype(jnp.float32), G)
  a = (r - r.mean(1, keepdims=True)) / (r.std(1, keepdims=True) + eps)
  return a.reshape(-1)


@_register(ADVANTAGES, "drgrpo")
def drgrpo_advantages(rewards_N, G: int):
  """Dr. GRPO: A_i = r_i - mean_G(r) (no std normalisation)."""
  r = _groups(rewards_N.astype(jnp.float32), G)
  return (r - r.mean(1, keepdims=True)).reshape(-1)


@_register(ADVANTAGES, "rloo")
def rloo_advantages(rewards_N, G: int):
  """RLOO: A_i = r_i - mean_{j != i} r_j = G / (G - 1) * (r_i - mean_G(r))."""
  if G < 2:
    raise ValueError("RLOO needs a group size G >= 2")
  r = _groups(rewards_N.astype(jnp.float32), G)
  return (G / (G - 1) * (r - r.mean(1, keepdims=True))).reshape(-1)


def zero_variance_fraction(rewards_N, G: int):
  """Fraction of groups whose G rewards are all equal (they carry no GRPO signal)."""
  r = _groups(rewards_N, G)
  return jnp.mean(jnp.all(r == r[:, :1], axis=1).astype(jnp.float32))


# ---- policy losses -----------------------------------------------------------------------------------------------


@_register(POLICY_LOSSES, "clip")
def clipped_policy_loss(logp_NT, old_logp_NT, adv_NT, eps_low: float = 0.2, eps_high: float = 0.2,
                        dual_clip: float = 0.0):
  """PPO clipped surrogate, per token, with separate low/high epsilon and optional dual clip.

  rho = exp(logp - old_logp);  L = -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A).
  Dual clip (c > 1, for A < 0 only): L = min(L, -c A), bounding the loss when rho >> 1.
  Returns (loss_NT, clipped_NT) where clipped marks tokens whose gradient the clip removed.
  """
  ratio = jnp.exp(logp_NT - old_logp_NT)
  unclipped = ratio * adv_NT
  clipped = jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv_NT
  loss = -jnp.minimum(unclipped, clipped)
  was_clipped = clipped < unclipped
  if dual_clip > 0:
    bound = -dual_clip * adv_NT
    dual = (adv_NT < 0) & (loss > bound)
    loss = jnp.where(dual, bound, loss)
    was_clipped = was_clipped | dual
  return loss, was_clipped.astype(jnp.float32)


# ---- loss aggregation --------------------------------------------------------------------------------------------


@_register(AGGREGATIONS, "token_mean")
def token_mean(x_NT, mask_NT, **_):
  """sum_{i,t} m x / sum_{i,t} m: every token of the batch weighs the same."""
  return jnp.sum(x_NT * mask_NT) / jnp.maximum(jnp.sum(mask_NT), 1.0)


@_register(AGGREGATIONS, "seq_mean_token_mean")
def seq_mean_token_mean(x_NT, mask_NT, **_):
  """mean_i (sum_t m x / sum_t m): every sequence weighs the same (original GRPO)."""
  per_seq = jnp.sum(x_NT * mask_NT, 1) / jnp.maximum(jnp.sum(mask_NT, 1), 1.0)
  return jnp.mean(per_seq)


@_register(AGGREGATIONS, "seq_sum_norm")
def seq_sum_norm(x_NT, mask_NT, norm_length: float | None = None, **_):
  """sum_{i,t} m x / (N * L): a constant length L (default T) removes the length bias (Dr. GRPO)."""
  N, T = x_NT.shape
  return jnp.sum(x_NT * mask_NT) / (N * (norm_length or T))


# ---- KL to the reference policy ----------------------------------------------------------------------------------


@_register(KL_ESTIMATORS, "k1")
def kl_k1(logp_NT, ref_logp_NT):
  """k1 = log pi(y) - log pi_ref(y) (unbiased, high variance)."""
  return logp_NT - ref_logp_NT


@_register(KL_ESTIMATORS, "k3")
def kl_k3(logp_NT, ref_logp_NT):
  """k3 = exp(log pi_ref - log pi) - (log pi_ref - log pi) - 1 (non-negative, low variance)."""
  d = ref_logp_NT - logp_NT
  return jnp.exp(d) - d - 1.0


def token_logprobs(logits_NTV, tokens_NT, temperature: float = 1.0):
  """log softmax(logits / T)[token] per position, float32, and the entropy of that distribution.

  Returns (logp_NT, entropy_NT).
  """
  logits = logits_NTV.astype(jnp.float32) / max(temperature, 1e-6)
  logz = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, tokens_NT[..., None], axis=-1)[..., 0]
  probs = jax.nn.softmax(logits, axis=-1)
  entropy = logz - jnp.sum(probs * logits, axis=-1)
  return picked - logz, entropy
