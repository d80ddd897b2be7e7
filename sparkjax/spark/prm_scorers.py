"""SPARK-PRM Stage II scorers: batched, jitted PRM scoring and the ProcessBench predictions drawn from it.

Generative PRMs are decoded greedily (T = 0) with `sampling.sample` and, for the arithmetic world, parsed on device:
every world verdict is one token, so a step verdict is an occurrence of a verdict token and the final verdict is the
Yes/No token right after "?". Real-model tokenizers split verdicts into pieces, or (byte-level BPE) write a word
with another token in running text than alone; their outputs are parsed on the host with `verdicts.parse_verification`
(`score_texts`). Both return the same dict of arrays, and `first_error_predictions` turns either (or a
discriminative score) into ProcessBench predictions; `predict` runs the whole evaluation path for a list of records.

Shapes: B rows, T tokens, P prompt tokens, S step slots (separators / verdicts), D hidden size.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sparkjax import sampling
from sparkjax.models import transformer
from sparkjax.models.config import ModelConfig
from sparkjax.spark import prm_examples
from sparkjax.spark import verdicts as V


# ---- device parsing of generative outputs (world vocabulary) -----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WorldVerdictTokens:
  """Token ids the on-device parser reads (hashable, so it can be a static argument).

  `step_correct` / `step_incorrect` are the prm_cot verdict words ("The step is correct ."), `correct` /
  `incorrect` the prm line verdicts ("Step k: Correct"); `final_start` ("Is") opens the final line, `question` ("?")
  ends its question, `yes` / `no` answer it.
  """

  correct: int
  incorrect: int
  step_correct: int
  step_incorrect: int
  yes: int
  no: int
  question: int
  final_start: int
  eos: int
  pad: int

  @classmethod
  def from_tokenizer(cls, tok) -> "WorldVerdictTokens":
    """Collects the ids from a tokenizer in which every verdict word is one token, the same token wherever it
    stands (`arith.build_tokenizer`). A byte-level BPE (Qwen2, GPT-2) has a one-token "correct" too, but in running
    text it writes " correct", another id; the device parser would then find no verdict at all, so such a
    tokenizer raises ValueError (its outputs are parsed on the host)."""
    def one(word: str) -> int:
      i = prm_examples.single_token_id(tok, word)
      for ctx in ("x " + word, "x\n" + word):
        ids = tok.encode(ctx, add_special_tokens=False)
        if ids[-1] != i:
          raise ValueError(f"{word!r} is token {i} alone but {ids[-1]} in {ctx!r}: verdicts are not read by token id")
      return i

    return cls(correct=one("Correct"), incorrect=one("Incorrect"), step_correct=one("correct"),
               step_incorrect=one("incorrect"), yes=one("Yes"), no=one("No"), question=one("?"),
               final_start=one("Is"), eos=int(tok.eos_token_id), pad=prm_examples.pad_id(tok))

  def verdict_pair(self, fmt: str) -> tuple[int, int]:
    """(correct id, incorrect id) of a format's step verdicts."""
    if fmt == "prm":
      return self.correct, self.incorrect
    if fmt == "prm_cot":
      return self.step_correct, self.step_incorrect
    raise ValueError(f"format {fmt!r} has no step verdicts (expected 'prm' or 'prm_cot')")


def _first_index(hit_BT, default: int):
  """Index of the first True along the last axis, `default` where there is none."""
  T = hit_BT.shape[-1]
  idx = jnp.min(jnp.where(hit_BT, jnp.arange(T), T), axis=-1)
  return jnp.where(idx == T, default, idx).astype(jnp.int32)


