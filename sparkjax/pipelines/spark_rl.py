"""Pipeline `spark_rl`: SPARK-PRM Stage III in the arithmetic world, GRPO with trained PRMs as the reward.

Reads top to bottom:
  1. the policy: a fresh model SFT'd on demonstrations in the RL format ("think") from a demonstrator with
     misconceptions (`policy.misconceptions`: facts it always gets wrong, which a greedy policy inherits);
  2. one GRPO run per entry of `stage3.runs`, each from that same SFT checkpoint with the same prompts, seeds and
     budget; the reward is RLVR (exact answer), random, or a PRM directory of `stage3.prm_root` (written by
     `spark_prm`'s Stage II) scored inside the jitted iteration, turned into advantages by a reward design;
  3. held-out accuracy (greedy and sampled) on the world's held-out problems, which no training stream draws, as
     curves of every run (`stage3/accuracy.png`), the table (`stage3/results.md`) and the paper's claims.
Every run checkpoints (state, data, its curves) and `stage3/results.json` keeps finished runs, so a killed job
restarted with the same command continues where it stopped. The `spark` pipeline runs this after Stages I-II.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path

import jax
import numpy as np

from sparkjax import config_check, distributed, sampling, sharding
from sparkjax.data import arith, world_data
from sparkjax.models import hf, tokenizer as tokenizer_lib
from sparkjax.pipelines import arith_rl, common, grpo_loop
from sparkjax.pipelines.spark_prm import PRM_META
from sparkjax.rl import iteration as rl_iteration
from sparkjax.spark import error_probe, prm_examples, rewards, stage3_report
from sparkjax.spark import world_reward as WR
from sparkjax.spark import world_verifier as wv
from sparkjax.train import metrics as metrics_lib
from sparkjax.train import state as state_lib
from sparkjax.train.checkpoint import Checkpointer

BASELINES = ("rlvr", "random")
FORMAT_OFF = "format_off"
# Training metrics kept per iteration for the report (those a reward reports; the baselines lack the PRM's).
CURVES = ("reward_mean", "score_answer_correct", "score_format_valid", "score_num_steps", "score_prm_agrees",
          "score_prm_false_positive", "score_prm_parsed", "score_hack_appended", "score_hack_extra_answer",
          "score_hack_boxed", "score_hack_step_collapse", "score_hack_step_inflation", "response_length", "kl")


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One Stage III run, written `REWARD[/DESIGN][/format_off]` in `stage3.runs`."""

  reward: str  # "rlvr", "random", or a PRM directory name under stage3.prm_root
  design: str  # a `spark.rewards.REWARD_DESIGNS` name (PRM rewards only)
  enforce_format: bool

  @property
  def name(self) -> str:
    parts = [self.reward] + ([] if self.reward in BASELINES else [self.design])
    return "/".join(parts + ([] if self.enforce_format else [FORMAT_OFF]))

  @property
  def slug(self) -> str:  # a directory name
    return self.name.replace("/", "+")


def parse_run(text: str) -> RunSpec:
  parts = str(text).split("/")
  reward, rest = parts[0], parts[1:]
  enforce = FORMAT_OFF not in rest
  rest = [p for p in rest if p != FORMAT_OFF]
  if not reward or len(rest) > 1 or (reward in BASELINES and (rest or not enforce)):
    raise ValueError(f"stage3 run {text!r}: expected REWARD[/DESIGN][/{FORMAT_OFF}] with REWARD 'rlvr', 'random' or "
                     "a PRM directory name (a design and format_off only for PRM rewards)")
  design = rest[0] if rest else "process_outcome"
  rewards.lookup_design(design)
  return RunSpec(reward, design, enforce)


def prm_format(prm_dir: Path) -> str:
  """The PRM's format: from its prm.json (written by `spark_prm`), else from the directory name's suffix."""
  meta = prm_dir / PRM_META
  if meta.is_file():
    fmt = json.loads(meta.read_text()).get("format")
    if fmt in prm_examples.FORMATS:
      return fmt
    raise ValueError(f"{meta}: format={fmt!r}; expected one of {', '.join(prm_examples.FORMATS)}")
  for fmt in sorted(prm_examples.FORMATS, key=len, reverse=True):
    if prm_dir.name.endswith("_" + fmt):
      return fmt
  raise ValueError(f"{prm_dir}: no {PRM_META} and the name does not end in _FORMAT "
                   f"({', '.join(prm_examples.FORMATS)}); cannot tell how to read the PRM")


# ---- config ------------------------------------------------------------------------------------------------------


