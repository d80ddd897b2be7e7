"""SPARK-PRM Stage II: reward models trained on Stage-I verification data, and their batched, jitted scorers.

Four formats (spec, Stage II):

  "orm"      orm_prompt      -> "Yes" | "No"                                   (generative, SFT)
  "prm"      verifier_prompt -> "Step k: Correct|Incorrect" lines + final line   (generative, SFT)
  "prm_cot"  verifier_prompt -> the kept rationale (verifier format)             (generative, SFT)
  "disc"     problem + steps, each step followed by a separator token; p(correct) is read at each separator from
             the logits of two label tokens (like Qwen2.5-Math-PRM), trained with binary cross-entropy.

Generative PRMs are decoded greedily (T = 0) with `sampling.sample` and, for the arithmetic world, parsed on device:
every world verdict is one token, so a step verdict is an occurrence of a verdict token and the final verdict is the
Yes/No token right after "?". Real-model tokenizers split verdicts into pieces; their outputs are parsed on the host
with `verdicts.parse_verification` (`score_texts`). Both return the same dict of arrays, and
`first_error_predictions` turns either (or a discriminative score) into ProcessBench predictions; `predict` runs the
whole evaluation path for a list of records.

Shapes: B rows, T tokens, P prompt tokens, S step slots (separators / verdicts), D hidden size.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparkjax import cli, sampling
from sparkjax.data.jsonl import iter_jsonl
from sparkjax.models import transformer
from sparkjax.models.config import ModelConfig
from sparkjax.spark import verdicts as V
from sparkjax.train import metrics as metrics_lib
from sparkjax.train import sft
from sparkjax.train import state as state_lib
from sparkjax.train.state import TrainState

FORMATS = ("orm", "prm", "prm_cot", "disc")
GENERATIVE_FORMATS = ("orm", "prm", "prm_cot")

# ---- Stage-I records ---------------------------------------------------------------------------------------------

# field -> (accepted types, description). `answer` also accepts a JSON integer (world answers are numbers); bools are
# refused everywhere a number or string is expected, as JSON true/false there is a writer bug, not a value.
_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "id": ((str,), "a string"),
    "problem": ((str,), "a string"),
    "steps": ((list,), "a list of strings"),
    "answer": ((str, int), "a string"),
    "verdicts": ((list,), "a list of booleans"),
    "final": ((bool,), "a boolean"),
    "rationale": ((str,), "a string"),
}


def validate_record(rec: Any) -> str | None:
  """Why a Stage-I record cannot be trained on (every problem found, joined by "; "), or None when it is valid.

  A valid record has the fields of `_FIELDS` with their types, at least one step, only string steps, only boolean
  verdicts, and exactly one verdict per step.
  """
  if not isinstance(rec, dict):
    return f"expected a JSON object, got {type(rec).__name__}"
  problems = []
  for name, (types, what) in _FIELDS.items():
    if name not in rec:
      problems.append(f"missing field {name!r}")
    elif (isinstance(rec[name], bool) and bool not in types) or not isinstance(rec[name], types):
      problems.append(f"field {name!r} is {type(rec[name]).__name__}, expected {what}")
  steps, verdicts = rec.get("steps"), rec.get("verdicts")
  if isinstance(steps, list):
    if not steps:
      problems.append("no steps")
    elif not all(isinstance(s, str) for s in steps):
      problems.append("field 'steps' holds a non-string item")
  if isinstance(verdicts, list) and not all(isinstance(v, bool) for v in verdicts):
    problems.append("field 'verdicts' holds a non-boolean item")
  if isinstance(steps, list) and isinstance(verdicts, list) and len(steps) != len(verdicts):
    problems.append(f"{len(verdicts)} verdicts for {len(steps)} steps")
  return "; ".join(problems) or None


def check_records(records: Sequence[Any]) -> tuple[list[dict], list[dict]]:
  """Splits records into (valid, bad); bad entries are {"index" (0-based position), "id", "reason"}."""
  good, bad = [], []
  for i, rec in enumerate(records):
    reason = validate_record(rec)
    if reason is None:
      good.append(rec)
    else:
      rid = rec.get("id") if isinstance(rec, dict) else None
      bad.append(dict(index=i, id=rid if isinstance(rid, str) else None, reason=reason))
  return good, bad


def load_records(path: str | os.PathLike) -> tuple[list[dict], list[dict]]:
  """Stage-I records of a .jsonl file: (valid records, bad = [{"index", "id", "reason"}]).

  Records failing `validate_record` are reported, never dropped silently and never fatal. A line that is not JSON
  at all is a damaged file, not a bad record: `iter_jsonl` raises with the file and line.
  """
  return check_records(list(iter_jsonl(path)))


# ---- generative examples -----------------------------------------------------------------------------------------


def build_example(rec: dict, fmt: str, style: str = "world") -> tuple[str, str]:
  """(prompt_text, target_text) of one record in a generative format.

  "orm": orm_prompt -> render_orm(final); "prm": verifier_prompt -> render_prm(verdicts, final); "prm_cot":
  verifier_prompt -> the record's rationale. Prompts carry the record's answer ("Answer: X" after the steps).
  """
  problem, steps, answer = rec["problem"], rec["steps"], rec["answer"]
  if fmt == "orm":
    return V.orm_prompt(problem, steps, answer=answer, style=style), V.render_orm(rec["final"])
  prompt = V.verifier_prompt(problem, steps, answer=answer, style=style)
  if fmt == "prm":
    return prompt, V.render_prm(rec["verdicts"], rec["final"])
  if fmt == "prm_cot":
    return prompt, rec["rationale"].strip()
  raise ValueError(f"unknown generative format {fmt!r}; known: {', '.join(GENERATIVE_FORMATS)}")


def build_prompt(rec: dict, fmt: str, style: str = "world") -> str:
  """The scoring prompt of a record (or of any dict with problem / steps / answer): `build_example`'s prompt."""
  if fmt == "orm":
    return V.orm_prompt(rec["problem"], rec["steps"], answer=rec.get("answer"), style=style)
  if fmt in ("prm", "prm_cot"):
    return V.verifier_prompt(rec["problem"], rec["steps"], answer=rec.get("answer"), style=style)
  raise ValueError(f"unknown generative format {fmt!r}; known: {', '.join(GENERATIVE_FORMATS)}")


