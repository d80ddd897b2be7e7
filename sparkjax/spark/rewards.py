"""SPARK-PRM Stage III rewards: the format constraint against reward hacking (one definition on device and on the
host) and the reward designs that turn a PRM's verdicts into rewards and advantages.

Policy output format (spec, Stage III): `<think><step>...</step>...</think><answer>\\boxed{X}</answer>`.
A response is *valid* when, with the stop token removed,
  1. it contains `</answer>` and nothing but whitespace after the last one ("cut after the last </answer>": text
     past it, such as an appended second problem, makes the response invalid rather than being ignored);
  2. it holds exactly one `<answer>` and exactly one `</answer>`, the opening one first;
  3. it holds exactly one `\\boxed{`, between them;
  4. its steps (`<step>` ... `</step>` blocks; the two tags equally many) number from `min_steps` to `max_steps`.
Invalid -> reward 0 and the PRM's verdict unused. The paper's step bounds are 4 and 20; the world's follow its
problem sizes (`check_step_bounds`).

`format_check_tokens` reads the world's token ids (every tag is one token) inside the jitted iteration;
`format_check_text` reads decoded text for real tokenizers. Both return the same validity and step count for the
same response (tests/test_rewards.py).
"""

from __future__ import annotations

import dataclasses
import re

import jax.numpy as jnp

REASONS = ("ok", "no </answer>", "text after </answer>", "answer tags not exactly one pair",
           "boxed not exactly once inside the answer", "step tags unbalanced", "too few steps", "too many steps")


@dataclasses.dataclass(frozen=True)
class FormatSpec:
  """Step-count guards of the format constraint (inclusive bounds)."""

  min_steps: int = 4
  max_steps: int = 20

  def __post_init__(self):
    if not 0 <= self.min_steps <= self.max_steps:
      raise ValueError(f"format guards min_steps={self.min_steps}, max_steps={self.max_steps}: expected "
                       "0 <= min_steps <= max_steps")


def check_step_bounds(spec: FormatSpec, min_ops: int, max_ops: int, where: str = "rl.format"):
  """Raises when the guards would zero the reward of correct solutions of the world: a world problem of k
  operations has a k-step solution, for k in [min_ops, max_ops]."""
  if spec.min_steps > min_ops or spec.max_steps < max_ops:
    raise ValueError(f"{where}.min_steps={spec.min_steps}, {where}.max_steps={spec.max_steps} contradict the "
                     f"world's problems of {min_ops}-{max_ops} operations (a correct solution has one step per "
                     f"operation): expected min_steps <= {min_ops} and max_steps >= {max_ops}")


# ---- host: decoded text ------------------------------------------------------------------------------------------

_TAGS = {"open": re.compile(r"<answer>"), "close": re.compile(r"</answer>"), "boxed": re.compile(r"\\boxed\s*\{"),
         "step": re.compile(r"<step>"), "end_step": re.compile(r"</step>")}


def format_check_text(text: str, spec: FormatSpec) -> tuple[bool, int, str]:
  """(valid, number of steps, reason) of a decoded response (stop token already removed); reason is one of
  `REASONS`. The number of steps is the count of `<step>` tags, reported whatever the validity."""
  pos = {k: [m.start() for m in r.finditer(text)] for k, r in _TAGS.items()}
  steps = len(pos["step"])
  ends = [m.end() for m in _TAGS["close"].finditer(text)]
  if not ends:
    return False, steps, REASONS[1]
  if text[ends[-1]:].strip():
    return False, steps, REASONS[2]
  if len(pos["open"]) != 1 or len(pos["close"]) != 1 or pos["open"][0] > pos["close"][0]:
    return False, steps, REASONS[3]
  if len(pos["boxed"]) != 1 or not pos["open"][0] < pos["boxed"][0] < pos["close"][0]:
    return False, steps, REASONS[4]
  if steps != len(pos["end_step"]):
    return False, steps, REASONS[5]
  if steps < spec.min_steps:
    return False, steps, REASONS[6]
  if steps > spec.max_steps:
    return False, steps, REASONS[7]
  return True, steps, REASONS[0]


# ---- device: the world's token ids -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FormatTokens:
  """The single-token tags the device check reads (hashable: a static argument)."""

  open: int
  close: int
  boxed: int
  step: int
  end_step: int

  @classmethod
  def from_tokenizer(cls, tok) -> "FormatTokens":
    ids = tok.convert_tokens_to_ids(["<answer>", "</answer>", "\\boxed{", "<step>", "</step>"])
    if tok.unk_token_id is not None and tok.unk_token_id in ids:
      raise ValueError("the tokenizer lacks a single token for one of <answer> </answer> \\boxed{ <step> </step>: "
                       "the device format check needs the world's tokenizer; use format_check_text for real ones")
    return cls(*map(int, ids))


