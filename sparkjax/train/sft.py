"""Supervised fine-tuning: masked next-token cross-entropy on the target tokens only.

Batch (right-padded): tokens_NT int32, loss_mask_NT float (1 where token t is a target, predicted from t - 1),
mask_NT bool (real tokens). Gradient accumulation splits N into `accum` micro-batches and weights them by their
target-token counts, so the result equals one step on the whole batch.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from sparkjax.models import transformer
from sparkjax.models.config import ModelConfig
from sparkjax.train.state import TrainState


def token_nll(params, cfg: ModelConfig, tokens_NT, loss_mask_NT, mask_NT):
  """(sum of target-token negative log-likelihoods, number of target tokens, number predicted right)."""
  logits = transformer.forward(params, cfg, tokens_NT, None, mask_NT)[:, :-1]
  targets = tokens_NT[:, 1:]
  w = loss_mask_NT[:, 1:].astype(jnp.float32)
  logz = jax.nn.logsumexp(logits, axis=-1)
  nll = logz - jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  return jnp.sum(nll * w), jnp.sum(w), jnp.sum(correct * w)


def sft_step(state: TrainState, batch: dict, *, cfg: ModelConfig, tx: optax.GradientTransformation,
             schedule=None, accum: int = 1) -> tuple[TrainState, dict]:
  """One optimizer update on mean target-token cross-entropy; returns (state, metrics)."""
  N = batch["tokens"].shape[0]
  if N % accum:
    raise ValueError(f"batch of {N} does not split into accum={accum} micro-batches")

  def loss_fn(params, mb):
    total, count, correct = token_nll(params, cfg, mb["tokens"], mb["loss_mask"], mb["mask"])
    return total, (count, correct)

  micro = jax.tree.map(lambda x: x.reshape(accum, N // accum, *x.shape[1:]), batch)

  def accumulate(carry, mb):
    grads, total, count, correct = carry
    (t, (c, k)), g = jax.value_and_grad(loss_fn, has_aux=True)(state.params, mb)
    return (jax.tree.map(jnp.add, grads, g), total + t, count + c, correct + k), None

  zeros = jax.tree.map(jnp.zeros_like, state.params)
  (grads, total, count, correct), _ = jax.lax.scan(accumulate, (zeros, 0.0, 0.0, 0.0), micro)
  count = jnp.maximum(count, 1.0)
  grads = jax.tree.map(lambda g: g / count, grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(loss=total / count, token_accuracy=correct / count, grad_norm=optax.tree.norm(grads),
                 target_tokens=count)
  if schedule is not None:
    metrics["learning_rate"] = schedule(state.step)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def make_sft_step(cfg: ModelConfig, tx, schedule=None, accum: int = 1, state_sharding=None, batch_sharding=None):
  """`sft_step` jitted once with the state donated; with shardings given, inputs and outputs are pinned to them
  (metrics replicated) instead of following whatever the inputs carry."""
  from sparkjax import sharding

  fn = functools.partial(sft_step, cfg=cfg, tx=tx, schedule=schedule, accum=accum)
  mesh = None if state_sharding is None else batch_sharding.mesh
  return sharding.jit_sharded(fn, mesh, (state_sharding, batch_sharding), (state_sharding, sharding.REPLICATED),
                              donate_argnums=0)


def pad_examples(prompts: list[list[int]], targets: list[list[int]], pad_id: int, length: int | None = None):
  """Right-padded SFT batch from (prompt, target) token lists; loss on the target tokens only."""
  import numpy as np

  seqs = [p + t for p, t in zip(prompts, targets)]
  T = length or max(len(s) for s in seqs)
  if max(len(s) for s in seqs) > T:
    raise ValueError(f"an example of {max(len(s) for s in seqs)} tokens exceeds the SFT length {T}")
  tokens = np.full((len(seqs), T), pad_id, np.int32)
  loss_mask = np.zeros((len(seqs), T), np.float32)
  mask = np.zeros((len(seqs), T), bool)
  for i, (p, s) in enumerate(zip(prompts, seqs)):
    tokens[i, :len(s)] = s
    mask[i, :len(s)] = True
    loss_mask[i, len(p):len(s)] = 1.0
  return dict(tokens=tokens, loss_mask=loss_mask, mask=mask)
