"""The jitted GRPO iteration equals the same computation done step by step, and does not retrace."""


import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sparkjax import sampling
from sparkjax.data import arith, world_data
from sparkjax.data.grading import make_suffix_reward
from sparkjax.models import transformer
from sparkjax.models.config import ModelConfig
from sparkjax.rl import grpo
from sparkjax.rl import iteration as rl
from sparkjax.train import sft, state as state_lib

WORLD = arith.WorldConfig(min_ops=2, max_ops=3)


@pytest.fixture(scope="module")
def setup():
  tok = arith.build_tokenizer(WORLD.max_value)
  enc = world_data.WorldEncoder(WORLD, tok)
  cfg = ModelConfig.tiny("qwen2", vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_heads=2,
                         num_kv_heads=1)
  opt = ml_collections.ConfigDict(dict(lr=1e-2, total_steps=10, warmup_steps=0, schedule="constant", b1=0.9,
                                       b2=0.99, weight_decay=0.0, grad_clip=1.0))
  tx, schedule = state_lib.make_optimizer(opt)
  template, slot, once = enc.answer_template()
  reward_fn = make_suffix_reward(template, slot, once)
  batch = next(iter(world_data.world_dataset(enc, 0, 4, "rl")))
  return tok, enc, cfg, tx, schedule, reward_fn, batch


def _settings(enc, **kw):
  sp = sampling.SamplingParams(max_new_tokens=enc.solution_len, temperature=1.0, num_samples=4,
                               stop_tokens=(enc.eos,), pad_id=enc.pad)
  return rl.GRPOSettings(sampling=sp, kl_coef=0.1, **kw)


def test_iteration_equals_step_by_step(setup):
  tok, enc, cfg, tx, schedule, reward_fn, batch = setup
  settings = _settings(enc, mu=2)
  params = transformer.init_params(cfg, jax.random.key(0), std=0.1)
  ref = jax.tree.map(jnp.copy, params)
  state = state_lib.create_state(params, tx, seed=0)

  # Step by step: sample, reward on host-visible arrays, advantages, update.
  out = rl.make_rollout(cfg, settings)(state.params, batch["prompt"], batch["prompt_mask"], state.key())
  rewards = reward_fn(out.tokens, out.lengths, out.finished, jnp.repeat(batch["target"], 4))
  adv = grpo.grpo_advantages(rewards, 4)
  manual = dict(prompt=batch["prompt"], prompt_mask=batch["prompt_mask"], tokens=out.tokens, lengths=out.lengths,
                old_logp=out.logprobs, advantages=adv)
  state_copy = jax.tree.map(jnp.copy, state)
  s1, m1 = rl.make_update(cfg, settings, tx, schedule)(state_copy, ref, manual)

  # One jitted call.
  s2, m2, roll = rl.make_iteration(cfg, settings, tx, rl.rule_reward(reward_fn), schedule)(
      state, ref, None, batch["prompt"], batch["prompt_mask"], batch["target"])
  assert int(s1.step) == int(s2.step) == 2
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6), s1.params,
               s2.params)
  assert float(m1["loss"]) == pytest.approx(float(m2["loss"]), abs=1e-6)
  assert float(m2["reward_mean"]) == pytest.approx(float(rewards.mean()))
  # The returned rollout is the one the update used.
  np.testing.assert_array_equal(np.asarray(roll.tokens), np.asarray(out.tokens))
  np.testing.assert_array_equal(np.asarray(roll.scores["rewards"]), np.asarray(rewards))
  np.testing.assert_array_equal(np.asarray(roll.advantages), np.asarray(adv))
  # mu=2: the first update is on-policy, so the importance ratio is ~1 (sampler vs. training log-probs).
  assert float(m2["ratio"]) == pytest.approx(1.0, abs=1e-4)


