"""The one batched generator: any batching gives the same completions as one call per prompt."""

import dataclasses

import jax
import pytest

from sparkjax import sampling, sharding, text_generation
from sparkjax.data import arith
from sparkjax.models import transformer
from sparkjax.models.config import ModelConfig

WORLD = arith.WorldConfig(min_ops=2, max_ops=3)


@pytest.fixture(scope="module")
def model():
  tok = arith.build_tokenizer(WORLD.max_value)
  cfg = ModelConfig.tiny("qwen2", vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_heads=2,
                         num_kv_heads=1, head_dim=16, num_layers=2, max_position_embeddings=256)
  params = transformer.init_params(cfg, jax.random.key(0), std=0.3)
  prompts = [tok.encode(arith.prompt_text(arith.problem_at(1, i, WORLD))) for i in range(5)]
  sp = sampling.SamplingParams(max_new_tokens=6, temperature=0.0, num_samples=2, stop_tokens=(tok.eos_token_id,),
                               pad_id=tok.pad_token_id)
  return tok, cfg, params, prompts, sp


def test_every_batching_gives_the_same_greedy_completions(model):
  tok, cfg, params, prompts, sp = model
  one_per_prompt = [text_generation.Generator(cfg, sp.pad_id, rows=2).generate(params, [p], sp, jax.random.key(1))[0]
                    for p in prompts]
  for kw in (dict(rows=64), dict(rows=4), dict(rows=4, fill_last=False), dict(rows=None, fill_last=False),
             dict(rows=4, bucket=lambda n: 64), dict(rows=None, fill_last=False, prefill_groups=3)):
    got = text_generation.Generator(cfg, sp.pad_id, **kw).generate(params, prompts, sp, jax.random.key(1))
    assert got == one_per_prompt, kw
  assert all(len(row) == 2 and row[0] == row[1] for row in one_per_prompt)  # greedy samples of one prefill agree
  assert all(c.tokens and isinstance(c.finished, bool) for row in one_per_prompt for c in row)


def test_on_a_mesh_calls_split_over_the_data_axes(model):
  tok, cfg, params, prompts, sp = model
  mesh = sharding.make_mesh(sharding.MeshConfig(4, 1, 2))
  shards = sharding.param_shardings(cfg, mesh)
  gen = text_generation.Generator(cfg, sp.pad_id, rows=6 * 2, param_shardings=shards, mesh=mesh)
  assert gen.prompts_per_call(2) == 4  # 6 prompts would not split over 4 data shards
  plain = text_generation.Generator(cfg, sp.pad_id, rows=8).generate(params, prompts, sp, jax.random.key(1))
  assert gen.generate(jax.device_put(params, shards), prompts, sp, jax.random.key(1)) == plain
  with pytest.raises(ValueError, match="prefill_groups > 1 need a single device"):
    text_generation.Generator(cfg, sp.pad_id, rows=None, fill_last=False, param_shardings=shards, mesh=mesh)


def test_a_prompt_longer_than_the_cap_is_an_error(model):
  tok, cfg, params, prompts, sp = model
  with pytest.raises(ValueError, match="longer than the padded length 8"):
    text_generation.Generator(cfg, sp.pad_id).generate(params, prompts, sp, jax.random.key(1), max_prompt_len=8)


def test_prefill_groups_keep_each_rows_sample(model):
  """Prompts of 1 to 40 tokens sampled at T = 1 in length groups (three here) give every prompt the samples it gets
  in one group: rows go back to their prompts and keep their keys."""
  tok, cfg, params, prompts, sp = model
  prompts = [prompts[0] * 3, prompts[1][:1], prompts[2], prompts[3] + prompts[4], prompts[4][:3]]
  sp = dataclasses.replace(sp, temperature=1.0)
  assert len(sampling.group_prompts([len(p) for p in prompts], 3)) == 3
  one = text_generation.Generator(cfg, sp.pad_id, rows=None, fill_last=False).generate(params, prompts, sp,
                                                                                        jax.random.key(2))
  grouped = text_generation.Generator(cfg, sp.pad_id, rows=None, fill_last=False, prefill_groups=3).generate(
      params, prompts, sp, jax.random.key(2))
  assert grouped == one and len({tuple(c.tokens) for row in one for c in row}) > 5
  with pytest.raises(ValueError, match="prefill_groups=0"):
    text_generation.Generator(cfg, sp.pad_id, prefill_groups=0)


def test_group_prompts_minimises_padded_tokens():
  groups = sampling.group_prompts([5, 100, 7, 3000, 20], 3)
  assert [g.tolist() for g in groups] == [[0, 2, 4], [1], [3]]  # 3 x 32 + 128 + 4096 padded tokens
  assert [g.tolist() for g in sampling.group_prompts([5, 100, 7, 3000, 20], 2)] == [[0, 2, 4, 1], [3]]
  assert [g.tolist() for g in sampling.group_prompts([9, 10, 12], 3)] == [[0, 1, 2]]  # one bucket: no split
  assert [g.tolist() for g in sampling.group_prompts([7], 4)] == [[0]]
