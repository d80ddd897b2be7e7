"""Sampler properties: greedy == argmax of the full forward, filters, stops, shared prefill, no retrace."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparkjax import sampling
from sparkjax.models import transformer
from sparkjax.models.config import ModelConfig
from sparkjax.sampling import SamplingParams

CFG = ModelConfig.tiny("qwen2", vocab_size=64)


@pytest.fixture(scope="module")
def params():
  return transformer.init_params(CFG, jax.random.key(0), std=0.3)


def _prompts():
  return [[5, 6, 7, 8, 9, 10, 11], [3, 1], [12, 13, 14, 15]]


def test_greedy_equals_argmax_of_full_forward(params):
  sp = SamplingParams(max_new_tokens=8, temperature=0.0)
  out = sampling.generate(params, CFG, _prompts(), jax.random.key(1), sp)
  for prompt, rows in zip(_prompts(), out):
    seq = list(prompt)
    for tok in rows[0]["tokens"]:
      logits = transformer.forward(params, CFG, jnp.asarray([seq]))
      assert tok == int(jnp.argmax(logits[0, -1]))
      seq.append(tok)


def test_logprobs_match_full_forward(params):
  sp = SamplingParams(max_new_tokens=6, temperature=0.7)
  rows = sampling.generate(params, CFG, _prompts(), jax.random.key(2), sp)
  for prompt, (row,) in zip(_prompts(), rows):
    seq = jnp.asarray([prompt + row["tokens"]])
    logp = jax.nn.log_softmax(transformer.forward(params, CFG, seq)[0] / 0.7, axis=-1)
    expect = [float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(row["tokens"])]
    np.testing.assert_allclose(row["logprobs"], expect, atol=1e-4)


@pytest.mark.parametrize("top_k,top_p", [(3, 1.0), (0, 0.3), (5, 0.5)])
def test_filtered_sampling_never_emits_a_masked_token(params, top_k, top_p):
  sp = SamplingParams(max_new_tokens=6, temperature=1.5, top_k=top_k, top_p=top_p, num_samples=8)
  tokens, mask = sampling.pad_prompts(_prompts(), 0)
  out = sampling.sample_jit(params, tokens, mask, jax.random.key(3), cfg=CFG, sp=sp)
  prompts = np.repeat(np.asarray(tokens), 8, axis=0)
  pmask = np.repeat(np.asarray(mask), 8, axis=0)
  for t in range(6):
    seq = np.concatenate([prompts, np.asarray(out.tokens[:, :t])], axis=1)
    m = np.concatenate([pmask, np.ones((seq.shape[0], t), bool)], axis=1)
    logits = transformer.forward(params, CFG, jnp.asarray(seq), transformer.positions_from_mask(jnp.asarray(m)),
                                 jnp.asarray(m))[:, -1] / 1.5
    allowed = np.asarray(sampling.filter_logits(logits, top_k, top_p)) > np.finfo(np.float32).min
    chosen = np.asarray(out.tokens[:, t])
    assert allowed[np.arange(len(chosen)), chosen].all()
    if top_k:
      assert (allowed.sum(-1) <= top_k).all()


def test_filter_logits_hand_computed():
  logits = jnp.log(jnp.asarray([[0.5, 0.2, 0.15, 0.1, 0.05]]))
  keep = lambda **kw: (np.asarray(sampling.filter_logits(logits, **kw)) > -1e30).astype(int).tolist()
  assert keep(top_p=0.5) == [[1, 0, 0, 0, 0]]
  assert keep(top_p=0.6) == [[1, 1, 0, 0, 0]]
  assert keep(top_p=0.86) == [[1, 1, 1, 1, 0]]
  assert keep(top_k=2) == [[1, 1, 0, 0, 0]]


def test_stop_tokens_end_rows_and_pad_the_rest(params):
  # Pick as stop token whatever greedy emits second for the first prompt, so the stop certainly fires.
  greedy = sampling.generate(params, CFG, _prompts(), jax.random.key(0), SamplingParams(8, temperature=0.0))
  stop = greedy[0][0]["tokens"][1]
  sp = SamplingParams(max_new_tokens=8, temperature=0.0, stop_tokens=(stop,), pad_id=63)
  tokens, mask = sampling.pad_prompts(_prompts(), 63)
  out = jax.device_get(sampling.sample_jit(params, tokens, mask, jax.random.key(0), cfg=CFG, sp=sp))
  for r in range(3):
    n = int(out.lengths[r])
    row = out.tokens[r].tolist()
    if out.finished[r]:
      assert row[n - 1] == stop and stop not in row[:n - 1]
      assert row[n:] == [63] * (8 - n) and (out.logprobs[r, n:] == 0).all()
    else:
      assert n == 8 and stop not in row
  assert out.finished[0] and out.lengths[0] == 2


def test_shared_prefill_samples_equal_independent_runs(params):
  sp = SamplingParams(max_new_tokens=7, temperature=1.0, top_p=0.9, num_samples=4)
  tokens, mask = sampling.pad_prompts(_prompts(), 0)
  keys = jax.random.split(jax.random.key(4), 12).reshape(3, 4)
  joint = sampling.sample_with_keys_jit(params, tokens, mask, keys, cfg=CFG, sp=sp)
  one = SamplingParams(max_new_tokens=7, temperature=1.0, top_p=0.9, num_samples=1)
  for g in range(4):
    alone = sampling.sample_with_keys_jit(params, tokens, mask, keys[:, g:g + 1], cfg=CFG, sp=one)
    np.testing.assert_array_equal(np.asarray(joint.tokens[g::4]), np.asarray(alone.tokens))
    np.testing.assert_allclose(np.asarray(joint.logprobs[g::4]), np.asarray(alone.logprobs), atol=1e-5)


def test_reproducible_and_key_dependent(params):
  sp = SamplingParams(max_new_tokens=8, temperature=1.0, num_samples=2)
  a = sampling.generate(params, CFG, _prompts(), jax.random.key(5), sp)
  b = sampling.generate(params, CFG, _prompts(), jax.random.key(5), sp)
  c = sampling.generate(params, CFG, _prompts(), jax.random.key(6), sp)
  assert a == b and a != c


def test_ragged_prompt_equals_prompt_alone(params):
  sp = SamplingParams(max_new_tokens=6, temperature=0.0)
  batch = sampling.generate(params, CFG, _prompts(), jax.random.key(0), sp)
  for i, p in enumerate(_prompts()):
    alone = sampling.generate(params, CFG, [p], jax.random.key(0), sp)
    assert alone[0][0]["tokens"] == batch[i][0]["tokens"]


def test_second_call_with_same_shapes_does_not_retrace(params):
  sp = SamplingParams(max_new_tokens=5, temperature=1.0, num_samples=2)
  traces = []
  fn = jax.jit(lambda *a: (traces.append(1), sampling.sample(*a, cfg=CFG, sp=sp))[1])
  tokens, mask = sampling.pad_prompts(_prompts(), 0)
  fn(params, tokens, mask, jax.random.key(0))
  tokens2, mask2 = sampling.pad_prompts([[1, 2, 3], [4], [5, 6]], 0)  # other lengths, same bucket
  fn(params, tokens2, mask2, jax.random.key(1))
  assert len(traces) == 1
  before = sampling.sample_jit._cache_size()
  sampling.generate(params, CFG, _prompts(), jax.random.key(0), sp)
  sampling.generate(params, CFG, [[1, 2, 3, 4]], jax.random.key(0), sp)
  sampling.generate(params, CFG, [[9, 9], [8], [7, 7, 7]], jax.random.key(1), sp)
  assert sampling.sample_jit._cache_size() - before == 2  # batch 3 and batch 1, one bucket


def test_chunked_prefill_equals_one_pass(params):
  """Prompts padded to 64 and prefilled 16 tokens at a time (rows mostly left padding, one row longer than a chunk)
  sample what a one-pass prefill samples; 48 (not a multiple of 32) falls back to one pass."""
  prompts = [list(range(1, 41)), [3, 1], [(7 * i) % 60 + 1 for i in range(23)]]
  for chunk, length in ((16, 64), (32, 48)):
    tokens, mask = sampling.pad_prompts(prompts, 0, length)
    outs = [sampling.sample_jit(params, tokens, mask, jax.random.key(3), cfg=CFG,
                                sp=SamplingParams(max_new_tokens=6, temperature=0.8, num_samples=2, prefill_chunk=c))
            for c in (0, chunk)]
    np.testing.assert_array_equal(outs[0].tokens, outs[1].tokens)
    # Same keys, values and masks, only summed in other groupings, so only float32 rounding differs: it compounds
    # over the layers' sums into log-probs of magnitude up to ~6 (ulp 4.8e-7); 1e-4 allows ~200 ulps (one CPU
    # measured ~20).
    np.testing.assert_allclose(outs[0].logprobs, outs[1].logprobs, atol=1e-4)
  with pytest.raises(ValueError, match="prefill_chunk=-1"):
    SamplingParams(prefill_chunk=-1)


def test_prompt_groups_equal_one_left_padded_batch(params):
  """Prompts in two groups of their own padded lengths (16 and 64, the longer one prefilled in chunks of 16) sample
  what the same rows left-padded to 64 in one batch sample, with the same per-row keys."""
  short, long_ = [[3, 1], [12, 13, 14, 15], [9]], [list(range(1, 41)), [(7 * i) % 60 + 1 for i in range(23)]]
  sp = SamplingParams(max_new_tokens=6, temperature=0.8, num_samples=2, prefill_chunk=16)
  keys = jax.random.split(jax.random.key(7), 10).reshape(5, 2)
  tokens, mask = sampling.pad_prompts(short + long_, 0, 64)
  one = sampling.sample_with_keys_jit(params, tokens, mask, keys, cfg=CFG, sp=sp)
  (t1, m1), (t2, m2) = sampling.pad_prompts(short, 0, 16), sampling.pad_prompts(long_, 0, 64)
  grouped = sampling.sample_with_keys_jit(params, (t1, t2), (m1, m2), keys, cfg=CFG, sp=sp)
  np.testing.assert_array_equal(one.tokens, grouped.tokens)
  np.testing.assert_array_equal(one.lengths, grouped.lengths)
  # Only float32 rounding differs (see test_chunked_prefill_equals_one_pass).
  np.testing.assert_allclose(one.logprobs, grouped.logprobs, atol=1e-4)
  out = sampling.sample_jit(params, (t1, t2), (m1, m2), jax.random.key(7), cfg=CFG, sp=sp)
  assert out.tokens.shape == (10, 6)


@pytest.mark.parametrize("kw,msg", [(dict(top_p=0.0), "top_p=0.0"), (dict(top_p=1.5), "top_p=1.5"),
                                    (dict(temperature=-1.0), "temperature"), (dict(max_new_tokens=0), "max_new")])
def test_bad_sampling_params(kw, msg):
  with pytest.raises(ValueError, match=msg):
    SamplingParams(**kw)


def test_prompt_longer_than_cache(params):
  with pytest.raises(ValueError, match="exceeds the cache length 32"):
    sampling.generate(params, CFG, [list(range(30))], jax.random.key(0), SamplingParams(8), max_len=32)
  with pytest.raises(ValueError, match="empty prompt"):
    sampling.generate(params, CFG, [[1], []], jax.random.key(0), SamplingParams(8))


def test_filter_thresholds_match_a_sort():
  """The bisection thresholds against a float64 sort: top-k keeps exactly the values >= the k-th largest (ties
  included), top-p the smallest sorted prefix holding >= top_p of the mass (with every tie of its last value)."""
  rng = np.random.default_rng(0)
  logits = (rng.normal(size=(12, 300)) * 4).astype(np.float32)
  logits[0, :7] = logits[0, 7]  # ties at the threshold
  logits[1, :150] = -1e30  # a row already masked to half its values
  logits[2] = np.round(logits[2])  # many ties
  for k in (1, 5, 40, 299):
    got = np.asarray(sampling.filter_logits(jnp.asarray(logits), top_k=k)) > np.finfo(np.float32).min
    kth = np.sort(logits, -1)[:, ::-1][:, k - 1:k]
    np.testing.assert_array_equal(got, logits >= kth)
  x = logits.astype(np.float64)
  for p in (0.1, 0.5, 0.9, 0.99):
    got = np.asarray(sampling.filter_logits(jnp.asarray(logits), top_p=p)) > np.finfo(np.float32).min
    s = np.sort(x, -1)[:, ::-1]
    probs = np.exp(s - s[:, :1])
    probs /= probs.sum(-1, keepdims=True)
    before = np.cumsum(probs, -1) - probs
    last = np.array([row[np.nonzero(b < p)[0].max()] for row, b in zip(s, before)])[:, None]
    # A float32 sum of 300 probabilities is within 300 * 2^-24 < 1e-4 of the float64 one: only rows whose nucleus
    # boundary is decided by more than that are compared exactly.
    clear = np.abs(before - p).min(-1) > 1e-4
    assert clear.sum() >= 6  # the comparison covers most rows
    np.testing.assert_array_equal(got[clear], (x >= last)[clear])


def test_grow_cache_appends_empty_slots_and_refuses_to_shrink():
  cfg = ModelConfig(vocab_size=11, hidden_size=8, intermediate_size=16, num_layers=2, num_heads=2, num_kv_heads=1,
                    head_dim=4)
  cache = transformer.init_cache(cfg, 3, 5)
  cache = transformer.KVCache(cache.k_LBKSH + 1, cache.v_LBKSH + 2, cache.valid_BS | True)
  grown = transformer.grow_cache(cache, 9)
  assert grown.k_LBKSH.shape == (2, 3, 1, 9, 4) and grown.valid_BS.shape == (3, 9)
  assert (grown.k_LBKSH[:, :, :, :5] == 1).all() and (grown.k_LBKSH[:, :, :, 5:] == 0).all()
  assert (grown.v_LBKSH[:, :, :, :5] == 2).all() and grown.valid_BS[:, :5].all() and not grown.valid_BS[:, 5:].any()
  with pytest.raises(ValueError, match="cannot grow a cache of 5 slots to 4"):
    transformer.grow_cache(cache, 4)
