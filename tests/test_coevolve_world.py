"""SPARK-CoEvolve in the world: recycling on device (group compositions -> example kinds, labels, caps, prompts equal
to the host's), the judge's one output check and its counted failures, the FIFO cache (order, wraparound, epoch
reset, checkpoint round trip), the update count the learning-rate schedule sees, the instruct SFT's labels, and
the size checks."""

import dataclasses
import re
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparkjax import sampling
from sparkjax.coevolve import iteration as co_it
from sparkjax.coevolve import world_judge as wj
from sparkjax.coevolve import world_recycle as wr
from sparkjax.coevolve import world_sft
from sparkjax.coevolve.recycle import RecycleConfig
from sparkjax.data import arith, world_data
from sparkjax.models import transformer
from sparkjax.models.config import ModelConfig
from sparkjax.rl import iteration as rli
from sparkjax.spark import world_reward as WR
from sparkjax.train import state as state_lib
from sparkjax.train.checkpoint import Checkpointer

WORLD = arith.WorldConfig(min_ops=2, max_ops=3, max_operand=3, max_value=12, ops="+-", heldout_every=5,
                          misconceptions=0.2)


@pytest.fixture(scope="module")
def W():
  tok = arith.build_tokenizer(WORLD.max_value)
  enc = world_data.WorldEncoder(WORLD, tok, "think")
  return tok, enc, wj.JudgeVocab.from_tokenizer(tok, enc.prompt_len, enc.solution_len)


def _rollout(W, problems, answers_per_group):
  """Prompts of `problems` and, per group, responses with the given answers (correct steps, then that answer)."""
  tok, enc, _ = W
  batch = world_data.rl_batch(enc, problems)
  T = enc.solution_len
  rows, lengths = [], []
  for p, answers in zip(problems, answers_per_group):
    for a in answers:
      ids = tok.encode(arith.render_solution(p.correct_steps(), a, "think"), add_special_tokens=False) + [enc.eos]
      rows.append(ids + [enc.pad] * (T - len(ids)))
      lengths.append(len(ids))
  correct = [a == p.answer for p, answers in zip(problems, answers_per_group) for a in answers]
  return batch, np.array(rows, np.int32), np.array(lengths, np.int32), np.array(correct)


def _text(tok, ids, mask=None):
  return tok.decode([int(t) for i, t in enumerate(ids) if mask is None or mask[i]])


def _left_pad(ids, width, pad):
  tokens = np.full(width, pad, np.int32)
  tokens[width - len(ids):] = ids
  return tokens, np.arange(width) >= width - len(ids)