def format_check_tokens(tokens_NT, lengths_N, finished_N, ids: FormatTokens, spec: FormatSpec) -> dict:
  """The format constraint on token rows: {"valid": [N] bool, "num_steps": [N] int32, "reason": [N] int32 (an
  index into `REASONS`)}.

  A row's response is tokens[:lengths - finished] (the stop token, counted in lengths when finished, removed);
  whitespace is not a token, so "nothing after the last </answer>" means it is the response's last token.
  """
  N, T = tokens_NT.shape
  end = lengths_N - finished_N.astype(lengths_N.dtype)
  pos = jnp.arange(T)[None, :]
  live = pos < end[:, None]
  hit = {k: (tokens_NT == getattr(ids, k)) & live for k in ("open", "close", "boxed", "step", "end_step")}
  count = {k: v.sum(axis=1) for k, v in hit.items()}
  first = lambda h: jnp.min(jnp.where(h, pos, T), axis=1)
  last_close = jnp.max(jnp.where(hit["close"], pos, -1), axis=1)
  steps = count["step"].astype(jnp.int32)
  checks = [
      count["close"] > 0,
      last_close == end - 1,
      (count["open"] == 1) & (count["close"] == 1) & (first(hit["open"]) < first(hit["close"])),
      (count["boxed"] == 1) & (first(hit["open"]) < first(hit["boxed"])) & (first(hit["boxed"]) < first(hit["close"])),
      count["step"] == count["end_step"],
      steps >= spec.min_steps,
      steps <= spec.max_steps,
  ]
  # The first failing check names the reason, as in format_check_text's order.
  failed = jnp.stack([~c for c in checks], axis=1)
  reason = jnp.where(failed.any(axis=1), jnp.argmax(failed, axis=1) + 1, 0).astype(jnp.int32)
  return dict(valid=reason == 0, num_steps=steps, reason=reason)


def token_steps(tokens_NT, lengths_N, ids: FormatTokens):
  """[N, T] int32: the 0-based index of the step each completion token belongs to (its `<step>` ... `</step>`
  tags included), -1 for tokens outside every step and for padding."""
  T = tokens_NT.shape[1]
  live = jnp.arange(T)[None, :] < lengths_N[:, None]
  opened = jnp.cumsum((tokens_NT == ids.step) & live, axis=1)
  closed_before = jnp.cumsum((tokens_NT == ids.end_step) & live, axis=1) - ((tokens_NT == ids.end_step) & live)
  inside = live & (opened > closed_before)
  return jnp.where(inside, opened - 1, -1).astype(jnp.int32)


# ---- reward designs ----------------------------------------------------------------------------------------------
#
# Each design maps the format check and the PRM's verdicts on a group-ordered batch (N = B * G rows) to
# (rewards [N], advantages [N] or [N, T]); token-level advantages go through `rl.iteration.policy_update`'s [N, T]
# path. Inputs, a dict of arrays:
#   valid [N] bool        the format constraint (`format_check_tokens` / `format_check_text`)
#   final [N] float       y: the PRM's final verdict, 1 = correct
#   step_ok [N, S] bool   the PRM's verdict on step j (S >= every row's step count)
#   num_steps [N] int     n: the policy's step count
#   prm_steps [N] int     the step count the PRM judged; its step verdicts are used only where it equals n
#   token_step [N, T] int the step of each completion token, -1 outside steps (`token_steps`)
# `advantage` names the group estimator (`rl.grpo.ADVANTAGES`).

REWARD_DESIGNS: dict = {}


def _design(name):
  def deco(fn):
    REWARD_DESIGNS[name] = fn
    return fn
  return deco


def lookup_design(name: str):
  if name not in REWARD_DESIGNS:
    raise ValueError(f"unknown reward design {name!r}; registered: {', '.join(sorted(REWARD_DESIGNS))}")
  return REWARD_DESIGNS[name]


def _step_parts(v: dict):
  """(usable [N] bool: valid and the PRM judged the policy's n steps, ok [N, S] bool masked to j < n, n [N])."""
  n = v["num_steps"]
  usable = v["valid"] & (v["prm_steps"] == n) & (n > 0)
  in_steps = jnp.arange(v["step_ok"].shape[1])[None, :] < n[:, None]
  return usable, v["step_ok"] & in_steps, n


