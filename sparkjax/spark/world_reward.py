"""SPARK-PRM Stage III in the world: a trained PRM as the reward inside the jitted GRPO iteration.

The policy writes the RL format (`<think> <step> a op b = c </step> ... </think> <answer> \\boxed{ X } </answer>`);
its PRM was trained on the papers' step format ("Step k: a op b = c" lines). `policy_to_prm_input` rewrites the
policy's tokens into the PRM's input on device (every world word is one token, so it is a scatter), the PRM scores
it (greedy decode and on-device verdict parsing for the generative formats, one forward pass for the
discriminative one), and `make_prm_reward` returns the verdicts a reward design (`spark.rewards`) turns into
rewards and advantages. Baselines: `make_rlvr_reward` (exact answer) and `make_random_reward`.

Shapes: N rows (B prompts x G samples, row n answers prompt n // G), P prompt tokens, T completion tokens,
S step slots, L the PRM input's length.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from sparkjax.spark import prm_examples, prm_scorers, rewards


@dataclasses.dataclass(frozen=True)
class WorldPromptIds:
  """Token ids of the words the PRM inputs add around the policy's steps (hashable: a static argument)."""

  student: int
  colon: int
  newline: int
  step_word: int
  numbers: tuple[int, ...]  # "1", "2", ...: the step headers
  answer_suffix: tuple[int, ...]  # "Answer" ":"
  verify_suffix: tuple[int, ...]  # "\n Let's verify step by step . \n" after the answer
  orm_suffix: tuple[int, ...]  # "\n Is the answer correct ( Yes / No ) ? \n" after the answer
  format_ids: rewards.FormatTokens
  close_brace: int

  @classmethod
  def from_tokenizer(cls, tok, max_steps: int) -> "WorldPromptIds":
    one = functools.partial(prm_examples.single_token_id, tok)
    rest = lambda text: tuple(tok.encode(text, add_special_tokens=False))
    return cls(student=one("Student"), colon=one(":"), newline=one("\n"), step_word=one("Step"),
               numbers=tuple(one(str(k)) for k in range(1, max_steps + 1)), answer_suffix=rest("Answer:"),
               verify_suffix=rest("\nLet's verify step by step.\n"),
               orm_suffix=rest("\nIs the answer correct (Yes/No)?\n"),
               format_ids=rewards.FormatTokens.from_tokenizer(tok), close_brace=one("}"))


def _place(out, rows, pos, values, ok):
  """out[rows, pos] = values where ok (elsewhere into the dump column, out's last)."""
  dump = out.shape[1] - 1
  return out.at[rows, jnp.where(ok, pos, dump)].set(jnp.where(ok, values, out[0, dump]))


