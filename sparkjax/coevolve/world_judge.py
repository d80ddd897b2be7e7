"""The judge in the arithmetic world: its prompts in the world's words, built on device from rollout tokens (and on
the host, identically, for SFT demonstrations), its one output format, and its exact-match reward.

Every judge or reflection response ends like a policy answer, `<answer> \\boxed{ V } </answer> <eos>`, with V the
verdict (Yes / No, A / B) or, for reflection, the answer (after a solution in the policy's format). The one check is
the world's answer check (`world_data.answer_check`) with the label in the answer slot: the response must end with
that line holding the label, `<answer>` and `\\boxed{` must occur once each (two boxed answers score 0), and the
row must have stopped. `judge_status` says why a row scored 0: no box, several boxes, or a boxed token outside the
kind's vocabulary (an unknown letter); `judge_scorer` reports these per row, so the iteration counts them.

A prompt is a phrasing (`POINTWISE`, `PAIRWISE`, `REFLECTION`, drawn at random per example) with slots: Q the
question (the policy's prompt without its trailing "Solution :" line), R / RA / RB a response, shown in full (its
steps and answer) or only its final answer line (`<answer> ... </answer>`). Prompts are left-padded to one width
(`JudgeVocab.width`), like the policy's prompts.

Shapes: B prompts, G samples each, N = B * G rows (row n answers prompt n // G), P prompt slots, T completion
tokens, E examples, W = the judge prompt width.
"""

from __future__ import annotations

import dataclasses
import re

import jax.numpy as jnp

KINDS = ("pointwise", "pairwise", "reflection")
POINTWISE, PAIRWISE, REFLECTION = 0, 1, 2
# Why a judge row scored 0 (besides a wrong verdict): the counted failure modes.
STATUSES = ("ok", "no_box", "several_boxes", "not_a_verdict", "unfinished")

# Phrasings, written for this project in the world's words (arith.WORDS). {Q} ends with a newline.
PHRASINGS = {
    "pointwise": (
        "{Q}Solution:\n{R}\nIs the answer correct?\n",
        "Judge:\n{Q}Student: {R}\nCorrect (Yes/No)?\n",
        "{Q}Answer: {R}\nIs the Solution correct (Yes/No)?\n",
    ),
    "pairwise": (
        "{Q}A: {RA}\nB: {RB}\nWhich is correct?\n",
        "Judge:\n{Q}Solution A: {RA}\nSolution B: {RB}\nWhich is better (A/B)?\n",
        "{Q}Student A: {RA}\nStudent B: {RB}\nWhich answer is correct (A/B)?\n",
    ),
    "reflection": (
        "{Q}Student: {R}\nIs the answer correct? Solution:\n",
        "Critique:\n{Q}Answer: {R}\nLet's verify step by step. Solution:\n",
        "{Q}The Student: {R}\nExpected answer? Correct Solution:\n",
    ),
}
_SLOT = re.compile(r"\{(Q|R|RA|RB)\}")


