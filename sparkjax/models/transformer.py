"""One decoder for the Qwen2 / Qwen2.5, Llama 3 / SmolLM2 and Qwen3 families, as pure functions over a params pytree.

Tensor names carry their shape as a suffix, one letter per axis:
  B batch, T query positions, S key positions (cache slots), D hidden, F MLP hidden, V vocab,
  L layers, N query heads, K key/value heads, G query heads per kv head (N = K * G), H head dim.

Params are a plain nested dict of arrays. Layers are always stored stacked on a leading L axis, so `scan_layers`
only changes how the forward is compiled (one scanned body: compile time flat in depth; or an unrolled loop), never
the checkpoint layout. Every parameter has logical axis names (`logical_axes`) that the sharding rules map to mesh
axes. The model has no hidden state: the KV cache is an explicit input and output.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sparkjax.models.config import ModelConfig

Params = dict[str, Any]


class ParamSpec(NamedTuple):
  shape: tuple[int, ...]
  axes: tuple[str | None, ...]
  init: str  # "normal" | "ones" | "zeros"


class KVCache(NamedTuple):
  """Preallocated attention cache; slot s of row b holds a key iff valid_BS[b, s].

  Heads come before slots so a layer's [B, K, S, H] block is what the attention matmuls consume directly (with
  slots before heads XLA:CPU transposes the layer's whole cache twice per decoded token).
  """

  k_LBKSH: jax.Array  # or a tuple of L [B, K, S, H] arrays, see `split_cache`
  v_LBKSH: jax.Array
  valid_BS: jax.Array


def param_specs(cfg: ModelConfig) -> Params:
  """Shapes, logical axes and initialiser of every parameter (the single source of the param layout)."""
  L, D, F, V = cfg.num_layers, cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
  N, K, H = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  layer = {
      "attn_norm": ParamSpec((L, D), ("layers", "norm"), "ones"),
      "q_proj": {"kernel": ParamSpec((L, D, N, H), ("layers", "embed", "heads", "head_dim"), "normal")},
      "k_proj": {"kernel": ParamSpec((L, D, K, H), ("layers", "embed", "kv_heads", "head_dim"), "normal")},
      "v_proj": {"kernel": ParamSpec((L, D, K, H), ("layers", "embed", "kv_heads", "head_dim"), "normal")},
      "o_proj": {"kernel": ParamSpec((L, N, H, D), ("layers", "heads", "head_dim", "embed"), "normal")},
      "mlp_norm": ParamSpec((L, D), ("layers", "norm"), "ones"),
      "gate_proj": {"kernel": ParamSpec((L, D, F), ("layers", "embed", "mlp"), "normal")},
      "up_proj": {"kernel": ParamSpec((L, D, F), ("layers", "embed", "mlp"), "normal")},
      "down_proj": {"kernel": ParamSpec((L, F, D), ("layers", "mlp", "embed"), "normal")},
  }
  if cfg.qkv_bias:
    layer["q_proj"]["bias"] = ParamSpec((L, N, H), ("layers", "heads", "head_dim"), "zeros")
    layer["k_proj"]["bias"] = ParamSpec((L, K, H), ("layers", "kv_heads", "head_dim"), "zeros")
    layer["v_proj"]["bias"] = ParamSpec((L, K, H), ("layers", "kv_heads", "head_dim"), "zeros")
  if cfg.qk_norm:
    layer["q_norm"] = ParamSpec((L, H), ("layers", "head_dim"), "ones")
    layer["k_norm"] = ParamSpec((L, H), ("layers", "head_dim"), "ones")
  specs = {
      "embed": ParamSpec((V, D), ("vocab", "embed"), "normal"),
      "layers": layer,
      "final_norm": ParamSpec((D,), ("norm",), "ones"),
  }
  if not cfg.tie_embeddings:
    specs["lm_head"] = ParamSpec((D, V), ("embed", "vocab"), "normal")
  return specs


def _is_spec(x) -> bool:
  return isinstance(x, ParamSpec)


def logical_axes(cfg: ModelConfig) -> Params:
  """Pytree (same structure as params) of logical axis-name tuples."""
  return jax.tree.map(lambda s: s.axes, param_specs(cfg), is_leaf=_is_spec)


def abstract_params(cfg: ModelConfig) -> Params:
  """Pytree of `jax.ShapeDtypeStruct`: the params without allocating them."""
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, cfg.pdtype), param_specs(cfg), is_leaf=_is_spec)


def init_params(cfg: ModelConfig, rng: jax.Array, std: float = 0.02) -> Params:
  """Random params: N(0, std) matrices, unit norm scales, zero biases (HF's init)."""
  specs, treedef = jax.tree.flatten(param_specs(cfg), is_leaf=_is_spec)
  keys = jax.random.split(rng, len(specs))
  leaves = []
  for spec, key in zip(specs, keys):
    if spec.init == "normal":
      leaves.append((std * jax.random.normal(key, spec.shape, jnp.float32)).astype(cfg.pdtype))
    elif spec.init == "ones":
      leaves.append(jnp.ones(spec.shape, cfg.pdtype))
    else:
      leaves.append(jnp.zeros(spec.shape, cfg.pdtype))
  return jax.tree.unflatten(treedef, leaves)


# ---- building blocks ---------------------------------------------------------------------------------------------


def rms_norm(x, scale, eps: float):
  """y = x / sqrt(mean(x^2) + eps) * scale, reduced in float32 (as HF does)."""
  x32 = x.astype(jnp.float32)
  y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return (scale.astype(jnp.float32) * y).astype(x.dtype)


def rope_frequencies(cfg: ModelConfig) -> np.ndarray:
  """Inverse frequencies [H/2], theta^(-2i/H), with Llama-3 scaling of the low frequencies if configured."""
  H = cfg.head_dim
  inv = 1.0 / (cfg.rope_theta ** (np.arange(0, H, 2, dtype=np.float64) / H))
  rs = cfg.rope_scaling
  if rs is not None:
    low_wl = rs.original_max_position_embeddings / rs.low_freq_factor
    high_wl = rs.original_max_position_embeddings / rs.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_wl, inv / rs.factor, inv)
    smooth = (rs.original_max_position_embeddings / wavelen - rs.low_freq_factor) / (
        rs.high_freq_factor - rs.low_freq_factor)
    medium = (wavelen >= high_wl) & (wavelen <= low_wl)
    inv = np.where(medium, (1 - smooth) * scaled / rs.factor + smooth * scaled, scaled)
  return inv.astype(np.float32)


