"""What every pipeline needs: console output from process 0, where arrays live (mesh, state and batch shardings),
host copies of global arrays, and the data-iterator state a checkpoint stores."""

from __future__ import annotations

import json
import sys
import time

import jax
from jax.experimental import multihost_utils
import numpy as np

from sparkjax import cli, distributed, sharding
from sparkjax.models import transformer
from sparkjax.models.config import ModelConfig
from sparkjax.train import metrics as metrics_lib
from sparkjax.train import state as state_lib


def say(msg: str):
  if distributed.is_main():
    print(msg, file=sys.stderr, flush=True)


class Placement:
  """Where arrays live: the mesh, the model's state shardings, and host batches -> global arrays."""

  def __init__(self, config, cfg: ModelConfig):
    self.mesh = sharding.make_mesh(sharding.MeshConfig(**config.mesh))
    self.params = sharding.param_shardings(cfg, self.mesh)
    sharding.check_replication(transformer.abstract_params(cfg), self.params)
    self.replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
    self.rows = sharding.batch_sharding(self.mesh, 1)  # dim 0 over the data axes, for arrays of any rank
    self.abstract_params = transformer.abstract_params(cfg)

  def state(self, tx):
    return state_lib.state_shardings(tx, self.abstract_params, self.params, self.mesh)

  def batch(self, local: dict, what: str) -> dict:
    """This process's rows -> global arrays split over the data axes."""
    n = next(iter(local.values())).shape[0] * jax.process_count()
    sharding.check_batch(n, self.mesh, what=what)
    return {k: jax.make_array_from_process_local_data(sharding.batch_sharding(self.mesh, v.ndim), v)
            for k, v in local.items()}

  def replicate(self, tree):
    return jax.device_put(tree, self.replicated)


def host(x) -> np.ndarray:
  """A global array's full value on this host (gathered from the other processes if needed)."""
  return np.asarray(x if x.is_fully_addressable else multihost_utils.process_allgather(x, tiled=True))


def decode_samples(tokenizer, tokens, n=4) -> str:
  return "\n\n".join(tokenizer.decode([t for t in row if t != tokenizer.pad_token_id]) for row in tokens[:n])


def data_state(it) -> dict:
  return json.loads(json.dumps(it.get_state()))


def rl_throughput(rollouts_per_iteration: int):
  """`MetricsLoop` derive function of the GRPO loops: samples/s and generated tokens/s of an iteration."""
  def derive(m):
    dt = max(m["iteration_seconds"], 1e-9)
    return dict(samples_per_second=rollouts_per_iteration / dt, tokens_per_second=m["generated_tokens"] / dt)

  return derive


def train_loop(name: str, state, step_fn, it, steps: int, ckpt, writer, place: Placement, every: int, what: str):
  """Runs `step_fn(state, batch)` from state.step to `steps` on batches from `it`, with a progress bar (loss and
  token accuracy), metrics under `name/` (one step late, NaN-checked) and a checkpoint (state + iterator) every
  `every` steps and at the end, each written only after its step's metrics were checked."""
  def throughput(m):
    return dict(tokens_per_second=m["target_tokens"] / max(m["step_seconds"], 1e-9))

  loop = metrics_lib.MetricsLoop(writer, f"{name}/", derive=throughput)
  start = int(state.step)
  t_last = time.time()
  bar = cli.Progress(range(start, steps), initial=start, total=steps, desc=name,
                     disable=jax.process_index() != 0 or start >= steps)
  for step in bar:
    state, m = step_fn(state, place.batch(next(it), what))
    now = time.time()
    host_m = loop.push(step, m, dict(step_seconds=now - t_last))
    t_last = now
    if host_m:
      bar.set_postfix(loss=f"{host_m['loss']:.3f}", tok_acc=f"{host_m['token_accuracy']:.3f}")
    if (step + 1) % every == 0 or step + 1 == steps:
      loop.flush()  # check this step's metrics before its checkpoint exists
      ckpt.save(step + 1, state, data_state(it))
  loop.flush()
  return state