def pad_id(tokenizer) -> int:
  """The padding id: the tokenizer's pad token, else its eos (Llama-style tokenizers have no pad token)."""
  pid = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
  if pid is None:
    raise ValueError("the tokenizer has neither a pad nor an eos token")
  return int(pid)


def _report(skipped: list[dict], what: str) -> None:
  if skipped:
    first = skipped[0]
    print(f"prm: {len(skipped)} {what} not encoded (first: id={first['id']!r}: {first['reason']})", file=sys.stderr)


def encode_examples(tokenizer, records: Sequence[dict], fmt: str, style: str = "world",
                    length: int | None = None) -> dict:
  """SFT batch of a generative format: prompt + target + eos, loss on target and eos, right-padded.

  Args:
    tokenizer: a `transformers` tokenizer; the prompt is encoded with its special tokens (a bos where the model
      wants one), the target without, then eos.
    records: valid Stage-I records.
    fmt: "orm", "prm" or "prm_cot".
    style: prompt style, "world" or "llm".
    length: the padded length T; None = the longest example. Longer examples are left out and reported.

  Returns:
    dict(tokens [N, T] int32, loss_mask [N, T] float32 (1 on target + eos), mask [N, T] bool (real tokens),
    rows [N] int32 (each row's index into `records`), skipped = [{"index", "id", "reason"}]).
  """
  if not records:
    raise ValueError("no records to encode")
  eos = tokenizer.eos_token_id
  prompts, targets, rows, skipped = [], [], [], []
  for i, rec in enumerate(records):
    prompt, target = build_example(rec, fmt, style)
    p = tokenizer.encode(prompt)
    t = tokenizer.encode(target, add_special_tokens=False) + [eos]
    if length is not None and len(p) + len(t) > length:
      skipped.append(dict(index=i, id=rec.get("id"), reason=f"{len(p) + len(t)} tokens > length {length}"))
      continue
    prompts.append(p)
    targets.append(t)
    rows.append(i)
  _report(skipped, f"{fmt} examples")
  if not rows:
    raise ValueError(f"no {fmt} example fits in length {length} ({len(skipped)} skipped)")
  batch = sft.pad_examples(prompts, targets, pad_id(tokenizer), length)
  return dict(batch, rows=np.asarray(rows, np.int32), skipped=skipped)


