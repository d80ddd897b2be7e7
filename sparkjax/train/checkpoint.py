"""Orbax checkpoints of the train state plus the data iterator's state; keep the last k; resume the newest readable.

Orbax writes each step into a temporary directory and renames it when complete, so a run killed mid-save leaves
no step that `latest_step` would return. A complete step can still be damaged afterwards (a truncated or edited
file, a full disk during a copy): `resume` then moves that step aside as `<step>.unreadable`, says which step it
skipped and why, and falls back to the previous one. A checkpoint of a different model (other shapes) is not
damage: it is an error that says the workdir belongs to another model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointMismatchError(ValueError):
  """The checkpoint holds another model or optimizer than the one the config builds."""


class Checkpointer:
  """Saves/restores {state: pytree, data: JSON dict, extra: JSON dict} under `directory/<step>`."""

  def __init__(self, directory: str | os.PathLike, max_to_keep: int = 3):
    self.directory = Path(directory).absolute()
    self._mgr = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                                             enable_async_checkpointing=False),
        item_handlers=dict(state=ocp.StandardCheckpointHandler(), data=ocp.JsonCheckpointHandler(),
                           extra=ocp.JsonCheckpointHandler()))

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
    self.check_shapes(abstract_state, step)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    out = self._mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                          data=ocp.args.JsonRestore(),
                                                          extra=ocp.args.JsonRestore()))
    data, extra = out["data"] or {}, out["extra"] or {}
    for name, value in (("data", data), ("extra", extra)):
      if not isinstance(value, dict):
        raise ValueError(f"{self.directory / str(step) / name}: expected a JSON object, got {type(value).__name__}")
    return out["state"], dict(data), dict(extra)

  def check_shapes(self, abstract_state, step: int):
    """Raises CheckpointMismatchError when step `step` holds arrays of other shapes or another tree structure
    than `abstract_state` (a different model size or optimizer); damage surfaces as other exceptions."""
    where = self.directory / str(step)
    meta = self._mgr.item_metadata(step)["state"]
    meta = getattr(meta, "tree", meta)
    have = _shapes(meta) if meta is not None else {}
    if not have:
      raise ValueError(f"{where}/state: no array metadata could be read")  # damage, not a mismatch
    want = _shapes(abstract_state)
    if set(want) != set(have):
      missing, extra = sorted(set(want) - set(have))[:3], sorted(set(have) - set(want))[:3]
      raise CheckpointMismatchError(
          f"{where} holds a different model or optimizer than this config builds (arrays only the config has: "
          f"{missing or 'none'}; only the checkpoint has: {extra or 'none'}); use a new --workdir, or the config "
          "this workdir was made with")
    for k, shape in want.items():
      if have[k] != shape:
        raise CheckpointMismatchError(
            f"{where} holds a different model than this config builds: {k} has shape {have[k]} there, the config "
            f"gives {shape}; use a new --workdir, or the config this workdir was made with")

  def resume(self, abstract_state, set_data_state: Callable[[dict], None] | None = None,
             say: Callable[[str], None] = print):
    """(state, extra) of the newest step that can be read, or None when there is none.

    Each damaged step met on the way (unreadable arrays, a corrupt JSON file, a data state the iterator refuses)
    is moved aside to `<step>.unreadable` and named with its reason through `say`; nothing is deleted.
    `set_data_state(data_state)` restores the data iterator; it is part of reading a step.
    """
    for step in sorted(self._mgr.all_steps(), reverse=True):
      try:
        state, data_state, extra = self.restore(abstract_state, step)
        if set_data_state is not None:
          set_data_state(data_state)
        return state, extra
      except CheckpointMismatchError:
        raise
      except Exception as e:  # any failure to read a complete step is damage: tensorstore, JSON, grain errors
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        aside = self._move_aside(step)
        say(f"checkpoint step {step} in {self.directory} cannot be read ({reason}); moved it to {aside.name} and "
            "falling back to the previous step")
    if any(self.directory.glob("*.unreadable*")):
      say(f"no readable checkpoint left in {self.directory}: this phase starts from the beginning")
    return None

  def _move_aside(self, step: int) -> Path:
    src = self.directory / str(step)
    dst = self.directory / f"{step}.unreadable"
    n = 1
    while dst.exists():
      n += 1
      dst = self.directory / f"{step}.unreadable{n}"
    if jax.process_index() == 0:
      os.replace(src, dst)
    from sparkjax import distributed

    distributed.barrier(f"checkpoint-aside-{step}")
    self._mgr.reload()
    return dst

  def close(self):
    self._mgr.close()


def _shapes(tree) -> dict[str, tuple]:
  """{'params/layers/q_proj/kernel': shape} of a pytree of arrays, ShapeDtypeStructs or orbax array metadata
  (orbax stores dataclasses and named tuples as dicts and tuples as lists, so only the key names are compared)."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    shape = getattr(leaf, "shape", None)
    if shape is None:
      shape = np.shape(leaf)
    out["/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)] = tuple(shape)
  return out