def test_iteration_does_not_retrace(setup):
  tok, enc, cfg, tx, schedule, reward_fn, batch = setup
  settings = _settings(enc)
  traces = []
  fn = jax.jit(lambda *a: (traces.append(1), rl.iteration(*a, cfg=cfg, settings=settings, tx=tx,
                                                          reward_fn=rl.rule_reward(reward_fn)))[1],
               donate_argnums=0)
  params = transformer.init_params(cfg, jax.random.key(0), std=0.1)
  state = state_lib.create_state(jax.tree.map(jnp.copy, params), tx, seed=0)  # the state is donated
  it = iter(world_data.world_dataset(enc, 0, 4, "rl"))
  for _ in range(3):
    b = next(it)
    state, _, _ = fn(state, params, None, b["prompt"], b["prompt_mask"], b["target"])
  assert len(traces) == 1 and int(state.step) == 3


def test_iteration_learns_a_fixed_preference():
  """A reward for emitting token 7 first: a few GRPO iterations must raise the reward (learning signal moves)."""
  cfg = ModelConfig.tiny("llama", vocab_size=16, hidden_size=32, intermediate_size=64, num_heads=2, num_kv_heads=1)
  opt = ml_collections.ConfigDict(dict(lr=3e-2, total_steps=10, warmup_steps=0, schedule="constant", b1=0.9,
                                       b2=0.99, weight_decay=0.0, grad_clip=1.0))
  tx, _ = state_lib.make_optimizer(opt)
  sp = sampling.SamplingParams(max_new_tokens=3, temperature=1.0, num_samples=8)
  settings = rl.GRPOSettings(sampling=sp)
  reward_fn = lambda tokens, lengths, finished, targets: (tokens[:, 0] == targets).astype(jnp.float32)
  step = rl.make_iteration(cfg, settings, tx, rl.rule_reward(reward_fn))
  state = state_lib.create_state(transformer.init_params(cfg, jax.random.key(1)), tx, seed=1)
  prompts, mask = jnp.ones((4, 2), jnp.int32), jnp.ones((4, 2), bool)
  rewards = []
  for _ in range(15):
    state, m, _ = step(state, None, None, prompts, mask, jnp.full((4,), 7))
    rewards.append(float(m["reward_mean"]))
  assert np.mean(rewards[:3]) < 0.3 and np.mean(rewards[-3:]) > 0.8, rewards


def test_sft_accumulation_equals_one_big_step(setup):
  """Accumulating 4 micro-batches gives the gradient of the whole batch. Compared through plain SGD with lr 1, so
  the parameter change IS the gradient: Adam's first step is lr * g / (|g| + eps), which turns float32 rounding
  noise in a near-zero gradient into a change of up to lr, and that is not what this test is about."""
  import optax

  tok, enc, cfg, _, _, reward_fn, _ = setup
  tx = optax.sgd(1.0)
  batch = next(iter(world_data.world_dataset(enc, 0, 8, "sft")))
  params = transformer.init_params(cfg, jax.random.key(0), std=0.1)
  s_a = state_lib.create_state(params, tx, seed=0)
  s_b = jax.tree.map(jnp.copy, s_a)
  params = jax.tree.map(np.array, params)  # host copies: the step donates the state's buffers
  a, ma = sft.make_sft_step(cfg, tx, None, accum=1)(s_a, batch)
  b, mb = sft.make_sft_step(cfg, tx, None, accum=4)(s_b, batch)
  assert float(ma["loss"]) == pytest.approx(float(mb["loss"]), rel=1e-5)
  g_a = jax.tree.map(lambda new, old: np.asarray(old) - np.asarray(new), a.params, params)
  g_b = jax.tree.map(lambda new, old: np.asarray(old) - np.asarray(new), b.params, params)
  # A float32 sum over this batch's ~200 target tokens in another order: relative error a few 1e-6 of the
  # gradient's scale (per leaf), plus the rounding of subtracting it from parameters of size ~0.1-1.
  for x, y, p in zip(jax.tree.leaves(g_a), jax.tree.leaves(g_b), jax.tree.leaves(params)):
    scale = np.abs(x).max()
    np.testing.assert_allclose(x, y, rtol=0, atol=1e-5 * scale + 4 * np.finfo(np.float32).eps * np.abs(p).max())
  assert sum(np.abs(x).sum() for x in jax.tree.leaves(g_a)) > 0


