"""Config validation before any work: every pipeline declares its checks (`check_config(checks)` in its module),
`main` runs them, and all problems found are reported together in one ConfigError naming each field and value.

What can be known from the config alone is checked here: registry names, ranges, divisibility, the mesh against the
device count, files and directories that must exist. Failures that need the data or the model (a bad record, a
checkpoint's shapes) stay with the code that reads them.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable


class ConfigError(ValueError):
  """One or more config fields are invalid; the message names each field, its value and what was expected."""


_MISSING = object()


class Checks:
  """Collects config problems; `done()` raises them as one ConfigError."""

  def __init__(self, config):
    self.config = config
    self.errors: list[str] = []

  # ---- access ----------------------------------------------------------------------------------------------------
  def get(self, path: str, default: Any = _MISSING) -> Any:
    node = self.config
    for part in path.split("."):
      try:
        node = node[part]
      except (KeyError, TypeError, AttributeError):
        if default is not _MISSING:
          return default
        self.fail(path, None, "is missing from the config")
        return None
    return node

  def fail(self, path: str, value: Any, expected: str):
    shown = f"config {path}={value!r}" if value is not None else f"config {path}"
    self.errors.append(f"{shown} {expected}" if expected.startswith(("is ", "does ", "names ")) else
                       f"{shown}: {expected}")

  # ---- checks ----------------------------------------------------------------------------------------------------
  def int_range(self, path: str, lo: int | None = None, hi: int | None = None, optional: bool = False) -> bool:
    v = self.get(path, None if optional else _MISSING)
    if v is None:
      return optional
    if isinstance(v, bool) or not isinstance(v, int):
      self.fail(path, v, "expected an integer")
      return False
    if (lo is not None and v < lo) or (hi is not None and v > hi):
      self.fail(path, v, f"expected an integer {_range(lo, hi)}")
      return False
    return True

  def boolean(self, path: str, optional: bool = False) -> bool:
    """True or False (an optional field may be absent)."""
    v = self.get(path, None if optional else _MISSING)
    if v is None:
      return optional
    if not isinstance(v, bool):
      self.fail(path, v, "expected True or False")
      return False
    return True

  def float_range(self, path: str, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
                  hi_open: bool = False, optional: bool = False) -> bool:
    v = self.get(path, None if optional else _MISSING)
    if v is None:
      return optional
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
      self.fail(path, v, "expected a finite number")
      return False
    bad = ((lo is not None and (v <= lo if lo_open else v < lo)) or (hi is not None and (v >= hi if hi_open else v > hi)))
    if bad:
      self.fail(path, v, f"expected a number {_range(lo, hi, lo_open, hi_open)}")
      return False
    return True

  def choice(self, path: str, options: Iterable[str], what: str = "") -> bool:
    v = self.get(path)
    options = list(options)
    if v not in options:
      self.fail(path, v, f"{('unknown ' + what + '; ') if what else ''}expected one of {', '.join(map(str, options))}")
      return False
    return True

  def divides(self, small: str, big: str, meaning: str = "") -> bool:
    a, b = self.get(small), self.get(big)
    if isinstance(a, int) and isinstance(b, int) and a > 0 and b % a:
      self.fail(big, b, f"is not a multiple of {small}={a}{' (' + meaning + ')' if meaning else ''}")
      return False
    return True

  def satisfies(self, path: str, fn: Callable[[Any], Any], expected: str = "") -> bool:
    """`fn(value)` must not raise ValueError/TypeError/OSError (e.g. a constructor that validates); its message is
    kept."""
    v = self.get(path)
    try:
      fn(v)
    except (ValueError, TypeError, OSError) as e:
      self.fail(path, v, expected or " ".join(str(e).split()))
      return False
    return True

  def file(self, path: str, what: str = "file", allow_empty: bool = False) -> bool:
    v = self.get(path)
    if not v:
      if not allow_empty:
        self.fail(path, v, f"expected the path of a {what}")
      return allow_empty
    p = Path(os.path.expanduser(str(v)))
    if p.is_dir():
      self.fail(path, v, f"is a directory; expected a {what}")
      return False
    if not p.is_file():
      self.fail(path, v, f"does not exist (expected a {what})")
      return False
    return True

  def local_or_hub(self, path: str) -> bool:
    """A data source: a local file (checked here) or a Hugging Face dataset name (checked when it is read)."""
    v = str(self.get(path) or "")
    if not v:
      self.fail(path, v, "expected a .jsonl file or a Hugging Face dataset name")
      return False
    if looks_local(v):
      return self.file(path, "data file (.jsonl)")
    return True

  def optimizer(self, path: str, steps_path: str | None = None):
    self.float_range(f"{path}.lr", 0.0, lo_open=True)
    self.int_range(f"{path}.total_steps", 1)
    self.int_range(f"{path}.warmup_steps", 0)
    self.choice(f"{path}.schedule", ("constant", "cosine"), "learning-rate schedule")
    self.float_range(f"{path}.b1", 0.0, 1.0, hi_open=True)
    self.float_range(f"{path}.b2", 0.0, 1.0, hi_open=True)
    self.float_range(f"{path}.weight_decay", 0.0)
    self.float_range(f"{path}.grad_clip", 0.0)

  def mesh(self, path: str = "mesh"):
    from sparkjax import sharding

    m = self.get(path)
    if m is None:
      return None
    try:
      import jax

      return sharding.MeshConfig(**dict(m)).shape(jax.device_count())
    except (ValueError, TypeError) as e:
      self.fail(path, dict(m), " ".join(str(e).split()))
      return None

  def rows_over_data(self, what: str, rows: int | None, mesh_shape):
    """A batch of `rows` rows must split evenly over the data-parallel devices (mesh data x fsdp)."""
    if mesh_shape is None or not isinstance(rows, int):
      return
    dp = mesh_shape[0] * mesh_shape[1]
    if rows % dp:
      self.errors.append(f"config {what} = {rows} rows do not split over the {dp} data-parallel devices "
                         f"(mesh data x fsdp = {mesh_shape[0]} x {mesh_shape[1]})")

  def done(self):
    if self.errors:
      raise ConfigError("; ".join(self.errors))


def looks_local(source: str) -> bool:
  """True for a path-like data source (a .jsonl/.json name, an absolute or relative path, an existing file)."""
  return (source.endswith((".jsonl", ".json")) or source.startswith(("/", ".", "~")) or os.sep + os.sep in source
          or Path(source).exists())


def _range(lo, hi, lo_open=False, hi_open=False) -> str:
  if lo is not None and hi is not None:
    return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
  if lo is not None:
    return f"{'>' if lo_open else '>='} {lo}"
  return f"{'<' if hi_open else '<='} {hi}"


# ---- blocks several pipelines share --------------------------------------------------------------------------------


def check_world(ch: Checks, path: str = "world"):
  from sparkjax.data import arith

  w = ch.get(path)
  if w is not None:
    ch.satisfies(path, lambda v: arith.WorldConfig(**dict(v)))


def check_world_model(ch: Checks, path: str = "model"):
  """The small Qwen2-shaped model the world pipelines build from `hidden_size`, `num_heads`, ... fields."""
  ok = all([ch.int_range(f"{path}.hidden_size", 1), ch.int_range(f"{path}.intermediate_size", 1),
            ch.int_range(f"{path}.num_layers", 1), ch.int_range(f"{path}.num_heads", 1),
            ch.int_range(f"{path}.num_kv_heads", 1)])
  ch.choice(f"{path}.dtype", ("float32", "bfloat16"))
  if ok:
    ch.divides(f"{path}.num_heads", f"{path}.hidden_size", "head_dim = hidden_size / num_heads")
    ch.divides(f"{path}.num_kv_heads", f"{path}.num_heads", "grouped-query attention")


def check_coevolve(ch: Checks, mesh, path: str = "coevolve"):
  """A SPARK-CoEvolve block's recycling and judge-update fields (the world's and real text's): caps and mix, the
  judge batch (split over the data axes, and taking at least what one iteration recycles), its samples."""
  from sparkjax.coevolve import world_recycle
  from sparkjax.coevolve.recycle import RecycleConfig

  for k in ("max_judge", "max_reflection", "reset_every"):
    ch.int_range(f"{path}.{k}", 0)
  ch.int_range(f"{path}.judge_group_size", 1)
  for k in ("pointwise_in_mixed", "reflection_full_share", "confirm_share"):
    ch.float_range(f"{path}.{k}", 0.0, 1.0)
  ch.boolean(f"{path}.show_reasoning")
  prompts = prompts_per_iteration(ch)
  if ch.int_range(f"{path}.judge_batch", 1):
    ch.rows_over_data(f"{path}.judge_batch", ch.get(f"{path}.judge_batch"), mesh)
    b, g, m = ch.get(f"{path}.judge_batch"), ch.get(f"{path}.judge_group_size"), ch.get("rl.num_microbatches", None)
    if isinstance(g, int) and isinstance(m, int) and m > 0 and (b * g) % m:
      ch.fail(f"{path}.judge_batch", b, f"{path}.judge_batch x {path}.judge_group_size = {b * g} judge rows per update "
              f"is not a multiple of rl.num_microbatches={m} (the judge update splits its rows into the policy's "
              "micro-batches)")
    if prompts:
      ch.satisfies(f"{path}.judge_batch", lambda b: world_recycle.check_sizes(
          RecycleConfig(max_judge=ch.get(f"{path}.max_judge"), max_reflection=ch.get(f"{path}.max_reflection")),
          prompts, b, path))


def check_grpo(ch: Checks, path: str = "rl"):
  """The GRPO fields of `config_args.grpo_loss_fields`, the batch/group shape and the iteration count."""
  from sparkjax.rl import grpo

  ch.int_range(f"{path}.iterations", 1)
  if ch.int_range(f"{path}.group_size", 2) and ch.int_range(f"{path}.batch_size", 1):
    ch.divides(f"{path}.group_size", f"{path}.batch_size", "rollouts per iteration = prompts x group_size")
  ch.choice(f"{path}.advantage", grpo.ADVANTAGES, "advantage estimator")
  ch.choice(f"{path}.policy_loss", grpo.POLICY_LOSSES, "policy loss")
  ch.choice(f"{path}.aggregation", grpo.AGGREGATIONS, "loss aggregation")
  ch.choice(f"{path}.kl", grpo.KL_ESTIMATORS, "KL estimator")
  ch.float_range(f"{path}.kl_coef", 0.0)
  ch.float_range(f"{path}.eps_low", 0.0)
  ch.float_range(f"{path}.eps_high", 0.0)
  ch.float_range(f"{path}.dual_clip", 0.0)
  ch.float_range(f"{path}.temperature", 0.0, lo_open=True)
  ch.float_range(f"{path}.top_p", 0.0, 1.0, lo_open=True)
  ch.int_range(f"{path}.mu", 1)
  if ch.int_range(f"{path}.num_microbatches", 1, optional=True) and ch.get(f"{path}.num_microbatches", None):
    ch.divides(f"{path}.num_microbatches", f"{path}.batch_size", "the update's micro-batches split its rows evenly")
  ch.int_range(f"{path}.logprob_chunk", 0, optional=True)
  ch.optimizer(f"{path}.optimizer")


def check_logprob_chunk(ch: Checks, tokens: str, chunk: str = "rl.logprob_chunk"):
  """`rl.iteration.logprob_chunk_fits` before the run (else the first update fails, after the rollouts and any
  evaluation have run)."""
  from sparkjax.rl import iteration

  c, t = ch.get(chunk, 0), ch.get(tokens, None)
  if isinstance(c, int) and isinstance(t, int) and not iteration.logprob_chunk_fits(c, t):
    ch.fail(chunk, c, f"does not divide {tokens}={t} (log-probs are taken in blocks of {chunk}; 0 = one block)")


def check_checkpoint(ch: Checks, path: str = "checkpoint"):
  ch.int_range(f"{path}.every", 1)
  ch.int_range(f"{path}.keep", 1)


def prompts_per_iteration(ch: Checks, path: str = "rl") -> int | None:
  b, g = ch.get(f"{path}.batch_size", None), ch.get(f"{path}.group_size", None)
  if isinstance(b, int) and isinstance(g, int) and g > 0 and b % g == 0:
    return b // g
  return None