def apply_rope(x_BTNH, positions_BT, inv_freq):
  """Rotates halves (HF's rotate_half layout): [x1, x2] -> [x1 cos - x2 sin, x2 cos + x1 sin]."""
  angles_BTh = positions_BT[..., None].astype(jnp.float32) * inv_freq
  cos = jnp.cos(angles_BTh)[:, :, None, :]
  sin = jnp.sin(angles_BTh)[:, :, None, :]
  x1, x2 = jnp.split(x_BTNH.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BTNH.dtype)


def _proj(x, p, eq, dtype):
  y = jnp.einsum(eq, x, p["kernel"].astype(dtype))
  if "bias" in p:
    y = y + p["bias"].astype(dtype)
  return y


def attention(q_BTNH, k_BSKH, v_BSKH, mask_BTS):
  """softmax(q k^T / sqrt(H) + mask) v with grouped-query heads; scores and softmax in float32."""
  return _attention(q_BTNH, k_BSKH.transpose(0, 2, 1, 3), v_BSKH.transpose(0, 2, 1, 3), mask_BTS)


def _attention(q_BTNH, k_BKSH, v_BKSH, mask_BTS):
  """`attention` with keys and values in the cache's heads-major layout.

  Written as dot_generals with the operand order that XLA:CPU maps onto its fast matmul kernel; `jnp.einsum` here
  chose an order that fell back to a generic batched matmul (~3x slower per decode step), with the same values.
  """
  B, T, N, H = q_BTNH.shape
  K = k_BKSH.shape[1]
  q_BKGTH = q_BTNH.reshape(B, T, K, N // K, H).transpose(0, 2, 3, 1, 4)
  batch = ((0, 1), (0, 1))
  scores_BKSGT = jax.lax.dot_general(k_BKSH, q_BKGTH, (((3,), (4,)), batch), preferred_element_type=jnp.float32)
  scores = scores_BKSGT.transpose(0, 1, 3, 4, 2) / math.sqrt(H)  # [B, K, G, T, S]
  # A finite fill keeps rows with no visible key (left padding) at a uniform softmax instead of NaN.
  scores = jnp.where(mask_BTS[:, None, None], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v_BKSH.dtype)
  out_BKGTH = jax.lax.dot_general(probs, v_BKSH, (((4,), (2,)), batch))
  return out_BKGTH.transpose(0, 3, 1, 2, 4).reshape(B, T, N, H)


# Query block of the causal attention without a cache (training, scoring): block i attends to keys [0, end of block i)
# only, skipping the keys the causal mask hides. On the world model (2 x 64, 64 rows, layers scanned) forward +
# backward went 146.7 -> 127.4 ms at 154 tokens and 230 -> 176 ms at 200 with blocks of 48; with the layers unrolled,
# blocks of 32 / 48 / 64 / 96 took 115.9 / 112.0 / 107.6 / 107.8 ms at 154 tokens (one run each, 2-core Intel Xeon).
CAUSAL_BLOCK = 64
# At most this many blocks (longer rows get longer blocks), so a long sequence does not unroll into hundreds of
# attention ops per layer; rows up to 512 tokens keep blocks of 64.
MAX_CAUSAL_BLOCKS = 8


def _causal_attention(q_BTNH, k_BKTH, v_BKTH, mask_BTS):
  """`_attention` over the same T keys as queries, under a mask that includes the causal one, computed per query
  block (`CAUSAL_BLOCK` tokens, at most `MAX_CAUSAL_BLOCKS` blocks) against the keys up to that block's end. The
  same values (the skipped keys have probability exactly 0) up to float summation order."""
  T = q_BTNH.shape[1]
  block = max(CAUSAL_BLOCK, -(-T // MAX_CAUSAL_BLOCKS))
  if T <= block:
    return _attention(q_BTNH, k_BKTH, v_BKTH, mask_BTS)
  outs = []
  for lo in range(0, T, block):
    hi = min(T, lo + block)
    outs.append(_attention(q_BTNH[:, lo:hi], k_BKTH[:, :, :hi], v_BKTH[:, :, :hi], mask_BTS[:, lo:hi, :hi]))
  return jnp.concatenate(outs, axis=1)


def _layer(cfg: ModelConfig, inv_freq, x_BTD, lp, positions_BT, mask_BTS, write_kv=None):
  """One pre-norm block: (x_BTD, aux).

  Without `write_kv` attention is over the T new keys and aux is None. With it, `write_kv(k_BKTH, v_BKTH)` stores
  the new keys and returns (k_BKSH, v_BKSH, aux): every key the tokens attend to, and the updated cache.
  """
  dt = cfg.dtype
  B, T, D = x_BTD.shape
  # Projections and the MLP run on [B*T, D] rows: with (b, t) as two dims XLA:CPU lowers their backward (weight
  # gradients contracting over both) to slow generic loops; the MLP's gradient was 2.5x slower that way.
  h = rms_norm(x_BTD, lp["attn_norm"], cfg.rms_norm_eps).reshape(B * T, D)
  q = _proj(h, lp["q_proj"], "md,dnh->mnh", dt).reshape(B, T, cfg.num_heads, cfg.head_dim)
  k = _proj(h, lp["k_proj"], "md,dkh->mkh", dt).reshape(B, T, cfg.num_kv_heads, cfg.head_dim)
  v = _proj(h, lp["v_proj"], "md,dkh->mkh", dt).reshape(B, T, cfg.num_kv_heads, cfg.head_dim)
  if cfg.qk_norm:
    q = rms_norm(q, lp["q_norm"], cfg.rms_norm_eps)
    k = rms_norm(k, lp["k_norm"], cfg.rms_norm_eps)
  q = apply_rope(q, positions_BT, inv_freq)
  k = apply_rope(k, positions_BT, inv_freq)
  k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, K, T, H]
  aux = None
  attend = _causal_attention
  if write_kv is not None:
    k, v, aux = write_kv(k, v)
    attend = _attention  # cached keys: the mask is not the plain causal one over T keys
  attn = attend(q, k.astype(dt), v.astype(dt), mask_BTS)
  # Heads and head_dim flattened into one contracting axis (free reshapes): with two, XLA:CPU transposed the o_proj
  # weight on every call.
  N, H = attn.shape[2:]
  o_kernel = lp["o_proj"]["kernel"].astype(dt).reshape(N * H, -1)
  x_MD = x_BTD.reshape(B * T, D) + attn.reshape(B * T, N * H) @ o_kernel
  h = rms_norm(x_MD, lp["mlp_norm"], cfg.rms_norm_eps)
  gate = h @ lp["gate_proj"]["kernel"].astype(dt)
  up = h @ lp["up_proj"]["kernel"].astype(dt)
  x_MD = x_MD + (jax.nn.silu(gate) * up) @ lp["down_proj"]["kernel"].astype(dt)
  return x_MD.reshape(B, T, D), aux


def _maybe_remat(cfg: ModelConfig, fn):
  return jax.checkpoint(fn, prevent_cse=not cfg.scan_layers) if cfg.remat else fn


# ---- the decoder ---------------------------------------------------------------------------------------------------


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype=None) -> KVCache:
  """An empty cache of `length` slots per row ([L, B, K, S, H] keys and values)."""
  shape = (cfg.num_layers, batch, cfg.num_kv_heads, length, cfg.head_dim)
  dtype = dtype or cfg.dtype
  return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch, length), bool))