def encode_prompts(tokenizer, records: Sequence[dict], fmt: str, style: str = "world",
                   length: int | None = None) -> dict:
  """Left-padded scoring prompts of a generative format (the input of `make_generative_scorer`'s function).

  Returns:
    dict(prompt [N, P] int32, prompt_mask [N, P] bool, rows [N] int32, skipped); P = `length` or the longest prompt
    bucketed to a power of two (`sampling.bucket_length`); longer prompts are left out and reported.
  """
  if not records:
    raise ValueError("no records to encode")
  ids, rows, skipped = [], [], []
  for i, rec in enumerate(records):
    p = tokenizer.encode(build_prompt(rec, fmt, style))
    if length is not None and len(p) > length:
      skipped.append(dict(index=i, id=rec.get("id"), reason=f"{len(p)} prompt tokens > length {length}"))
      continue
    ids.append(p)
    rows.append(i)
  _report(skipped, f"{fmt} prompts")
  if not rows:
    raise ValueError(f"no {fmt} prompt fits in length {length} ({len(skipped)} skipped)")
  tokens, mask = sampling.pad_prompts(ids, pad_id(tokenizer), length)
  return dict(prompt=tokens, prompt_mask=mask, rows=np.asarray(rows, np.int32), skipped=skipped)


# ---- discriminative examples -------------------------------------------------------------------------------------


def single_token_id(tokenizer, token: str | int) -> int:
  """The id of a token given as an id or as text that encodes to exactly one token (e.g. "\\n", "Correct")."""
  if isinstance(token, (int, np.integer)):
    return int(token)
  ids = tokenizer.encode(token, add_special_tokens=False)
  if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
    raise ValueError(f"{token!r} is not one known token of this tokenizer (encodes to "
                     f"{tokenizer.convert_ids_to_tokens(ids)})")
  return int(ids[0])


def label_token_ids(tokenizer, correct: str | int = "Correct", incorrect: str | int = "Incorrect") -> tuple[int, int]:
  """(correct id, incorrect id): the two tokens whose logits give a discriminative PRM's p(correct)."""
  ids = (single_token_id(tokenizer, correct), single_token_id(tokenizer, incorrect))
  if ids[0] == ids[1]:
    raise ValueError(f"the correct and incorrect label tokens are the same token {ids[0]}")
  return ids


def disc_prefix(problem: str) -> str:
  """The discriminative input before the steps: "Problem: ...\\nStudent Solution:\\n" (world words only)."""
  return f"Problem: {problem.strip()}\nStudent Solution:\n"


