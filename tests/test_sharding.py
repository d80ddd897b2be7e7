"""Sharded == unsharded on 8 fake CPU devices (tests/conftest.py sets the device count before JAX starts)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sparkjax import sampling, sharding
from sparkjax.models import transformer
from sparkjax.models.config import ModelConfig
from sparkjax.rl import iteration as rl
from sparkjax.train import sft, state as state_lib

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")

CFG = ModelConfig.tiny("qwen2", vocab_size=64, hidden_size=64, intermediate_size=128, num_heads=4, num_kv_heads=2)
MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 4, 2)]


def _mesh(shape):
  return sharding.make_mesh(sharding.MeshConfig(*shape))


def _place(params, mesh):
  # Copy first: device_put may reuse the source buffer as a shard, and the state is donated.
  return jax.device_put(jax.tree.map(jnp.copy, params), sharding.param_shardings(CFG, mesh))


@pytest.fixture(scope="module")
def params():
  return transformer.init_params(CFG, jax.random.key(0), std=0.2)


@pytest.mark.parametrize("shape", MESHES)
def test_forward_and_greedy_sampling(params, shape):
  mesh = _mesh(shape)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (8, 12)))
  ref = transformer.forward(params, CFG, tokens)
  sp = _place(params, mesh)
  fwd = jax.jit(lambda p, t: transformer.forward(p, CFG, t))
  out = fwd(sp, jax.device_put(tokens, sharding.batch_sharding(mesh, 2)))
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-4)  # fp32 reduction order differs

  samp = sampling.SamplingParams(max_new_tokens=6, temperature=0.0, num_samples=2)
  prompts, mask = sampling.pad_prompts([[1, 2, 3]] * 4 + [[5, 6]] * 4, 0)
  a = sampling.sample_jit(params, prompts, mask, jax.random.key(0), cfg=CFG, sp=samp)
  # The pinned sampler places host inputs itself and returns every output row-split over the data axes.
  sampler = sampling.make_sampler(CFG, samp, sharding.param_shardings(CFG, mesh), mesh)
  b = sampler(sp, prompts, mask, jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
  rows = sharding.batch_sharding(mesh, 1)
  for x in b:
    assert x.sharding.is_equivalent_to(rows, x.ndim), x.sharding


def _opt():
  return state_lib.make_optimizer(ml_collections.ConfigDict(dict(
      lr=1e-3, total_steps=10, warmup_steps=0, schedule="constant", b1=0.9, b2=0.99, weight_decay=0.0,
      grad_clip=1.0)))[0]


@pytest.mark.parametrize("shape", MESHES)
def test_sft_step_and_grpo_iteration(params, shape):
  mesh = _mesh(shape)
  tx = _opt()
  batch = sft.pad_examples([[1, 2, 3, 4]] * 8, [[5, 6, 7]] * 4 + [[8, 9]] * 4, pad_id=0, length=8)
  step = sft.make_sft_step(CFG, tx)
  ref, m_ref = step(state_lib.create_state(jax.tree.map(jnp.copy, params), tx, 0), batch)
  state = state_lib.create_state(_place(params, mesh), tx, 0)
  bs = {k: jax.device_put(v, sharding.batch_sharding(mesh, v.ndim)) for k, v in batch.items()}
  got, m_got = step(state, bs)
  assert float(m_got["loss"]) == pytest.approx(float(m_ref["loss"]), rel=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4), ref.params,
               got.params)

  settings = rl.GRPOSettings(sampling=sampling.SamplingParams(max_new_tokens=5, temperature=1.0, num_samples=4),
                             kl_coef=0.01)
  reward_fn = rl.rule_reward(lambda tokens, lengths, finished, targets: (tokens[:, 0] == targets).astype(jnp.float32))
  it = rl.make_iteration(CFG, settings, tx, reward_fn)
  prompts, mask = sampling.pad_prompts([[1, 2, 3]] * 4 + [[5, 6]] * 4, 0)
  targets = jnp.arange(8) % 4
  s_ref, r_ref, roll_ref = it(state_lib.create_state(jax.tree.map(jnp.copy, params), tx, 0), params, None, prompts,
                              mask, targets)
  # The pinned iteration: explicit in/out shardings from the state's layout, state donated.
  state_sh = state_lib.state_shardings(tx, transformer.abstract_params(CFG), sharding.param_shardings(CFG, mesh),
                                       mesh)
  pinned = rl.make_iteration(CFG, settings, tx, reward_fn, state_sharding=state_sh)
  state = state_lib.create_state(_place(params, mesh), tx, 0)
  s_got, r_got, roll = pinned(state, _place(params, mesh), None, prompts, mask, targets)
  assert state.params["embed"].is_deleted()  # donated
  assert float(r_got["reward_mean"]) == float(r_ref["reward_mean"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4), s_ref.params,
               s_got.params)
  jax.tree.map(lambda x, want: _same_sharding(x, want), s_got, state_sh)
  # The returned rollout is the reference's, its rows split over the data axes.
  np.testing.assert_array_equal(np.asarray(roll.tokens), np.asarray(roll_ref.tokens))
  _same_sharding(roll.tokens, sharding.batch_sharding(mesh, 2))


def _same_sharding(x, want):
  assert x.sharding.is_equivalent_to(want, x.ndim), (x.sharding, want)


def test_no_large_parameter_replicated():
  cfg = ModelConfig.qwen25_math_7b(param_dtype="bfloat16")
  abstract = transformer.abstract_params(cfg)
  for shape in MESHES:
    mesh = _mesh(shape)
    sharding.check_replication(abstract, sharding.param_shardings(cfg, mesh))
  # A rule table that forgets the embedding's axes on an fsdp mesh: the check names the parameter.
  rules = tuple((k, None if k in ("embed", "vocab") else v) for k, v in sharding.DEFAULT_RULES)
  with pytest.raises(ValueError, match=r"replicated on every device.*\['embed'\] \(152064, 3584\)"):
    sharding.check_replication(abstract, sharding.param_shardings(cfg, _mesh((2, 4, 1)), rules))


def test_bad_meshes_and_rules():
  with pytest.raises(ValueError, match="does not divide the 8 devices"):
    sharding.make_mesh(sharding.MeshConfig(3, -1, 1))
  with pytest.raises(ValueError, match="uses 4 devices, but there are 8"):
    sharding.make_mesh(sharding.MeshConfig(2, 2, 1))
  mesh = _mesh((2, 2, 2))
  with pytest.raises(ValueError, match="names mesh axis 'model'"):
    sharding.param_shardings(CFG, mesh, rules=sharding.DEFAULT_RULES + (("mlp", "model"),))
  with pytest.raises(ValueError, match="logical axis 'mlp' has no sharding rule"):
    sharding.param_shardings(CFG, mesh, rules=tuple(r for r in sharding.DEFAULT_RULES if r[0] != "mlp"))
  with pytest.raises(ValueError, match="batch 6 does not divide over the data axes"):
    sharding.check_batch(6, _mesh((2, 4, 1)))