def grow_cache(cache: KVCache, length: int) -> KVCache:
  """The cache with empty (invalid) slots appended up to `length` slots per row."""
  extra = length - cache.valid_BS.shape[1]
  if extra < 0:
    raise ValueError(f"cannot grow a cache of {cache.valid_BS.shape[1]} slots to {length}")
  slots = lambda a: jnp.pad(a, [(0, 0)] * 3 + [(0, extra), (0, 0)])
  return KVCache(slots(cache.k_LBKSH), slots(cache.v_LBKSH), jnp.pad(cache.valid_BS, [(0, 0), (0, extra)]))


def decode(params: Params, cfg: ModelConfig, tokens_BT, positions_BT=None, mask_BT=None,
           cache: KVCache | None = None, cache_index=None):
  """Runs the decoder and returns (hidden_BTD after the final norm, cache).

  tokens_BT: int token ids. positions_BT: rope positions (default 0..T-1). mask_BT: True for real tokens (default
  all); padded tokens are never attended to. Without a cache attention is causal over the T tokens. With a cache
  the T tokens are written to slots [cache_index, cache_index + T) of every row and attend causally to every valid
  slot before them; the updated cache is returned. `params` may hold its layers split (`split_layers`) and the cache
  its layers split (`split_cache`); the layer loop is then unrolled.
  """
  B, T = tokens_BT.shape
  if mask_BT is None:
    mask_BT = jnp.ones((B, T), bool)
  if positions_BT is None:
    positions_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
  inv_freq = jnp.asarray(rope_frequencies(cfg))
  x = jnp.take(params["embed"], tokens_BT, axis=0).astype(cfg.dtype)

  if cache is None:
    causal_TS = jnp.tril(jnp.ones((T, T), bool))
    mask_BTS = causal_TS[None] & mask_BT[:, None, :]

    def body(x, lp):
      x, _ = _layer(cfg, inv_freq, x, lp, positions_BT, mask_BTS)
      return x, None

    body = _maybe_remat(cfg, body)
    if isinstance(params["layers"], (list, tuple)):
      for lp in params["layers"]:
        x, _ = body(x, lp)
    elif cfg.scan_layers:
      x, _ = jax.lax.scan(body, x, params["layers"])
    else:
      for i in range(cfg.num_layers):
        x, _ = body(x, jax.tree.map(lambda a: a[i], params["layers"]))
    return rms_norm(x, params["final_norm"], cfg.rms_norm_eps), None

  S = cache.valid_BS.shape[1]
  cache_index = jnp.asarray(cache_index, jnp.int32)
  valid_BS = jax.lax.dynamic_update_slice(cache.valid_BS, mask_BT, (0, cache_index))
  slot_TS = jnp.arange(S)[None, :] <= (cache_index + jnp.arange(T))[:, None]
  mask_BTS = slot_TS[None] & valid_BS[:, None, :]

  def write_at(cache_arr, new_BKTH, i):
    """Writes the T new slots of layer i ([L, B, K, S, H] cache) or of a per-layer cache (i is None)."""
    if i is None:
      out = jax.lax.dynamic_update_slice(cache_arr, new_BKTH.astype(cache_arr.dtype), (0, 0, cache_index, 0))
      return out, out
    out = jax.lax.dynamic_update_slice(cache_arr, new_BKTH[None].astype(cache_arr.dtype), (i, 0, 0, cache_index, 0))
    return out[i], out

  def body(carry, lp_i):
    x, k_cache, v_cache = carry
    lp, i = lp_i

    def write_kv(k, v):
      # Write the T new slots first, then read the layer back. In this order XLA updates the cache in place;
      # reading the old layer before the write would make it copy the whole cache for every layer.
      k_layer, k_out = write_at(k_cache, k, i)
      v_layer, v_out = write_at(v_cache, v, i)
      return k_layer, v_layer, (k_out, v_out)

    x, (k_cache, v_cache) = _layer(cfg, inv_freq, x, lp, positions_BT, mask_BTS, write_kv)
    return (x, k_cache, v_cache), None

  body = _maybe_remat(cfg, body)
  layers = params["layers"]
  split_params = isinstance(layers, (list, tuple))
  if isinstance(cache.k_LBKSH, (list, tuple)):  # per-layer cache arrays (`split_cache`)
    ks, vs = list(cache.k_LBKSH), list(cache.v_LBKSH)
    for i in range(cfg.num_layers):
      lp = layers[i] if split_params else jax.tree.map(lambda a: a[i], layers)
      (x, ks[i], vs[i]), _ = body((x, ks[i], vs[i]), (lp, None))
    k_out, v_out = tuple(ks), tuple(vs)
  else:
    carry = (x, cache.k_LBKSH, cache.v_LBKSH)
    if cfg.scan_layers and not split_params:
      carry, _ = jax.lax.scan(body, carry, (layers, jnp.arange(cfg.num_layers)))
    else:
      for i in range(cfg.num_layers):
        lp = layers[i] if split_params else jax.tree.map(lambda a: a[i], layers)
        carry, _ = body(carry, (lp, i))
    x, k_out, v_out = carry
  return rms_norm(x, params["final_norm"], cfg.rms_norm_eps), KVCache(k_out, v_out, valid_BS)