def parse_generated(tokens_BT, lengths_B, ids: WorldVerdictTokens, fmt: str, max_steps: int) -> dict:
  """Reads greedy PRM outputs on device (pure). Tokens at or after `lengths_B` are ignored.

  Rules (world vocabulary, every verdict one token):
    final verdict: the Yes/No token right after the first "?" followed by Yes/No; has_final says one was found.
      ORM: the first generated token, when it is Yes/No.
    step verdicts: the verdict tokens of `fmt` (`WorldVerdictTokens.verdict_pair`), in order, before the first
      "Is" (the final line, whose "correct" is not a step verdict). Header numbering is not checked: a world model
      that writes verdicts writes them in the trained format.

  Returns:
    dict(step_correct [B, max_steps] bool (verdicts past max_steps are counted, not kept), num_steps [B] int32
    (verdicts read), final [B] bool, has_final [B] bool, first_error [B] int32 = first kept step read as incorrect,
    -1 if none); ORM: only final / has_final.
  """
  B, T = tokens_BT.shape
  valid = jnp.arange(T)[None, :] < lengths_B[:, None]
  tok = jnp.where(valid, tokens_BT, -1)
  yes_no = (tok == ids.yes) | (tok == ids.no)
  if fmt == "orm":
    return dict(final=tok[:, 0] == ids.yes, has_final=yes_no[:, 0])
  after_q = jnp.concatenate([jnp.zeros((B, 1), bool), tok[:, :-1] == ids.question], axis=1) & yes_no
  fpos = _first_index(after_q, T)
  has_final = fpos < T
  final = jnp.take_along_axis(tok, jnp.minimum(fpos, T - 1)[:, None], axis=1)[:, 0] == ids.yes
  c, i = ids.verdict_pair(fmt)
  end = _first_index(tok == ids.final_start, T)
  is_v = ((tok == c) | (tok == i)) & (jnp.arange(T)[None, :] < end[:, None])
  rank = jnp.cumsum(is_v, axis=1) - 1
  slot_BTS = is_v[..., None] & (rank[..., None] == jnp.arange(max_steps))
  step_correct = jnp.any(slot_BTS & (tok == c)[..., None], axis=1)
  num_steps = jnp.sum(is_v, axis=1).astype(jnp.int32)
  kept = jnp.arange(max_steps)[None, :] < num_steps[:, None]
  first_error = _first_index(kept & ~step_correct, -1)
  return dict(step_correct=step_correct & kept, num_steps=num_steps, final=final & has_final, has_final=has_final,
              first_error=first_error)


def generative_scores(params, prompt_BP, prompt_mask_BP, *, cfg: ModelConfig, fmt: str, ids: WorldVerdictTokens,
                      max_new_tokens: int, max_steps: int) -> dict:
  """Greedy-decodes a generative PRM (T = 0, stop at eos) and parses the output on device (pure; see
  `parse_generated`). Adds tokens [B, max_new_tokens] (pad after eos) and lengths [B] for host-side logging."""
  if fmt not in prm_examples.GENERATIVE_FORMATS:
    raise ValueError(f"unknown generative format {fmt!r}; known: {', '.join(prm_examples.GENERATIVE_FORMATS)}")
  sp = sampling.SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, stop_tokens=(ids.eos,), pad_id=ids.pad)
  out = sampling.sample(params, prompt_BP, prompt_mask_BP, jax.random.key(0), cfg=cfg, sp=sp)
  return dict(parse_generated(out.tokens, out.lengths, ids, fmt, max_steps), tokens=out.tokens, lengths=out.lengths)


def make_generative_scorer(cfg: ModelConfig, fmt: str, tokenizer_ids: WorldVerdictTokens, max_new_tokens: int,
                           max_steps: int):
  """`generative_scores` jitted once: fn(params, prompt_BP, prompt_mask_BP) -> dict of device arrays."""
  if fmt not in prm_examples.GENERATIVE_FORMATS:
    raise ValueError(f"unknown generative format {fmt!r}; known: {', '.join(prm_examples.GENERATIVE_FORMATS)}")
  return jax.jit(functools.partial(generative_scores, cfg=cfg, fmt=fmt, ids=tokenizer_ids,
                                   max_new_tokens=max_new_tokens, max_steps=max_steps))


def decode_outputs(tokenizer, scores: dict) -> list[str]:
  """The generated texts of a generative scorer's output (special tokens dropped), for `score_texts` or logs."""
  tokens, lengths = np.asarray(scores["tokens"]), np.asarray(scores["lengths"])
  return [tokenizer.decode(t[:n].tolist(), skip_special_tokens=True) for t, n in zip(tokens, lengths)]


def score_texts(texts: Sequence[str], num_steps: Sequence[int] | None = None, *, fmt: str = "prm",
                max_steps: int | None = None) -> dict:
  """Host parsing of PRM outputs with `verdicts.parse_verification` (any tokenizer), as numpy arrays shaped like
  the device scorer's.

  Args:
    texts: decoded outputs.
    num_steps: each solution's step count (passed to the parser; statuses then flag mismatches), or None.
    fmt: "orm" returns final / has_final only; "prm" and "prm_cot" are read alike.
    max_steps: width of step_correct; default the most steps given or read.

  Returns:
    dict(step_correct [B, max_steps] bool, num_steps [B] int32 (0 when the steps could not be read: the parser
    reads all steps or none), final [B] bool, has_final [B] bool, first_error [B] int32, status [B] list of str).
  """
  counts = [None] * len(texts) if num_steps is None else list(num_steps)
  if len(counts) != len(texts):
    raise ValueError(f"got {len(counts)} step counts for {len(texts)} texts")
  parsed = [V.parse_verification(t, None if fmt == "orm" else n) for t, n in zip(texts, counts)]
  final = np.array([v.final is True for v in parsed])
  has_final = np.array([v.final is not None for v in parsed])
  status = [v.status for v in parsed]
  if fmt == "orm":
    return dict(final=final, has_final=has_final, status=status)
  read = [list(v.steps or ()) for v in parsed]
  S = max_steps or max([len(r) for r in read] + [n or 0 for n in counts] + [1])
  step_correct = np.zeros((len(texts), S), bool)
  for b, r in enumerate(read):
    step_correct[b, :min(len(r), S)] = r[:S]
  first_error = np.array([next((i for i, ok in enumerate(r[:S]) if not ok), -1) for r in read], np.int32)
  return dict(step_correct=step_correct, num_steps=np.array([len(r) for r in read], np.int32), final=final,
              has_final=has_final, first_error=first_error, status=status)