def check_config(ch: config_check.Checks):
  """Everything known from the config alone (run by `main` before any work; see sparkjax/config_check.py)."""
  config_check.check_world(ch)
  ch.int_range("world.heldout_every", 2)  # held-out accuracy is measured on problems no training stream draws
  config_check.check_world_model(ch)
  check_stage3(ch, ch.mesh())
  root = ch.get("stage3.prm_root", "")
  root_dir = Path(str(root)).expanduser()
  needs_prm = [s for s in run_specs(ch) if s.reward not in BASELINES]
  if needs_prm and (not root or not root_dir.is_dir()):
    ch.fail("stage3.prm_root", root, "expected the directory of trained PRMs (a spark_prm workdir's prms/, one "
            f"directory per PRM) that the runs {', '.join(s.name for s in needs_prm)} read")
  elif needs_prm:
    for s in needs_prm:
      d = root_dir / s.reward
      if not (d / "config.json").is_file():
        have = sorted(p.name for p in root_dir.iterdir() if (p / "config.json").is_file())
        ch.fail("stage3.runs", s.name, f"names PRM {s.reward!r}, but {d} holds no PRM (config.json); PRMs in "
                f"{root}: {', '.join(have) or 'none'}")
  config_check.check_checkpoint(ch)


def run_specs(ch) -> list[RunSpec]:
  out = []
  runs = ch.get("stage3.runs", None) or []
  for r in runs:
    try:
      out.append(parse_run(r))
    except ValueError as e:
      ch.fail("stage3.runs", r, str(e))
  if not runs:
    ch.fail("stage3.runs", runs, "expected at least one run (REWARD[/DESIGN][/format_off])")
  names = [s.name for s in out]
  if len(set(names)) != len(names):
    ch.fail("stage3.runs", runs, "names a run twice")
  return out


def check_stage3(ch: config_check.Checks, mesh):
  """The Stage III fields shared by `spark_rl` and `spark`: the policy's SFT, GRPO, and the format guards, which
  must admit every correct solution of the world (one step per operation) and number at most max_value steps
  (step numbers are tokens of the world's vocabulary)."""
  ch.float_range("policy.misconceptions", 0.0, 1.0)
  ch.int_range("policy.train_seed", 0)
  arith_rl.check_sft(ch, "policy.sft", mesh)
  config_check.check_grpo(ch)
  ch.int_range("rl.eval_every", 1)
  ch.rows_over_data("rl.batch_size / rl.group_size (prompts per iteration)", config_check.prompts_per_iteration(ch),
                    mesh)
  for k in ("rl_seed", "eval_seed", "eval_size", "eval_samples"):
    ch.int_range(f"stage3.{k}", 0 if k.endswith("seed") else 1)
  ch.int_range("stage3.prm_max_new_tokens", 0)
  ch.int_range("stage3.replicate", 0, optional=True)
  ch.float_range("stage3.disc_threshold", 0.0, 1.0, lo_open=True, hi_open=True)
  if ch.int_range("stage3.min_steps", 0) and ch.int_range("stage3.max_steps", 1):
    w = ch.get("world", None)
    try:
      world = arith.WorldConfig(**dict(w))
    except (TypeError, ValueError):
      return  # check_world names it
    spec = (ch.get("stage3.min_steps"), ch.get("stage3.max_steps"))
    ch.satisfies("stage3.max_steps", lambda _: rewards.check_step_bounds(rewards.FormatSpec(*spec), world.min_ops,
                                                                         world.max_ops, "stage3"))
    if spec[1] > world.max_value:
      ch.fail("stage3.max_steps", spec[1], f"expected at most world.max_value={world.max_value}: the PRM input "
              "numbers each step with one of the world's number tokens")


# ---- the PRM -----------------------------------------------------------------------------------------------------


def load_world_prm(prm_dir: Path, tokenizer, world: arith.WorldConfig, place: common.Placement):
  """(params placed on the mesh, ModelConfig, format) of a PRM directory, refused with the reason when it was not
  trained on this world: another vocabulary (its tokenizer differs from the world's), an architecture this code
  cannot run, or (when its prm.json says) another world."""
  cfg = hf.load_config(prm_dir)
  theirs = tokenizer_lib.load_tokenizer(prm_dir).get_vocab()
  ours = tokenizer.get_vocab()
  if theirs != ours:
    diff = sorted(set(theirs.items()) ^ set(ours.items()))[:3]
    raise ValueError(f"PRM {prm_dir}: its tokenizer ({len(theirs)} tokens) is not this world's ({len(ours)} tokens; "
                     f"first differences {diff}); a PRM scores the policy's tokens directly, so it must be trained on "
                     "the same world (config world.max_value sets the vocabulary)")
  if cfg.vocab_size < len(ours):
    raise ValueError(f"PRM {prm_dir}: config vocab_size={cfg.vocab_size} is smaller than the world's vocabulary "
                     f"({len(ours)} tokens)")
  meta = prm_dir / PRM_META
  if meta.is_file():
    trained = json.loads(meta.read_text()).get("world")
    ours_w = {k: v for k, v in dataclasses.asdict(world).items() if k != "misconceptions"}
    theirs_w = {k: v for k, v in dataclasses.asdict(arith.WorldConfig(**(trained or {}))).items()
                if k != "misconceptions"}
    if theirs_w != ours_w:
      raise ValueError(f"PRM {prm_dir}: trained on world {theirs_w} ({meta}), this run's world is {ours_w}")
  params, cfg = hf.load_params(prm_dir, cfg, sharding.param_shardings(cfg, place.mesh))
  return params, cfg, prm_format(prm_dir)


