"""What every pipeline needs: console output from process 0, where arrays live (mesh, state and batch shardings),
host copies of global arrays, and the data-iterator state a checkpoint stores."""

from __future__ import annotations

import json
import sys

import jax
from jax.experimental import multihost_utils
import numpy as np

from sparkjax import distributed, sharding
from sparkjax.models import transformer
from sparkjax.models.config import ModelConfig
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