def test_sft_loss_only_on_targets(setup):
  tok, enc, cfg, *_ = setup
  b = sft.pad_examples([[1, 2, 3]], [[4, 5]], pad_id=0, length=7)
  np.testing.assert_array_equal(b["loss_mask"], [[0, 0, 0, 1, 1, 0, 0]])
  params = transformer.init_params(cfg, jax.random.key(0))
  total, count, _ = sft.token_nll(params, cfg, jnp.asarray(b["tokens"]), jnp.asarray(b["loss_mask"]),
                                  jnp.asarray(b["mask"]))
  logp = jax.nn.log_softmax(transformer.forward(params, cfg, jnp.asarray(b["tokens"]))[0])
  assert float(count) == 2
  assert float(total) == pytest.approx(-float(logp[2, 4] + logp[3, 5]), rel=1e-5)


def test_group_size_must_divide_the_batch():
  with pytest.raises(ValueError, match="groups of G=3"):
    grpo.grpo_advantages(jnp.ones(8), 3)


def _coin_flip_policy(tok, enc):
  """A bigram policy that answers "Answer : 7 <eos>" or "Answer : 8 <eos>" with probability 1/2 each.

  The layers add nothing to the residual stream (o_proj and down_proj are zero), so the hidden state at a position is
  the embedding of its token: a one-hot direction per token of the chain "\\n" (the prompts' last token) -> "Answer"
  -> ":" -> {"7", "8"} -> eos. lm_head gives the next token of the chain a logit ~170 above every other token, and
  after ":" the logits of "7" and "8" are bitwise equal, so each sample is a coin flip of the sampler's seed and no
  other token can ever be drawn (the Gumbel noise is below 17).
  """
  cfg = ModelConfig.tiny("qwen2", vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_heads=2,
                         num_kv_heads=1, tie_embeddings=False)
  params = jax.tree.map(np.array, transformer.init_params(cfg, jax.random.key(0), std=0.1))
  params["layers"]["o_proj"]["kernel"][:] = 0.0
  params["layers"]["down_proj"]["kernel"][:] = 0.0
  ids = lambda *toks: tok.convert_tokens_to_ids(list(toks))
  newline, answer, colon, seven, eight = ids("\n", "Answer", ":", "7", "8")
  params["embed"][:] = 0.0
  params["lm_head"][:] = 0.0
  chain = [(newline, [answer]), (answer, [colon]), (colon, [seven, eight]), (seven, [enc.eos]), (eight, [enc.eos])]
  for d, (token, successors) in enumerate(chain):
    params["embed"][token, d] = 1.0
    params["lm_head"][d, successors] = 30.0
  return cfg, jax.tree.map(jnp.asarray, params), seven


@pytest.mark.parametrize("mesh_shape", [None, (2, 2, 2)])
def test_host_reward_split_matches_device_reward(setup, mesh_shape):
  """The two-call iteration (rollout -> host grader -> update) gives the device iteration's result, also when both
  are pinned to a (data, fsdp, tp) mesh of 8 fake devices. The policy (`_coin_flip_policy`) earns reward 1 on about
  half of its samples, so both sides grade real answers and the update follows non-zero advantages."""
  from sparkjax import sharding
  from sparkjax.rl.host_reward import HostRewardIteration

  tok, enc, _, tx, schedule, reward_fn, batch = setup
  cfg, params, seven = _coin_flip_policy(tok, enc)
  targets = np.full_like(batch["target"], seven)  # every question's answer is "7"
  settings = _settings(enc)
  ref = jax.tree.map(jnp.copy, params)
  state_sh = None
  if mesh_shape:
    mesh = sharding.make_mesh(sharding.MeshConfig(*mesh_shape))
    state_sh = state_lib.state_shardings(tx, transformer.abstract_params(cfg), sharding.param_shardings(cfg, mesh),
                                         mesh)
    params = jax.device_put(params, state_sh.params)
    ref = jax.device_put(ref, state_sh.params)
  dev = rl.make_iteration(cfg, settings, tx, rl.rule_reward(reward_fn), schedule, state_sh)
  golds = lambda targets: [tok.decode([int(t)]) for t in targets]
  host = HostRewardIteration(cfg, settings, tx, schedule, tok.decode, golds, "world", workers=1,
                             state_sharding=state_sh)
  try:
    s_host, m_host, r_host = host(state_lib.create_state(jax.tree.map(jnp.copy, params), tx, 0), ref, None,
                                  batch["prompt"], batch["prompt_mask"], targets)
  finally:
    host.close()
  state = state_lib.create_state(jax.tree.map(jnp.copy, params), tx, 0)
  # The device iteration's rewards and advantages, recomputed from its rollout (same key, same params).
  out = rl.make_rollout(cfg, settings)(state.params, batch["prompt"], batch["prompt_mask"], state.key())
  rewards = np.asarray(reward_fn(out.tokens, out.lengths, out.finished, jnp.repeat(targets, 4)))
  adv = np.asarray(grpo.grpo_advantages(jnp.asarray(rewards), 4))
  s_dev, m_dev, r_dev = dev(state, ref, None, batch["prompt"], batch["prompt_mask"], targets)
  assert 0 < rewards.sum() < len(rewards) and np.abs(adv).max() > 0.5, (rewards, adv)
  assert float(m_host["reward_mean"]) == float(m_dev["reward_mean"]) == rewards.mean()
  assert int(m_host["grader_timeouts"]) == 0 and int(m_host["grader_errors"]) == 0
  for a, b in ((r_host.scores["rewards"], rewards), (r_dev.scores["rewards"], rewards), (r_host.advantages, adv),
               (r_dev.advantages, adv)):
    np.testing.assert_allclose(np.asarray(a), b, atol=1e-6)
  # Zero advantages would leave every weight where it was (one Adam step on a zero gradient, no weight decay).
  assert not np.array_equal(np.asarray(s_dev.params["lm_head"]), np.asarray(params["lm_head"]))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6 if not mesh_shape
                                                       else 1e-4), s_host.params, s_dev.params)


