"""Config plumbing: typed `:key=value` config arguments and readable errors for bad `--config.*` overrides."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import ml_collections
from absl import flags


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses a config argument like `size=tiny,steps=20,runlocal` into a ConfigDict typed by `defaults`.

  A bare name sets a bool to True. Unknown keys and values that do not convert to the default's type are errors.
  """
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ValueError(f"config argument {key!r} is not known; known: {', '.join(sorted(defaults))}")
    default = defaults[key]
    if not sep:
      if not isinstance(default, bool):
        raise ValueError(f"config argument {key!r} needs a value ({key}=...)")
      out[key] = True
      continue
    try:
      if isinstance(default, bool):
        if value.lower() not in ("true", "false", "1", "0"):
          raise ValueError(value)
        out[key] = value.lower() in ("true", "1")
      elif default is None:
        out[key] = value
      else:
        out[key] = type(default)(value)
    except ValueError:
      kind = {"int": "an integer", "float": "a number", "bool": "true or false"}.get(type(default).__name__,
                                                                                      type(default).__name__)
      raise ValueError(f"config argument {key}={value!r}: expected {kind}") from None
  return out


def optimizer_config(lr: float, total_steps: int, warmup_steps: int = 0, schedule: str = "constant",
                     grad_clip: float = 1.0, b2: float = 0.999, eps: float = 1e-8,
                     weight_decay: float = 0.0) -> ml_collections.ConfigDict:
  """The fields `sparkjax.train.state.make_optimizer` reads (AdamW with b1 = 0.9)."""
  return ml_collections.ConfigDict(dict(lr=lr, total_steps=total_steps, warmup_steps=warmup_steps,
                                        schedule=schedule, b1=0.9, b2=b2, eps=eps, weight_decay=weight_decay,
                                        grad_clip=grad_clip))


def grpo_loss_fields(**overrides) -> dict:
  """GRPO's loss settings shared by every RL config: the papers' defaults (T = 1 sampling, group-normalised
  advantages, clip 0.2, token-mean loss, 0.001 * k3 KL, one update per batch), with `overrides` applied."""
  fields = dict(temperature=1.0, top_p=1.0, advantage="grpo", policy_loss="clip", eps_low=0.2, eps_high=0.2,
                dual_clip=0.0, aggregation="token_mean", kl="k3", kl_coef=0.001, mu=1)
  unknown = set(overrides) - set(fields)
  if unknown:
    raise ValueError(f"grpo_loss_fields: unknown field(s) {sorted(unknown)}; known: {', '.join(fields)}")
  return fields | overrides


def _config_spec(argv: list[str]) -> str:
  """The raw value of --config in `argv` ('' if absent)."""
  for i, a in enumerate(argv):
    if a.startswith("--config="):
      return a.split("=", 1)[1]
    if a == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return ""


