"""Pipeline `hf_grpo`: GRPO of a Hugging Face policy on real math data, with a math-verify reward (RLVR) or a
generative PRM directory as the reward (SPARK-PRM Stage III, `reward.kind = "prm"`; `spark.host_prm_reward`).

Reads top to bottom: the policy (a HF directory, or a GGUF converted once into the workdir) loaded straight onto its
shardings, the prompts (chat template + instruction, left-padded to `data.max_prompt_len`), the held-out evaluation,
then the loop: rollout on device -> math-verify in worker processes -> update on device. Checkpoints (state + data
iterator) resume exactly; the final policy is written as a HF directory (`WORKDIR/policy_<iterations>`).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
from sparkjax import config_check, distributed, sampling, text_generation
from sparkjax.data import math as math_data
from sparkjax.data.host_grading import GraderPool
from sparkjax.models import hf
from sparkjax.models import tokenizer as tok_lib
from sparkjax.models.config import ModelConfig
from sparkjax.pipelines import common, grpo_loop
from sparkjax.rl import iteration as rl_iteration
from sparkjax.rl.host_reward import HostRewardIteration
from sparkjax.train import metrics as metrics_lib
from sparkjax.train import state as state_lib
from sparkjax.train.checkpoint import Checkpointer


def check_config(ch: config_check.Checks):
  """Everything known from the config alone (run by `main` before any work; see sparkjax/config_check.py)."""
  from sparkjax.models.config import PRESETS

  if ch.get("model.dir", ""):
    ch.satisfies("model.dir", hf.check_model_dir)
  elif ch.get("model.gguf", ""):
    ch.file("model.gguf", "GGUF file")
  else:
    ch.fail("model.dir", "", "a Hugging Face model directory (model.dir) or a GGUF file (model.gguf) must be set; "
            "e.g. --config.model.dir=/path/to/Qwen2.5-Math-1.5B")
  if ch.get("model.preset", ""):
    ch.choice("model.preset", PRESETS, "model preset")
  ch.choice("model.dtype", ("float32", "bfloat16"))
  ch.choice("model.param_dtype", ("float32", "bfloat16"))
  mesh = ch.mesh()
  ch.local_or_hub("data.path")
  ch.int_range("data.limit", 0)
  ch.int_range("data.max_prompt_len", 1)
  ch.satisfies("data.template", lambda t: t.format(problem="x"), "expected a template with one {problem} field")
  if ch.get("eval.path", ""):
    ch.local_or_hub("eval.path")
    ch.int_range("eval.size", 1)
    if ch.int_range("eval.batch_size", 1):
      ch.rows_over_data("eval.batch_size", ch.get("eval.batch_size"), mesh)
    ch.int_range("eval.every", 1)
  config_check.check_grpo(ch)
  if ch.int_range("rl.max_new_tokens", 1):
    config_check.check_logprob_chunk(ch, "rl.max_new_tokens")
  ch.rows_over_data("rl.batch_size / rl.group_size (prompts per iteration)", config_check.prompts_per_iteration(ch),
                    mesh)
  ch.int_range("grader_workers", 1)
  check_reward(ch, mesh)
  check_coevolve(ch, mesh)
  config_check.check_checkpoint(ch)


def check_coevolve(ch: config_check.Checks, mesh):
  """The optional `coevolve` block (SPARK-CoEvolve on real text): `config_check.check_coevolve`'s fields, the
  judge prompts' width and generation budget."""
  if not ch.get("coevolve", None) or not ch.boolean("coevolve.enabled") or not ch.get("coevolve.enabled"):
    return  # absent, not a boolean (named), or off
  if ch.get("reward", None) and ch.get("reward.kind", "rlvr") != "rlvr":
    ch.fail("coevolve.enabled", True, "CoEvolve recycles rollouts graded against reference answers: it needs "
            "reward.kind='rlvr'")
  config_check.check_coevolve(ch, mesh)
  for k in ("max_prompt_len", "max_new_tokens"):
    ch.int_range(f"coevolve.{k}", 1)
  config_check.check_logprob_chunk(ch, "coevolve.max_new_tokens")  # the judge updates take log-probs the same way