def test_host_and_device_rewards_agree_on_world_text(setup):
  from sparkjax.data.host_grading import world_grade

  tok, enc, cfg, tx, schedule, reward_fn, batch = setup
  rows, golds = [], []
  rng = np.random.default_rng(0)
  for i in range(40):
    p = arith.problem_at(9, i, WORLD)
    s = arith.sample_solution(p, rng, WORLD, p_error=0.5)
    ids = tok.encode(s.text()) + [enc.eos]
    if i % 5 == 0:
      ids = ids[:-1]  # unfinished
    rows.append(ids)
    golds.append(p.answer)
  T = max(map(len, rows))
  tokens = np.full((40, T), enc.pad, np.int32)
  for i, r in enumerate(rows):
    tokens[i, :len(r)] = r
  lengths = np.asarray([len(r) for r in rows])
  finished = np.asarray([r[-1] == enc.eos for r in rows])
  dev = np.asarray(reward_fn(jnp.asarray(tokens), jnp.asarray(lengths), jnp.asarray(finished),
                             jnp.asarray([enc.number_id(g) for g in golds])))
  host = np.asarray([world_grade(tok.decode(r), str(g)) for r, g in zip(rows, golds)])
  np.testing.assert_array_equal(dev, host)
  assert 0 < dev.sum() < 40


