"""SPARK-PRM Stage II training: the discriminative PRM's loss and step, and `train_prm` for every format.

Generative formats (orm, prm, prm_cot) train with the SFT step on their encoded examples (`prm_examples`); the
discriminative PRM with binary cross-entropy on the margin `prm_scorers.disc_margins` reads at each step separator.

Shapes: B rows, T tokens, S step slots.
"""

from __future__ import annotations

import functools
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparkjax import cli
from sparkjax.models.config import ModelConfig
from sparkjax.spark import prm_examples, prm_scorers
from sparkjax.train import metrics as metrics_lib
from sparkjax.train import sft
from sparkjax.train import state as state_lib
from sparkjax.train.state import TrainState


# ---- discriminative loss and step --------------------------------------------------------------------------------


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


def disc_loss_sums(params, cfg: ModelConfig, batch: dict, label_ids: tuple[int, int],
                   weights: tuple[float, float] = (1.0, 1.0), until_first_error: bool = False):
  """The weighted binary cross-entropy of `disc_loss` as sums, so that micro-batches add up to their batch:
  (sum_{b,s} w_bs * BCE_bs, dict(weight = sum w, steps = sum m, correct = trained steps with (p >= 0.5) == y))."""
  d = prm_scorers.disc_margins(params, cfg, batch["tokens"], batch["mask"], batch["sep_positions"], label_ids)
  y = batch["labels"].astype(jnp.float32)
  m = batch["label_mask"]
  if until_first_error:
    m = first_error_mask(y, m)
  m = m.astype(jnp.float32)
  w = m * jnp.where(y > 0.5, weights[0], weights[1])
  bce = y * jax.nn.softplus(-d) + (1.0 - y) * jax.nn.softplus(d)
  right = ((d >= 0) == (y > 0.5)).astype(jnp.float32)
  return jnp.sum(bce * w), dict(weight=jnp.sum(w), steps=jnp.sum(m), correct=jnp.sum(right * m))


def disc_loss(params, cfg: ModelConfig, batch: dict, label_ids: tuple[int, int],
              weights: tuple[float, float] = (1.0, 1.0), until_first_error: bool = False):
  """Weighted mean binary cross-entropy over the labelled separator positions of the batch, and aux metrics.

  loss = sum_{b,s} w_bs * BCE(y_bs, sigmoid(d_bs)) / sum w, BCE(y, p) = -(y log p + (1 - y) log(1 - p)),
  computed as y * softplus(-d) + (1 - y) * softplus(d); w = m_bs * (weights[0] if y_bs else weights[1]), with m the
  label mask, cut after each row's first incorrect label when `until_first_error` (`first_error_mask`).

  Returns:
    (loss, dict(steps = sum m, correct = trained steps with (p >= 0.5) == y)).
  """
  total, aux = disc_loss_sums(params, cfg, batch, label_ids, weights, until_first_error)
  return total / jnp.maximum(aux["weight"], 1e-9), dict(steps=aux["steps"], correct=aux["correct"])


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


# ---- length-sorted micro-batches ----------------------------------------------------------------------------------