def disc_margins(params, cfg: ModelConfig, tokens_BT, mask_BT, sep_positions_BS, label_ids: tuple[int, int]):
  """Per-step margin d = l_correct - l_incorrect [B, S] float32 at the separator positions (0 where padded).

  p(correct) = softmax([l_correct, l_incorrect])[0] = sigmoid(d). Only the two label rows of the unembedding are
  used, so a 150k vocabulary costs nothing extra.
  """
  hidden, _ = transformer.decode(params, cfg, tokens_BT, None, mask_BT)
  valid = sep_positions_BS >= 0
  h_BSD = jnp.take_along_axis(hidden, jnp.where(valid, sep_positions_BS, 0)[..., None], axis=1)
  ids = jnp.asarray(label_ids, jnp.int32)
  if cfg.tie_embeddings:
    w_KD = params["embed"][ids].astype(cfg.dtype)
  else:
    w_KD = params["lm_head"][:, ids].T.astype(cfg.dtype)
  logits_BSK = jnp.einsum("bsd,kd->bsk", h_BSD, w_KD, preferred_element_type=jnp.float32)
  return jnp.where(valid, logits_BSK[..., 0] - logits_BSK[..., 1], 0.0)


# ---- discriminative scoring --------------------------------------------------------------------------------------


def discriminative_scores(params, tokens_BT, mask_BT, sep_positions_BS, *, cfg: ModelConfig,
                          label_ids: tuple[int, int], threshold: float = 0.5) -> dict:
  """Per-step p(correct) = sigmoid(l_correct - l_incorrect) at the separators (pure).

  Returns:
    dict(p_correct [B, S] float32 (0 at padded slots), step_correct [B, S] bool (p >= threshold, False at padded
    slots), num_steps [B] int32 (separators), first_error [B] int32 = first step with p < threshold, -1 if none).
  """
  valid = sep_positions_BS >= 0
  p = jnp.where(valid, jax.nn.sigmoid(disc_margins(params, cfg, tokens_BT, mask_BT, sep_positions_BS, label_ids)), 0)
  ok = p >= threshold
  return dict(p_correct=p, step_correct=ok & valid, num_steps=jnp.sum(valid, axis=1).astype(jnp.int32),
              first_error=_first_index(valid & ~ok, -1))


def make_discriminative_scorer(cfg: ModelConfig, label_ids: tuple[int, int], threshold: float = 0.5):
  """`discriminative_scores` jitted once: fn(params, tokens_BT, mask_BT, sep_positions_BS) -> dict."""
  return jax.jit(functools.partial(discriminative_scores, cfg=cfg, label_ids=tuple(int(i) for i in label_ids),
                                   threshold=float(threshold)))


# ---- ProcessBench predictions ------------------------------------------------------------------------------------


def first_error_predictions(scores: dict, num_steps: Sequence[int]) -> list[int | None]:
  """ProcessBench predictions from any scorer's output: per solution the 0-based first step judged incorrect, -1
  when every step is judged correct, None when the output cannot be read.

  Rules, given the solution's n steps:
    step scores (prm, prm_cot, disc): None when fewer than n step verdicts were read: a PRM that stops early (or
      writes no verdict) has not judged the later steps, and a missing verdict is neither "correct" nor an error.
      Verdicts past the n-th are ignored (all n steps were judged).
    outcome scores (orm, no "step_correct"): None without a final verdict; -1 for "Yes"; n - 1 for "No" (an ORM
      cannot locate the error; the last step, where a wrong answer is certainly wrong, is its one consistent guess).
  """
  n_steps = [int(n) for n in num_steps]
  if "step_correct" not in scores:
    final, has_final = np.asarray(scores["final"]), np.asarray(scores["has_final"])
    return [None if not h else (-1 if f else n - 1) for f, h, n in zip(final, has_final, n_steps)]
  step_correct = np.asarray(scores["step_correct"])
  read = np.asarray(scores["num_steps"])
  if len(step_correct) != len(n_steps):
    raise ValueError(f"scores hold {len(step_correct)} rows for {len(n_steps)} solutions")
  preds: list[int | None] = []
  for row, r, n in zip(step_correct, read, n_steps):
    if n > row.shape[0]:
      raise ValueError(f"a solution has {n} steps but the scores keep {row.shape[0]}; raise the scorer's max_steps")
    if r < n:
      preds.append(None)
      continue
    wrong = np.flatnonzero(~row[:n])
    preds.append(int(wrong[0]) if len(wrong) else -1)
  return preds


