"""Recycling on device in the world, and the FIFO cache of judge prompts as part of the training state.

`recycle` applies the rules of `coevolve.recycle` (its module docstring) to an iteration's rollout tokens with
fixed shapes: every prompt group offers one judge slot, one reflection slot (a wrong answer) and one "confirm"
reflection slot (a correct answer, with probability `confirm_share`), each valid or not; the caps keep a uniformly
random subset of the valid ones. Differences from the host version, both from fixed shapes: the share of reflection
examples showing the full response is a per-example coin (`reflection_full_share`), not an exact count.

`Cache` is a ring buffer of C = 2 * batch judge prompts: examples are appended in slot order (judge slots, then
reflection slots), a reward-period update takes the `batch` oldest. With at most `batch` examples appended per
iteration (checked by `check_sizes`) and a take whenever `batch` are held, it never overflows.

Shapes: B prompts, G samples each, N = B * G rows, E = 3 B example slots, W the judge prompt width, C the capacity.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from sparkjax.coevolve import world_judge as wj
from sparkjax.coevolve.recycle import RecycleConfig


@flax.struct.dataclass
class Examples:
  """E judge / reflection examples: prompt, mask [E, W]; label [E] (a verdict token or the answer's token); kind
  [E] (world_judge.POINTWISE / PAIRWISE / REFLECTION); valid [E]."""

  prompt: jax.Array
  mask: jax.Array
  label: jax.Array
  kind: jax.Array
  valid: jax.Array


def _pick(key, allowed_BG):
  """A uniformly random allowed column per row [B] (0 when none is allowed)."""
  g = jax.random.gumbel(key, allowed_BG.shape)
  return jnp.argmax(jnp.where(allowed_BG, g, -jnp.inf), axis=1)


def _cap(key, valid, cap: int):
  """valid, keeping a uniformly random `cap` of the valid entries when there are more."""
  prio = jnp.where(valid, jax.random.uniform(key, valid.shape), 2.0)
  rank = jnp.zeros_like(valid, jnp.int32).at[jnp.argsort(prio)].set(jnp.arange(valid.shape[0], dtype=jnp.int32))
  return valid & (rank < cap)


def recycle(key, vocab: wj.JudgeVocab, rc: RecycleConfig, prompt_BP, prompt_mask_BP, tokens_NT, lengths_N,
            correct_N, gold_B) -> Examples:
  """One iteration's rollouts -> E = 3 B example slots (judge, reflection on a wrong answer, confirm), by the rules
  of `coevolve.recycle`; `correct_N` the rows' 0/1 correctness, `gold_B` the answer tokens."""
  B = prompt_BP.shape[0]
  G = tokens_NT.shape[0] // B
  ok = correct_N.reshape(B, G).astype(bool)
  any_ok, any_bad = ok.any(axis=1), (~ok).any(axis=1)
  mixed = any_ok & any_bad
  ks = jax.random.split(key, 12)
  right_i, wrong_i = _pick(ks[0], ok), _pick(ks[1], ~ok)
  right_i2, wrong_i2 = _pick(ks[2], ok), _pick(ks[3], ~ok)
  point, pair = "pointwise" in rc.judge_kinds, "pairwise" in rc.judge_kinds
  if point and pair:
    as_point = ~mixed | (jax.random.uniform(ks[4], (B,)) < rc.pointwise_in_mixed)
  else:
    as_point = jnp.full((B,), point)
  # Pointwise: an all-correct group shows a correct answer (Yes), an all-wrong one a wrong answer (No), a mixed one
  # either, 50/50.
  show_right = jnp.where(mixed, jax.random.uniform(ks[5], (B,)) < 0.5, any_ok)
  p_idx = jnp.where(show_right, right_i, wrong_i)
  first_correct = jax.random.uniform(ks[6], (B,)) < 0.5
  a_idx = jnp.where(first_correct, right_i, wrong_i)
  b_idx = jnp.where(first_correct, wrong_i, right_i)
  judge_valid = jnp.where(as_point, point, mixed & pair)

  row = lambda i: jnp.arange(B) * G + i
  q = wj.question(vocab, prompt_BP, prompt_mask_BP)
  shown = lambda i, full: wj.response(vocab, tokens_NT[row(i)], lengths_N[row(i)], full)
  phr = lambda k, kind: jax.random.randint(k, (B,), 0, len(vocab.phrasings[kind]))
  reasoning = jnp.asarray(rc.show_reasoning)
  pw = wj.render(vocab, wj.POINTWISE, phr(ks[7], wj.POINTWISE), dict(Q=q, R=shown(p_idx, reasoning)))
  pp = wj.render(vocab, wj.PAIRWISE, phr(ks[8], wj.PAIRWISE), dict(Q=q, RA=shown(a_idx, reasoning),
                                                                     RB=shown(b_idx, reasoning)))
  j_prompt = jnp.where(as_point[:, None], pw[0], pp[0])
  j_mask = jnp.where(as_point[:, None], pw[1], pp[1])
  j_label = jnp.where(as_point, jnp.where(show_right, vocab.yes, vocab.no),
                      jnp.where(first_correct, vocab.a, vocab.b))
  j_kind = jnp.where(as_point, wj.POINTWISE, wj.PAIRWISE)

  # Reflection: a wrong answer of each group that has one; "confirm": a correct one, with probability confirm_share.
  kr = jax.random.split(ks[9], 4)
  refl = []
  for idx, valid, k in ((wrong_i2, any_bad, kr[0]), (right_i2, any_ok & (jax.random.uniform(kr[1], (B,)) <
                                                                         rc.confirm_share), kr[2])):
    full = jax.random.uniform(k, (B,)) < rc.reflection_full_share
    t, m = wj.render(vocab, wj.REFLECTION, phr(jax.random.fold_in(k, 1), wj.REFLECTION),
                     dict(Q=q, R=shown(idx, full)))
    refl.append((t, m, valid))
  judge_valid = _cap(ks[10], judge_valid, rc.max_judge)
  r_valid = _cap(ks[11], jnp.concatenate([refl[0][2], refl[1][2]]), rc.max_reflection)
  kind_r = jnp.full((2 * B,), wj.REFLECTION, jnp.int32)
  return Examples(prompt=jnp.concatenate([j_prompt, refl[0][0], refl[1][0]]),
                  mask=jnp.concatenate([j_mask, refl[0][1], refl[1][1]]),
                  label=jnp.concatenate([j_label, gold_B, gold_B]).astype(jnp.int32),
                  kind=jnp.concatenate([j_kind.astype(jnp.int32), kind_r]),
                  valid=jnp.concatenate([judge_valid, r_valid]))


# ---- the cache -----------------------------------------------------------------------------------------------------


@flax.struct.dataclass
class Cache:
  """A FIFO ring buffer of judge examples plus the run's counters (all checkpointed with the training state).

  prompt, mask [C, W]; label, kind [C]; head (oldest slot), count: int32 scalars; iterations, judge_updates:
  policy iterations and reward-period updates done; epoch: resets done.
  """

  prompt: jax.Array
  mask: jax.Array
  label: jax.Array
  kind: jax.Array
  head: jax.Array
  count: jax.Array
  iterations: jax.Array
  judge_updates: jax.Array
  epoch: jax.Array

  @property
  def capacity(self) -> int:
    return self.prompt.shape[0]


def empty_cache(capacity: int, width: int, pad: int) -> Cache:
  z = lambda: jnp.zeros((), jnp.int32)  # distinct buffers: the state is donated
  return Cache(prompt=jnp.full((capacity, width), pad, jnp.int32), mask=jnp.zeros((capacity, width), bool),
               label=jnp.zeros((capacity,), jnp.int32), kind=jnp.zeros((capacity,), jnp.int32), head=z(), count=z(),
               iterations=z(), judge_updates=z(), epoch=z())


def push(cache: Cache, ex: Examples) -> Cache:
  """Appends the valid examples, in slot order. The caller guarantees room (`check_sizes`)."""
  C = cache.capacity
  pos = jnp.cumsum(ex.valid) - 1
  dest = jnp.where(ex.valid, (cache.head + cache.count + pos) % C, C)  # C: dropped
  put = lambda buf, x: jnp.concatenate([buf, buf[:1]]).at[dest].set(x)[:C]
  return cache.replace(prompt=put(cache.prompt, ex.prompt), mask=put(cache.mask, ex.mask),
                       label=put(cache.label, ex.label), kind=put(cache.kind, ex.kind),
                       count=cache.count + ex.valid.sum().astype(jnp.int32))


def take(cache: Cache, n: int) -> tuple[Cache, tuple]:
  """The n oldest examples (prompt [n, W], mask, label, kind), removed. The caller checks count >= n."""
  idx = (cache.head + jnp.arange(n)) % cache.capacity
  out = (cache.prompt[idx], cache.mask[idx], cache.label[idx], cache.kind[idx])
  return cache.replace(head=(cache.head + n) % cache.capacity, count=cache.count - n), out


def reset(cache: Cache) -> Cache:
  """An empty cache (a new epoch), counters kept."""
  return cache.replace(head=jnp.zeros_like(cache.head), count=jnp.zeros_like(cache.count), epoch=cache.epoch + 1)


def max_push(rc: RecycleConfig, prompts: int) -> int:
  """The most examples one iteration of `prompts` prompt groups can append."""
  judge = min(rc.max_judge, prompts) if rc.judge_kinds else 0
  return judge + min(rc.max_reflection, 2 * prompts)


def check_sizes(rc: RecycleConfig, prompts: int, batch: int, where: str = "coevolve"):
  """A cache of 2 * batch never overflows when one iteration appends at most `batch` examples."""
  if batch < 1:
    raise ValueError(f"{where}.judge_batch={batch}: expected at least 1 judge prompt per reward-period update")
  n = max_push(rc, prompts)
  if n > batch:
    raise ValueError(f"{where}: one iteration can recycle {n} examples (min(max_judge={rc.max_judge}, {prompts} "
                     f"prompts) + min(max_reflection={rc.max_reflection}, 2 x {prompts})) but judge_batch={batch} are "
                     "taken per update; lower max_judge / max_reflection or raise judge_batch")
