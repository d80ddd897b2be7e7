"""Pipeline `arith_rl`: SFT a small policy on the arithmetic world, then GRPO with the exact-answer reward.

Reads top to bottom: world and tokenizer, model, the SFT phase, the GRPO phase. Each phase checkpoints with Orbax
(state + data iterator) and resumes from its latest complete checkpoint, so a killed run restarted with the same
command continues exactly where it stopped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from sparkjax import config_check, distributed, sampling
from sparkjax.data import arith, world_data
from sparkjax.data.grading import make_suffix_reward
from sparkjax.data.host_grading import GRADERS
from sparkjax.models import transformer
from sparkjax.models.config import ModelConfig
from sparkjax.pipelines import common, grpo_loop
from sparkjax.rl import iteration as rl_iteration
from sparkjax.rl.host_reward import HostRewardIteration
from sparkjax.train import metrics as metrics_lib
from sparkjax.train import sft, state as state_lib
from sparkjax.train.checkpoint import Checkpointer


def check_config(ch: config_check.Checks):
  """Everything known from the config alone (run by `main` before any work; see sparkjax/config_check.py)."""
  config_check.check_world(ch)
  ch.choice("data.format", arith.FORMATS, "solution format")
  ch.int_range("data.eval_size", 1)
  config_check.check_world_model(ch)
  mesh = ch.mesh()
  check_sft(ch, "sft", mesh)
  config_check.check_grpo(ch)
  ch.choice("rl.reward", ("device", "host"))
  if ch.get("rl.reward", None) == "host":
    ch.choice("rl.host_grader", GRADERS, "grader")
  ch.int_range("rl.eval_every", 1)
  ch.rows_over_data("rl.batch_size / rl.group_size (prompts per iteration)", config_check.prompts_per_iteration(ch),
                    mesh)
  config_check.check_checkpoint(ch)


def check_sft(ch: config_check.Checks, path: str, mesh, accum: bool = True):
  """An SFT phase's fields: steps, batch (splitting over the data-parallel devices and `accum` micro-batches),
  the demonstrations' error rate and the optimizer."""
  ch.int_range(f"{path}.steps", 0)
  if ch.int_range(f"{path}.batch_size", 1):
    ch.rows_over_data(f"{path}.batch_size", ch.get(f"{path}.batch_size"), mesh)
    if accum and ch.int_range(f"{path}.accum", 1):
      ch.divides(f"{path}.accum", f"{path}.batch_size", "micro-batches of gradient accumulation")
  ch.float_range(f"{path}.p_error", 0.0, 1.0)
  ch.optimizer(f"{path}.optimizer")


def world_and_tokenizer(config, workdir: Path):
  world = arith.WorldConfig(**config.world)
  tokenizer = arith.build_tokenizer(world.max_value)
  tok_dir = workdir / "tokenizer"
  if not (tok_dir / "tokenizer.json").is_file():
    tokenizer.save_pretrained(str(tok_dir))
  return world, tokenizer


def model_config(config, tokenizer) -> ModelConfig:
  """The world's Qwen2-shaped model from `config.model`. Its few layers are unrolled (scan_layers False), which XLA:CPU
  runs faster: on the 2 x 64 model forward + backward of 64 rows took 134.7 ms instead of 146.7 at 154 tokens and
  181 instead of 230 at 200 (one run each, 2-core Intel Xeon)."""
  m = config.model
  return ModelConfig(scan_layers=False, model_type="qwen2", vocab_size=len(tokenizer), hidden_size=m.hidden_size,
                     intermediate_size=m.intermediate_size, num_layers=m.num_layers, num_heads=m.num_heads,
                     num_kv_heads=m.num_kv_heads, head_dim=m.hidden_size // m.num_heads, qkv_bias=True,
                     tie_embeddings=True, max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
                     eos_token_id=tokenizer.eos_token_id, param_dtype=m.dtype, compute_dtype=m.dtype)