def encode_discriminative(tokenizer, records: Sequence[dict], sep: str | int = "\n", max_steps: int | None = None,
                          length: int | None = None) -> dict:
  """Discriminative PRM batch: prefix, then per step "Step k: <step>" followed by the separator token.

  The model's logits AT each separator position (its next-token prediction after reading step k) give step k's
  p(correct). Labels are the records' `verdicts` (True -> 1.0).

  Args:
    tokenizer: a `transformers` tokenizer (the prefix is encoded with its special tokens, steps without).
    records: valid Stage-I records, or any dicts with problem / steps and, for training, verdicts.
    sep: the separator, as text encoding to one token or as an id.
    max_steps: S, the step slots; None = the most steps of any record. Records with more steps are reported.
    length: the padded length T; None = the longest input. Longer inputs are reported.

  Returns:
    dict(tokens [N, T] int32 right-padded, mask [N, T] bool, sep_positions [N, S] int32 (-1 = no step),
    labels [N, S] float32, label_mask [N, S] bool, rows [N] int32, skipped = [{"index", "id", "reason"}]).
  """
  if not records:
    raise ValueError("no records to encode")
  sep_id = single_token_id(tokenizer, sep)
  S = max_steps or max(len(r["steps"]) for r in records)
  seqs, seps, labels, rows, skipped = [], [], [], [], []
  for i, rec in enumerate(records):
    if len(rec["steps"]) > S:
      skipped.append(dict(index=i, id=rec.get("id"), reason=f"{len(rec['steps'])} steps > max_steps {S}"))
      continue
    ids = tokenizer.encode(disc_prefix(rec["problem"]))
    pos = []
    for k, step in enumerate(rec["steps"], 1):
      ids += tokenizer.encode(f"Step {k}: {step.strip()}", add_special_tokens=False)
      pos.append(len(ids))
      ids.append(sep_id)
    if length is not None and len(ids) > length:
      skipped.append(dict(index=i, id=rec.get("id"), reason=f"{len(ids)} tokens > length {length}"))
      continue
    seqs.append(ids)
    seps.append(pos)
    labels.append([float(v) for v in rec.get("verdicts", [True] * len(pos))])
    rows.append(i)
  _report(skipped, "discriminative examples")
  if not rows:
    raise ValueError(f"no discriminative example fits (max_steps {S}, length {length}; {len(skipped)} skipped)")
  T = length or max(len(s) for s in seqs)
  N = len(seqs)
  out = dict(tokens=np.full((N, T), pad_id(tokenizer), np.int32), mask=np.zeros((N, T), bool),
             sep_positions=np.full((N, S), -1, np.int32), labels=np.zeros((N, S), np.float32),
             label_mask=np.zeros((N, S), bool))
  for n, (ids, pos, lab) in enumerate(zip(seqs, seps, labels)):
    out["tokens"][n, :len(ids)] = ids
    out["mask"][n, :len(ids)] = True
    out["sep_positions"][n, :len(pos)] = pos
    out["labels"][n, :len(lab)] = lab
    out["label_mask"][n, :len(pos)] = True
  return dict(out, rows=np.asarray(rows, np.int32), skipped=skipped)


# ---- discriminative loss and step --------------------------------------------------------------------------------


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


def first_error_mask(labels_BS, label_mask_BS):
  """Labelled steps up to and including each row's first incorrect label [B, S] bool (works on numpy and jax).

  A step after the first error is incorrect by propagation alone; training on it asks a discriminative model to
  carry "an earlier step was wrong" forward, which it cannot read from its own earlier outputs, while ProcessBench
  scores only the first error (predictions read the first step below threshold). keep_s = label_mask_s and no
  incorrect label before s.
  """
  xp = jnp if isinstance(labels_BS, jax.Array) else np
  bad = ((labels_BS < 0.5) & label_mask_BS).astype(xp.int32)
  before = xp.cumsum(bad, axis=1) - bad
  return label_mask_BS & (before == 0)


def class_weights(labels_BS, label_mask_BS, until_first_error: bool = False) -> tuple[float, float]:
  """(w_correct, w_incorrect) that give both classes equal total weight: w_c = 0.5 / p, w_i = 0.5 / (1 - p), with p
  the fraction of correct labels among the steps trained on; (1, 1) when one class is absent."""
  labels_BS, mask = np.asarray(labels_BS), np.asarray(label_mask_BS, bool)
  if until_first_error:
    mask = first_error_mask(labels_BS, mask)
  y = labels_BS[mask] > 0.5
  p = float(y.mean()) if y.size else 0.0
  if p <= 0.0 or p >= 1.0:
    return 1.0, 1.0
  return 0.5 / p, 0.5 / (1.0 - p)


