"""Stage III in the world: the policy's responses become the PRM's input on device, exactly as the host encodes
them, and a PRM's verdicts become rewards inside the one-jit iteration."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparkjax import sampling
from sparkjax.data import arith, world_data
from sparkjax.models import transformer
from sparkjax.models.config import ModelConfig
from sparkjax.spark import prm_examples as E
from sparkjax.spark import rewards as R
from sparkjax.spark import world_reward as WR

WORLD = arith.WorldConfig(min_ops=2, max_ops=3, max_operand=3, max_value=12)
S = 3


@pytest.fixture(scope="module")
def world():
  tok = arith.build_tokenizer(WORLD.max_value)
  enc = world_data.WorldEncoder(WORLD, tok, "think")
  rng = np.random.default_rng(0)
  problems = [arith.problem_at(2, i, WORLD) for i in range(8)]
  solutions = [arith.sample_solution(p, rng, WORLD, 0.5) for p in problems]
  ex = [enc.rl_example(p) for p in problems]
  rows = [tok.encode(s.text("think")) + [tok.eos_token_id] for s in solutions]
  T = max(map(len, rows)) + 3
  tokens = np.full((len(rows), T), tok.pad_token_id, np.int32)
  for i, r in enumerate(rows):
    tokens[i, :len(r)] = r
  out = sampling.SampleOutput(tokens=jnp.asarray(tokens), logprobs=jnp.zeros(tokens.shape),
                              lengths=jnp.asarray([len(r) for r in rows]), finished=jnp.ones(len(rows), bool))
  prompt = jnp.asarray(np.stack([e["prompt"] for e in ex]))
  mask = jnp.asarray(np.stack([e["prompt_mask"] for e in ex]))
  records = [dict(id=str(i), problem=p.text(), steps=[st.text() for st in s.steps], answer=str(s.answer))
             for i, (p, s) in enumerate(zip(problems, solutions))]
  return tok, enc, problems, solutions, prompt, mask, out, records


@pytest.mark.parametrize("fmt", ["prm", "prm_cot", "orm", "disc"])
def test_device_prm_input_equals_the_host_encoding(world, fmt):
  tok, enc, problems, solutions, prompt, mask, out, records = world
  ids = WR.WorldPromptIds.from_tokenizer(tok, S)
  got = jax.jit(WR.policy_to_prm_input, static_argnums=(4, 5, 6, 7))(prompt, mask, out.tokens, out.lengths, ids, fmt,
                                                                     S, tok.pad_token_id)
  tokens, m = np.asarray(got["tokens"]), np.asarray(got["mask"])
  assert any(len(s.steps) == 3 for s in solutions) and any(len(s.steps) == 2 for s in solutions)
  for i, rec in enumerate(records):
    row = tokens[i][m[i]].tolist()
    k = int(m[i].sum())
    if fmt == "disc":
      want = E.encode_discriminative(tok, [rec], max_steps=S)
      assert row == want["tokens"][0][want["mask"][0]].tolist()
      assert m[i, :k].all()  # right-padded, as it was trained
      np.testing.assert_array_equal(np.asarray(got["sep_positions"][i]), want["sep_positions"][0])
    else:
      assert row == tok.encode(E.build_prompt(rec, fmt)), tok.convert_ids_to_tokens(row)
      assert m[i, -k:].all()  # left-padded, for the sampler


def _verdict_prm(tok, words):
  """A bigram PRM that answers `words` (then eos) to any input: layers add nothing, each word's embedding is a
  one-hot direction and lm_head maps it to the next word (see tests/test_rl_iteration.py's coin-flip policy)."""
  cfg = ModelConfig.tiny("qwen2", vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_heads=2,
                         num_kv_heads=1, tie_embeddings=False, max_position_embeddings=512)
  params = jax.tree.map(np.array, transformer.init_params(cfg, jax.random.key(0), std=0.1))
  params["layers"]["o_proj"]["kernel"][:] = 0.0
  params["layers"]["down_proj"]["kernel"][:] = 0.0
  params["embed"][:] = 0.0
  params["lm_head"][:] = 0.0
  chain = tok.convert_tokens_to_ids(["\n", *words]) + [tok.eos_token_id]
  for d, (a, b) in enumerate(zip(chain, chain[1:])):
    params["embed"][a, d] = 1.0
    params["lm_head"][d, b] = 30.0
  return cfg, jax.tree.map(jnp.asarray, params)


def test_prm_verdicts_become_rewards(world):
  """A PRM that always says "step 1 correct, step 2 incorrect, answer wrong": the verdicts, the format check and
  the exact answer check come out per row as computed by hand; an unreadable PRM is counted and scores 0."""
  tok, enc, problems, solutions, prompt, mask, out, records = world
  cfg, params = _verdict_prm(tok, ["Correct", "Incorrect", "?", "No"])
  spec = R.FormatSpec(WORLD.min_ops, WORLD.max_ops)
  reward_fn = WR.make_prm_reward(cfg, "prm", tok, spec, S, max_new_tokens=8)
  targets = jnp.asarray([enc.number_id(p.answer) for p in problems])
  v = jax.jit(reward_fn)(params, prompt, mask, out, targets)
  n = np.array([len(s.steps) for s in solutions])
  np.testing.assert_array_equal(v["valid"], True)
  np.testing.assert_array_equal(v["prm_parsed"], True)
  np.testing.assert_array_equal(v["final"], 0.0)
  np.testing.assert_array_equal(v["prm_steps"], 2)
  np.testing.assert_array_equal(v["num_steps"], n)
  np.testing.assert_array_equal(v["step_ok"], np.tile([True, False, False], (len(n), 1)))
  np.testing.assert_array_equal(v["answer_correct"], [float(s.answer == p.answer) for p, s in zip(problems, solutions)])
  # step-augmented: 0.4 * 1/2 where the PRM judged the policy's two steps, 0 where the policy wrote three.
  r, _ = R.REWARD_DESIGNS["step_augmented"](v, 2)
  np.testing.assert_allclose(r, np.where(n == 2, 0.2, 0.0), rtol=1e-6)

  mute_cfg, mute = _verdict_prm(tok, ["Correct", "Correct"])  # never reaches a final verdict
  v = WR.make_prm_reward(mute_cfg, "prm", tok, spec, S, max_new_tokens=8)(mute, prompt, mask, out, targets)
  np.testing.assert_array_equal(v["prm_parsed"], False)
  r, _ = R.REWARD_DESIGNS["process_outcome"](v, 2)
  np.testing.assert_array_equal(r, 0.0)


def test_prm_reward_inside_the_iteration_compiles_once(world):
  """Policy sampling -> format check -> PRM input -> PRM decode -> design -> update, as one jitted program: the
  second and third calls do not retrace; the PRM's parameters are an argument."""
  import ml_collections

  from sparkjax.rl import iteration as rl
  from sparkjax.train import state as state_lib

  tok, enc, problems, solutions, prompt, mask, out, records = world
  cfg = ModelConfig.tiny("qwen2", vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_heads=2,
                         num_kv_heads=1, max_position_embeddings=512)
  prm_cfg, prm = _verdict_prm(tok, ["Correct", "Incorrect", "?", "Yes"])
  tx, schedule = state_lib.make_optimizer(ml_collections.ConfigDict(dict(
      lr=1e-2, total_steps=10, warmup_steps=0, schedule="constant", b1=0.9, b2=0.99, weight_decay=0.0,
      grad_clip=1.0)))
  sp = sampling.SamplingParams(max_new_tokens=enc.solution_len, temperature=1.0, num_samples=4,
                               stop_tokens=(enc.eos,), pad_id=enc.pad)
  traces = []
  inner = WR.make_prm_reward(prm_cfg, "prm", tok, R.FormatSpec(2, 3), S, max_new_tokens=8)
  reward_fn = lambda *a: (traces.append(1), inner(*a))[1]
  design = functools.partial(R.REWARD_DESIGNS["selective_advantage"], advantage="grpo")
  step = rl.make_iteration(cfg, rl.GRPOSettings(sampling=sp), tx, reward_fn, schedule, design=design)
  params = transformer.init_params(cfg, jax.random.key(1), std=0.1)
  state = state_lib.create_state(params, tx, 0)
  it = iter(world_data.world_dataset(enc, 0, 4, "rl"))
  for _ in range(3):
    b = next(it)
    state, m, roll = step(state, None, prm, b["prompt"], b["prompt_mask"], b["target"])
  assert len(traces) == 1 and int(state.step) == 3
  assert roll.advantages.shape == roll.tokens.shape and np.isfinite(np.asarray(roll.advantages)).all()
  # An untrained policy breaks the format: every reward is 0, whatever the PRM says.
  assert float(m["score_valid"]) == 0.0 and float(m["reward_mean"]) == 0.0 and float(m["score_prm_parsed"]) == 1.0


def test_baselines(world):
  tok, enc, problems, solutions, prompt, mask, out, records = world
  targets = jnp.asarray([enc.number_id(p.answer) for p in problems])
  truth = [float(s.answer == p.answer) for p, s in zip(problems, solutions)]
  rlvr = WR.make_rlvr_reward(tok)(None, prompt, mask, out, targets)
  np.testing.assert_array_equal(rlvr["rewards"], truth)
  rand = [np.asarray(WR.make_random_reward(tok, seed)(None, prompt, mask, out, targets)["rewards"]) for seed in (0, 1)]
  assert set(np.concatenate(rand).tolist()) == {0.0, 1.0} and not np.array_equal(rand[0], rand[1])
  np.testing.assert_array_equal(rand[0], WR.make_random_reward(tok, 0)(None, prompt, mask, out, targets)["rewards"])
  # The same responses after an update (other log-probabilities) draw new coins: the policy cannot learn them.
  moved = out._replace(logprobs=out.logprobs - 0.5)
  again = np.asarray(WR.make_random_reward(tok, 0)(None, prompt, mask, moved, targets)["rewards"])
  assert not np.array_equal(again, rand[0])
  many = sampling.SampleOutput(tokens=jnp.tile(out.tokens, (256, 1)), logprobs=jnp.tile(out.logprobs, (256, 1)),
                               lengths=jnp.tile(out.lengths, 256), finished=jnp.tile(out.finished, 256))
  coins = np.asarray(WR.make_random_reward(tok, 0)(None, prompt, mask, many, jnp.tile(targets, 256))["rewards"])
  assert 0.45 < coins.mean() < 0.55  # 2,048 rows of the same 8 responses: a fair coin per row


def test_hack_diagnostics(world):
  """Each known hack, written into one response, is counted under its own name; the PRM's agreement with the exact
  answer check and its false positives are counted per row."""
  tok, enc, problems, solutions, prompt, mask, out, records = world
  p = problems[0]
  good = arith.Solution(tuple(p.correct_steps()), p.answer).text("think")
  extra = "<step> 1 + 1 = 2 </step> " * 3
  texts = [good, good + " Problem : Start with 3 .", good + " <answer> \\boxed{ 5 } </answer>",
           good.replace("} </answer>", "} \\boxed{ 5 } </answer>"),
           "<think> " + good.split("</step>", 1)[1].strip(),  # the first step dropped
           good.replace("</think>", extra + "</think>")]
  rows = [tok.encode(t) + [tok.eos_token_id] for t in texts]
  T = max(map(len, rows))
  tokens = np.full((len(rows), T), tok.pad_token_id, np.int32)
  for i, r in enumerate(rows):
    tokens[i, :len(r)] = r
  o = sampling.SampleOutput(tokens=jnp.asarray(tokens), logprobs=jnp.zeros(tokens.shape),
                            lengths=jnp.asarray([len(r) for r in rows]), finished=jnp.ones(len(rows), bool))
  cfg, prm = _verdict_prm(tok, ["Correct", "?", "Yes"])  # says "correct" to everything
  n_steps = len(p.correct_steps())
  spec = R.FormatSpec(n_steps, n_steps)
  v = WR.make_prm_reward(cfg, "prm", tok, spec, 6, max_new_tokens=6)(
      prm, prompt[:1], mask[:1], o, jnp.full((len(rows),), enc.number_id(p.answer)))
  got = {k: np.asarray(v[k]).tolist() for k in ("hack_appended", "hack_extra_answer", "hack_boxed",
                                                 "hack_step_collapse", "hack_step_inflation", "valid")}
  assert got == dict(hack_appended=[0, 1, 0, 0, 0, 0], hack_extra_answer=[0, 0, 1, 0, 0, 0],
                     hack_boxed=[0, 0, 0, 1, 0, 0], hack_step_collapse=[0, 0, 0, 0, 1, 0],
                     hack_step_inflation=[0, 0, 0, 0, 0, 1], valid=[True] + [False] * 5)
  truth = np.asarray(v["answer_correct"])
  assert truth[0] == 1.0
  np.testing.assert_array_equal(v["prm_agrees"], truth)  # the PRM says "Yes" to every row
  np.testing.assert_array_equal(v["prm_false_positive"], 1.0 - truth)
  # The control run without the constraint: every row counts as valid for the designs, the diagnostics stay.
  off = WR.make_prm_reward(cfg, "prm", tok, spec, 6, max_new_tokens=6, enforce_format=False)(
      prm, prompt[:1], mask[:1], o, jnp.full((len(rows),), enc.number_id(p.answer)))
  np.testing.assert_array_equal(off["valid"], True)
  np.testing.assert_array_equal(off["format_valid"], got["valid"])
  for k in ("hack_appended", "hack_boxed", "hack_step_inflation"):
    np.testing.assert_array_equal(off[k], got[k])
  r_on, _ = R.REWARD_DESIGNS["process_outcome"](v, len(rows))
  r_off, _ = R.REWARD_DESIGNS["process_outcome"](off, len(rows))
  np.testing.assert_array_equal(r_on, [1, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(r_off, 1.0)  # the PRM says "Yes" to every hack
  # The baselines report the same format diagnostics beside their reward, without applying them.
  targets = jnp.full((len(rows),), enc.number_id(p.answer))
  rlvr = WR.make_rlvr_reward(tok, spec)(None, prompt[:1], mask[:1], o, targets)
  np.testing.assert_array_equal(rlvr["format_valid"], got["valid"])
  np.testing.assert_array_equal(rlvr["hack_boxed"], got["hack_boxed"])
  rand = WR.make_random_reward(tok, 0, spec)(None, prompt[:1], mask[:1], o, targets)
  np.testing.assert_array_equal(rand["hack_appended"], got["hack_appended"])


def _stage3_iteration(tok, enc, state_sharding=None, scorer_sharding=None):
  import ml_collections

  from sparkjax.rl import iteration as rl
  from sparkjax.train import state as state_lib

  cfg = ModelConfig.tiny("qwen2", vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_heads=2,
                         num_kv_heads=1, max_position_embeddings=512)
  prm_cfg, prm = _verdict_prm(tok, ["Correct", "Incorrect", "?", "Yes"])
  # eps 1: Adam's first step lr * g / (|g| + eps) is then ~lr * g, smooth in g, so reordered float32 sums of the
  # gradient change the parameters by ~lr * |g| * 1e-6, not by up to lr where g ~ 0 (as with eps 1e-8).
  tx, schedule = state_lib.make_optimizer(ml_collections.ConfigDict(dict(
      lr=1e-2, total_steps=10, warmup_steps=0, schedule="constant", b1=0.9, b2=0.99, eps=1.0, weight_decay=0.0,
      grad_clip=1.0)))
  sp = sampling.SamplingParams(max_new_tokens=enc.solution_len, temperature=1.0, num_samples=4,
                               stop_tokens=(enc.eos,), pad_id=enc.pad)
  # No format guard on steps and the control run's switch: rows get non-zero rewards from an untrained policy.
  inner = WR.make_prm_reward(prm_cfg, "prm", tok, R.FormatSpec(0, 3), S, max_new_tokens=8, enforce_format=False)
  design = functools.partial(R.REWARD_DESIGNS["global_step"], advantage="grpo")
  step = rl.make_iteration(cfg, rl.GRPOSettings(sampling=sp, kl_coef=0.01), tx, inner, schedule, state_sharding,
                           scorer_sharding, design=design)
  return cfg, prm_cfg, prm, tx, step


def test_stage3_iteration_sharded_equals_one_device(world):
  """The PRM-reward iteration on 8 devices (data parallel, and data x fsdp x tp) equals one device."""
  if jax.device_count() < 8:
    pytest.skip("needs 8 (fake) devices")
  from sparkjax import sharding
  from sparkjax.train import state as state_lib

  tok, enc = world[0], world[1]
  cfg, prm_cfg, prm, tx, step = _stage3_iteration(tok, enc)
  params = transformer.init_params(cfg, jax.random.key(1), std=0.1)
  b = next(iter(world_data.world_dataset(enc, 0, 8, "rl")))
  ref_state, ref_m, ref_roll = step(state_lib.create_state(jax.tree.map(jnp.copy, params), tx, 0), params, prm,
                                    b["prompt"], b["prompt_mask"], b["target"])
  assert float(ref_m["reward_mean"]) > 0 and float(jnp.abs(ref_roll.advantages).sum()) > 0
  for shape in ((8, 1, 1), (2, 2, 2)):
    mesh = sharding.make_mesh(sharding.MeshConfig(*shape))
    p_sh, prm_sh = sharding.param_shardings(cfg, mesh), sharding.param_shardings(prm_cfg, mesh)
    state_sh = state_lib.state_shardings(tx, transformer.abstract_params(cfg), p_sh, mesh)
    _, _, _, _, pinned = _stage3_iteration(tok, enc, state_sh, prm_sh)
    place = lambda t, s: jax.device_put(jax.tree.map(jnp.copy, t), s)
    state = state_lib.create_state(place(params, p_sh), tx, 0)
    rows = lambda x: jax.device_put(x, sharding.batch_sharding(mesh, x.ndim))
    got, m, roll = pinned(state, place(params, p_sh), place(prm, prm_sh), rows(b["prompt"]), rows(b["prompt_mask"]),
                          rows(b["target"]))
    np.testing.assert_array_equal(np.asarray(roll.tokens), np.asarray(ref_roll.tokens))
    # O(1) advantages from group means and stds of exact 0/1 rewards and step verdicts: float32 rounding, ~1e-7.
    np.testing.assert_allclose(np.asarray(roll.advantages), np.asarray(ref_roll.advantages), atol=1e-6)
    assert float(m["reward_mean"]) == float(ref_m["reward_mean"])
    # |Δparam| <= lr * |Δg| with eps 1 (see _stage3_iteration): 1e-2 * (float32 reassociation of ~1e2-term sums of
    # gradients of size <= 1, ~1e-5) = 1e-7, above the parameters' own rounding (|p| < 1: ~6e-8).
    jax.tree.map(lambda a, c: np.testing.assert_allclose(np.asarray(a), np.asarray(c), atol=2e-7), ref_state.params,
                 got.params)


def test_stage3_iteration_makes_no_host_round_trip(world):
  """With its inputs on device, the whole Stage III iteration (sampling, format check, PRM decode, design, update)
  runs with every host transfer disallowed."""
  from sparkjax.train import state as state_lib

  tok, enc = world[0], world[1]
  cfg, _, prm, tx, step = _stage3_iteration(tok, enc)
  params = transformer.init_params(cfg, jax.random.key(1), std=0.1)
  b = {k: jnp.asarray(v) for k, v in next(iter(world_data.world_dataset(enc, 0, 4, "rl"))).items()}
  state = state_lib.create_state(jax.tree.map(jnp.copy, params), tx, 0)  # donated; params stay the reference
  state, _, _ = step(state, params, prm, b["prompt"], b["prompt_mask"], b["target"])  # compiles
  jax.block_until_ready(state)
  with jax.transfer_guard("disallow"):
    state, m, roll = step(state, params, prm, b["prompt"], b["prompt_mask"], b["target"])
    jax.block_until_ready((state, m, roll))
  assert int(state.step) == 2