def test_token_level_advantages(setup):
  """[N, T] advantages are used per token: equal to [N] when constant along T, different when they vary."""
  tok, enc, cfg, tx, schedule, reward_fn, batch = setup
  settings = _settings(enc)
  params = transformer.init_params(cfg, jax.random.key(0), std=0.1)
  out = rl.make_rollout(cfg, settings)(params, batch["prompt"], batch["prompt_mask"], jax.random.key(3))
  adv = jnp.linspace(-1.0, 1.0, out.tokens.shape[0])
  base = dict(prompt=batch["prompt"], prompt_mask=batch["prompt_mask"], tokens=out.tokens, lengths=out.lengths,
              old_logp=out.logprobs)
  update = rl.make_update(cfg, settings, tx)
  fresh = lambda: state_lib.create_state(jax.tree.map(jnp.copy, params), tx, 0)
  _, m_seq = update(fresh(), params, base | dict(advantages=adv))
  T = out.tokens.shape[1]
  _, m_tok = update(fresh(), params, base | dict(advantages=jnp.broadcast_to(adv[:, None], (len(adv), T))))
  assert float(m_seq["loss"]) == pytest.approx(float(m_tok["loss"]), abs=1e-6)
  first_only = jnp.zeros((len(adv), T)).at[:, 0].set(adv)
  _, m_first = update(fresh(), params, base | dict(advantages=first_only))
  assert float(m_first["loss"]) != pytest.approx(float(m_seq["loss"]), abs=1e-6)


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean"])
def test_microbatches_and_logprob_chunks_equal_one_big_batch(setup, aggregation):
  """num_microbatches (gradient accumulation) and logprob_chunk change memory, not results (up to float rounding)."""
  tok, enc, cfg, tx, schedule, reward_fn, batch = setup
  params = transformer.init_params(cfg, jax.random.key(0), std=0.1)
  ref = jax.tree.map(lambda p: p + 0.01, params)  # a reference that differs, so the KL term has a gradient
  base = _settings(enc, aggregation=aggregation, mu=2)
  out = rl.make_rollout(cfg, base)(params, batch["prompt"], batch["prompt_mask"], jax.random.key(3))
  # Pad the completions to a multiple of 4 chunks of 3 positions (masked out like any padding).
  N, chunk = out.tokens.shape[0], 3
  T = 4 * chunk * -(-out.tokens.shape[1] // (4 * chunk))
  pad = T - out.tokens.shape[1]
  tokens = jnp.pad(out.tokens, ((0, 0), (0, pad)), constant_values=enc.pad)
  old_logp = jnp.pad(out.logprobs, ((0, 0), (0, pad)))
  adv = jnp.linspace(-1.0, 1.0, N * T).reshape(N, T)  # token-level, different on every row
  upd = dict(prompt=batch["prompt"], prompt_mask=batch["prompt_mask"], tokens=tokens, lengths=out.lengths,
             old_logp=old_logp, advantages=adv)
  fresh = lambda: state_lib.create_state(jax.tree.map(jnp.copy, params), tx, 0)
  s1, m1 = rl.make_update(cfg, base, tx, schedule)(fresh(), ref, upd)
  for kw in (dict(num_microbatches=4), dict(logprob_chunk=chunk), dict(num_microbatches=2, logprob_chunk=chunk)):
    settings = _settings(enc, aggregation=aggregation, mu=2, **kw)
    s2, m2 = rl.make_update(cfg, settings, tx, schedule)(fresh(), ref, upd)
    for k in ("loss", "pg_loss", "kl", "clip_fraction", "entropy", "ratio", "grad_norm"):
      assert float(m2[k]) == pytest.approx(float(m1[k]), rel=1e-4, abs=1e-6), (kw, k)
    # Adam divides by sqrt(v): rounding differences in tiny gradients move a weight by up to ~1e-6 at lr 1e-2.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5), s1.params,
                 s2.params)


def test_microbatch_and_chunk_settings_are_checked(setup):
  tok, enc, cfg, tx, schedule, reward_fn, batch = setup
  with pytest.raises(ValueError, match="num_microbatches=0"):
    _settings(enc, num_microbatches=0)
  params = transformer.init_params(cfg, jax.random.key(0), std=0.1)
  N, T = 16, 6
  upd = dict(prompt=batch["prompt"], prompt_mask=batch["prompt_mask"], tokens=jnp.zeros((N, T), jnp.int32),
             lengths=jnp.full((N,), T), old_logp=jnp.zeros((N, T)), advantages=jnp.zeros((N,)))
  fresh = lambda: state_lib.create_state(jax.tree.map(jnp.copy, params), tx, 0)
  with pytest.raises(ValueError, match="num_microbatches=3 does not divide the 16 rows"):
    rl.policy_update(fresh(), params, upd, cfg=cfg, settings=_settings(enc, num_microbatches=3), tx=tx)
  with pytest.raises(ValueError, match="logprob_chunk=4 does not divide the 6 completion positions"):
    rl.policy_update(fresh(), params, upd, cfg=cfg, settings=_settings(enc, logprob_chunk=4), tx=tx)


