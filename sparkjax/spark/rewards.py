"""SPARK-PRM Stage III: the format constraint against reward hacking, one definition on device and on the host.

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