def check_reward(ch: config_check.Checks, mesh):
  """The `reward` block: rlvr, or a PRM directory (an architecture this code runs) in a generative format, a
  host design and format guards."""
  from sparkjax.spark import host_prm_reward, prm_examples, rewards

  if not ch.get("reward", None):  # configs written before the block: RLVR
    return
  ch.choice("reward.kind", ("rlvr", "prm"))
  if ch.get("reward.kind", None) != "prm":
    return
  if ch.get("reward.prm_dir", "") != POLICY_PRM:
    ch.satisfies("reward.prm_dir", hf.load_config)
  ch.choice("reward.prm_format", prm_examples.GENERATIVE_FORMATS, "generative PRM format")
  ch.choice("reward.design", host_prm_reward.HOST_DESIGNS, "reward design on the host path")
  if ch.int_range("reward.min_steps", 0) and ch.int_range("reward.max_steps", 1):
    ch.satisfies("reward.max_steps", lambda _: rewards.FormatSpec(ch.get("reward.min_steps"),
                                                                   ch.get("reward.max_steps")))
  ch.int_range("reward.prm_max_new_tokens", 1)
  if ch.int_range("reward.prm_rows", 1):
    ch.rows_over_data("reward.prm_rows", ch.get("reward.prm_rows"), mesh)


POLICY_PRM = "@policy"  # reward.prm_dir naming the policy's own starting weights as the (frozen) PRM


def model_dir(config, workdir: Path) -> Path:
  """`model.dir`, or `model.gguf` converted once into WORKDIR/base_model."""
  m = config.model
  if m.get("dir"):
    return Path(m.dir)
  if not m.get("gguf"):
    raise ValueError("config model.dir (a Hugging Face model directory) or model.gguf must be set; e.g. "
                     "--config.model.dir=/path/to/Qwen2.5-Math-1.5B")
  out = workdir / "base_model"
  if not (out / "config.json").is_file():
    from sparkjax.models.gguf import convert_gguf

    if distributed.is_main():
      common.say(f"converting {m.gguf} -> {out}")
      convert_gguf(m.gguf, out)
    distributed.barrier("convert")
  return out


def load_policy(config, workdir: Path) -> tuple[Path, ModelConfig, object, common.Placement]:
  directory = model_dir(config, workdir)
  m = config.model
  cfg = hf.load_config(directory, compute_dtype=m.dtype, param_dtype=m.param_dtype, scan_layers=m.scan_layers,
                       remat=m.remat)
  if m.get("preset"):
    want = ModelConfig.preset(m.preset).num_params()
    if want != cfg.num_params():
      raise ValueError(f"config model.preset={m.preset!r} ({want:,} parameters) does not describe {directory} "
                       f"({cfg.num_params():,} parameters); fix the preset (the memory plan reads it)")
  return directory, cfg, tok_lib.load_tokenizer(directory), common.Placement(config, cfg)


def encode(tokenizer, records: list[math_data.MathRecord], d) -> list[list[int]]:
  """Prompt token ids: `d.template` filled with the problem, in the chat template if `d.chat`."""
  return [tok_lib.encode_prompt(tokenizer, d.template.format(problem=r.problem), chat=d.chat,
                                system=d.get("system") or None) for r in records]


def fit_prompts(data: math_data.MathData, prompts: list[list[int]], limit: int, what: str):
  """Keeps prompts of at most `limit` tokens; the others are reported, never silently dropped."""
  keep = [i for i, p in enumerate(prompts) if len(p) <= limit]
  if len(keep) < len(prompts):
    common.say(f"{what}: {len(prompts) - len(keep)} of {len(prompts)} prompts are longer than {limit} tokens "
               "(data.max_prompt_len) and are left out")
  if not keep:
    raise ValueError(f"{what}: every prompt of {data.source} is longer than data.max_prompt_len={limit}")
  return [data.records[i] for i in keep], [prompts[i] for i in keep], len(prompts) - len(keep)


def make_evaluator(cfg, place: common.Placement, tokenizer, records, prompts, P: int, sp: sampling.SamplingParams,
                   batch: int, pool: GraderPool):
  """Greedy accuracy on the eval records: fixed batches of `batch` prompts (the last one padded with repeats)."""
  generator = text_generation.Generator(cfg, sp.pad_id, rows=batch, param_shardings=place.params,
                                        mesh=place.mesh, bucket=lambda n: P)
  golds = [r.answer for r in records]

  def evaluate(params) -> tuple[float, list[str]]:
    done = generator.generate(params, prompts, sp, jax.random.key(0))
    texts = [tokenizer.decode(row[0].tokens, skip_special_tokens=True) for row in done]
    graded = pool.grade(texts, golds)
    return float(graded.rewards.mean()), texts

  return evaluate