def make_evaluator(cfg, encoder: world_data.WorldEncoder, reward_fn, eval_batch: dict, max_new_tokens: int,
                   samples: int = 4, temperature: float = 1.0):
  """Held-out accuracy of the policy: (mean reward of `samples` samples per problem at `temperature`, greedy
  accuracy, greedy response tokens). The sampling key is fixed, so every evaluation sees the same noise."""
  kw = dict(max_new_tokens=max_new_tokens, stop_tokens=(encoder.eos,), pad_id=encoder.pad)
  greedy = sampling.SamplingParams(temperature=0.0, **kw)
  sampled = sampling.SamplingParams(temperature=temperature, num_samples=samples, **kw)
  prompt, mask, target = eval_batch["prompt"], eval_batch["prompt_mask"], eval_batch["target"]

  @jax.jit
  def evaluate(params):
    out = sampling.sample(params, prompt, mask, jax.random.key(0), cfg=cfg, sp=sampled)
    acc = reward_fn(out.tokens, out.lengths, out.finished, jnp.repeat(target, samples)).mean()
    g = sampling.sample(params, prompt, mask, jax.random.key(0), cfg=cfg, sp=greedy)
    return acc, reward_fn(g.tokens, g.lengths, g.finished, target).mean(), g.tokens

  return evaluate


# ---- SFT ---------------------------------------------------------------------------------------------------------


def sft_phase(config, workdir: Path, cfg, encoder, evaluate, writer, place: common.Placement, c=None,
              train_seed: int | None = None, ckpt_dir: Path | None = None, name: str = "sft", data=None) -> tuple:
  """SFT of a fresh policy on the world's demonstrations -> (params, sampled accuracy, greedy accuracy).
  Defaults: the config's `sft` block, `data.train_seed`, checkpoints in workdir/checkpoints/sft; another policy
  (SPARK Stage III's) passes its own block, stream and directory, and CoEvolve its own dataset (`data`, an
  index-addressable grain stream of SFT batches)."""
  c = config.sft if c is None else c
  if train_seed is None and data is None:
    train_seed = config.data.train_seed
  tx, schedule = state_lib.make_optimizer(c.optimizer)
  ckpt = Checkpointer(ckpt_dir or workdir / "checkpoints" / "sft", max_to_keep=config.checkpoint.keep)
  if data is None:
    data = world_data.world_dataset(encoder, train_seed, c.batch_size, "sft", jax.process_index(),
                                    jax.process_count(), p_error=c.p_error)
  it = iter(data)
  state = state_lib.create_sharded_state(lambda: transformer.init_params(cfg, jax.random.key(config.seed)), tx,
                                         config.seed, place.state(tx))
  resumed = ckpt.resume(state, it.set_state, common.say)
  if resumed is not None:
    state, _ = resumed
    common.say(f"{name}: resumed from step {int(state.step)}")
  step_fn = sft.make_sft_step(cfg, tx, schedule, c.accum, state_sharding=place.state(tx),
                              batch_sharding=place.rows)
  state = common.train_loop(name, state, step_fn, it, c.steps, ckpt, writer, place, config.checkpoint.every,
                            f"{name}.batch_size")
  acc, greedy_acc, _ = evaluate(state.params)
  ckpt.close()
  return state.params, float(acc), float(greedy_acc)


# ---- GRPO ---------------------------------------------------------------------------------------------------------