@dataclasses.dataclass(frozen=True)
class JudgeVocab:
  """Token ids of the judge's words and its phrasings as (slot name | constant token ids) parts. Hashable: a static
  argument of the jitted functions."""

  phrasings: tuple  # per kind (KINDS order): tuple of phrasings, each a tuple of parts
  yes: int
  no: int
  a: int
  b: int
  answer_open: int
  boxed: int
  eos: int
  pad: int
  prompt_tail: int  # tokens at the end of a policy prompt that the question slot drops ("Solution", ":", "\n")
  prompt_len: int  # P
  response_len: int  # T

  @classmethod
  def from_tokenizer(cls, tok, prompt_len: int, response_len: int) -> "JudgeVocab":
    def parts(text):
      out = []
      for piece in _SLOT.split(text):
        if piece in ("Q", "R", "RA", "RB"):
          out.append(piece)
        elif piece:
          ids = tuple(tok.encode(piece, add_special_tokens=False))
          if tok.unk_token_id in ids:
            raise ValueError(f"judge phrasing {text!r}: {piece!r} has words outside the world's vocabulary")
          out.append(ids)
      return tuple(out)

    one = lambda w: tok.convert_tokens_to_ids(w)
    tail = tok.encode("Solution:\n", add_special_tokens=False)
    return cls(phrasings=tuple(tuple(parts(t) for t in PHRASINGS[k]) for k in KINDS), yes=one("Yes"), no=one("No"),
               a=one("A"), b=one("B"), answer_open=one("<answer>"), boxed=one("\\boxed{"), eos=tok.eos_token_id,
               pad=tok.pad_token_id, prompt_tail=len(tail), prompt_len=prompt_len, response_len=response_len)

  def slot_len(self, name: str) -> int:
    return self.prompt_len - self.prompt_tail if name == "Q" else self.response_len

  @property
  def width(self) -> int:
    """W: the longest judge prompt any phrasing can make."""
    return max(sum(self.slot_len(p) if isinstance(p, str) else len(p) for p in ph)
               for kind in self.phrasings for ph in kind)


# ---- host ----------------------------------------------------------------------------------------------------------


def render_host(vocab: JudgeVocab, kind: int, phrasing: int, slots: dict) -> list[int]:
  """The token ids of one prompt: phrasing `phrasing` of `kind` with `slots` {"Q": ids, "R": ids, ...} filled."""
  out = []
  for p in vocab.phrasings[kind][phrasing]:
    out.extend(slots[p] if isinstance(p, str) else p)
  return out


def host_question(vocab: JudgeVocab, prompt_ids: list[int]) -> list[int]:
  return list(prompt_ids[:len(prompt_ids) - vocab.prompt_tail])


def host_response(vocab: JudgeVocab, ids: list[int], full: bool) -> list[int]:
  """A response's shown part: everything before its stop token, or (full=False) from its first `<answer>` on."""
  ids = [t for t in ids if t != vocab.pad]
  if ids and ids[-1] == vocab.eos:
    ids = ids[:-1]
  if full:
    return ids
  return ids[ids.index(vocab.answer_open):] if vocab.answer_open in ids else []


# ---- device --------------------------------------------------------------------------------------------------------


def question(vocab: JudgeVocab, prompt_BP, prompt_mask_BP):
  """Left-padded policy prompts -> (question tokens left-aligned [B, P - tail], lengths [B])."""
  B, P = prompt_BP.shape
  n = prompt_mask_BP.sum(axis=1)
  idx = (P - n)[:, None] + jnp.arange(P - vocab.prompt_tail)[None, :]
  return jnp.take_along_axis(prompt_BP, jnp.clip(idx, 0, P - 1), axis=1), n - vocab.prompt_tail


def response(vocab: JudgeVocab, tokens_NT, lengths_N, full):
  """(shown tokens left-aligned [N, T], lengths [N]) of responses: before the stop token, or (full False, a bool
  scalar or [N]) from the first `<answer>` on (empty when there is none)."""
  N, T = tokens_NT.shape
  last = jnp.take_along_axis(tokens_NT, jnp.clip(lengths_N - 1, 0, T - 1)[:, None], axis=1)[:, 0]
  end = lengths_N - ((last == vocab.eos) & (lengths_N > 0))
  live = jnp.arange(T)[None, :] < end[:, None]
  is_open = (tokens_NT == vocab.answer_open) & live
  first = jnp.where(is_open.any(axis=1), jnp.argmax(is_open, axis=1), end)
  start = jnp.where(jnp.broadcast_to(full, (N,)), 0, first)
  idx = start[:, None] + jnp.arange(T)[None, :]
  return jnp.take_along_axis(tokens_NT, jnp.clip(idx, 0, T - 1), axis=1), end - start