def disc_loss(params, cfg: ModelConfig, batch: dict, label_ids: tuple[int, int],
              weights: tuple[float, float] = (1.0, 1.0), until_first_error: bool = False):
  """Weighted mean binary cross-entropy over the labelled separator positions of the batch, and aux metrics.

  loss = sum_{b,s} w_bs * BCE(y_bs, sigmoid(d_bs)) / sum w, BCE(y, p) = -(y log p + (1 - y) log(1 - p)),
  computed as y * softplus(-d) + (1 - y) * softplus(d); w = m_bs * (weights[0] if y_bs else weights[1]), with m the
  label mask, cut after each row's first incorrect label when `until_first_error` (`first_error_mask`).

  Returns:
    (loss, dict(steps = sum m, correct = trained steps with (p >= 0.5) == y)).
  """
  d = disc_margins(params, cfg, batch["tokens"], batch["mask"], batch["sep_positions"], label_ids)
  y = batch["labels"].astype(jnp.float32)
  m = batch["label_mask"]
  if until_first_error:
    m = first_error_mask(y, m)
  m = m.astype(jnp.float32)
  w = m * jnp.where(y > 0.5, weights[0], weights[1])
  bce = y * jax.nn.softplus(-d) + (1.0 - y) * jax.nn.softplus(d)
  right = ((d >= 0) == (y > 0.5)).astype(jnp.float32)
  return jnp.sum(bce * w) / jnp.maximum(jnp.sum(w), 1e-9), dict(steps=jnp.sum(m), correct=jnp.sum(right * m))


def disc_step(state: TrainState, batch: dict, *, cfg: ModelConfig, tx: optax.GradientTransformation,
              label_ids: tuple[int, int], schedule=None, weights: tuple[float, float] = (1.0, 1.0),
              until_first_error: bool = False) -> tuple[TrainState, dict]:
  """One optimizer update on `disc_loss`; metrics: loss, step_accuracy, grad_norm, steps (trained), learning_rate."""
  (loss, aux), grads = jax.value_and_grad(disc_loss, has_aux=True)(state.params, cfg, batch, label_ids, weights,
                                                                   until_first_error)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(loss=loss, step_accuracy=aux["correct"] / jnp.maximum(aux["steps"], 1.0),
                 grad_norm=optax.tree.norm(grads), steps=aux["steps"])
  if schedule is not None:
    metrics["learning_rate"] = schedule(state.step)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def make_disc_step(cfg: ModelConfig, tx, label_ids: tuple[int, int], schedule=None,
                   weights: tuple[float, float] = (1.0, 1.0), until_first_error: bool = False):
  """`disc_step` jitted once, the state donated; `weights` and `until_first_error` as in `disc_loss`."""
  fn = functools.partial(disc_step, cfg=cfg, tx=tx, label_ids=tuple(int(i) for i in label_ids), schedule=schedule,
                         weights=tuple(float(w) for w in weights), until_first_error=bool(until_first_error))
  return jax.jit(fn, donate_argnums=0)


# ---- training ----------------------------------------------------------------------------------------------------

_BATCH_KEYS = {"disc": ("tokens", "mask", "sep_positions", "labels", "label_mask"),
               **{f: ("tokens", "loss_mask", "mask") for f in GENERATIVE_FORMATS}}


def _row_stream(n: int, batch_size: int, seed: int):
  """Endless batches of row indices: a fresh permutation per epoch (rng [seed, epoch]), concatenated, so every row
  is seen equally often and the stream depends only on (n, seed)."""
  epoch, buf = 0, np.zeros(0, np.int64)
  while True:
    while len(buf) < batch_size:
      buf = np.concatenate([buf, np.random.default_rng([seed, epoch]).permutation(n)])
      epoch += 1
    yield buf[:batch_size]
    buf = buf[batch_size:]