def rl_phase(config, workdir: Path, cfg, encoder, evaluate, reward_fn, sft_params, writer, tokenizer,
             place: common.Placement) -> dict:
  c = config.rl
  tx, schedule = state_lib.make_optimizer(c.optimizer)
  settings = rl_iteration.GRPOSettings.from_config(c, sampling.SamplingParams(
      max_new_tokens=encoder.solution_len, temperature=c.temperature, top_p=c.top_p, num_samples=c.group_size,
      stop_tokens=(encoder.eos,), pad_id=encoder.pad))
  ckpt = Checkpointer(workdir / "checkpoints" / "rl", max_to_keep=config.checkpoint.keep)
  data = world_data.world_dataset(encoder, config.data.rl_seed, c.batch_size // c.group_size, "rl", jax.process_index(),
                                  jax.process_count())
  it = iter(data)
  ref_params = sft_params
  # A fresh copy of the SFT params (the reference stays), created on the state's shardings.
  state = jax.jit(lambda p: state_lib.create_state(p, tx, config.seed + 1), out_shardings=place.state(tx))(sft_params)
  if c.reward == "device":
    iterate = rl_iteration.make_iteration(cfg, settings, tx, rl_iteration.rule_reward(reward_fn), schedule,
                                          place.state(tx))
  elif c.reward == "host":
    golds = lambda targets: [tokenizer.decode([int(t)]) for t in targets]  # a target is the answer's token id
    iterate = HostRewardIteration(cfg, settings, tx, schedule, tokenizer.decode, golds, c.host_grader,
                                  state_sharding=place.state(tx))
  else:
    raise ValueError(f"config rl.reward={c.reward!r}: expected 'device' or 'host'")

  def run_eval(i, params):
    acc, greedy_acc, tokens = evaluate(params)
    writer.scalars(i, dict(heldout_accuracy=float(acc), heldout_greedy_accuracy=float(greedy_acc)), "eval/")
    writer.text(i, "eval/samples", common.decode_samples(tokenizer, common.host(tokens)))
    common.say(f"grpo iteration {i}: held-out accuracy {float(acc):.3f} (sampled), {float(greedy_acc):.3f} (greedy)")
    return dict(accuracy=float(acc), greedy_accuracy=float(greedy_acc))

  try:
    result = grpo_loop.run_grpo(iterate, state, it, iterations=c.iterations, ref_params=ref_params, ckpt=ckpt,
                              writer=writer, place=place, checkpoint_every=config.checkpoint.every,
                              rollouts_per_iteration=c.batch_size,
                              what="rl.batch_size / rl.group_size (prompts per iteration)", evaluate=run_eval,
                              eval_every=c.eval_every)
  finally:
    ckpt.close()
    if isinstance(iterate, HostRewardIteration):
      iterate.close()
  return dict(history=result.history, final_metrics=result.final_metrics)


def run(config, workdir: str) -> dict:
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)

  # World, tokenizer, model.
  world, tokenizer = world_and_tokenizer(config, workdir)
  encoder = world_data.WorldEncoder(world, tokenizer, config.data.format)
  cfg = model_config(config, tokenizer)
  template, slot, once = encoder.answer_template()
  reward_fn = make_suffix_reward(template, slot, once)
  place = common.Placement(config, cfg)
  eval_batch = place.replicate(world_data.eval_set(encoder, config.data.eval_seed, config.data.eval_size))
  evaluate = make_evaluator(cfg, encoder, reward_fn, eval_batch, encoder.solution_len)
  writer = metrics_lib.Writer(workdir / "tensorboard", enabled=distributed.is_main())
  common.say(f"model: {cfg.num_params() / 1e6:.2f}M params; prompt {encoder.prompt_len} tokens, "
       f"response up to {encoder.solution_len}")

  # Phase 1: SFT.
  t0 = time.time()
  sft_params, sft_acc, sft_greedy = sft_phase(config, workdir, cfg, encoder, evaluate, writer, place)
  common.say(f"sft done in {time.time() - t0:.0f}s: held-out accuracy {sft_acc:.3f} (sampled), "
             f"{sft_greedy:.3f} (greedy)")
  writer.scalars(0, dict(heldout_accuracy=sft_acc, heldout_greedy_accuracy=sft_greedy), "eval/")

  # Phase 2: GRPO.
  t0 = time.time()
  rl = rl_phase(config, workdir, cfg, encoder, evaluate, reward_fn, sft_params, writer, tokenizer, place)
  final = rl["history"][str(config.rl.iterations)]
  common.say(f"grpo done in {time.time() - t0:.0f}s")
  writer.close()
  summary = dict(sft_accuracy=sft_acc, sft_greedy_accuracy=sft_greedy, rl_accuracy=final["accuracy"],
                 rl_greedy_accuracy=final["greedy_accuracy"], history=rl["history"], final_metrics=rl["final_metrics"])
  if distributed.is_main():
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
  if distributed.is_main():
    print(f"held-out accuracy (T=1 samples): after SFT {sft_acc:.3f}, after GRPO {final['accuracy']:.3f}; "
          f"greedy: {sft_greedy:.3f} -> {final['greedy_accuracy']:.3f}")
  return summary
