"""Training state as one pytree, and the optimizer built from a config."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """Everything a step changes: checkpointing this and the data iterator's state resumes a run exactly.

  rng is raw uint32 key data (checkpointable); a step's key is `fold_in(key(rng), step)`.
  """

  step: jax.Array  # int32 scalar: optimizer updates done
  params: Any
  opt_state: Any
  rng: jax.Array  # uint32[2]

  def key(self) -> jax.Array:
    return jax.random.fold_in(jax.random.wrap_key_data(self.rng, impl="threefry2x32"), self.step)


def create_state(params, tx: optax.GradientTransformation, seed: int) -> TrainState:
  rng = jax.random.key_data(jax.random.key(seed, impl="threefry2x32"))
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=rng)


def state_shardings(tx: optax.GradientTransformation, abstract_params, param_shardings, mesh):
  """Shardings of a TrainState: optimizer moments follow their parameter, everything else is replicated."""
  from jax.sharding import NamedSharding, PartitionSpec

  replicated = NamedSharding(mesh, PartitionSpec())
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  opt = optax.tree_map_params(tx, lambda _, s: s, abstract_opt, param_shardings,
                              transform_non_params=lambda _: replicated)
  return TrainState(step=replicated, params=param_shardings, opt_state=opt, rng=replicated)


def create_sharded_state(init_params, tx: optax.GradientTransformation, seed: int, shardings: TrainState):
  """A TrainState built directly on its shardings: `init_params()` runs inside one jit whose outputs are placed,
  so no device ever holds the whole unsharded state."""
  return jax.jit(lambda: create_state(init_params(), tx, seed), out_shardings=shardings)()


def make_schedule(lr: float, total_steps: int, warmup_steps: int = 0, schedule: str = "constant",
                  final_fraction: float = 0.1) -> optax.Schedule:
  """Learning rate per optimizer update: linear warmup, then constant or cosine down to `final_fraction * lr`."""
  warm = optax.linear_schedule(0.0, lr, max(warmup_steps, 1)) if warmup_steps else optax.constant_schedule(lr)
  if schedule == "constant":
    after = optax.constant_schedule(lr)
  elif schedule == "cosine":
    after = optax.cosine_decay_schedule(lr, max(total_steps - warmup_steps, 1), alpha=final_fraction)
  else:
    raise ValueError(f"unknown lr schedule {schedule!r}; known: constant, cosine")
  return optax.join_schedules([warm, after], [warmup_steps]) if warmup_steps else after


def make_optimizer(opt_cfg) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW with global-norm clipping from a config with fields lr, total_steps, warmup_steps, schedule, b1, b2,
  eps (optional, default 1e-8), weight_decay, grad_clip (0 = off)."""
  sched = make_schedule(opt_cfg.lr, opt_cfg.total_steps, opt_cfg.warmup_steps, opt_cfg.schedule)
  parts = [optax.clip_by_global_norm(opt_cfg.grad_clip)] if opt_cfg.grad_clip > 0 else []
  parts.append(optax.adamw(sched, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.get("eps", 1e-8),
                           weight_decay=opt_cfg.weight_decay))
  return optax.chain(*parts), sched