def test_device_prompts_equal_host_prompts(W):
  tok, enc, vocab = W
  problems = [arith.problem_at(3, i, WORLD) for i in range(2)]
  batch, tokens, lengths, _ = _rollout(W, problems, [[problems[0].answer, 5], [problems[1].answer, 7]])
  q = wj.question(vocab, jnp.asarray(batch["prompt"]), jnp.asarray(batch["prompt_mask"]))
  for full in (True, False):
    r = wj.response(vocab, jnp.asarray(tokens), jnp.asarray(lengths), jnp.asarray(full))
    for kind in range(3):
      for k in range(len(vocab.phrasings[kind])):
        idx = jnp.full((4,), k)
        qn = tuple(jnp.repeat(x, 2, axis=0) for x in q)
        slots = dict(Q=qn, R=r, RA=r, RB=(r[0][::-1], r[1][::-1]))
        dev, mask = wj.render(vocab, kind, idx, slots)
        for n in range(4):
          p_ids = enc.encode_prompt(problems[n // 2])
          shown = wj.host_response(vocab, tokens[n].tolist(), full)
          other = wj.host_response(vocab, tokens[3 - n].tolist(), full)
          host = wj.render_host(vocab, kind, k, dict(Q=wj.host_question(vocab, p_ids), R=shown, RA=shown, RB=other))
          ht, hm = _left_pad(host, vocab.width, vocab.pad)
          np.testing.assert_array_equal(np.asarray(dev[n]), ht)
          np.testing.assert_array_equal(np.asarray(mask[n]), hm)
  # What a prompt says, for one phrasing: the question, the answer-only view, the judge question.
  shown = wj.host_response(vocab, tokens[1].tolist(), False)
  text = _text(tok, wj.render_host(vocab, 0, 0, dict(Q=wj.host_question(vocab, enc.encode_prompt(problems[0])),
                                                     R=shown)))
  assert text == (f"Problem : {problems[0].text().replace(',', ' ,').replace('.', ' .')} \n Solution : \n "
                  "<answer> \\boxed{ 5 } </answer> \n Is the answer correct ? \n")


def test_recycling_rules_by_group_composition(W):
  tok, enc, vocab = W
  problems = [arith.problem_at(5, i, WORLD) for i in range(4)]
  ans = [p.answer for p in problems]
  other = [(a + 1) % (WORLD.max_value + 1) for a in ans]
  # group 0 all correct, group 1 all wrong, groups 2 and 3 mixed (correct response at index 1 and 2).
  groups = [[ans[0]] * 4, [other[1]] * 4, [other[2], ans[2], other[2], other[2]],
            [other[3], other[3], ans[3], other[3]]]
  batch, tokens, lengths, correct = _rollout(W, problems, groups)
  args = (jnp.asarray(batch["prompt"]), jnp.asarray(batch["prompt_mask"]), jnp.asarray(tokens), jnp.asarray(lengths),
          jnp.asarray(correct), jnp.asarray(batch["target"]))
  yes, no, A, B = vocab.yes, vocab.no, vocab.a, vocab.b
  for seed in range(6):
    key = jax.random.key(seed)
    ex = wr.recycle(key, vocab, RecycleConfig(pointwise_in_mixed=0.0, show_reasoning=False, confirm_share=1.0), *args)
    kind, label, valid = map(np.asarray, (ex.kind, ex.label, ex.valid))
    # Judge slots: all-correct -> pointwise Yes, all-wrong -> pointwise No, mixed -> pairwise (pointwise_in_mixed 0).
    assert kind[:4].tolist() == [0, 0, 1, 1] and valid[:4].all()
    assert label[0] == yes and label[1] == no and set(label[2:4]) <= {A, B}
    for g in (2, 3):  # the correct answer sits under the labelled letter
      text = _text(tok, ex.prompt[g], ex.mask[g])
      a_part, b_part = text.split(" A : ")[1].split(" B : ")
      right = f"\\boxed{{ {ans[g]} }}"
      assert (right in a_part) == (label[g] == A) and (right in b_part) == (label[g] == B)
    # Reflection on a wrong answer: groups with one (1, 2, 3), target the gold answer; confirm: groups with a
    # correct answer (0, 2, 3), with confirm_share 1.
    assert valid[4:8].tolist() == [False, True, True, True] and valid[8:].tolist() == [True, False, True, True]
    assert (kind[4:] == 2).all() and label[4:8].tolist() == np.asarray(batch["target"]).tolist()
    for g in (1, 2, 3):
      assert f"\\boxed{{ {other[g]} }}" in _text(tok, ex.prompt[4 + g], ex.mask[4 + g])
  # pointwise_in_mixed 1: every judge slot pointwise; mixed groups show right (Yes) or wrong (No) answers.
  labels = set()
  for seed in range(12):
    ex = wr.recycle(jax.random.key(seed), vocab, RecycleConfig(pointwise_in_mixed=1.0), *args)
    assert (np.asarray(ex.kind[:4]) == 0).all()
    labels |= set(np.asarray(ex.label[2:4]).tolist())
    for g in (2, 3):
      shows_right = f"\\boxed{{ {ans[g]} }}" in _text(tok, ex.prompt[g], ex.mask[g])
      assert shows_right == (int(ex.label[g]) == yes)
  assert labels == {yes, no}
  # Ablations: pairwise only keeps the mixed groups' pairs only; pointwise only never pairs.
  ex = wr.recycle(jax.random.key(0), vocab, RecycleConfig(judge_kinds=("pairwise",)), *args)
  assert np.asarray(ex.valid[:4]).tolist() == [False, False, True, True] and (np.asarray(ex.kind[2:4]) == 1).all()
  ex = wr.recycle(jax.random.key(0), vocab, RecycleConfig(judge_kinds=("pointwise",), pointwise_in_mixed=0.0), *args)
  assert np.asarray(ex.valid[:4]).all() and (np.asarray(ex.kind[:4]) == 0).all()
  # Caps: a random subset of exactly the cap.
  seen = set()
  for seed in range(8):
    ex = wr.recycle(jax.random.key(seed), vocab, RecycleConfig(max_judge=2, max_reflection=1, confirm_share=1.0),
                    *args)
    v = np.asarray(ex.valid)
    assert v[:4].sum() == 2 and v[4:].sum() == 1
    seen.add(tuple(np.flatnonzero(v[:4])))
  assert len(seen) > 1
  # Judge prompts showing the reasoning hold the steps; answer-only prompts do not.
  full = wr.recycle(jax.random.key(0), vocab, RecycleConfig(show_reasoning=True), *args)
  short = wr.recycle(jax.random.key(0), vocab, RecycleConfig(show_reasoning=False), *args)
  assert "<step>" in _text(tok, full.prompt[0], full.mask[0]) and "<step>" not in _text(tok, short.prompt[0],
                                                                                          short.mask[0])


def _responses(tok, texts, T):
  ids = [tok.encode(t, add_special_tokens=False) for t in texts]
  tokens = np.full((len(ids), T), tok.pad_token_id, np.int32)
  for i, x in enumerate(ids):
    tokens[i, :len(x)] = x
  return jnp.asarray(tokens), jnp.asarray([len(x) for x in ids], jnp.int32)


def test_judge_reward_and_counted_failures(W):
  tok, enc, vocab = W
  texts = ["<answer> \\boxed{ Yes } </answer> <eos>",  # right
           "<answer> \\boxed{ No } </answer> <eos>",  # readable, wrong verdict
           "Yes </answer> <eos>",  # no box
           "<answer> \\boxed{ Yes } \\boxed{ Yes } </answer> <eos>",  # two boxes
           "<answer> \\boxed{ C } </answer> <eos>",  # unknown word (<unk>): not a verdict
           "<answer> \\boxed{ A } </answer> <eos>",  # a letter for a Yes/No question: not a verdict
           "<answer> \\boxed{ Yes } </answer>",  # did not stop
           "<think> <step> 1 + 2 = 3 </step> </think> <answer> \\boxed{ 3 } </answer> <eos>"]  # reflection
  tokens, lengths = _responses(tok, texts, 40)
  finished = jnp.asarray([True] * 6 + [False, True])
  labels = jnp.asarray([vocab.yes] * 7 + [tok.convert_tokens_to_ids("3")])
  kinds = jnp.asarray([0] * 7 + [2])
  want_status = ["ok", "ok", "no_box", "several_boxes", "not_a_verdict", "not_a_verdict", "unfinished", "ok"]
  status = np.asarray(wj.judge_status(vocab, tokens, lengths, finished, kinds))
  assert [wj.STATUSES[s] for s in status] == want_status
  # The scorer the reward-period update uses: the answer check with the label, and one flag per failure status.
  out = types.SimpleNamespace(tokens=tokens, lengths=lengths, finished=finished)
  scores = wj.judge_scorer(vocab, world_data.answer_check(tok))(None, None, None, out, jnp.stack([labels, kinds], 1))
  assert np.asarray(scores["rewards"]).tolist() == [1, 0, 0, 0, 0, 0, 0, 1]
  for name in wj.STATUSES[1:]:
    assert np.asarray(scores[name]).tolist() == [w == name for w in want_status], name
  # Pairwise: A / B are verdicts, Yes is not.
  pair = wj.judge_status(vocab, tokens[:1], lengths[:1], finished[:1], jnp.asarray([1]))
  assert wj.STATUSES[int(pair[0])] == "not_a_verdict"


def _examples(vocab, n, start, valid=None):
  W = vocab.width
  ids = jnp.arange(start, start + n, dtype=jnp.int32)
  return wr.Examples(prompt=jnp.broadcast_to(ids[:, None], (n, W)), mask=jnp.ones((n, W), bool), label=ids,
                     kind=ids % 3, valid=jnp.ones((n,), bool) if valid is None else jnp.asarray(valid))


def test_cache_is_fifo_with_wraparound_reset_and_checkpoint(W, tmp_path):
  _, _, vocab = W
  c = wr.empty_cache(6, vocab.width, vocab.pad)
  c = wr.push(c, _examples(vocab, 4, 10, [True, False, True, True]))  # 10, 12, 13
  c = wr.push(c, _examples(vocab, 2, 20))  # 20, 21
  assert int(c.count) == 5
  c, (p, m, label, kind) = wr.take(c, 3)
  assert np.asarray(label).tolist() == [10, 12, 13] and (np.asarray(p[:, 0]) == [10, 12, 13]).all()
  c = wr.push(c, _examples(vocab, 3, 30))  # wraps around the ring of 6
  c, (_, _, label, _) = wr.take(c, 5)
  assert np.asarray(label).tolist() == [20, 21, 30, 31, 32] and int(c.count) == 0
  c = wr.push(c, _examples(vocab, 2, 40))
  # Checkpoint round trip of a CoevolveState-shaped tree with the cache in it.
  ck = Checkpointer(tmp_path / "ck")
  ck.save(1, c)
  restored = ck.restore(jax.tree.map(jnp.zeros_like, c), 1)
  ck.close()
  for a, b in zip(jax.tree.leaves(c), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  c = wr.reset(c)
  assert int(c.count) == 0 and int(c.epoch) == 1
  c = wr.push(c, _examples(vocab, 1, 50))
  _, (_, _, label, _) = wr.take(c, 1)
  assert np.asarray(label).tolist() == [50]


def test_cache_sizes_are_checked():
  wr.check_sizes(RecycleConfig(max_judge=32, max_reflection=32), prompts=64, batch=64)
  with pytest.raises(ValueError, match=r"max_judge=32.*max_reflection=40.*judge_batch=64"):
    wr.check_sizes(RecycleConfig(max_judge=32, max_reflection=40), prompts=64, batch=64)
  # Caps above what the prompts can give do not count: 4 prompts give at most 4 + 8.
  wr.check_sizes(RecycleConfig(max_judge=32, max_reflection=32), prompts=4, batch=12)
  with pytest.raises(ValueError, match="judge_batch=0"):
    wr.check_sizes(RecycleConfig(), prompts=4, batch=0)


def _tiny(tok):
  return ModelConfig(model_type="qwen2", vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_layers=1,
                     num_heads=2, num_kv_heads=1, head_dim=16, qkv_bias=True, tie_embeddings=True,
                     max_position_embeddings=512, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     param_dtype="float32", compute_dtype="float32")


def _setup(W, reset_every=0, max_reflection=0, judge_batch=8, schedule=None, mu=1):
  tok, enc, vocab = W
  cfg = _tiny(tok)
  tx = optax.adam(schedule or 1e-3)
  sp = sampling.SamplingParams(max_new_tokens=enc.solution_len, temperature=1.0, num_samples=4,
                               stop_tokens=(enc.eos,), pad_id=enc.pad)
  settings = rli.GRPOSettings(sampling=sp, mu=mu)
  jset = dataclasses.replace(settings, sampling=dataclasses.replace(sp, num_samples=2))
  js = co_it.JudgeSettings(True, RecycleConfig(max_judge=4, max_reflection=max_reflection), judge_batch,
                           reset_every)
  fn = co_it.make_iteration(cfg, settings, jset, js, tx, WR.make_rlvr_reward(tok), world_data.answer_check(tok),
                            vocab, schedule)
  params = transformer.init_params(cfg, jax.random.key(0))
  ref = jax.tree.map(jnp.copy, params)
  co = co_it.create(state_lib.create_state(params, tx, 0), vocab, js)
  data = iter(world_data.world_dataset(enc, 3, 4, "rl"))
  return fn, co, ref, data


def test_every_optimizer_update_is_counted_and_scheduled(W):
  """4 prompts per iteration, one judge example each (max_judge 4, no reflection), a batch of 8: the cache reaches a
  batch after iterations 2 and 4 -> 2 judge updates; with mu = 2 the optimizer steps 2 x (4 + 2) = 12 times, and the
  learning rate each update reports is the schedule at the updates done before it."""
  schedule = optax.cosine_decay_schedule(1e-3, 20)
  fn, co, ref, data = _setup(W, schedule=schedule, mu=2)
  updates = []
  for i in range(4):
    b = next(data)
    step_before = int(co.train.step)
    co, m, _ = fn(co, ref, None, b["prompt"], b["prompt_mask"], b["target"])
    assert float(m["learning_rate"]) == pytest.approx(float(schedule(step_before)))
    if float(m["judge_update"]):
      assert float(m["judge_learning_rate"]) == pytest.approx(float(schedule(step_before + 2)))
    updates.append(int(float(m["judge_update"])))
    assert int(float(m["recycled_pointwise"]) + float(m["recycled_pairwise"])) == 4
  assert updates == [0, 1, 0, 1]
  assert int(co.train.step) == 12 and int(co.cache.judge_updates) == 2 and int(co.cache.iterations) == 4
  # An epoch reset before iteration 3 (reset_every 3) drops the 4 examples of iteration 2: one judge update.
  fn, co, ref, data = _setup(W, reset_every=3)
  for i in range(4):
    b = next(data)
    co, m, _ = fn(co, ref, None, b["prompt"], b["prompt_mask"], b["target"])
  assert int(co.cache.judge_updates) == 1 and int(co.cache.epoch) == 1 and int(co.cache.count) == 4
  assert int(co.train.step) == 5


def test_instruct_demonstrations_carry_the_demonstrators_beliefs(W):
  tok, enc, vocab = W
  seen = {k: 0 for k in wj.KINDS}
  for i in range(60):
    problem = arith.problem_at(11, i, WORLD)
    rng = np.random.default_rng(i)
    kind, prompt, target = world_sft.demonstration(enc, vocab, problem, rng, 0.5, True, 0.5)
    seen[kind] += 1
    believed = arith.demonstration(problem, np.random.default_rng(0), WORLD, 0.0).answer
    text, out = _text(tok, prompt), _text(tok, target)
    if kind == "pointwise":
      answers = [int(a) for a in re.findall(r"\\boxed\{ (\d+) \}", text)]
      assert len(answers) == 1 and out == f"<answer> \\boxed{{ {'Yes' if answers[0] == believed else 'No'} }} </answer>"
    elif kind == "pairwise":
      answers = [int(a) for a in re.findall(r"\\boxed\{ (\d+) \}", text)]
      assert len(answers) == 2
      if (answers[0] == believed) != (answers[1] == believed):
        assert out == f"<answer> \\boxed{{ {'A' if answers[0] == believed else 'B'} }} </answer>"
    else:
      steps, answer = arith.parse_solution(out, "think")  # a solution (with the demonstrator's slips)
      assert answer is not None and steps
  assert all(v > 5 for v in seen.values())
  # With the judge's working: the demonstrator's believed steps, then the verdict.
  for i in range(30):
    problem = arith.problem_at(11, i, WORLD)
    kind, prompt, target = world_sft.demonstration(enc, vocab, problem, np.random.default_rng(i), 0.5, True, 0.5,
                                                   judge_working=True)
    if kind == "reflection":
      continue
    belief = arith.demonstration(problem, np.random.default_rng(0), WORLD, 0.0)
    out = _text(tok, target)
    steps, _ = arith.parse_solution(out.replace("\\boxed{ Yes }", "\\boxed{ 0 }").replace(
        "\\boxed{ No }", "\\boxed{ 0 }").replace("\\boxed{ A }", "\\boxed{ 0 }").replace(
        "\\boxed{ B }", "\\boxed{ 0 }"), "think")
    assert list(steps) == list(belief.steps) and out.startswith("<think> <step>")
    assert re.search(r"</think> <answer> \\boxed\{ (Yes|No|A|B) \} </answer>$", out)
  # A row: prompt then target, loss on the target only, right-padded to W + T.
  r = world_sft.row([5, 6], [7, 8, enc.eos], vocab.width + enc.solution_len, enc.pad)
  assert r["tokens"][:5].tolist() == [5, 6, 7, 8, enc.eos] and r["loss_mask"][:6].tolist() == [0, 0, 1, 1, 1, 0]
  assert r["mask"].sum() == 5


def _sharded_setup(W, state_sharding=None):
  tok, enc, vocab = W
  cfg = _tiny(tok)
  # Adam eps 1 (as tests/test_world_reward.py's sharded test): the update is then smooth in the gradient, so float32
  # reassociation of the sharded sums moves parameters by ~lr * 1e-6 instead of up to lr where a gradient is ~0.
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2, eps=1.0))
  sp = sampling.SamplingParams(max_new_tokens=enc.solution_len, temperature=1.0, num_samples=4,
                               stop_tokens=(enc.eos,), pad_id=enc.pad)
  settings = rli.GRPOSettings(sampling=sp, kl_coef=0.01)
  jset = dataclasses.replace(settings, sampling=dataclasses.replace(sp, num_samples=2))
  js = co_it.JudgeSettings(True, RecycleConfig(max_judge=8, max_reflection=0, pointwise_in_mixed=0.5), 8)
  # A random policy never answers right: a rule of the tokens (first token's parity) gives the groups mixed
  # "correctness" (pairwise examples too), and is exact under any sharding.
  parity = rli.rule_reward(lambda tokens, lengths, finished, targets: (tokens[:, 0] % 2).astype(jnp.float32))
  fn = co_it.make_iteration(cfg, settings, jset, js, tx, parity,
                            world_data.answer_check(tok), vocab, None, state_sharding)
  return cfg, tx, js, fn


def test_combined_iteration_sharded_equals_one_device(W):
  """Policy update + recycling + cache + judge update in one call on a 2 x 2 x 2 mesh equals one device."""
  if jax.device_count() < 8:
    pytest.skip("needs 8 (fake) devices")
  from sparkjax import sharding

  tok, enc, vocab = W
  cfg, tx, js, fn = _sharded_setup(W)
  params = transformer.init_params(cfg, jax.random.key(1), std=0.1)
  batches = [next(it) for it in [iter(world_data.world_dataset(enc, 0, 8, "rl"))] for _ in range(2)]
  co = co_it.create(state_lib.create_state(jax.tree.map(jnp.copy, params), tx, 0), vocab, js)
  ref_ms = []
  for b in batches:
    co, m, _ = fn(co, params, None, b["prompt"], b["prompt_mask"], b["target"])
    ref_ms.append(m)
  assert [float(m["judge_update"]) for m in ref_ms] == [1.0, 1.0] and float(ref_ms[0]["recycled_pairwise"]) > 0
  mesh = sharding.make_mesh(sharding.MeshConfig(2, 2, 2))
  p_sh = sharding.param_shardings(cfg, mesh)
  state_sh = state_lib.state_shardings(tx, transformer.abstract_params(cfg), p_sh, mesh)
  _, _, _, pinned = _sharded_setup(W, state_sh)
  place = lambda t, s: jax.device_put(jax.tree.map(jnp.copy, t), s)
  got = co_it.create(state_lib.create_state(place(params, p_sh), tx, 0), vocab, js)
  rows = lambda x: jax.device_put(x, sharding.batch_sharding(mesh, x.ndim))
  for b, ref_m in zip(batches, ref_ms):
    got, m, _ = pinned(got, place(params, p_sh), None, rows(b["prompt"]), rows(b["prompt_mask"]), rows(b["target"]))
    for k in ("reward_mean", "judge_reward_mean", "recycled_pointwise", "recycled_pairwise", "cache_count"):
      assert float(m[k]) == float(ref_m[k]), k
  for a, b in zip(jax.tree.leaves(co.cache), jax.tree.leaves(got.cache)):  # the recycled prompts, bit for bit
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert int(got.train.step) == int(co.train.step) == 4
  # Each of the 4 optimizer updates (2 policy + 2 judge) moves a parameter by at most lr * |Δg| with Adam eps 1:
  # 1e-2 x (float32 reassociation of ~1e2-term gradient sums of size <= 1, ~1e-5) = 1e-7; 4 of them add up to 4e-7,
  # plus the parameters' own rounding (|p| < 1: ~6e-8).
  jax.tree.map(lambda a, c: np.testing.assert_allclose(np.asarray(a), np.asarray(c), atol=5e-7), co.train.params,
               got.train.params)


def test_combined_iteration_makes_no_host_round_trip(W):
  tok, enc, vocab = W
  cfg, tx, js, fn = _sharded_setup(W)
  params = transformer.init_params(cfg, jax.random.key(1), std=0.1)
  b = {k: jnp.asarray(v) for k, v in next(iter(world_data.world_dataset(enc, 0, 8, "rl"))).items()}
  co = co_it.create(state_lib.create_state(jax.tree.map(jnp.copy, params), tx, 0), vocab, js)
  co, _, _ = fn(co, params, None, b["prompt"], b["prompt_mask"], b["target"])
  jax.block_until_ready(co)
  with jax.transfer_guard("disallow"):
    co, m, roll = fn(co, params, None, b["prompt"], b["prompt_mask"], b["target"])
    jax.block_until_ready((co, m, roll))
  assert int(co.cache.iterations) == 2


def test_config_inconsistent_with_the_batch_sizes_names_the_fields():
  import importlib.util

  from sparkjax import config_check
  from sparkjax.pipelines import coevolve as pipeline

  spec = importlib.util.spec_from_file_location("coevolve_config", pipeline.__file__.replace(
      "sparkjax/pipelines/coevolve.py", "configs/coevolve.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  ch = config_check.Checks(c)
  pipeline.check_config(ch)
  assert ch.errors == []
  c.coevolve.max_reflection = 12  # 8 + 12 examples per iteration, 16 taken per update
  c.coevolve.judge_batch = 16
  c.coevolve.runs = ("coevolve", "best_of_both")
  c.coevolve.pointwise_in_mixed = 1.5
  ch = config_check.Checks(c)
  pipeline.check_config(ch)
  text = "\n".join(ch.errors)
  for needle in ("coevolve.judge_batch=16", "max_judge=8", "max_reflection=12", "coevolve.runs='best_of_both'",
                 "coevolve.pointwise_in_mixed=1.5"):
    assert needle in text, (needle, text)


def test_hf_grpo_coevolve_block_is_checked_only_when_on():
  import importlib.util
  from pathlib import Path

  from sparkjax import config_check
  from sparkjax.pipelines import hf_grpo

  root = Path(hf_grpo.__file__).resolve().parents[2]

  def load(name):
    spec = importlib.util.spec_from_file_location(name, root / "configs" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()

  def errors(c):
    ch = config_check.Checks(c)
    hf_grpo.check_coevolve(ch, ch.mesh())
    return "\n".join(ch.errors)

  assert errors(load("hf_grpo_prm_cpu")) == ""  # a PRM reward with CoEvolve off
  c = load("coevolve_cpu")
  c.mesh.update(dict(data=1, fsdp=1, tp=8))  # rows unsplit whatever the (fake) device count
  assert errors(c) == ""
  c.coevolve.judge_batch = 3  # 4 prompts recycle up to 2 + 2
  c.reward.kind = "prm"
  text = errors(c)
  assert "coevolve.judge_batch=3" in text and "max_judge=2" in text and "reward.kind='rlvr'" in text


def test_iteration_refuses_a_judge_batch_the_cache_cannot_hold(W):
  fn, co, ref, data = _setup(W, judge_batch=2)  # 4 prompts recycle up to 4 judge examples per iteration
  b = next(data)
  with pytest.raises(ValueError, match=r"recycle 4 examples .*judge_batch=2"):
    fn(co, ref, None, b["prompt"], b["prompt_mask"], b["target"])