def prm_scorer(config, policy_dir: Path, policy_params, records, place: common.Placement):
  """The PRM reward of `reward.kind = "prm"` as a host scorer (texts, record index of each row) -> dict, or None
  for RLVR."""
  r = config.get("reward")
  if not r or r.kind != "prm":
    return None
  from sparkjax.spark import host_prm_reward, rewards

  own = r.prm_dir == POLICY_PRM
  prm = host_prm_reward.HostPRMScorer(policy_dir if own else r.prm_dir, r.prm_format, r.design,
                                      rewards.FormatSpec(r.min_steps, r.max_steps), r.prm_max_new_tokens,
                                      rows=r.prm_rows, mesh=place.mesh, params=policy_params if own else None)
  common.say(f"reward: PRM {policy_dir if own else r.prm_dir} ({r.prm_format}, {r.design}), format guards "
             f"{r.min_steps}-{r.max_steps} steps")
  return lambda texts, targets: prm(texts, [records[int(t)].problem for t in targets])


def coevolve_iteration(config, workdir: Path, policy: HostRewardIteration, cfg, settings, tx, schedule, tokenizer,
                       records, pool: GraderPool, pad: int, state_sh):
  """With `coevolve.enabled`, the policy's iteration wrapped in SPARK-CoEvolve's recycling and reward-period
  updates (`coevolve.host_iteration`); recycled examples go to WORKDIR/judge_examples.jsonl. Else None."""
  cc = config.get("coevolve")
  if not cc or not cc.enabled:
    return None
  import dataclasses

  from sparkjax.coevolve.host_iteration import HostCoevolveIteration, HostJudgeSettings
  from sparkjax.coevolve.recycle import RecycleConfig

  d = config.data
  js = HostJudgeSettings(RecycleConfig.from_config(cc), cc.judge_batch, cc.max_prompt_len, cc.reset_every,
                         config.seed)
  judge_settings = dataclasses.replace(settings, sampling=dataclasses.replace(
      settings.sampling, num_samples=cc.judge_group_size, max_new_tokens=cc.max_new_tokens))
  encode = lambda text: tok_lib.encode_prompt(tokenizer, text, chat=d.chat, system=d.get("system") or None)
  match = lambda preds, golds: pool.grade(preds, golds).rewards > 0.5
  common.say(f"coevolve: judge batch {cc.judge_batch} x {cc.judge_group_size} samples, at most {cc.max_judge} "
             f"judge + {cc.max_reflection} reflection examples per iteration")
  return HostCoevolveIteration(policy, cfg, judge_settings, tx, schedule, js, lambda t: records[t].problem,
                               lambda t: records[t].answer, encode, policy.decode, match, pad,
                               state_sharding=state_sh, examples_file=workdir / "judge_examples.jsonl")