def _batches(arrays: dict, batch: int):
  """(start, rows of every array) in fixed-size batches; the last one is filled up with copies of row 0 so every
  batch has one shape (one compiled program)."""
  n = len(next(iter(arrays.values())))
  for start in range(0, n, batch):
    idx = np.arange(start, start + batch)
    idx = np.where(idx < n, idx, 0)
    yield start, {k: v[idx] for k, v in arrays.items()}


def predict(params, cfg: ModelConfig, tokenizer, fmt: str, records: Sequence[dict], *, max_new_tokens: int = 128,
            batch: int = 32, style: str = "world", max_steps: int | None = None, sep: str | int = "\n",
            label_ids: tuple[int, int] | None = None, threshold: float = 0.5,
            outputs: list | None = None) -> tuple[list, list]:
  """Host convenience for evaluation: ProcessBench predictions and final verdicts of a trained PRM.

  Generative formats decode greedily; with a tokenizer whose verdicts are single tokens wherever they stand (the
  world's; `WorldVerdictTokens.from_tokenizer`) the output is parsed on device (`make_generative_scorer`), otherwise
  decoded and parsed on the host (`score_texts`). "disc" scores with `make_discriminative_scorer` (label tokens
  default to `prm_examples.label_token_ids(tokenizer)`), and its final verdict is "no step below the threshold".

  Args:
    records: dicts with problem, steps and (optionally) answer.
    max_new_tokens: the generation budget of generative formats.
    batch: rows per scorer call (every call has this shape).
    max_steps: step slots; default the most steps of any record.
    outputs: when given, each record's (decoded output, finished) is appended to it where the output is decoded on
      the host (a generative format with a real tokenizer), for logs.

  Returns:
    (first-error predictions as in `first_error_predictions`, final verdicts True / False / None = not read).
  """
  if fmt not in prm_examples.FORMATS:
    raise ValueError(f"unknown PRM format {fmt!r}; known: {', '.join(prm_examples.FORMATS)}")
  n_steps = [len(r["steps"]) for r in records]
  S = max_steps or max(n_steps)
  parts: list[dict] = []
  if fmt == "disc":
    label_ids = label_ids or prm_examples.label_token_ids(tokenizer)
    enc = prm_examples.encode_discriminative(tokenizer, records, sep, max_steps=S)
    if enc["skipped"]:
      raise ValueError(f"{len(enc['skipped'])} records do not fit max_steps={S}: {enc['skipped'][:2]}")
    scorer = make_discriminative_scorer(cfg, label_ids, threshold)
    arrays = {k: enc[k] for k in ("tokens", "mask", "sep_positions")}
    for start, b in _batches(arrays, batch):
      out = jax.device_get(scorer(params, b["tokens"], b["mask"], b["sep_positions"]))
      parts.append({k: v[:len(records) - start] for k, v in out.items()})
  else:
    enc = prm_examples.encode_prompts(tokenizer, records, fmt, style)
    arrays = {k: enc[k] for k in ("prompt", "prompt_mask")}
    try:
      ids = WorldVerdictTokens.from_tokenizer(tokenizer)
    except ValueError:
      ids = None  # verdicts span several tokens: parse on the host
    if ids is not None:
      scorer = make_generative_scorer(cfg, fmt, ids, max_new_tokens, S)
      for start, b in _batches(arrays, batch):
        out = jax.device_get(scorer(params, b["prompt"], b["prompt_mask"]))
        parts.append({k: v[:len(records) - start] for k, v in out.items()})
    else:
      sp = sampling.SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0,
                                   stop_tokens=(int(tokenizer.eos_token_id),), pad_id=prm_examples.pad_id(tokenizer))
      sampler = sampling.make_sampler(cfg, sp)
      for start, b in _batches(arrays, batch):
        out = jax.device_get(sampler(params, b["prompt"], b["prompt_mask"], jax.random.key(0)))
        keep = min(batch, len(records) - start)
        texts = decode_outputs(tokenizer, dict(tokens=out.tokens[:keep], lengths=out.lengths[:keep]))
        if outputs is not None:
          outputs.extend(zip(texts, np.asarray(out.finished[:keep]).tolist()))
        scores = score_texts(texts, n_steps[start:start + keep], fmt=fmt, max_steps=S)
        parts.append({k: v for k, v in scores.items() if k != "status"})
  scores = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  preds = first_error_predictions(scores, n_steps)
  if fmt == "disc":
    finals = [bool(f == -1) for f in scores["first_error"]]
  else:
    finals = [bool(f) if h else None for f, h in zip(scores["final"], scores["has_final"])]
  return preds, finals