def policy_to_prm_input(prompt_NP, prompt_mask_NP, tokens_NT, lengths_N, ids: WorldPromptIds, fmt: str,
                        max_steps: int, pad_id: int) -> dict:
  """The policy's responses as the PRM's input, built on device.

  The world's policy prompt ends "\\n Solution : \\n"; the PRM input is "Problem: ... \\n Student Solution: \\n"
  (the ORM keeps "Solution:"), then "Step k : <step k> \\n" for each step k < S, then for the generative formats
  "Answer : <boxed content> \\n Let's verify step by step . \\n" (the ORM: "... Is the answer correct (Yes/No)? \\n").
  Only the first S steps are written; a response with more fails the format guards anyway.

  Returns:
    generative formats: dict(tokens [N, L] left-padded, mask [N, L]); "disc": dict(tokens [N, L] right-padded,
    mask [N, L], sep_positions [N, S] (the "\\n" after each step, -1 = no step)).
  """
  N, P = prompt_NP.shape
  T = tokens_NT.shape[1]
  S = max_steps
  f = ids.format_ids
  live = jnp.arange(T)[None, :] < lengths_N[:, None]
  step = rewards.token_steps(tokens_NT, lengths_N, f)
  content = (step >= 0) & (step < S) & (tokens_NT != f.step) & (tokens_NT != f.end_step)
  onehot = content[..., None] & (step[..., None] == jnp.arange(S))  # [N, T, S]
  step_len = onehot.sum(1)  # [N, S] content tokens of each step
  n = jnp.minimum(jnp.max(jnp.where(live, step, -1), axis=1) + 1, S)  # steps written
  before = jnp.cumsum(step_len, axis=1) - step_len  # content tokens of earlier steps
  head = before + 4 * jnp.arange(S)[None, :]  # where "Step k :" of step k starts, in the body
  has = jnp.arange(S)[None, :] < n[:, None]
  body_len = jnp.where(n > 0, jnp.take_along_axis(head + 3 + step_len + 1, jnp.maximum(n - 1, 0)[:, None], 1)[:, 0],
                       0)
  # The answer's content: the tokens between the first "\\boxed{" and the next "}".
  opened = jnp.cumsum((tokens_NT == f.boxed) & live, axis=1)
  closed = jnp.cumsum((tokens_NT == ids.close_brace) & live & (opened > 0), axis=1)
  answer = live & (opened == 1) & (closed == 0) & (tokens_NT != f.boxed)
  answer_len = answer.sum(1)

  prefix_len = P if fmt == "orm" else P + 1
  tail = () if fmt == "disc" else ids.answer_suffix + (ids.orm_suffix if fmt == "orm" else ids.verify_suffix)
  L = prefix_len + T + 4 * S + len(tail)
  rows = jnp.arange(N)[:, None]
  out = jnp.full((N, L + 1), pad_id, jnp.int32)
  # Prefix: the prompt, left-padded as it came; "Solution : \\n" becomes "Student Solution : \\n".
  if fmt == "orm":
    out = out.at[:, :P].set(prompt_NP)
    pmask = prompt_mask_NP
  else:
    out = out.at[:, :P - 3].set(prompt_NP[:, :P - 3]).at[:, P - 3].set(ids.student)
    out = out.at[:, P - 2:P + 1].set(prompt_NP[:, P - 3:])
    pmask = jnp.concatenate([prompt_mask_NP[:, :P - 3], jnp.ones((N, 1), bool), prompt_mask_NP[:, P - 3:]], axis=1)
  # Body: step contents, headers and newlines.
  c = jnp.cumsum(content, axis=1) - 1
  pos = prefix_len + c + 4 * jnp.maximum(step, 0) + 3
  out = _place(out, rows, pos, tokens_NT, content)
  for k, word in enumerate((ids.step_word, None, ids.colon)):
    values = jnp.asarray(ids.numbers, jnp.int32)[None, :S] if word is None else jnp.full((1, S), word, jnp.int32)
    out = _place(out, rows, prefix_len + head + k, jnp.broadcast_to(values, (N, S)), has)
  nl = prefix_len + head + 3 + step_len
  out = _place(out, rows, nl, jnp.full((N, S), ids.newline, jnp.int32), has)
  total = prefix_len + body_len
  if fmt != "disc":
    a = len(ids.answer_suffix)
    out = _place(out, rows, total[:, None] + jnp.arange(a)[None, :],
                 jnp.broadcast_to(jnp.asarray(ids.answer_suffix, jnp.int32), (N, a)), jnp.ones((N, a), bool))
    apos = total[:, None] + a + jnp.cumsum(answer, axis=1) - 1
    out = _place(out, rows, apos, tokens_NT, answer)
    rest = tail[a:]
    out = _place(out, rows, (total + a + answer_len)[:, None] + jnp.arange(len(rest))[None, :],
                 jnp.broadcast_to(jnp.asarray(rest, jnp.int32), (N, len(rest))), jnp.ones((N, len(rest)), bool))
    total = total + a + answer_len + len(rest)
  out = out[:, :L]
  idx = jnp.arange(L)[None, :]
  mask = jnp.where(idx < prefix_len, jnp.pad(pmask, ((0, 0), (0, L - prefix_len))), idx < total[:, None])
  if fmt == "disc":  # right-padded, as the discriminative PRM was trained: shift the prefix's left pads out
    shift = (~pmask).sum(1)
    src = jnp.clip(idx + shift[:, None], 0, L - 1)
    ok = idx + shift[:, None] < L
    tokens = jnp.where(ok, jnp.take_along_axis(out, src, 1), pad_id)
    mask = ok & jnp.take_along_axis(mask, src, 1)
    sep = jnp.where(has, nl - shift[:, None], -1).astype(jnp.int32)
    return dict(tokens=tokens, mask=mask, sep_positions=sep)
  # Left-padded for the sampler: shift right so the input ends at L.
  shift = L - total
  src = idx - shift[:, None]
  ok = src >= 0
  tokens = jnp.where(ok, jnp.take_along_axis(out, jnp.maximum(src, 0), 1), pad_id)
  mask = ok & jnp.take_along_axis(mask, jnp.maximum(src, 0), 1)
  return dict(tokens=tokens, mask=mask)