def assemble(parts, width: int, pad: int):
  """Concatenate per-row pieces, right-aligned in `width` slots: parts = [(tokens [E, L], lengths [E]) or a tuple
  of constant ids] -> (tokens [E, W], mask [E, W])."""
  const = lambda p: all(isinstance(t, int) for t in p)
  E = next(p[0].shape[0] for p in parts if not const(p))
  pieces = []
  for p in parts:
    if const(p):
      ids = jnp.asarray(p, jnp.int32)
      pieces.append((jnp.broadcast_to(ids, (E, len(p))), jnp.full((E,), len(p), jnp.int32)))
    else:
      pieces.append((p[0], p[1].astype(jnp.int32)))
  total = sum(n for _, n in pieces)
  out = jnp.full((E, width + 1), pad, jnp.int32)  # the last column takes the writes of padding positions
  rows = jnp.arange(E)[:, None]
  off = width - total
  for toks, n in pieces:
    j = jnp.arange(toks.shape[1])[None, :]
    pos = jnp.where(j < n[:, None], off[:, None] + j, width)
    out = out.at[rows, pos].set(toks.astype(jnp.int32))
    off = off + n
  return out[:, :width], jnp.arange(width)[None, :] >= (width - total)[:, None]


def render(vocab: JudgeVocab, kind: int, phrasing_E, slots: dict):
  """Prompts of `kind` for E examples, phrasing phrasing_E[e] each: slots {"Q": (tokens [E, L], lengths [E]), ...}
  -> (tokens [E, W], mask [E, W])."""
  outs = [assemble([slots[p] if isinstance(p, str) else p for p in ph], vocab.width, vocab.pad)
          for ph in vocab.phrasings[kind]]
  toks = jnp.stack([t for t, _ in outs])
  masks = jnp.stack([m for _, m in outs])
  pick = jnp.clip(phrasing_E, 0, len(outs) - 1)[None, :, None]
  return jnp.take_along_axis(toks, pick, axis=0)[0], jnp.take_along_axis(masks, pick, axis=0)[0]


def judge_status(vocab: JudgeVocab, tokens_NT, lengths_N, finished_N, kind_N):
  """Per row, the index in STATUSES of why a judge response cannot score (0 = readable): unfinished, no
  `\\boxed{`, several, or (judge kinds) a boxed token that is not one of the kind's two verdicts."""
  N, T = tokens_NT.shape
  live = jnp.arange(T)[None, :] < lengths_N[:, None]
  is_box = (tokens_NT == vocab.boxed) & live
  boxes = is_box.sum(axis=1)
  after = jnp.take_along_axis(tokens_NT, jnp.clip(jnp.argmax(is_box, axis=1) + 1, 0, T - 1)[:, None], axis=1)[:, 0]
  pos = jnp.where(kind_N == POINTWISE, vocab.yes, vocab.a)
  neg = jnp.where(kind_N == POINTWISE, vocab.no, vocab.b)
  verdict_ok = (kind_N == REFLECTION) | (after == pos) | (after == neg)
  return jnp.select([~finished_N, boxes == 0, boxes > 1, ~verdict_ok], [4, 1, 2, 3], 0).astype(jnp.int32)


def judge_scorer(vocab: JudgeVocab, check):
  """The judge's reward as a scorer of `rl.iteration` (no parameters): targets_N [N, 2] hold each row's label token
  and kind. -> {"rewards": check(..., label) [N], and per status of STATUSES[1:] a [N] bool of the rows it names}.
  `check`: the world's answer check (`world_data.answer_check`)."""
  def scorer(_, prompt_BP, prompt_mask_BP, out, targets_N):
    label, kind = targets_N[:, 0], targets_N[:, 1]
    status = judge_status(vocab, out.tokens, out.lengths, out.finished, kind)
    return dict(rewards=check(out.tokens, out.lengths, out.finished, label),
                **{name: status == i for i, name in enumerate(STATUSES[1:], start=1)})

  return scorer


def mean_where(x, m):
  """Mean of x over the rows where m holds (0 when none does)."""
  m = m.astype(jnp.float32)
  return (x.astype(jnp.float32) * m).sum() / jnp.maximum(m.sum(), 1.0)
