"""Parity of the JAX decoder with Hugging Face `transformers` (PyTorch) on the same random weights."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparkjax.models import hf, transformer
from sparkjax.models.config import ModelConfig, RopeScaling

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

FAMILIES = {
    "qwen2": ModelConfig.tiny("qwen2", tie_embeddings=False),
    "llama": ModelConfig.tiny("llama", rope_scaling=RopeScaling(factor=8.0, original_max_position_embeddings=64),
                              rope_theta=500000.0),
    "qwen3": ModelConfig.tiny("qwen3", tie_embeddings=False),
    "llama_tied": ModelConfig.tiny("llama", tie_embeddings=True, num_kv_heads=1),
}


def _random_params(cfg, seed=0):
  params = transformer.init_params(cfg, jax.random.key(seed), std=0.2)
  # Non-trivial norms and biases so that a swapped or missing one shows up.
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: a + 0.1 * jnp.asarray(rng.standard_normal(a.shape), a.dtype)
                      if a.ndim <= 3 and a.shape[-1] in (cfg.hidden_size, cfg.head_dim) else a, params)


def _hf_model(model_dir):
  model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
  return model.eval()


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
  cfg = FAMILIES[request.param]
  params = _random_params(cfg)
  d = hf.save_params(params, cfg, tmp_path_factory.mktemp(request.param) / "model")
  return request.param, cfg, params, d


def test_logits_match_transformers(family):
  _, cfg, params, model_dir = family
  tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 12))
  ours = np.asarray(transformer.forward(params, cfg, jnp.asarray(tokens)))
  with torch.no_grad():
    theirs = _hf_model(model_dir)(torch.tensor(tokens)).logits.numpy()
  assert np.abs(ours - theirs).max() < 1e-4


def _left_padded(family, seed):
  """(tokens, mask, positions): 2 rows of 10 tokens, the second left-padded by 4, positions skipping the padding."""
  cfg = family[1]
  tokens = np.random.default_rng(seed).integers(0, cfg.vocab_size, (2, 10))
  mask = np.ones((2, 10), bool)
  mask[1, :4] = False  # left padding
  return tokens, mask, transformer.positions_from_mask(jnp.asarray(mask))


def _ours(family, tokens, mask, pos):
  _, cfg, params, _ = family
  return np.asarray(transformer.forward(params, cfg, jnp.asarray(tokens), pos, jnp.asarray(mask)))


def _theirs(family, tokens, mask, pos):
  with torch.no_grad():
    return _hf_model(family[3])(torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(np.int64)),
                                position_ids=torch.tensor(np.asarray(pos))).logits.numpy()


def test_padding_mask_matches_transformers(family):
  tokens, mask, pos = _left_padded(family, seed=2)
  ours, theirs = _ours(family, tokens, mask, pos), _theirs(family, tokens, mask, pos)
  assert np.abs(ours[mask] - theirs[mask]).max() < 1e-4


def test_causal_blocks_match_transformers(family, monkeypatch):
  """Query blocks of 3 over 10 tokens (one left-padded row): the block path, not the single block, against HF and
  against one block. 1e-5 between block layouts: the same float32 sums in another order, over at most 10 keys and
  64-wide contractions of O(1) logits (float32 eps 1.2e-7), the bound the scanned / unrolled comparison below uses."""
  tokens, mask, pos = _left_padded(family, seed=4)
  monkeypatch.setattr(transformer, "CAUSAL_BLOCK", 3)
  blocks = _ours(family, tokens, mask, pos)
  assert np.abs(blocks[mask] - _theirs(family, tokens, mask, pos)[mask]).max() < 1e-4
  monkeypatch.setattr(transformer, "CAUSAL_BLOCK", 64)
  one_block = _ours(family, tokens, mask, pos)
  np.testing.assert_allclose(blocks[mask], one_block[mask], atol=1e-5)
  # Blocks of 1 capped at 3 blocks: blocks of 4, 4 and 2.
  monkeypatch.setattr(transformer, "CAUSAL_BLOCK", 1)
  monkeypatch.setattr(transformer, "MAX_CAUSAL_BLOCKS", 3)
  np.testing.assert_allclose(_ours(family, tokens, mask, pos)[mask], one_block[mask], atol=1e-5)


def test_load_roundtrip_and_scan_unscan(family):
  _, cfg, params, model_dir = family
  loaded, cfg2 = hf.load_params(model_dir)
  assert cfg2.replace(eos_token_id=cfg.eos_token_id) == cfg
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, loaded)
  tokens = jnp.arange(8)[None] % cfg.vocab_size
  a = transformer.forward(params, cfg, tokens)
  b = transformer.forward(params, cfg.replace(scan_layers=False, remat=True), tokens)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_kv_cache_decoding_matches_full_forward(family):
  _, cfg, params, _ = family
  T, P = 10, 4
  tokens = jnp.asarray(np.random.default_rng(3).integers(0, cfg.vocab_size, (2, T)))
  full = transformer.forward(params, cfg, tokens)
  cache = transformer.init_cache(cfg, 2, 16)
  h, cache = transformer.decode(params, cfg, tokens[:, :P], cache=cache, cache_index=0)
  steps = [transformer.unembed(params, cfg, h)]
  for t in range(P, T):
    pos = jnp.full((2, 1), t)
    h, cache = transformer.decode(params, cfg, tokens[:, t:t + 1], pos, cache=cache, cache_index=t)
    steps.append(transformer.unembed(params, cfg, h))
  np.testing.assert_allclose(np.asarray(jnp.concatenate(steps, 1)), np.asarray(full), atol=1e-5)


def test_bfloat16_close_to_float32():
  cfg = FAMILIES["qwen2"]
  params = _random_params(cfg)
  tokens = jnp.arange(12)[None]
  a = transformer.forward(params, cfg, tokens)
  bcfg = cfg.replace(param_dtype="bfloat16", compute_dtype="bfloat16")
  b = transformer.forward(jax.tree.map(lambda x: x.astype(jnp.bfloat16), params), bcfg, tokens)
  assert b.dtype == jnp.float32
  assert np.abs(np.asarray(a) - np.asarray(b)).max() < 0.1 * np.abs(np.asarray(a)).max()


def test_hf_config_roundtrip(family):
  _, cfg, _, model_dir = family
  hf_cfg = json.loads((model_dir / "config.json").read_text())
  assert transformers.AutoConfig.from_pretrained(model_dir).model_type == cfg.model_type
  assert ModelConfig.from_hf(hf_cfg) == cfg