def train_prm(params, cfg: ModelConfig, examples: dict, fmt: str, optimizer_cfg, steps: int, batch_size: int,
              seed: int, log_every: int = 50, writer: metrics_lib.Writer | None = None,
              label_ids: tuple[int, int] | None = None, accum: int = 1, until_first_error: bool = False,
              balance_classes: bool = False) -> tuple[Any, list[dict]]:
  """Trains a reward model of format `fmt` on encoded examples; returns (params, metrics history).

  Generative formats use `sft.make_sft_step` (mean target-token cross-entropy); "disc" uses `make_disc_step` and
  needs `label_ids` (see `label_token_ids`). Rows are drawn by `_row_stream` (deterministic in `seed`). `params` is
  copied first, so the caller's arrays survive the donated state.

  Args:
    examples: `encode_examples` output (generative) or `encode_discriminative` output ("disc").
    optimizer_cfg: fields of `config_args.optimizer_config` (lr, total_steps, ...).
    log_every: metrics are fetched (one logging point late, so the device never waits) and written every this many
      steps and at the last step.
    writer: a `metrics.Writer` (TensorBoard), scalars under "prm_<fmt>/"; None = history only.
    accum: gradient-accumulation micro-batches (generative formats only).
    until_first_error: "disc" only: train on each row's labels up to its first incorrect one (`first_error_mask`).
    balance_classes: "disc" only: weight correct and incorrect steps to equal totals (`class_weights` of the whole
      training set).

  Returns:
    (trained params, [dict(step=k, loss=..., ...) per logged step]).
  """
  if fmt not in FORMATS:
    raise ValueError(f"unknown PRM format {fmt!r}; known: {', '.join(FORMATS)}")
  if fmt == "disc" and label_ids is None:
    raise ValueError("fmt='disc' needs label_ids (the correct / incorrect token ids); see label_token_ids")
  if fmt == "disc" and accum != 1:
    raise ValueError("fmt='disc' has no gradient accumulation; use accum=1")
  if fmt != "disc" and (until_first_error or balance_classes):
    raise ValueError(f"until_first_error and balance_classes apply to fmt='disc', not {fmt!r}")
  missing = [k for k in _BATCH_KEYS[fmt] if k not in examples]
  if missing:
    raise ValueError(f"examples for fmt={fmt!r} lack {missing}; build them with "
                     f"{'encode_discriminative' if fmt == 'disc' else 'encode_examples'}")
  data = {k: np.asarray(examples[k]) for k in _BATCH_KEYS[fmt]}
  n = len(data["tokens"])
  tx, schedule = state_lib.make_optimizer(optimizer_cfg)
  state = state_lib.create_state(jax.tree.map(jnp.copy, params), tx, seed)
  if fmt == "disc":
    weights = (class_weights(data["labels"], data["label_mask"], until_first_error) if balance_classes else
               (1.0, 1.0))
    step_fn = make_disc_step(cfg, tx, label_ids, schedule, weights, until_first_error)
  else:
    step_fn = sft.make_sft_step(cfg, tx, schedule, accum)
  loop = metrics_lib.MetricsLoop(writer or metrics_lib.Writer("", enabled=False), f"prm_{fmt}/")
  rows = _row_stream(n, batch_size, seed)
  history: list[dict] = []
  logged: list[int] = []  # the step of each pushed entry; the loop hands entries back one push late
  t0 = time.time()
  bar = cli.Progress(range(steps), total=steps, desc=f"prm:{fmt}", disable=jax.process_index() != 0)
  for step in bar:
    idx = next(rows)
    state, m = step_fn(state, {k: v[idx] for k, v in data.items()})
    if (step + 1) % log_every == 0 or step + 1 == steps:
      host = loop.push(step + 1, m, dict(elapsed_seconds=time.time() - t0))
      logged.append(step + 1)
      if host:
        history.append(dict(step=logged[len(history)], **host))
        bar.set_postfix(loss=f"{host['loss']:.4f}")
  host = loop.flush()
  if host:
    history.append(dict(step=logged[len(history)], **host))
  return state.params, history


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
    """Collects the ids from a tokenizer in which every verdict word is one token (`arith.build_tokenizer`)."""
    one = functools.partial(single_token_id, tok)
    return cls(correct=one("Correct"), incorrect=one("Incorrect"), step_correct=one("correct"),
               step_incorrect=one("incorrect"), yes=one("Yes"), no=one("No"), question=one("?"),
               final_start=one("Is"), eos=int(tok.eos_token_id), pad=pad_id(tok))

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
  if fmt not in GENERATIVE_FORMATS:
    raise ValueError(f"unknown generative format {fmt!r}; known: {', '.join(GENERATIVE_FORMATS)}")
  sp = sampling.SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, stop_tokens=(ids.eos,), pad_id=ids.pad)
  out = sampling.sample(params, prompt_BP, prompt_mask_BP, jax.random.key(0), cfg=cfg, sp=sp)
  return dict(parse_generated(out.tokens, out.lengths, ids, fmt, max_steps), tokens=out.tokens, lengths=out.lengths)


