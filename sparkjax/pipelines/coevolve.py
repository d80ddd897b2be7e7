"""Pipeline `coevolve`: SPARK-CoEvolve in the arithmetic world, the policy as its own judge.

Reads top to bottom:
  1. the "instruct" policy: a fresh model SFT'd on solution demonstrations (a demonstrator with misconceptions,
     `policy.misconceptions`) mixed with judge and reflection demonstrations whose labels are that demonstrator's
     beliefs, not the truth (`coevolve.world_sft`): it knows the judge format, not the right verdicts;
  2. one run per entry of `coevolve.runs`, each from that same SFT checkpoint with the same prompts, seeds and
     policy iterations (the same number of policy rollouts): policy_only (GRPO with the verifiable reward), coevolve
     (the rollouts recycled into judge examples and reward-period updates of the same weights), and the ablations
     pointwise_only, pairwise_only, no_reflection;
  3. held-out accuracy of the policy (greedy and sampled) and the judge's exact quality on the world's held-out
     problems during training; at the end the test-time self-judge-and-reflect loop on the SFT model and on every
     run's final model. Writes coevolve/results.json, results.md (table + the paper's claims) and curves.png.
Every run checkpoints (state with the judge cache, data, curves) and results.json keeps finished runs, so a killed
job restarted with the same command continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax

from sparkjax import config_check, distributed, sampling
from sparkjax.coevolve import iteration as co_iteration
from sparkjax.coevolve import report as co_report
from sparkjax.coevolve import world_eval, world_judge, world_sft
from sparkjax.coevolve.recycle import RecycleConfig
from sparkjax.data import arith, world_data
from sparkjax.pipelines import arith_rl, common, grpo_loop
from sparkjax.rl import iteration as rl_iteration
from sparkjax.spark import world_reward as WR
from sparkjax.train import metrics as metrics_lib
from sparkjax.train import state as state_lib
from sparkjax.train.checkpoint import Checkpointer

# Run name -> (judge on, overrides of the recycling config).
RUNS = {
    "policy_only": (False, {}),
    "coevolve": (True, {}),
    "pointwise_only": (True, dict(judge_kinds=("pointwise",), pointwise_in_mixed=1.0)),
    "pairwise_only": (True, dict(judge_kinds=("pairwise",), pointwise_in_mixed=0.0)),
    "no_reflection": (True, dict(max_reflection=0)),
}
CURVES = ("reward_mean", "judge_reward_mean", "judge_pointwise_reward", "judge_pairwise_reward", "judge_reflection_reward",
          "judge_update", "judge_no_box", "judge_several_boxes", "judge_not_a_verdict", "cache_count", "kl")


# ---- config ------------------------------------------------------------------------------------------------------


def check_config(ch: config_check.Checks):
  """Everything known from the config alone (run by `main` before any work; see sparkjax/config_check.py)."""
  config_check.check_world(ch)
  ch.int_range("world.heldout_every", 2)  # held-out accuracy is measured on problems no training stream draws
  config_check.check_world_model(ch)
  mesh = ch.mesh()
  ch.float_range("policy.misconceptions", 0.0, 1.0)
  ch.int_range("policy.train_seed", 0)
  arith_rl.check_sft(ch, "policy.sft", mesh)
  ch.float_range("policy.sft.judge_share", 0.0, 1.0)
  config_check.check_grpo(ch)
  ch.int_range("rl.eval_every", 1)
  prompts = config_check.prompts_per_iteration(ch)
  ch.rows_over_data("rl.batch_size / rl.group_size (prompts per iteration)", prompts, mesh)
  c = "coevolve"
  runs = ch.get(f"{c}.runs", None) or ()
  for r in runs:
    if r not in RUNS:
      ch.fail(f"{c}.runs", r, f"expected one of {', '.join(RUNS)}")
  if not runs or len(set(runs)) != len(runs):
    ch.fail(f"{c}.runs", runs, "expected at least one run, none twice")
  config_check.check_coevolve(ch, mesh, c)
  for k in ("eval_size", "eval_samples", "judge_eval_samples"):
    ch.int_range(f"{c}.{k}", 1)
  for k in ("rl_seed", "eval_seed"):
    ch.int_range(f"{c}.{k}", 0)
  ch.int_range(f"{c}.self_judge_rounds", 0)
  ch.int_range(f"{c}.replicate", 0, optional=True)
  ch.boolean(f"{c}.judge_working", optional=True)
  config_check.check_checkpoint(ch)


# ---- the runs ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class World:
  """What every run shares: the tokenizer, the encoder (and its world), the judge's vocabulary, the held-out set and
  the evaluators."""

  tok: object
  encoder: world_data.WorldEncoder
  vocab: world_judge.JudgeVocab
  cfg: object
  place: common.Placement
  heldout: dict  # prompt, prompt_mask, target (replicated)
  problems: list
  evaluate: object  # policy accuracy: params -> (sampled, greedy, tokens)
  judge_eval: object  # params -> judge metrics
  self_judge: object  # params -> loop metrics

  def judge_metrics(self, params, responder=None) -> dict:
    """The judge `params` on held-out responses of its own (or of `responder`'s parameters)."""
    b = self.heldout
    m = self.judge_eval(params, b["prompt"], b["prompt_mask"], b["target"], responder)
    return {k: float(v) for k, v in m.items()}

  def loop_metrics(self, params) -> dict:
    b = self.heldout
    return {k: float(v) for k, v in self.self_judge(params, b["prompt"], b["prompt_mask"], b["target"]).items()}


def policy_sampling(config, encoder) -> sampling.SamplingParams:
  c = config.rl
  return sampling.SamplingParams(max_new_tokens=encoder.solution_len, temperature=c.temperature, top_p=c.top_p,
                                 num_samples=c.group_size, stop_tokens=(encoder.eos,), pad_id=encoder.pad)


def run_one(name: str, config, out: Path, w: World, sft_params) -> dict:
  """One run from the SFT checkpoint -> its result (held-out history with judge metrics, curves, seconds)."""
  c, cc = config.rl, config.coevolve
  t0 = time.time()
  enabled, _ = RUNS[name]
  tx, schedule = state_lib.make_optimizer(c.optimizer)
  settings = rl_iteration.GRPOSettings.from_config(c, policy_sampling(config, w.encoder))
  judge_settings = dataclasses.replace(settings, sampling=dataclasses.replace(settings.sampling,
                                                                              num_samples=cc.judge_group_size))
  js = co_iteration.JudgeSettings(enabled, RecycleConfig.from_config(cc, **RUNS[name][1]), cc.judge_batch, cc.reset_every)
  iterate = co_iteration.make_iteration(w.cfg, settings, judge_settings, js, tx, WR.make_rlvr_reward(w.tok),
                                        world_data.answer_check(w.tok), w.vocab, schedule, w.place.state(tx))
  # Every run: the same start (SFT params, state seed, so the same first sampling keys) and the same prompts; a
  # replicate > 0 draws other prompts and sampling keys from the same SFT policy.
  rep = cc.get("replicate", 0)
  train = jax.jit(lambda p: state_lib.create_state(p, tx, config.seed + 1 + 1000 * rep),
                  out_shardings=w.place.state(tx))(sft_params)
  state = co_iteration.create(train, w.vocab, js)
  it = iter(world_data.world_dataset(w.encoder, cc.rl_seed + 1000 * rep, c.batch_size // c.group_size, "rl",
                                     jax.process_index(), jax.process_count()))
  ckpt = Checkpointer(out / "runs" / name / "checkpoints", max_to_keep=config.checkpoint.keep)
  writer = metrics_lib.Writer(out / "tensorboard" / name, enabled=distributed.is_main())

  def run_eval(i, params):
    acc, greedy, _ = w.evaluate(params)
    res = dict(accuracy=float(acc), greedy_accuracy=float(greedy)) | w.judge_metrics(params)
    writer.scalars(i, res, "eval/")
    common.say(f"{name} iteration {i}: held-out greedy {greedy:.3f}, sampled {acc:.3f}; judge pointwise "
               f"{res['pointwise_accuracy']:.3f}, pairwise {res['pairwise_accuracy']:.3f}, false positives "
               f"{res['false_positive_rate']:.3f}, reflection success {res['reflection_success']:.3f}")
    return res

  try:
    result = grpo_loop.run_grpo(iterate, state, it, iterations=c.iterations, ref_params=sft_params, ckpt=ckpt,
                                writer=writer, place=w.place, checkpoint_every=config.checkpoint.every,
                                rollouts_per_iteration=c.batch_size,
                                what="rl.batch_size / rl.group_size (prompts per iteration)", evaluate=run_eval,
                                eval_every=c.eval_every, name=name, keep=CURVES)
  finally:
    ckpt.close()
    writer.close()
  final_state = result.state
  counters = dict(optimizer_steps=int(final_state.train.step), iterations=int(final_state.cache.iterations),
                  judge_updates=int(final_state.cache.judge_updates), epochs=int(final_state.cache.epoch))
  return dict(judge=enabled, recycle=dataclasses.asdict(js.recycle), history=result.history, counters=counters,
              self_judge=w.loop_metrics(final_state.params), curves=result.curves,
              seconds=round(time.time() - t0, 1))


def setup(config, workdir: Path) -> World:
  """What every run shares: the world (with the demonstrator's misconceptions), tokenizer, model config, mesh,
  held-out problems and the evaluators."""
  cc = config.coevolve
  world = dataclasses.replace(arith.WorldConfig(**config.world), misconceptions=config.policy.misconceptions)
  _, tok = arith_rl.world_and_tokenizer(config, workdir)
  cfg = arith_rl.model_config(config, tok)
  place = common.Placement(config, cfg)
  encoder = world_data.WorldEncoder(world, tok, "think")
  vocab = world_judge.JudgeVocab.from_tokenizer(tok, encoder.prompt_len, encoder.solution_len)
  problems = world_data.distinct_problems(cc.eval_seed, cc.eval_size, world, "heldout")
  heldout = place.replicate(world_data.rl_batch(encoder, problems))
  check = world_data.answer_check(tok)
  sp = policy_sampling(config, encoder)
  w = World(tok, encoder, vocab, cfg, place, heldout, problems,
            arith_rl.make_evaluator(cfg, encoder, check, heldout, encoder.solution_len, samples=cc.eval_samples),
            world_eval.make_judge_eval(cfg, vocab, sp, check, cc.show_reasoning, cc.judge_eval_samples,
                                       seed=config.seed + 5),
            world_eval.make_self_judge(cfg, vocab, sp, check, cc.show_reasoning, cc.self_judge_rounds))
  common.say(f"policy: {cfg.num_params() / 1e6:.2f}M params; judge prompts up to {vocab.width} tokens; "
             f"{len(problems)} held-out problems")
  return w


def run(config, workdir: str) -> dict:
  workdir = Path(workdir)
  out = workdir / "coevolve"
  out.mkdir(parents=True, exist_ok=True)
  cc, sc = config.coevolve, config.policy.sft
  w = setup(config, workdir)
  data = world_sft.instruct_dataset(w.encoder, w.vocab, config.policy.train_seed, sc.batch_size, sc.judge_share,
                                    sc.p_error, cc.show_reasoning, cc.reflection_full_share, jax.process_index(),
                                    jax.process_count(), judge_working=cc.get("judge_working", False))
  writer = metrics_lib.Writer(out / "tensorboard" / "policy_sft", enabled=distributed.is_main())
  t0 = time.time()
  sft_params, acc, greedy = arith_rl.sft_phase(config, out, w.cfg, w.encoder, w.evaluate, writer, w.place, c=sc,
                                               ckpt_dir=out / "checkpoints" / "policy_sft", name="policy.sft",
                                               data=data)
  writer.close()
  sft = dict(accuracy=acc, greedy_accuracy=greedy, seconds=round(time.time() - t0, 1))
  results_path = out / "results.json"
  done = json.loads(results_path.read_text()) if results_path.is_file() else {}
  if "judge" in done.get("sft", {}):
    sft = done["sft"]
  else:
    sft |= dict(judge=w.judge_metrics(sft_params), self_judge=w.loop_metrics(sft_params))
  common.say(f"coevolve: SFT'd instruct policy: held-out greedy {greedy:.3f}, sampled {acc:.3f}; judge "
             f"pointwise {sft['judge']['pointwise_accuracy']:.3f}, pairwise {sft['judge']['pairwise_accuracy']:.3f}")
  runs = {}
  for name in cc.runs:
    if name in done.get("runs", {}):
      common.say(f"coevolve {name}: done before")
      runs[name] = done["runs"][name]
      continue
    res = run_one(name, config, out, w, sft_params)
    runs[name] = res
    last = res["history"][str(config.rl.iterations)]
    common.say(f"coevolve {name}: held-out greedy {greedy:.3f} -> {last['greedy_accuracy']:.3f}, sampled "
               f"{acc:.3f} -> {last['accuracy']:.3f}, {res['counters']['judge_updates']} judge updates "
               f"({res['seconds']:.0f}s)")
    if distributed.is_main():
      results_path.write_text(json.dumps(dict(sft=sft, runs=runs), indent=2))
  report = dict(sft=sft, heldout=dict(problems=len(w.problems), samples_per_problem=cc.eval_samples,
                                      judge_samples_per_problem=cc.judge_eval_samples),
                iterations=config.rl.iterations, runs=runs)
  report["claims"] = co_report.claims(report)
  if distributed.is_main():
    results_path.write_text(json.dumps(report, indent=2))
    md = co_report.table_markdown(report)
    (out / "results.md").write_text(md + "\n")
    co_report.plot(report, out / "curves.png")
    print(md)
  return report