def test_scorer_params_are_an_argument_of_the_iteration(setup):
  """A scorer with parameters (here a per-token bonus table standing in for a reward model) is data: new values give
  new rewards from the same compiled program, and `score_with_policy` hands the scorer the policy's weights."""
  tok, enc, cfg, tx, schedule, _, batch = setup
  settings = _settings(enc)
  traces = []

  def reward_fn(table, prompt, prompt_mask, out, targets):
    traces.append(1)
    first = out.tokens[:, 0]
    return dict(rewards=table[first], first_token=first)

  step = rl.make_iteration(cfg, settings, tx, reward_fn, schedule)
  params = transformer.init_params(cfg, jax.random.key(0), std=0.1)
  fresh = lambda: state_lib.create_state(jax.tree.map(jnp.copy, params), tx, 0)
  V = cfg.vocab_size
  args = (params, batch["prompt"], batch["prompt_mask"], batch["target"])
  _, m0, r0 = step(fresh(), args[0], jnp.zeros(V), *args[1:])
  _, m1, r1 = step(fresh(), args[0], jnp.arange(V, dtype=jnp.float32), *args[1:])
  assert len(traces) == 1  # one trace: the table is an argument, not a constant
  np.testing.assert_array_equal(np.asarray(r0.tokens), np.asarray(r1.tokens))  # same key, same rollout
  np.testing.assert_array_equal(np.asarray(r1.scores["rewards"]), np.asarray(r1.tokens[:, 0], np.float32))
  assert float(m0["reward_mean"]) == 0.0
  assert float(m1["reward_mean"]) == pytest.approx(float(np.asarray(r1.tokens[:, 0]).mean()))
  assert float(m1["score_first_token"]) == pytest.approx(float(m1["reward_mean"]))

  seen = []
  record = lambda p, pr, pm, out, t: (seen.append(jax.tree.structure(p)), dict(rewards=jnp.zeros(t.shape)))[1]
  by_policy = rl.make_iteration(cfg, settings, tx, record, schedule, score_with_policy=True)
  by_policy(fresh(), *args[:1], None, *args[1:])
  assert seen == [jax.tree.structure(params)]


def test_scores_are_checked(setup):
  tok, enc, cfg, tx, schedule, _, batch = setup
  params = transformer.init_params(cfg, jax.random.key(0), std=0.1)
  state = state_lib.create_state(params, tx, 0)
  extra = lambda p, pr, pm, out, t: dict(rewards=t, extra=jnp.zeros(3))
  for bad, match in ((lambda p, pr, pm, out, t: out.lengths, "must return a dict with 'rewards'"),
                     (extra, r"scores\['extra'\] has shape \(3,\)")):
    with pytest.raises((TypeError, ValueError), match=match):
      rl.iteration(state, params, None, batch["prompt"], batch["prompt_mask"], batch["target"], cfg=cfg,
                   settings=_settings(enc), tx=tx, reward_fn=bad)