def split_layers(params: Params) -> Params:
  """`params` with "layers" as a tuple of L per-layer trees instead of stacked [L, ...] arrays (a copy).

  `decode` accepts either and unrolls over a tuple. Use it to slice the layers once outside a decode loop: XLA:CPU
  cannot fuse a slice of the stacked weights into a matmul, so it copies every layer's weights on every step.
  """
  layers = params["layers"]
  if isinstance(layers, (list, tuple)):
    return params
  L = jax.tree.leaves(layers)[0].shape[0]
  return {**params, "layers": tuple(jax.tree.map(lambda a: a[i], layers) for i in range(L))}


def split_cache(cache: KVCache) -> KVCache:
  """`cache` with keys and values as tuples of L per-layer [B, K, S, H] arrays (a copy); `decode` accepts either.

  Each layer then updates and reads its own buffer, instead of the attention copying its layer out of the stacked
  cache on every step (XLA:CPU).
  """
  if isinstance(cache.k_LBKSH, (list, tuple)):
    return cache
  L = cache.k_LBKSH.shape[0]
  return KVCache(tuple(cache.k_LBKSH[i] for i in range(L)), tuple(cache.v_LBKSH[i] for i in range(L)),
                 cache.valid_BS)


def unembed(params: Params, cfg: ModelConfig, hidden_BTD):
  """Logits [B, T, V] in float32 from final hidden states (tied embeddings use embed^T)."""
  if cfg.tie_embeddings:
    return jnp.einsum("btd,vd->btv", hidden_BTD, params["embed"].astype(cfg.dtype),
                      preferred_element_type=jnp.float32)
  return jnp.einsum("btd,dv->btv", hidden_BTD, params["lm_head"].astype(cfg.dtype),
                    preferred_element_type=jnp.float32)


def forward(params: Params, cfg: ModelConfig, tokens_BT, positions_BT=None, mask_BT=None):
  """Full causal forward: logits [B, T, V] float32 (see `decode` for the arguments)."""
  hidden, _ = decode(params, cfg, tokens_BT, positions_BT, mask_BT)
  return unembed(params, cfg, hidden)


def positions_from_mask(mask_BT):
  """Rope positions that skip padding: position = number of real tokens before this one (left padding safe)."""
  return jnp.maximum(jnp.cumsum(mask_BT.astype(jnp.int32), axis=1) - 1, 0)