# ---- stage III ---------------------------------------------------------------------------------------------------


def policy_world(config) -> arith.WorldConfig:
  """The world of the RL policy: the config's world with the policy demonstrator's misconceptions."""
  return dataclasses.replace(arith.WorldConfig(**config.world), misconceptions=config.policy.misconceptions)


def make_reward(spec: RunSpec, config, tokenizer, world, prm_root: Path, place, advantage: str):
  """(scorer fn, scorer params, their shardings, design or None, PRM format or None) of one run."""
  c = config.stage3
  fspec = rewards.FormatSpec(c.min_steps, c.max_steps)
  if spec.reward == "rlvr":
    return WR.make_rlvr_reward(tokenizer, fspec), None, None, None, None
  if spec.reward == "random":
    return WR.make_random_reward(tokenizer, config.seed, fspec), None, None, None, None
  params, prm_cfg, fmt = load_world_prm(prm_root / spec.reward, tokenizer, world, place)
  max_new = c.prm_max_new_tokens or wv.VerifierEncoder(world, tokenizer).target_len
  fn = WR.make_prm_reward(prm_cfg, fmt, tokenizer, fspec, c.max_steps, max_new_tokens=max_new,
                          threshold=c.disc_threshold, enforce_format=spec.enforce_format)
  design = functools.partial(rewards.lookup_design(spec.design), advantage=advantage)
  return fn, params, sharding.param_shardings(prm_cfg, place.mesh), design, fmt