def make_prm_reward(prm_cfg, fmt: str, tok, spec: rewards.FormatSpec, max_steps: int, max_new_tokens: int = 0,
                    threshold: float = 0.5, enforce_format: bool = True):
  """A scorer `reward_fn(prm_params, prompt_BP, prompt_mask_BP, out, targets_N) -> verdicts` for the iteration
  (`rl.iteration.make_iteration(..., design=...)`): the format check of each response, the PRM's verdicts on it,
  and the exact answer check as a diagnostic.

  fmt: "prm_cot" / "prm" (greedy decode of `max_new_tokens`, verdicts parsed on device), "orm" (the final
  verdict only: no usable step verdicts), "disc" (p(correct) >= threshold at each step's separator).

  Returns dict(valid, final [N] float (0 when the PRM's verdict cannot be read), step_ok [N, S], num_steps,
  prm_steps, token_step (see `spark.rewards`), prm_parsed [N] bool, format_reason [N] int32, answer_correct [N]
  float (exact, from targets_N = the answer's token id)) and the per-row indicators of `hack_diagnostics`; the
  iteration reports each entry's mean as a metric `score_<name>`. With `enforce_format` False (the reward-hacking
  control run) `valid` is True for every row, so the designs use the PRM's verdict whatever the format, and
  `format_valid` still says which rows the constraint would have zeroed.
  """
  if fmt not in prm_examples.FORMATS:
    raise ValueError(f"unknown PRM format {fmt!r}; known: {', '.join(prm_examples.FORMATS)}")
  ids = WorldPromptIds.from_tokenizer(tok, max_steps)
  verdict_ids = prm_scorers.WorldVerdictTokens.from_tokenizer(tok)
  label_ids = prm_examples.label_token_ids(tok) if fmt == "disc" else None
  pad = prm_examples.pad_id(tok)
  if fmt != "disc" and max_new_tokens < 1:
    raise ValueError(f"a generative PRM ({fmt}) needs max_new_tokens >= 1, got {max_new_tokens}")
  answer_ok = _exact_answer(tok)

  def reward_fn(prm_params, prompt_BP, prompt_mask_BP, out, targets_N):
    N = out.tokens.shape[0]
    G = N // prompt_BP.shape[0]
    chk = rewards.format_check_tokens(out.tokens, out.lengths, out.finished, ids.format_ids, spec)
    inp = policy_to_prm_input(jnp.repeat(prompt_BP, G, axis=0), jnp.repeat(prompt_mask_BP, G, axis=0), out.tokens,
                              out.lengths, ids, fmt, max_steps, pad)
    if fmt == "disc":
      d = prm_scorers.discriminative_scores(prm_params, inp["tokens"], inp["mask"], inp["sep_positions"],
                                            cfg=prm_cfg, label_ids=label_ids, threshold=threshold)
      parsed = d["num_steps"] > 0
      final, step_ok, prm_steps = parsed & (d["first_error"] < 0), d["step_correct"], d["num_steps"]
    else:
      g = prm_scorers.generative_scores(prm_params, inp["tokens"], inp["mask"], cfg=prm_cfg, fmt=fmt,
                                        ids=verdict_ids, max_new_tokens=max_new_tokens, max_steps=max_steps)
      parsed, final = g["has_final"], g["final"]
      if fmt == "orm":
        step_ok, prm_steps = jnp.zeros((N, max_steps), bool), jnp.full((N,), -1, jnp.int32)
      else:
        step_ok, prm_steps = g["step_correct"], g["num_steps"]
    truth = answer_ok(out.tokens, out.lengths, out.finished, targets_N)
    valid = chk["valid"] if enforce_format else jnp.ones_like(chk["valid"])
    v = dict(valid=valid, format_valid=chk["valid"], final=final.astype(jnp.float32), step_ok=step_ok,
             num_steps=chk["num_steps"], prm_steps=prm_steps,
             token_step=rewards.token_steps(out.tokens, out.lengths, ids.format_ids), prm_parsed=parsed,
             format_reason=chk["reason"], answer_correct=truth)
    return v | hack_diagnostics(v)

  return reward_fn


