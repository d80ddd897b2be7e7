"""Orbax checkpoints of the train state plus the data iterator's state; keep the last k; resume the latest.

Orbax writes each step into a temporary directory and renames it when complete, so a run killed mid-save leaves
no step that `latest_step` would return.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves/restores {state: pytree, data: JSON dict} under `directory/<step>`."""

  def __init__(self, directory: str | os.PathLike, max_to_keep: int = 3):
    self.directory = Path(directory).absolute()
    self._mgr = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                                             enable_async_checkpointing=False))

  def latest_step(self) -> int | None:
    return self._mgr.latest_step()

  def save(self, step: int, state, data_state: dict | None = None, extra: dict | None = None):
    self._mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                 data=ocp.args.JsonSave(data_state or {}),
                                                 extra=ocp.args.JsonSave(extra or {})))
    self._mgr.wait_until_finished()

  def restore(self, abstract_state, step: int | None = None):
    """(state, data_state, extra) of `step` (default latest) restored onto `abstract_state`'s shapes/shardings."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    out = self._mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                          data=ocp.args.JsonRestore(),
                                                          extra=ocp.args.JsonRestore()))
    return out["state"], dict(out["data"] or {}), dict(out["extra"] or {})

  def close(self):
    self._mgr.close()
