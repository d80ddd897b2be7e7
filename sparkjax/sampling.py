"""Batched, jitted sampling: one prefill per prompt, then a `lax.while_loop` decode over a preallocated KV cache.

Layout: prompts are left-padded to a bucket length P so every row's next token goes to the same cache slot; rope
positions skip the padding. G samples of a prompt share its single prefill (the cache rows are repeated after it),
which runs `prefill_chunk` tokens at a time for long prompts.
Row r = b * G + g draws its token at step t with `fold_in(key[b, g], t)`, so a sample depends only on its own key:
G samples in one call equal G calls with one sample each and the same keys.

The returned log-probs are log softmax(logits / T) of the sampled tokens (the unfiltered, temperature-scaled policy
that GRPO's importance ratio is computed against); with T = 0 (greedy) they are log softmax(logits).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sparkjax.models import transformer
from sparkjax.models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """Static sampling settings (hashable: one compiled program per distinct value)."""

  max_new_tokens: int = 64
  temperature: float = 1.0  # 0 = greedy
  top_k: int = 0  # 0 = off
  top_p: float = 1.0  # 1 = off
  num_samples: int = 1  # G completions per prompt
  stop_tokens: tuple[int, ...] = ()
  pad_id: int = 0
  # Decode with per-layer weight arrays instead of the stacked [L, ...] ones: None = on the CPU backend for layers
  # over PER_LAYER_MIN_BYTES (see `sample_with_keys`). An explicit value lets ahead-of-time compilation for another
  # platform pick its own path.
  per_layer_weights: bool | None = None
  # Prompts longer than this are prefilled this many tokens at a time (0 = in one pass): a one-pass prefill of B
  # prompts of P tokens holds [B, heads, P, P + max_new_tokens] attention scores per layer, which killed a Stage I on
  # real text at 24 GB (20 meta-critique prompts bucketed to 2,048 tokens, a 1.5B model; README).
  prefill_chunk: int = 512

  def __post_init__(self):
    if not 0.0 < self.top_p <= 1.0:  # also false for NaN
      raise ValueError(f"top_p={self.top_p}: expected a value in (0, 1]")
    if not 0.0 <= self.temperature < float("inf"):
      raise ValueError(f"temperature={self.temperature}: expected a finite number >= 0 (0 = greedy)")
    if self.top_k < 0:
      raise ValueError(f"top_k={self.top_k}: expected >= 0 (0 = off)")
    if self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens={self.max_new_tokens}: expected >= 1")
    if self.num_samples < 1:
      raise ValueError(f"num_samples={self.num_samples}: expected >= 1")
    if self.prefill_chunk < 0:
      raise ValueError(f"prefill_chunk={self.prefill_chunk}: expected >= 0 (0 = one pass)")


class SampleOutput(NamedTuple):
  """Completions of B prompts x G samples, rows ordered b * G + g."""

  tokens: jax.Array  # [B*G, max_new_tokens] int32; pad_id after a row's stop token
  logprobs: jax.Array  # [B*G, max_new_tokens] float32; 0 at padding
  lengths: jax.Array  # [B*G] int32 generated tokens, stop token included
  finished: jax.Array  # [B*G] bool: the row emitted a stop token


def filter_logits(logits_BV, top_k: int = 0, top_p: float = 1.0):
  """Sets to -inf every logit outside the top-k and outside the top-p nucleus.

  Nucleus: the smallest set of most likely tokens whose probability sums to >= top_p (the most likely token is
  always kept). Implemented as a per-row logit threshold, so ties at the threshold are kept.
  """
  neg_inf = jnp.finfo(logits_BV.dtype).min
  if top_k > 0 and top_k < logits_BV.shape[-1]:
    kth = _largest_threshold(logits_BV, lambda keep: jnp.sum(keep, axis=-1, dtype=jnp.int32) >= top_k)
    logits_BV = jnp.where(logits_BV < kth, neg_inf, logits_BV)
  if top_p < 1.0:
    probs = jax.nn.softmax(logits_BV, axis=-1)
    # The nucleus's smallest logit s_m is the largest value v whose {x >= v} holds >= top_p of the mass: every
    # value above s_m sorts before it, so the mass above it is < top_p.
    threshold = _largest_threshold(logits_BV, lambda keep: jnp.sum(jnp.where(keep, probs, 0), axis=-1) >= top_p)
    logits_BV = jnp.where(logits_BV < threshold, neg_inf, logits_BV)
  return logits_BV


def _largest_threshold(x_BV, enough):
  """Per row, the largest value v of x such that `enough(x >= v)` holds ([B, 1]; `enough` maps a [B, V] bool mask
  to [B] bool and must be monotone: true for every smaller threshold once true).

  A bisection over the 32 bits of float32 values mapped to order-preserving unsigned integers: 32 fused
  compare-and-reduce passes over [B, V]. XLA:CPU lowers `lax.top_k` and `sort` to a full sort of every row, ~6 ms
  per 32k-token row per decode step (slower than a 28M-parameter model's whole step).
  """
  bits = jax.lax.bitcast_convert_type(x_BV.astype(jnp.float32), jnp.uint32)
  key = jnp.where(bits >> 31 == 1, ~bits, bits | np.uint32(1 << 31))  # x < y <=> key(x) < key(y)
  ans = jnp.zeros(x_BV.shape[:1] + (1,), jnp.uint32)
  for b in range(31, -1, -1):
    cand = ans | np.uint32(1 << b)
    ans = jnp.where(enough(key >= cand)[:, None], cand, ans)
  bits = jnp.where(ans >> 31 == 1, ans & np.uint32(0x7FFFFFFF), ~ans)
  return jax.lax.bitcast_convert_type(bits, jnp.float32).astype(x_BV.dtype)


def _first_argmax(x_BV):
  """`jnp.argmax(x, -1)` (first maximal index, NaN counts as maximal) as two plain reductions.

  XLA:CPU lowers argmax to a slow variadic (value, index) reduce; max-then-min-index is the same result ~7x faster.
  """
  m = jnp.max(x_BV, axis=-1, keepdims=True)
  hit = (x_BV == m) | jnp.isnan(x_BV)
  iota = jax.lax.broadcasted_iota(jnp.int32, x_BV.shape, x_BV.ndim - 1)
  return jnp.min(jnp.where(hit, iota, x_BV.shape[-1]), axis=-1)


def _threefry2x32(k1, k2, x1, x2):
  """The Threefry-2x32 hash (20 rounds) behind jax's default PRNG, written out so XLA fuses it into one loop.

  jax lowers it on CPU as a 5-iteration while loop that writes two [B, V] arrays per iteration; per decode step
  that cost more than the rest of the sampling.
  """
  ks = (k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA))
  rotations = ((13, 15, 26, 6), (17, 29, 16, 24))
  x1, x2 = x1 + ks[0], x2 + ks[1]
  for i in range(5):
    for r in rotations[i % 2]:
      x1 = x1 + x2
      x2 = x1 ^ ((x2 << r) | (x2 >> (32 - r)))
    x1 = x1 + ks[(i + 1) % 3]
    x2 = x2 + ks[(i + 2) % 3] + np.uint32(i + 1)
  return x1, x2


def _fast_gumbel_ok(keys_B, dtype) -> bool:
  """Whether `_gumbel` can reproduce `jax.random.gumbel` bit for bit (the default PRNG and settings)."""
  # Unknown settings (other jax versions) take the jax.random path.
  return (jnp.issubdtype(keys_B.dtype, jax.dtypes.prng_key) and jax.random.key_impl(keys_B) == "threefry2x32"
          and getattr(jax.config, "jax_threefry_partitionable", False)
          and not getattr(jax.config, "jax_high_dynamic_range_gumbel", True) and dtype == jnp.float32)


def _gumbel(keys_B, V: int, dtype):
  """Row b is `jax.random.gumbel(keys_B[b], (V,), dtype)`, bit for bit."""
  if not _fast_gumbel_ok(keys_B, dtype):
    return jax.vmap(lambda k: jax.random.gumbel(k, (V,), dtype))(keys_B)
  # jax.random.bits: hash the 64-bit counter (hi, lo) = (0, v) and xor the two output words.
  key_B2 = jax.random.key_data(keys_B)
  lo_BV = jax.lax.broadcasted_iota(jnp.uint32, (key_B2.shape[0], V), 1)
  h1, h2 = _threefry2x32(key_B2[:, :1], key_B2[:, 1:], jnp.zeros_like(lo_BV), lo_BV)
  bits = h1 ^ h2
  # jax.random.uniform(minval=tiny, maxval=1): 23 random mantissa bits -> [1, 2) - 1, then scaled and clamped.
  tiny = np.float32(np.finfo(np.float32).tiny)
  floats = jax.lax.bitcast_convert_type((bits >> 9) | np.uint32(0x3F800000), jnp.float32) - np.float32(1)
  u = jnp.maximum(tiny, floats * (np.float32(1) - tiny) + tiny)
  return -jnp.log(-jnp.log(u))


def _choose(logits_BV, step_keys_B, sp: SamplingParams):
  """Next tokens [B] and their log-probs [B] (see the module docstring for which distribution)."""
  # Division by 1 is exact, so skipping it saves a pass over [B, V] without changing any value.
  scaled = logits_BV if sp.temperature in (0, 1) else logits_BV / sp.temperature
  if sp.temperature == 0:
    tok = _first_argmax(scaled)
  else:
    filtered = filter_logits(scaled, sp.top_k, sp.top_p)
    # Exactly `jax.random.categorical` (argmax of logits + Gumbel noise), with the cheaper argmax above.
    tok = _first_argmax(filtered + _gumbel(step_keys_B, filtered.shape[-1], filtered.dtype))
  # log_softmax evaluated at the chosen token only (same arithmetic as jax.nn.log_softmax, no [B, V] output).
  shifted = scaled - jnp.max(scaled, axis=-1, keepdims=True)
  lse = jnp.log(jnp.sum(jnp.exp(shifted), axis=-1))
  return tok, jnp.take_along_axis(shifted, tok[:, None], axis=-1)[:, 0] - lse


def _step_logits(params, cfg: ModelConfig, hidden_B1D):
  """`transformer.unembed` of one position per row: logits [B, V] float32.

  With tied embeddings the weight is [V, D]; XLA:CPU's matmul streams it ~1.5x faster as the left operand, so this
  computes [V, B] and transposes (B * V elements, small next to V * D). The barrier stops XLA from folding the
  transpose back into the matmul.
  """
  if not cfg.tie_embeddings:
    return transformer.unembed(params, cfg, hidden_B1D)[:, 0]
  logits_VB = jnp.einsum("vd,bd->vb", params["embed"].astype(cfg.dtype), hidden_B1D[:, 0],
                         preferred_element_type=jnp.float32)
  return jax.lax.optimization_barrier(logits_VB).T


# Decoding on the CPU splits the layers' weights apart above this size (see `sample_with_keys`).
PER_LAYER_MIN_BYTES = 256 << 20


def prefill(params, cfg: ModelConfig, prompt_BP, positions_BP, mask_BP, chunk: int):
  """The prompts written into a cache of P slots: (hidden_BTD of the last chunk, cache). Prompts of P > chunk tokens
  (P a multiple of chunk) go `chunk` tokens at a time, chunk i attending to the (i + 1) * chunk slots written so
  far (the cache grows by a chunk each time), so the attention scores held are [B, heads, chunk, <= P] rather than
  [B, heads, P, P] and no chunk scores the empty slots after it; other lengths go in one pass. The chunks are
  unrolled: each has its own shapes (P / chunk copies of the decoder in the compiled program).

  prompt_BP: int32 [B, P] left-padded tokens; positions_BP: their rope positions; mask_BP: True on real tokens.
  Returns hidden [B, C, D] of the last C prompt positions after the final norm (C = chunk when chunked, else P)
  and a `transformer.KVCache` of P slots per row.
  """
  B, P = prompt_BP.shape
  if not chunk or P <= chunk or P % chunk:
    return transformer.decode(params, cfg, prompt_BP, positions_BP, mask_BP, transformer.init_cache(cfg, B, P), 0)
  cache = transformer.init_cache(cfg, B, 0)
  for lo in range(0, P, chunk):
    piece = lambda a: a[:, lo:lo + chunk]
    cache = transformer.grow_cache(cache, lo + chunk)
    hidden, cache = transformer.decode(params, cfg, piece(prompt_BP), piece(positions_BP), piece(mask_BP), cache, lo)
  return hidden, cache


def sample_with_keys(params, prompt_BP, prompt_mask_BP, keys_BG, *, cfg: ModelConfig, sp: SamplingParams,
                     cache_len: int | None = None) -> SampleOutput:
  """Samples G = keys_BG.shape[1] completions per prompt (pure; jit with cfg, sp, cache_len static).

  prompt_BP: int32 prompt tokens, left-padded; prompt_mask_BP: True on real tokens. Each row needs >= 1 token.
  The KV cache holds P + max_new_tokens slots (or `cache_len` if larger).

  Prompt groups: prompt_BP and prompt_mask_BP may instead be equal-length tuples of [B_g, P_g] arrays, rows in group
  order (B = sum B_g). Each group is prefilled at its own length; decoding then writes every row's new tokens from
  slot P = max P_g on. Attention depends on which slots are valid and on the rope positions (which skip padding),
  not on where the slots sit, so the samples equal those of the groups' prompts left-padded to P and concatenated,
  up to float rounding, for sum_g B_g * P_g prefill tokens instead of B * P.
  """
  groups = tuple(zip(prompt_BP, prompt_mask_BP)) if isinstance(prompt_BP, (tuple, list)) else \
      ((prompt_BP, prompt_mask_BP),)
  P = max(p.shape[1] for p, _ in groups)
  B = sum(p.shape[0] for p, _ in groups)
  G = keys_BG.shape[1]
  T = sp.max_new_tokens
  S = max(P + T, cache_len or 0)
  stop = jnp.asarray(sp.stop_tokens or (-1,), jnp.int32)

  # Prefill once per prompt, then give each of the G samples its own copy of the cache row. The prefill's cache
  # holds the prompt slots only (the slots after them would all be masked out); it grows to S slots afterwards.
  caches, logits, lengths = [], [], []
  for prompt_bp, mask_bp in groups:
    positions = transformer.positions_from_mask(mask_bp)
    hidden, cache = prefill(params, cfg, prompt_bp, positions, mask_bp, sp.prefill_chunk)
    caches.append(transformer.grow_cache(cache, S))
    logits.append(transformer.unembed(params, cfg, hidden[:, -1:])[:, 0])
    lengths.append(jnp.sum(mask_bp, axis=1).astype(jnp.int32))
  join = lambda parts, axis: parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=axis)
  cache = transformer.KVCache(join([c.k_LBKSH for c in caches], 1), join([c.v_LBKSH for c in caches], 1),
                              join([c.valid_BS for c in caches], 0))
  logits, prompt_lengths = join(logits, 0), join(lengths, 0)
  if G > 1:
    cache = transformer.KVCache(jnp.repeat(cache.k_LBKSH, G, axis=1), jnp.repeat(cache.v_LBKSH, G, axis=1),
                                jnp.repeat(cache.valid_BS, G, axis=0))
    logits = jnp.repeat(logits, G, axis=0)
  keys = keys_BG.reshape(B * G)
  # All steps' keys at once, outside the decode loop (fold_in is also a small while loop per call on CPU).
  step_keys_TB = jax.vmap(lambda t: jax.vmap(lambda k: jax.random.fold_in(k, t))(keys))(jnp.arange(T))
  next_pos = jnp.repeat(prompt_lengths, G)

  tok, logp = _choose(logits, step_keys_TB[0], sp)
  done = jnp.isin(tok, stop)
  out_tok = jnp.full((B * G, T), sp.pad_id, jnp.int32).at[:, 0].set(tok)
  out_logp = jnp.zeros((B * G, T), jnp.float32).at[:, 0].set(logp)
  lengths = jnp.ones((B * G,), jnp.int32)

  def cond(state):
    t, _, _, done, *_ = state
    return (t < T) & ~jnp.all(done)

  # XLA:CPU copies a big layer's weights (and its cache) out of the stacked [L, ...] arrays each time the layer is
  # run (it does not fuse the slice into the matmul): per token, as much memory traffic again as the matmuls. Slice
  # once per call instead, at the price of a transient copy of the weights. Small models keep the stacked arrays:
  # there the per-layer while-loop state made XLA copy every layer's cache on every step (measured on the CPU: the
  # world's 0.08M model verifying 512 rows 2.3x faster per call stacked, 0.5M and 28M models within 1%; a 0.5B
  # shape 20% faster per step split, measured with an attention formulation since reverted).
  # Other backends fuse the slice, so they keep the stacked weights (scanned, no extra memory).
  step_params = params
  per_layer = sp.per_layer_weights
  if per_layer is None:
    layer_bytes = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(params["layers"]))
    per_layer = jax.default_backend() == "cpu" and layer_bytes > PER_LAYER_MIN_BYTES
  if per_layer:
    step_params, cache = transformer.split_layers(params), transformer.split_cache(cache)

  def body(state):
    t, cache, tok, done, out_tok, out_logp, lengths = state
    hidden, cache = transformer.decode(step_params, cfg, tok[:, None], (next_pos + t - 1)[:, None], None, cache,
                                       P + t - 1)
    logits = _step_logits(params, cfg, hidden)
    new_tok, new_logp = _choose(logits, step_keys_TB[t], sp)
    new_tok = jnp.where(done, sp.pad_id, new_tok)
    new_logp = jnp.where(done, 0.0, new_logp)
    out_tok = jax.lax.dynamic_update_slice(out_tok, new_tok[:, None], (0, t))
    out_logp = jax.lax.dynamic_update_slice(out_logp, new_logp[:, None], (0, t))
    lengths = lengths + (~done).astype(jnp.int32)
    done = done | jnp.isin(new_tok, stop)
    return t + 1, cache, new_tok, done, out_tok, out_logp, lengths

  state = (jnp.int32(1), cache, tok, done, out_tok, out_logp, lengths)
  _, _, _, done, out_tok, out_logp, lengths = jax.lax.while_loop(cond, body, state)
  return SampleOutput(out_tok, out_logp, lengths, done)


def sample_keys(rng, B: int, G: int):
  """Per-sample keys [B, G] from one PRNG key: keys[b, g] = split(rng, B * G)[b * G + g]."""
  return jax.random.split(rng, B * G).reshape(B, G)


def sample(params, prompt_BP, prompt_mask_BP, rng, *, cfg: ModelConfig, sp: SamplingParams,
           cache_len: int | None = None) -> SampleOutput:
  """`sample_with_keys` with the per-sample keys `sample_keys(rng, B, G)`."""
  B = sum(p.shape[0] for p in prompt_BP) if isinstance(prompt_BP, (tuple, list)) else prompt_BP.shape[0]
  keys = sample_keys(rng, B, sp.num_samples)
  return sample_with_keys(params, prompt_BP, prompt_mask_BP, keys, cfg=cfg, sp=sp, cache_len=cache_len)


sample_jit = jax.jit(sample, static_argnames=("cfg", "sp", "cache_len"))


def make_sampler(cfg: ModelConfig, sp: SamplingParams, param_shardings=None, mesh=None, cache_len: int | None = None):
  """`sample(params, prompt_BP, prompt_mask_BP, rng)` jitted once. With `param_shardings` (and the mesh) given,
  inputs and outputs are pinned: params on their shardings, prompts and every output row-split over the mesh's data
  axes (rows b * G + g stay with prompt b's shard), the key replicated."""
  from sparkjax import sharding

  fn = functools.partial(sample, cfg=cfg, sp=sp, cache_len=cache_len)
  R = sharding.ROWS
  return sharding.jit_sharded(fn, None if param_shardings is None else mesh,
                              (param_shardings, R, R, sharding.REPLICATED), SampleOutput(R, R, R, R))
sample_with_keys_jit = jax.jit(sample_with_keys, static_argnames=("cfg", "sp", "cache_len"))


def bucket_length(n: int, minimum: int = 16) -> int:
  """Smallest power of two >= n (and >= minimum), so prompt lengths share few compiled shapes."""
  b = minimum
  while b < n:
    b *= 2
  return b


def group_prompts(lengths: Sequence[int], max_groups: int, bucket: Callable[[int], int] = bucket_length) -> list[
    np.ndarray]:
  """Splits prompts into <= max_groups groups of similar length for `sample_with_keys`'s prompt groups.

  lengths: each prompt's token count. Returns index arrays (into `lengths`), shortest prompts first. The groups are
  contiguous runs of the prompts sorted by length, chosen by dynamic programming to minimise the padded prefill
  tokens sum_g |g| * bucket(max length in g); a split that does not lower it is not made (each group is one more
  prefill in the compiled program).
  """
  order = np.argsort(np.asarray(lengths), kind="stable")
  L = [int(lengths[i]) for i in order]
  n = len(L)
  # best[g][j]: least padded tokens for the j shortest prompts in g groups; cut[g][j]: where the last group starts.
  best = [[None] * (n + 1) for _ in range(max_groups + 1)]
  cut = [[0] * (n + 1) for _ in range(max_groups + 1)]
  best[0][0] = 0
  for g in range(1, max_groups + 1):
    for j in range(1, n + 1):
      for i in range(j):
        if best[g - 1][i] is not None:
          cost = best[g - 1][i] + (j - i) * bucket(L[j - 1])
          if best[g][j] is None or cost < best[g][j]:
            best[g][j], cut[g][j] = cost, i
  g = min((k for k in range(1, max_groups + 1) if best[k][n] is not None), key=lambda k: (best[k][n], k))
  bounds = [n]
  for k in range(g, 0, -1):
    bounds.append(cut[k][bounds[-1]])
  bounds = bounds[::-1]
  return [order[bounds[k]:bounds[k + 1]] for k in range(g)]


def pad_prompts(prompts: Sequence[Sequence[int]], pad_id: int, length: int | None = None):
  """Left-pads token lists to one bucketed length: (tokens_BP int32, mask_BP bool) as numpy arrays."""
  if not prompts:
    raise ValueError("no prompts given")
  longest = max(len(p) for p in prompts)
  if min(len(p) for p in prompts) == 0:
    raise ValueError("every prompt needs at least one token; got an empty prompt")
  P = length or bucket_length(longest)
  if longest > P:
    raise ValueError(f"prompt of {longest} tokens is longer than the padded length {P}")
  tokens = np.full((len(prompts), P), pad_id, np.int32)
  mask = np.zeros((len(prompts), P), bool)
  for i, p in enumerate(prompts):
    tokens[i, P - len(p):] = p
    mask[i, P - len(p):] = True
  return tokens, mask


def generate(params, cfg: ModelConfig, prompts: Sequence[Sequence[int]], rng, sp: SamplingParams,
             max_len: int | None = None) -> list[list[dict]]:
  """Host convenience: token lists in, per prompt a list of G dicts {tokens, logprobs, finished} out.

  max_len: the most tokens (prompt + completion) a row may hold; default `cfg.max_position_embeddings`.
  """
  max_len = max_len or cfg.max_position_embeddings
  longest = max((len(p) for p in prompts), default=0)
  if longest + sp.max_new_tokens > max_len:
    raise ValueError(f"a prompt of {longest} tokens plus max_new_tokens={sp.max_new_tokens} exceeds the cache "
                     f"length {max_len}; shorten the prompt or lower max_new_tokens")
  tokens, mask = pad_prompts(prompts, sp.pad_id, min(bucket_length(longest), max_len - sp.max_new_tokens))
  out = jax.device_get(sample_jit(params, tokens, mask, rng, cfg=cfg, sp=sp))
  G = sp.num_samples
  results = []
  for b in range(len(prompts)):
    rows = []
    for g in range(G):
      r = b * G + g
      n = int(out.lengths[r])
      rows.append(dict(tokens=out.tokens[r, :n].tolist(), logprobs=out.logprobs[r, :n].tolist(),
                       finished=bool(out.finished[r])))
    results.append(rows)
  return results