def make_generative_scorer(cfg: ModelConfig, fmt: str, tokenizer_ids: WorldVerdictTokens, max_new_tokens: int,
                           max_steps: int):
  """`generative_scores` jitted once: fn(params, prompt_BP, prompt_mask_BP) -> dict of device arrays."""
  if fmt not in GENERATIVE_FORMATS:
    raise ValueError(f"unknown generative format {fmt!r}; known: {', '.join(GENERATIVE_FORMATS)}")
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
            label_ids: tuple[int, int] | None = None, threshold: float = 0.5) -> tuple[list, list]:
  """Host convenience for evaluation: ProcessBench predictions and final verdicts of a trained PRM.

  Generative formats decode greedily; with a tokenizer whose verdicts are single tokens (the world's) the output is
  parsed on device (`make_generative_scorer`), otherwise decoded and parsed on the host (`score_texts`). "disc"
  scores with `make_discriminative_scorer` (label tokens default to `label_token_ids(tokenizer)`), and its final
  verdict is "no step below the threshold".

  Args:
    records: dicts with problem, steps and (optionally) answer.
    max_new_tokens: the generation budget of generative formats.
    batch: rows per scorer call (every call has this shape).
    max_steps: step slots; default the most steps of any record.

  Returns:
    (first-error predictions as in `first_error_predictions`, final verdicts True / False / None = not read).
  """
  if fmt not in FORMATS:
    raise ValueError(f"unknown PRM format {fmt!r}; known: {', '.join(FORMATS)}")
  n_steps = [len(r["steps"]) for r in records]
  S = max_steps or max(n_steps)
  parts: list[dict] = []
  if fmt == "disc":
    label_ids = label_ids or label_token_ids(tokenizer)
    enc = encode_discriminative(tokenizer, records, sep, max_steps=S)
    if enc["skipped"]:
      raise ValueError(f"{len(enc['skipped'])} records do not fit max_steps={S}: {enc['skipped'][:2]}")
    scorer = make_discriminative_scorer(cfg, label_ids, threshold)
    arrays = {k: enc[k] for k in ("tokens", "mask", "sep_positions")}
    for start, b in _batches(arrays, batch):
      out = jax.device_get(scorer(params, b["tokens"], b["mask"], b["sep_positions"]))
      parts.append({k: v[:len(records) - start] for k, v in out.items()})
  else:
    enc = encode_prompts(tokenizer, records, fmt, style)
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
                                   stop_tokens=(int(tokenizer.eos_token_id),), pad_id=pad_id(tokenizer))
      sampler = sampling.make_sampler(cfg, sp)
      for start, b in _batches(arrays, batch):
        out = jax.device_get(sampler(params, b["prompt"], b["prompt_mask"], jax.random.key(0)))
        keep = min(batch, len(records) - start)
        texts = decode_outputs(tokenizer, dict(tokens=out.tokens[:keep], lengths=out.lengths[:keep]))
        scores = score_texts(texts, n_steps[start:start + keep], fmt=fmt, max_steps=S)
        parts.append({k: v for k, v in scores.items() if k != "status"})
  scores = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  preds = first_error_predictions(scores, n_steps)
  if fmt == "disc":
    finals = [bool(f == -1) for f in scores["first_error"]]
  else:
    finals = [bool(f) if h else None for f, h in zip(scores["final"], scores["has_final"])]
  return preds, finals