def _exit(msg: str):
  print(msg, file=sys.stderr, flush=True)
  sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing that turns every user error in the flags into one line and exit code 2: a missing config
  file, an unknown or mistyped config argument (`file.py:arg`), a misspelt `--config.x.y` override."""
  try:
    rest = flags.FLAGS(argv)
    if "config" in flags.FLAGS:
      # A config file that failed to load stands in as an object that raises on use: fail here, not mid-run.
      getattr(flags.FLAGS.config, "pipeline", None)
    return rest
  except flags.Error as e:
    lines = [l for l in str(e).strip().splitlines() if l.strip()]
    if "Error whilst parsing config file" in str(e) and lines:
      # get_config raised (e.g. an unknown `file.py:arg`): its own message is the last line of the traceback.
      _exit(f"FATAL config error: --config={_config_spec(argv)}: {lines[-1].split(': ', 1)[-1]}")
    _exit(f"FATAL flags error: {' '.join(str(e).split())}")
  except (AttributeError, KeyError) as e:
    msg = str(e)
    found = re.search(r"'([A-Za-z_][\w]*)", msg)
    key = found.group(1) if found else msg
    hint = re.search(r'Did you mean "[^"]+" instead of "[^"]+"\?', msg)
    bad = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
    culprit = next((b for b in bad if b.rsplit(".", 1)[-1] == key or f".{key}." in b + "."), ", ".join(bad))
    _exit(f"FATAL config error: {culprit} names no field of the config (unknown key {key!r})"
          + (f". {hint.group(0)}" if hint else ""))
  except (ValueError, OSError) as e:
    spec = _config_spec(argv)
    path = spec.split(":", 1)[0]
    if path and Path(path).is_dir():
      _exit(f"FATAL config error: --config={spec}: {path!r} is a directory; expected a config file (configs/*.py)")
    if path and not Path(path).is_file():
      _exit(f"FATAL config error: --config={spec}: config file {path!r} does not exist")
    cause = e.__cause__ if isinstance(e, OSError) and e.__cause__ is not None else e
    _exit(f"FATAL config error: --config={spec}: {' '.join(str(cause).split())}")


QWEN_MATH_INSTRUCTION = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
# SPARK-PRM Stage III's policy format (spec): steps in <step> tags inside <think>, the answer boxed in <answer>. The
# paper's policy learns it in a format SFT first; the instruction states it for a model that did not.
SPARK_FORMAT_INSTRUCTION = (
    "{problem}\nSolve step by step. Write each step inside <step></step> tags, all steps inside <think></think>, "
    "then the final answer as <answer>\\boxed{{X}}</answer> and nothing after it.")


def hf_grpo_config(*, preset: str, model_dir: str, train_path: str, eval_path: str, max_prompt_len: int,
                   max_new_tokens: int, prompts: int, group_size: int, iterations: int, lr: float,
                   mesh: dict, microbatches: int = 1, logprob_chunk: int = 0, dtype: str = "bfloat16",
                   param_dtype: str = "float32", remat: bool = True, eval_size: int = 500,
                   eval_batch: int = 64) -> ml_collections.ConfigDict:
  """Every field the `hf_grpo` pipeline reads (sparkjax/pipelines/hf_grpo.py), with the papers' GRPO settings.

  The prompt is Qwen2.5-Math's instruction (step-by-step, final answer in \\boxed{}) in the model's chat template.
  """
  c = ml_collections.ConfigDict()
  c.pipeline = "hf_grpo"
  c.seed = 0
  c.grader_workers = 2  # math-verify worker processes
  c.model = ml_collections.ConfigDict(dict(
      preset=preset,  # a name in sparkjax.models.config.PRESETS: the checkpoint's shapes (checked on load)
      dir=model_dir,  # HF directory of the policy
      gguf="",  # or a GGUF file, converted once into WORKDIR/base_model
      dtype=dtype, param_dtype=param_dtype, scan_layers=True, remat=remat))
  c.mesh = ml_collections.ConfigDict(mesh)
  c.data = ml_collections.ConfigDict(dict(
      path=train_path, split="train", limit=0,  # limit 0 = all records
      template=QWEN_MATH_INSTRUCTION, chat=True, system="", max_prompt_len=max_prompt_len))
  c.eval = ml_collections.ConfigDict(dict(path=eval_path, split="test", size=eval_size, batch_size=eval_batch,
                                          every=max(1, iterations // 4)))
  c.rl = ml_collections.ConfigDict()
  c.rl.iterations = iterations
  c.rl.batch_size = prompts * group_size  # rollouts per iteration = prompts x group_size
  c.rl.group_size = group_size
  c.rl.max_new_tokens = max_new_tokens
  c.rl.update(grpo_loss_fields())
  c.rl.num_microbatches = microbatches
  c.rl.logprob_chunk = logprob_chunk
  c.rl.optimizer = optimizer_config(lr, iterations, schedule="constant", grad_clip=1.0)
  # The reward: "rlvr" (math-verify against the reference answer) or "prm" (SPARK-PRM Stage III: a generative PRM
  # directory scored on the host, `spark.host_prm_reward`; "@policy" = the policy's own starting weights, frozen),
  # with the format constraint and its step guards (the paper's 4 and 20).
  c.reward = ml_collections.ConfigDict(dict(kind="rlvr", prm_dir="", prm_format="prm_cot", design="process_outcome",
                                            min_steps=4, max_steps=20, prm_max_new_tokens=2048, prm_rows=64))
  # SPARK-CoEvolve (off by default): the rollouts recycled into judge examples and reward-period updates
  # (sparkjax/coevolve/host_iteration.py); the paper's 64 prompts give at most 32 judge + 32 reflection examples, a
  # judge batch of 64 prompts x 8 samples; the released code shows judges only the final answers.
  c.coevolve = ml_collections.ConfigDict(dict(
      enabled=False, max_judge=32, max_reflection=32, pointwise_in_mixed=0.3, show_reasoning=False,
      reflection_full_share=0.5, confirm_share=0.0, judge_batch=64, judge_group_size=8, reset_every=0,
      max_prompt_len=2 * max_prompt_len + 2 * max_new_tokens, max_new_tokens=max_new_tokens))
  c.checkpoint = ml_collections.ConfigDict(dict(every=max(1, iterations // 10), keep=2))
  return c


def qwen_coder_cpu_grpo(model_dir: str, iterations: int, prompts: int, shared, max_prompt_len: int = 256,
                        max_new_tokens: int = 192, logprob_chunk: int = 64) -> ml_collections.ConfigDict:
  """`hf_grpo_config` for a CPU debug run of Qwen2.5-Coder-0.5B-Instruct (the cached GGUF of `python -m
  sparkjax.tools.fetch_model qwen2.5-coder-0.5b-instruct --gguf-only`, or `model_dir`) on GSM8K from `shared`
  (../shared): `prompts` x 4 samples, max_prompt_len + max_new_tokens tokens, lr 1e-6, float32. 0.63B float32
  parameters, their Adam moments and the reference take ~10 GB; the update runs its rows in 8 micro-batches and the
  [rows, positions, 151,936] logits `logprob_chunk` positions at a time, a divisor of max_new_tokens (without both, a
  run was killed at 24 GB)."""
  from sparkjax.tools import fetch_model

  c = hf_grpo_config(
      preset="", model_dir=model_dir, train_path=str(shared / "data" / "gsm8k" / "train.jsonl"),
      eval_path=str(shared / "data" / "gsm8k" / "test.jsonl"), max_prompt_len=max_prompt_len,
      max_new_tokens=max_new_tokens, prompts=prompts, group_size=4, iterations=iterations, lr=1e-6,
      mesh=dict(data=-1, fsdp=1, tp=1), dtype="float32", param_dtype="float32", remat=True, eval_size=4,
      eval_batch=4, microbatches=8, logprob_chunk=logprob_chunk)
  if not model_dir:
    c.model.gguf = str(fetch_model.cache_path("qwen2.5-coder-0.5b-instruct"))
  return c