def summarize(curves: dict, iterations: int) -> dict:
  """Means of each kept training metric over the first and the last fifth of the iterations."""
  k = max(1, iterations // 5)
  return {name: dict(start=float(np.mean(v[:k])), end=float(np.mean(v[-k:]))) for name, v in curves.items() if v}


def run_one(spec: RunSpec, config, out: Path, cfg, tokenizer, world, encoder, evaluate, sft_params, prm_root: Path,
            place: common.Placement, heldout: tuple) -> dict:
  """One GRPO run from the SFT checkpoint -> its result (held-out history, training diagnostics, the error probe
  of the policy before and after on the held-out problems `heldout` = (batch, problems), seconds)."""
  c = config.rl
  t0 = time.time()
  fn, scorer, scorer_sharding, design, fmt = make_reward(spec, config, tokenizer, world, prm_root, place,
                                                          c.advantage)
  tx, schedule = state_lib.make_optimizer(c.optimizer)
  settings = rl_iteration.GRPOSettings.from_config(c, sampling.SamplingParams(
      max_new_tokens=encoder.solution_len, temperature=c.temperature, top_p=c.top_p, num_samples=c.group_size,
      stop_tokens=(encoder.eos,), pad_id=encoder.pad))
  iterate = rl_iteration.make_iteration(cfg, settings, tx, fn, schedule, place.state(tx), scorer_sharding,
                                        design=design)
  # Every run: the same start (the SFT params, the same state seed, so the same sampling keys) and prompts; a
  # replicate > 0 draws other prompts and sampling keys from the same SFT policy.
  rep = config.stage3.get("replicate", 0)
  state = jax.jit(lambda p: state_lib.create_state(p, tx, config.seed + 1 + 1000 * rep),
                  out_shardings=place.state(tx))(sft_params)
  it = iter(world_data.world_dataset(encoder, config.stage3.rl_seed + 1000 * rep, c.batch_size // c.group_size, "rl",
                                     jax.process_index(), jax.process_count()))
  eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
  probe = error_probe.make_probe(cfg, fn, dataclasses.replace(settings.sampling,
                                                              num_samples=config.stage3.eval_samples),
                                 lambda ids: tokenizer.decode([t for t in ids if t not in (eos, pad)]),
                                 has_verdict=fmt is not None)
  probe_key = jax.random.key(config.seed + 3)
  errors_before = probe(sft_params, scorer, *heldout, probe_key)
  run_dir = out / "runs" / spec.slug
  ckpt = Checkpointer(run_dir / "checkpoints", max_to_keep=config.checkpoint.keep)
  writer = metrics_lib.Writer(out / "tensorboard" / spec.slug, enabled=distributed.is_main())

  def run_eval(i, params):
    acc, greedy, _ = evaluate(params)
    writer.scalars(i, dict(heldout_accuracy=float(acc), heldout_greedy_accuracy=float(greedy)), "eval/")
    return dict(accuracy=float(acc), greedy_accuracy=float(greedy))

  try:
    result = grpo_loop.run_grpo(iterate, state, it, iterations=c.iterations, ref_params=sft_params,
                                scorer_params=scorer, ckpt=ckpt, writer=writer, place=place,
                                checkpoint_every=config.checkpoint.every, rollouts_per_iteration=c.batch_size,
                                what="rl.batch_size / rl.group_size (prompts per iteration)", evaluate=run_eval,
                                eval_every=c.eval_every, name=spec.name, keep=CURVES)
  finally:
    ckpt.close()
    writer.close()
  errors_after = probe(result.state.params, scorer, *heldout, probe_key)
  return dict(reward=spec.reward, design=spec.design if fmt else None, prm_format=fmt,
              format_constraint=spec.enforce_format, history=result.history,
              errors=dict(before=errors_before, after=errors_after),
              train=summarize(result.curves, c.iterations), curves=result.curves, seconds=round(time.time() - t0, 1))


def stage3(config, workdir: Path, prm_root: Path, cfg, tokenizer, place: common.Placement) -> dict:
  """The policy's SFT, then every run of `stage3.runs` (finished ones are read from stage3/results.json) ->
  dict(sft=..., runs={name: result}, heldout=..., claims=[...]); writes results.json, results.md, accuracy.png."""
  out = workdir / "stage3"
  out.mkdir(parents=True, exist_ok=True)
  c = config.stage3
  world = policy_world(config)
  encoder = world_data.WorldEncoder(world, tokenizer, "think")
  problems = world_data.distinct_problems(c.eval_seed, c.eval_size, world, "heldout")
  eval_batch = place.replicate(world_data.rl_batch(encoder, problems))
  heldout = (eval_batch, problems)
  exact = world_data.answer_check(tokenizer, "think")
  evaluate = arith_rl.make_evaluator(cfg, encoder, exact, eval_batch, encoder.solution_len, samples=c.eval_samples)
  writer = metrics_lib.Writer(out / "tensorboard" / "policy_sft", enabled=distributed.is_main())
  t0 = time.time()
  sft_params, acc, greedy = arith_rl.sft_phase(config, out, cfg, encoder, evaluate, writer, place,
                                               c=config.policy.sft, train_seed=config.policy.train_seed,
                                               ckpt_dir=out / "checkpoints" / "policy_sft", name="policy.sft")
  writer.close()
  sft = dict(accuracy=acc, greedy_accuracy=greedy, seconds=round(time.time() - t0, 1))
  common.say(f"stage III policy after SFT (misconceptions {world.misconceptions}): held-out accuracy {acc:.3f} "
             f"(sampled), {greedy:.3f} (greedy), {len(problems)} held-out problems")
  results_path = out / "results.json"
  done = json.loads(results_path.read_text()).get("runs", {}) if results_path.is_file() else {}
  runs = {}
  for text in c.runs:
    spec = parse_run(text)
    if spec.name in done:
      common.say(f"stage III {spec.name}: done before")
      runs[spec.name] = done[spec.name]
      continue
    res = run_one(spec, config, out, cfg, tokenizer, world, encoder, evaluate, sft_params, prm_root, place,
                  heldout)
    runs[spec.name] = res
    last = res["history"][str(config.rl.iterations)]
    common.say(f"stage III {spec.name}: held-out greedy {greedy:.3f} -> {last['greedy_accuracy']:.3f}, sampled "
               f"{acc:.3f} -> {last['accuracy']:.3f} ({res['seconds']:.0f}s)")
    if distributed.is_main():
      results_path.write_text(json.dumps(dict(sft=sft, runs=runs), indent=2))
  report = dict(sft=sft, heldout=dict(problems=len(problems), samples_per_problem=c.eval_samples),
                iterations=config.rl.iterations, runs=runs)
  report["claims"] = stage3_report.claims(report)
  if distributed.is_main():
    results_path.write_text(json.dumps(report, indent=2))
    md = stage3_report.table_markdown(report)
    (out / "results.md").write_text(md + "\n")
    stage3_report.plot_accuracy(report, out / "accuracy.png")
    print(md)
  return report


def run(config, workdir: str) -> dict:
  """Stage III alone, with the PRMs of `stage3.prm_root`."""
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  _, tokenizer = arith_rl.world_and_tokenizer(config, workdir)
  cfg = arith_rl.model_config(config, tokenizer)
  place = common.Placement(config, cfg)
  common.say(f"policy: {cfg.num_params() / 1e6:.2f}M params")
  return stage3(config, workdir, Path(str(config.stage3.prm_root)).expanduser(), cfg, tokenizer, place)