def run(config, workdir: str) -> dict:
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  c, d = config.rl, config.data

  # Policy config and tokenizer (the weights are read after the data, which fails faster).
  directory, cfg, tokenizer, place = load_policy(config, workdir)
  stop = tok_lib.stop_tokens(tokenizer, directory)
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]

  # Prompts.
  train = math_data.load_math(d.path, split=d.get("split", "train"), limit=d.get("limit") or None)
  common.say(train.report())
  records, prompts, too_long = fit_prompts(train, encode(tokenizer, train.records, d), d.max_prompt_len, "train")
  P = d.max_prompt_len
  data = math_data.prompt_dataset(prompts, P, pad, config.seed, c.batch_size // c.group_size, jax.process_index(),
                                  jax.process_count())
  it = iter(data)
  golds = lambda targets: [records[int(t)].answer for t in targets]

  # Held-out problems.
  e = config.eval
  held_records, held_prompts = [], []
  if e.get("path"):
    held = math_data.load_math(e.path, split=e.get("split", "test"), limit=e.size)
    common.say(held.report())
    held_records, held_prompts, _ = fit_prompts(held, encode(tokenizer, held.records, d), P, "eval")

  # Weights, straight onto their shardings.
  common.say(f"policy: {directory} ({cfg.model_type}, {cfg.num_params() / 1e6:.1f}M params), mesh "
             f"{dict(place.mesh.shape)}")
  params, _ = hf.load_params(directory, cfg, place.params)

  # State, reference, the iteration.
  tx, schedule = state_lib.make_optimizer(c.optimizer)
  state_sh = place.state(tx)
  # Built by run_grpo only when no checkpoint is resumed: a 0.5B's initial state (weights and Adam moments, 7.5 GB in
  # float32) held beside the restored one took a resumed run to 23.6 GB, 6.6 GB over a fresh one's peak.
  init_state = functools.partial(jax.jit(lambda p: state_lib.create_state(p, tx, config.seed),
                                         out_shardings=state_sh), params)
  ref_params = params  # the state holds its own copy; the loaded weights stay as the KL reference
  ckpt = Checkpointer(workdir / "checkpoints" / "rl", max_to_keep=config.checkpoint.keep)
  sp = sampling.SamplingParams(max_new_tokens=c.max_new_tokens, temperature=c.temperature, top_p=c.top_p,
                               num_samples=c.group_size, stop_tokens=stop, pad_id=pad)
  settings = rl_iteration.GRPOSettings.from_config(c, sp)
  decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)
  pool = GraderPool("math_verify", workers=config.get("grader_workers", 2), timeout=10.0)
  iterate = None
  writer = metrics_lib.Writer(workdir / "tensorboard", enabled=distributed.is_main())
  try:
    evaluate = None
    if held_records:
      greedy = sampling.SamplingParams(max_new_tokens=c.max_new_tokens, temperature=0.0, stop_tokens=stop, pad_id=pad)
      evaluate = make_evaluator(cfg, place, tokenizer, held_records, held_prompts, P, greedy, e.batch_size, pool)
    iterate = HostRewardIteration(cfg, settings, tx, schedule, decode, golds, "math_verify",
                                  workers=config.get("grader_workers", 2), state_sharding=state_sh,
                                  scorer=prm_scorer(config, directory, params, records, place))
    coevolve = coevolve_iteration(config, workdir, iterate, cfg, settings, tx, schedule, tokenizer, records, pool,
                                  pad, state_sh)
    iterate = coevolve or iterate

    def run_eval(i, params):
      acc, texts = evaluate(params)
      writer.scalars(i, dict(heldout_accuracy=acc), "eval/")
      writer.text(i, "eval/samples", "\n\n---\n\n".join(texts[:4]))
      common.say(f"iteration {i}: held-out greedy accuracy {acc:.3f} on {len(texts)} problems ({e.path})")
      return dict(accuracy=acc)

    result = grpo_loop.run_grpo(iterate, init_state, it, iterations=c.iterations, ref_params=ref_params, ckpt=ckpt,
                              writer=writer, place=place, checkpoint_every=config.checkpoint.every,
                              rollouts_per_iteration=c.batch_size,
                              what="rl.batch_size / rl.group_size (prompts per iteration)",
                              evaluate=run_eval if evaluate is not None else None, eval_every=e.get("every", 1),
                              eval_at_start=True, host_state=coevolve)
    state, history, final = result.state, result.history, result.final_metrics
  finally:
    if iterate is not None:
      iterate.close()
    pool.close()
    ckpt.close()

  out_dir = workdir / f"policy_{c.iterations}"  # a longer run started later writes its own
  # Gathering the parameters is a collective over the processes: every process takes part, then only the main one
  # writes (a gather on the main process alone would wait for the others forever).
  params_host = jax.tree.map(common.host, state.params) if jax.process_count() > 1 or not out_dir.exists() else None
  if distributed.is_main() and not out_dir.exists():
    hf.save_params(params_host, cfg, out_dir, extra_files=lambda tmp: tokenizer.save_pretrained(str(tmp)))
    common.say(f"policy written to {out_dir}")
  writer.close()
  summary = dict(history=history, final_metrics=final, train_records=len(records), train_unreadable=len(train.bad),
                 train_too_long=too_long)
  if distributed.is_main():
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    if history:
      first, latest = history[min(history, key=int)], history[max(history, key=int)]
      print(f"held-out greedy accuracy: {first['accuracy']:.3f} -> {latest['accuracy']:.3f}")
  return summary