def _clamped(token_step, S: int):
  """(token_step clipped into [0, S), whether the token lies in one of the S judged step slots)."""
  return jnp.clip(token_step, 0, S - 1), (token_step >= 0) & (token_step < S)


def _adv(rewards, G, advantage):
  from sparkjax.rl import grpo

  return grpo.lookup(grpo.ADVANTAGES, advantage, "advantage estimator")(rewards, G)


def outcome_reward(v: dict):
  """r = valid * y [N] (process-aware outcome). Numpy or jax inputs (the host path uses it too)."""
  return jnp.asarray(v["valid"]).astype(jnp.float32) * jnp.asarray(v["final"]).astype(jnp.float32)


def step_augmented_reward(v: dict):
  """r = valid * (0.4 * k / n + 0.6 * y) [N], k = steps judged correct of the policy's n; the k / n part is 0 when
  the PRM's step count differs from n. Numpy or jax inputs (the host path uses it too)."""
  usable, ok, n = _step_parts(v)
  frac = jnp.where(usable, ok.sum(1) / jnp.maximum(n, 1), 0.0)
  return jnp.asarray(v["valid"]).astype(jnp.float32) * (0.4 * frac + 0.6 * jnp.asarray(v["final"]).astype(
      jnp.float32))


# The designs whose reward is one scalar per response (their advantage is the group estimator's): the ones a host
# scorer can use without knowing each token's step.
SCALAR_REWARDS = {"process_outcome": outcome_reward, "step_augmented": step_augmented_reward}


@_design("process_outcome")
def process_outcome(v: dict, G: int, advantage: str = "grpo"):
  """Process-aware outcome: r = valid * y; A = (r - mean_G r) / std_G r."""
  r = outcome_reward(v)
  return r, _adv(r, G, advantage)


@_design("step_augmented")
def step_augmented(v: dict, G: int, advantage: str = "grpo"):
  """Step-augmented: r = valid * (0.4 * k / n + 0.6 * y), k = steps judged correct of the policy's n; the k / n
  part is 0 when the PRM's step count differs from n."""
  r = step_augmented_reward(v)
  return r, _adv(r, G, advantage)


@_design("selective_advantage")
def selective_advantage(v: dict, G: int, advantage: str = "grpo"):
  """Selective advantage: r = valid * y, A from the group; a token of step j keeps A only if (A >= 0 and step j
  is judged correct) or (A < 0 and step j incorrect), else 0. Tokens outside steps, and every token of a row whose
  step verdicts are unusable (invalid, or another step count), keep A."""
  r, a = process_outcome(v, G, advantage)
  usable, ok, _ = _step_parts(v)
  j, inside = _clamped(v["token_step"], ok.shape[1])
  ok_tok = jnp.take_along_axis(ok, j, axis=1)
  keep = jnp.where(a[:, None] >= 0, ok_tok, ~ok_tok)
  keep = keep | ~inside | ~usable[:, None]
  return r, jnp.where(keep, a[:, None], 0.0)


@_design("global_step")
def global_step(v: dict, G: int, advantage: str = "grpo", eps: float = 1e-6):
  """Global step reward: A = 0.8 * A_process + 0.2 * A_step. A_process: process_outcome's advantage. Step j of
  row i earns r_ij = +1/n_i if judged correct, -1/n_i if not; A_step of a token of step j is (r_ij - mean) / (std
  + eps), mean and std over every usable step of the row's group. Tokens outside steps, and rows whose step
  verdicts are unusable, get A_step = 0."""
  r, a_proc = process_outcome(v, G, advantage)
  usable, ok, n = _step_parts(v)
  N, S = ok.shape
  counted = usable[:, None] & (jnp.arange(S)[None, :] < n[:, None])  # [N, S]
  r_step = jnp.where(ok, 1.0, -1.0) / jnp.maximum(n, 1)[:, None]
  g_r = jnp.where(counted, r_step, 0.0).reshape(-1, G * S)
  g_c = counted.reshape(-1, G * S).astype(jnp.float32)
  cnt = jnp.maximum(g_c.sum(1, keepdims=True), 1.0)
  mean = g_r.sum(1, keepdims=True) / cnt
  std = jnp.sqrt((g_c * (g_r - mean) ** 2).sum(1, keepdims=True) / cnt)
  a_step = jnp.where(counted, ((g_r - mean) / (std + eps)).reshape(N, S), 0.0)
  j, inside = _clamped(v["token_step"], S)
  a_tok = jnp.where(inside, jnp.take_along_axis(a_step, j, axis=1), 0.0)
  return r, 0.8 * a_proc[:, None] + 0.2 * a_tok