def length_micro_batches(lengths_B, k: int, multiple: int = 16, max_len: int | None = None) -> list[tuple]:
  """A batch's rows sorted by length and cut into k equal parts: [(row positions [B/k] into the batch, T)], T the
  part's longest row rounded up to `multiple` (at most `max_len`), instead of every row padded to the dataset's
  longest; `multiple` bounds how many shapes (compiled programs) a run meets."""
  lengths_B = np.asarray(lengths_B)
  order = np.argsort(lengths_B, kind="stable")
  parts = []
  for rows in np.array_split(order, k):
    if len(rows):
      T = -(-int(lengths_B[rows].max()) // multiple) * multiple
      parts.append((rows, T if max_len is None else min(T, max_len)))
  return parts


def make_micro_batched_step(fmt: str, cfg: ModelConfig, tx, schedule=None, label_ids: tuple[int, int] | None = None,
                            weights: tuple[float, float] = (1.0, 1.0), until_first_error: bool = False):
  """One optimizer update from a list of micro-batches of any shapes: fn(state, [batch, ...]) -> (state, metrics).

  Each micro-batch's gradient of the summed loss (`disc_loss_sums`, or `sft.token_nll` for generative formats) is
  taken by one jitted program per shape; one more (state donated) adds them, divides by the summed normalizer (the
  class weight for "disc", the target-token count otherwise) and applies the update. So the update is that of
  `disc_step` / `sft.sft_step` on the micro-batches concatenated, up to float summation order. Metrics as theirs.
  """
  if fmt == "disc":
    lid, w = tuple(int(i) for i in label_ids), tuple(float(x) for x in weights)

    def sums(params, mb):
      total, aux = disc_loss_sums(params, cfg, mb, lid, w, bool(until_first_error))
      return total, (aux["weight"], aux["steps"], aux["correct"])
  else:
    def sums(params, mb):
      total, count, correct = sft.token_nll(params, cfg, mb["tokens"], mb["loss_mask"], mb["mask"])
      return total, (count, count, correct)

  grad_fn = jax.jit(jax.value_and_grad(sums, has_aux=True))

  def apply(state: TrainState, grads_list, totals, norms, counts, corrects):
    norm = jnp.maximum(sum(norms), 1e-9)
    grads = jax.tree.map(lambda *g: sum(g) / norm, *grads_list)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    count = sum(counts)
    metrics = dict(loss=sum(totals) / norm, grad_norm=optax.tree.norm(grads))
    if fmt == "disc":
      metrics.update(step_accuracy=sum(corrects) / jnp.maximum(count, 1.0), steps=count)
    else:
      metrics.update(token_accuracy=sum(corrects) / jnp.maximum(count, 1.0), target_tokens=count)
    if schedule is not None:
      metrics["learning_rate"] = schedule(state.step)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  apply_fn = jax.jit(apply, donate_argnums=0)

  def step(state: TrainState, micro_batches: list[dict]):
    outs = [grad_fn(state.params, mb) for mb in micro_batches]  # [((total, (norm, count, correct)), grads)]
    totals, auxes, grads = [t for (t, _), _ in outs], [a for (_, a), _ in outs], [g for _, g in outs]
    return apply_fn(state, grads, totals, *(list(x) for x in zip(*auxes)))

  return step


# ---- training ----------------------------------------------------------------------------------------------------

_BATCH_KEYS = {"disc": ("tokens", "mask", "sep_positions", "labels", "label_mask"),
               **{f: ("tokens", "loss_mask", "mask") for f in prm_examples.GENERATIVE_FORMATS}}


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
              balance_classes: bool = False, ckpt=None, checkpoint_every: int = 100,
              length_buckets: int = 0) -> tuple[Any, list[dict]]:
  """Trains a reward model of format `fmt` on encoded examples; returns (params, metrics history).

  Generative formats use `sft.make_sft_step` (mean target-token cross-entropy); "disc" uses `make_disc_step` and
  needs `label_ids` (see `prm_examples.label_token_ids`). Rows are drawn by `_row_stream` (deterministic in `seed`).
  `params` is copied first, so the caller's arrays survive the donated state.

  Args:
    examples: `prm_examples.encode_examples` output (generative) or `prm_examples.encode_discriminative` output
      ("disc").
    optimizer_cfg: fields of `config_args.optimizer_config` (lr, total_steps, ...).
    log_every: metrics are fetched (one logging point late, so the device never waits) and written every this many
      steps and at the last step.
    writer: a `metrics.Writer` (TensorBoard), scalars under "prm_<fmt>/"; None = history only.
    accum: gradient-accumulation micro-batches (generative formats only).
    until_first_error: "disc" only: train on each row's labels up to its first incorrect one (`first_error_mask`).
    balance_classes: "disc" only: weight correct and incorrect steps to equal totals (`class_weights` of the whole
      training set).
    ckpt: a `train.checkpoint.Checkpointer`: the state and the history are saved every `checkpoint_every` steps
      and after the last, and training resumes from its newest readable step (the row stream is a function of the
      step, so a resumed run ends with the same parameters as an uninterrupted one).
    length_buckets: 0 = each batch padded to the longest example of the whole set, one jitted step. k >= 1 = each
      batch's rows sorted by length and cut into k micro-batches, each padded to its own longest row
      (`length_micro_batches`), their gradients summed into one update (`make_micro_batched_step`): the same rows
      and the same update up to float summation order, fewer padded tokens; one compiled program per micro-batch
      shape. Needs accum = 1.

  Returns:
    (trained params, [dict(step=k, loss=..., ...) per logged step]).
  """
  if fmt not in prm_examples.FORMATS:
    raise ValueError(f"unknown PRM format {fmt!r}; known: {', '.join(prm_examples.FORMATS)}")
  if fmt == "disc" and label_ids is None:
    raise ValueError("fmt='disc' needs label_ids (the correct / incorrect token ids); see prm_examples.label_token_ids")
  if fmt == "disc" and accum != 1:
    raise ValueError("fmt='disc' has no gradient accumulation; use accum=1")
  if length_buckets < 0 or length_buckets > batch_size:
    raise ValueError(f"length_buckets={length_buckets}: expected 0 (off) up to batch_size={batch_size}")
  if length_buckets and accum != 1:
    raise ValueError(f"length_buckets={length_buckets} splits the batch itself; use accum=1 (got {accum})")
  if fmt != "disc" and (until_first_error or balance_classes):
    raise ValueError(f"until_first_error and balance_classes apply to fmt='disc', not {fmt!r}")
  missing = [k for k in _BATCH_KEYS[fmt] if k not in examples]
  if missing:
    raise ValueError(f"examples for fmt={fmt!r} lack {missing}; build them with "
                     f"{'prm_examples.encode_discriminative' if fmt == 'disc' else 'prm_examples.encode_examples'}")
  data = {k: np.asarray(examples[k]) for k in _BATCH_KEYS[fmt]}
  n = len(data["tokens"])
  tx, schedule = state_lib.make_optimizer(optimizer_cfg)
  state = state_lib.create_state(jax.tree.map(jnp.copy, params), tx, seed)
  weights = (class_weights(data["labels"], data["label_mask"], until_first_error) if fmt == "disc" and balance_classes
             else (1.0, 1.0))
  if length_buckets:
    step_fn = make_micro_batched_step(fmt, cfg, tx, schedule, label_ids, weights, until_first_error)
  elif fmt == "disc":
    step_fn = make_disc_step(cfg, tx, label_ids, schedule, weights, until_first_error)
  else:
    step_fn = sft.make_sft_step(cfg, tx, schedule, accum)
  lengths = data["mask"].sum(1) if length_buckets else None

  def batch_of(idx):
    if not length_buckets:
      return {k: v[idx] for k, v in data.items()}
    return [{k: v[idx[rows], :T] if k in ("tokens", "mask", "loss_mask") else v[idx[rows]] for k, v in data.items()}
            for rows, T in length_micro_batches(lengths[idx], length_buckets, max_len=data["tokens"].shape[1])]
  loop = metrics_lib.MetricsLoop(writer or metrics_lib.Writer("", enabled=False), f"prm_{fmt}/")
  rows = _row_stream(n, batch_size, seed)
  history: list[dict] = []
  logged: list[int] = []  # the step of each pushed entry; the loop hands entries back one push late
  start = 0
  if ckpt is not None:
    resumed = ckpt.resume(state, None, lambda msg: print(msg, file=sys.stderr))
    if resumed is not None:
      state, extra = resumed
      start, history = int(state.step), list(extra.get("history", []))
      logged = [h["step"] for h in history]
      for _ in range(start):  # the batches the saved steps consumed
        next(rows)
  t0 = time.time()
  bar = cli.Progress(range(start, steps), initial=start, total=steps, desc=f"prm:{fmt}",
                     disable=jax.process_index() != 0 or start >= steps)
  for step in bar:
    state, m = step_fn(state, batch_of(next(rows)))
    if (step + 1) % log_every == 0 or step + 1 == steps:
      host = loop.push(step + 1, m, dict(elapsed_seconds=time.time() - t0))
      logged.append(step + 1)
      if host:
        history.append(dict(step=logged[len(history)], **host))
        bar.set_postfix(loss=f"{host['loss']:.4f}")
    if ckpt is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == steps):
      host = loop.flush()  # the history is complete up to this step before the checkpoint exists
      if host:
        history.append(dict(step=logged[len(history)], **host))
      ckpt.save(step + 1, state, {}, dict(history=history))
  host = loop.flush()
  if host:
    history.append(dict(step=logged[len(history)], **host))
  return state.params, history
