"""Answer checking. On device: an exact token match of the final-answer suffix (the world's verifiable reward).

The world's answers are single tokens, so "the response ends in the answer line with the right number, the answer
marker appears exactly once, and the row stopped" is an exact, jit-able reward.
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp


def make_suffix_reward(template: Sequence[int], slot: int, once: Sequence[int] = ()):
  """reward_fn(tokens_NT, lengths_N, finished_N, targets_N) -> rewards_N in {0, 1}.

  template: the token ids the response must end with (stop token included); template[slot] is replaced by the
  row's target token. once: tokens that must occur exactly once in the response (format constraint: one answer).
  """
  check_once = len(once) > 0
  template = jnp.asarray(template, jnp.int32)
  k = template.shape[0]
  once = jnp.asarray(tuple(once) or (-1,), jnp.int32)

  def reward_fn(tokens_NT, lengths_N, finished_N, targets_N):
    N, T = tokens_NT.shape
    idx = lengths_N[:, None] - k + jnp.arange(k)[None, :]
    tail = jnp.take_along_axis(tokens_NT, jnp.clip(idx, 0, T - 1), axis=1)
    want = jnp.broadcast_to(template, (N, k)).at[:, slot].set(targets_N)
    ok = jnp.all(tail == want, axis=1) & (lengths_N >= k) & finished_N
    if check_once:
      live = jnp.arange(T)[None, :] < lengths_N[:, None]
      counts = jnp.sum((tokens_NT[:, :, None] == once[None, None, :]) & live[:, :, None], axis=1)
      ok = ok & jnp.all(counts == 1, axis=1)
    return ok.astype(jnp.float32)

  return reward_fn