def hack_diagnostics(v: dict) -> dict:
  """Per-row [N] float indicators whose means are the reward-hacking diagnostics (exact in the world):
    prm_agrees          the PRM's final verdict equals the exact answer check
    prm_false_positive  the PRM says correct, the answer is wrong (divide its mean by 1 - mean(answer_correct)
                        for the rate among wrong answers)
    hack_appended       text after the last </answer> (an appended problem or answer)
    hack_extra_answer   answer tags other than exactly one pair
    hack_boxed          \\boxed{ other than exactly once inside the answer
    hack_step_collapse  fewer steps than min_steps;  hack_step_inflation  more than max_steps
  A response that breaks several format rules counts under the first, in `rewards.REASONS` order.
  """
  f = lambda x: x.astype(jnp.float32)
  truth, final = v["answer_correct"] > 0.5, v["final"] > 0.5
  return dict(prm_agrees=f(final == truth), prm_false_positive=f(final & ~truth)) | format_hacks(v["format_reason"])


def format_hacks(reason_N) -> dict:
  """The format half of `hack_diagnostics`, from `rewards.format_check_tokens`'s reason [N]: per-row float
  indicators hack_appended, hack_extra_answer, hack_boxed, hack_step_collapse, hack_step_inflation."""
  at = lambda name: (reason_N == rewards.REASONS.index(name)).astype(jnp.float32)
  return dict(hack_appended=at("text after </answer>"), hack_extra_answer=at("answer tags not exactly one pair"),
              hack_boxed=at("boxed not exactly once inside the answer"), hack_step_collapse=at("too few steps"),
              hack_step_inflation=at("too many steps"))


def format_report(out, tok, spec: rewards.FormatSpec) -> dict:
  """What the format constraint says of rollouts a baseline scores without it (so every reward's run reports the
  same diagnostics): format_valid, num_steps, format_reason [N] and `format_hacks`."""
  chk = rewards.format_check_tokens(out.tokens, out.lengths, out.finished, rewards.FormatTokens.from_tokenizer(tok),
                                    spec)
  return dict(format_valid=chk["valid"], num_steps=chk["num_steps"], format_reason=chk["reason"]) | format_hacks(
      chk["reason"])


def _exact_answer(tok):
  """The world's exact answer check in the RL format."""
  from sparkjax.data import world_data

  return world_data.answer_check(tok, "think")


def make_rlvr_reward(tok, spec: rewards.FormatSpec | None = None):
  """The RLVR baseline's scorer: reward 1 for the exact answer in the RL format, else 0 (no parameters). With
  `spec`, the format constraint's verdicts are reported beside it (`format_report`), not applied."""
  answer_ok = _exact_answer(tok)

  def reward_fn(_, prompt_BP, prompt_mask_BP, out, targets_N):
    r = answer_ok(out.tokens, out.lengths, out.finished, targets_N)
    return dict(rewards=r, answer_correct=r) | (format_report(out, tok, spec) if spec else {})

  return reward_fn


def make_random_reward(tok, seed: int = 0, spec: rewards.FormatSpec | None = None):
  """The random baseline's scorer: reward 0 or 1 with probability 1/2, independent of the response's correctness
  and drawn afresh every iteration, with the answer check (and with `spec` the format report) as diagnostics.

  The coin of row n is keyed by (seed, the bits of the response's summed sampling log-probability, n): that sum
  depends on the policy's parameters, which every update changes, so the same response gets a new coin in the next
  iteration. A coin keyed by the response's tokens alone is a fixed function the policy can learn: in the world it
  did (reward 0.99 after 300 iterations, by responses that were all invalid and wrong).
  """
  answer_ok = _exact_answer(tok)

  def reward_fn(_, prompt_BP, prompt_mask_BP, out, targets_N):
    T = out.tokens.shape[1]
    live = jnp.arange(T)[None, :] < out.lengths[:, None]
    logp = jnp.sum(jnp.where(live, out.logprobs, 0.0), axis=1).astype(jnp.float32)
    bits = jax.lax.bitcast_convert_type(logp, jnp.uint32)
    keys = jax.vmap(lambda b, n: jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), b), n))(
        bits, jnp.arange(bits.shape[0], dtype=jnp.uint32))
    r = jax.vmap(lambda k: jax.random.bernoulli(k))(keys).astype(jnp.float32)
    return dict(rewards=r, answer_correct=answer_ok(out.tokens, out.lengths, out.finished, targets_N)) | (
        format_report(out, tok, spec) if spec else {})

  return reward_fn