def test_grpo_loop_counts_its_own_iterations(tmp_path):
  """The loop resumes from the iteration count its checkpoint stores, not from the optimizer step: here each
  iteration makes three optimizer updates (as a policy update plus judge updates would), so step // mu is wrong."""
  from sparkjax.pipelines import grpo_loop
  from sparkjax.train import metrics as metrics_lib
  from sparkjax.train.checkpoint import Checkpointer

  class Batches:
    def __init__(self):
      self.i = 0

    def __next__(self):
      self.i += 1
      return dict(prompt=np.full((2, 3), self.i), prompt_mask=np.ones((2, 3), bool), target=np.zeros(2, np.int32))

    def get_state(self):
      return dict(i=self.i)

    def set_state(self, s):
      self.i = s["i"]

  class Place:
    def batch(self, local, what):
      return {k: jnp.asarray(v) for k, v in local.items()}

  calls = []

  def iterate(state, ref, scorer, prompt, mask, target):
    calls.append(int(prompt[0, 0]))
    m = dict(reward_mean=jnp.float32(1.0), kl=jnp.float32(0.0), generated_tokens=jnp.float32(4.0),
             loss=jnp.float32(0.5))
    return state.replace(step=state.step + 3), m, None

  tx = state_lib.make_optimizer(ml_collections.ConfigDict(dict(
      lr=1e-2, total_steps=10, warmup_steps=0, schedule="constant", b1=0.9, b2=0.99, weight_decay=0.0,
      grad_clip=0.0)))[0]
  fresh = lambda: state_lib.create_state(dict(w=jnp.zeros(2)), tx, 0)
  evals = []
  kw = dict(ref_params=None, writer=metrics_lib.Writer(tmp_path / "tb", enabled=False), place=Place(),
            checkpoint_every=2, rollouts_per_iteration=2, what="batch",
            evaluate=lambda i, p: evals.append(i) or dict(i=i), eval_every=2)
  built = []

  def build():  # the initial state as a function: built (not only traced for its shapes) only when nothing is resumed
    s = fresh()
    if not isinstance(s.params["w"], jax.core.Tracer):
      built.append(1)
    return s

  ckpt = Checkpointer(tmp_path / "ck")
  r = grpo_loop.run_grpo(iterate, build, Batches(), iterations=2, ckpt=ckpt, **kw)
  ckpt.close()
  assert (r.iterations, int(r.state.step), calls, evals, built) == (2, 6, [1, 2], [2], [1])
  ckpt = Checkpointer(tmp_path / "ck")
  r = grpo_loop.run_grpo(iterate, build, Batches(), iterations=5, ckpt=ckpt, **kw)
  ckpt.close()
  # Resumed after iteration 2 (not 6 // mu), with the data iterator where it stopped, without building a state.
  assert (r.iterations, int(r.state.step), calls, evals, built) == (5, 15, [1, 2, 3, 4, 5], [2, 4, 5], [1])
  assert sorted(r.history, key=int) == ["2", "4", "5"] and r.final_metrics["reward_mean"] == 1.0
  ckpt = Checkpointer(tmp_path / "ck")  # a state passed as such is restored onto just the same
  r = grpo_loop.run_grpo(iterate, fresh(), Batches(), iterations=6, ckpt=ckpt, **kw)
  ckpt.close()
  assert (r.iterations, int(r.state.step), calls[-1]) == (6, 18, 6)


def test_a_reward_design_makes_the_rewards_and_token_advantages(setup):
  """With a reward design the scorer returns verdicts, not rewards; the iteration's update equals one made by hand
  with the design's [N, T] advantages (selective advantage on made-up verdicts read from the rollout's tokens)."""
  import functools

  from sparkjax.spark import rewards as R

  tok, enc, cfg, tx, schedule, _, batch = setup
  settings = _settings(enc)

  def verdicts(_, prompt, prompt_mask, out, targets):
    N, T = out.tokens.shape
    return dict(valid=jnp.ones(N, bool), final=(out.tokens[:, 0] % 2).astype(jnp.float32),
                num_steps=jnp.full(N, 2), prm_steps=jnp.full(N, 2), step_ok=(out.tokens[:, 1:3] % 3) > 0,
                token_step=jnp.broadcast_to(jnp.minimum(jnp.arange(T) // 3, 2) - 1, (N, T)).astype(jnp.int32))

  design = functools.partial(R.REWARD_DESIGNS["selective_advantage"], advantage="grpo")
  params = transformer.init_params(cfg, jax.random.key(0), std=0.1)
  fresh = lambda: state_lib.create_state(jax.tree.map(jnp.copy, params), tx, 0)
  state = fresh()
  out = rl.make_rollout(cfg, settings)(state.params, batch["prompt"], batch["prompt_mask"], state.key())
  r, adv = design(verdicts(None, None, None, out, None), 4)
  assert adv.shape == out.tokens.shape and 0 < float(r.sum()) < len(r) and float((adv == 0).mean()) > 0
  manual = dict(prompt=batch["prompt"], prompt_mask=batch["prompt_mask"], tokens=out.tokens, lengths=out.lengths,
                old_logp=out.logprobs, advantages=adv)
  s1, m1 = rl.make_update(cfg, settings, tx, schedule)(fresh(), params, manual)
  step = rl.make_iteration(cfg, settings, tx, verdicts, schedule, design=design)
  s2, m2, roll = step(state, params, None, batch["prompt"], batch["prompt_mask"], batch["target"])
  np.testing.assert_array_equal(np.asarray(roll.advantages), np.asarray(adv))
  np.testing.assert_array_equal(np.asarray(roll.scores["rewards"]), np.asarray(r))
  assert float(m2["reward_mean"]) == pytest.approx(float(r.mean()))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6), s1.params,
               s2.params)
