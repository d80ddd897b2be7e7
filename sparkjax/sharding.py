"""Meshes and logical-axis sharding rules, as config data.

A mesh has three axes: `data` (pure data parallel), `fsdp` (data parallel with parameters and optimizer state
sharded over it) and `tp` (tensor parallel: heads, MLP hidden and vocab split). Every parameter carries logical axis
names (`transformer.logical_axes`); a short rule table maps each logical name to mesh axes. There is no catch-all:
a logical name without a rule is an error, and `check_replication` fails when a large parameter would end up fully
replicated.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tp")

# logical axis -> mesh axis, tuple of mesh axes, or None (replicated along that dimension).
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", "tp"),
    ("embed", "fsdp"),
    ("mlp", "tp"),
    ("heads", "tp"),
    ("kv_heads", "tp"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Mesh axis sizes; one of them may be -1 (all remaining devices)."""

  data: int = -1
  fsdp: int = 1
  tp: int = 1

  def shape(self, num_devices: int) -> tuple[int, int, int]:
    sizes = [self.data, self.fsdp, self.tp]
    if sizes.count(-1) > 1:
      raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))}: at most one axis may be -1")
    if any(s == 0 or s < -1 for s in sizes):
      raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))}: sizes must be positive or -1")
    known = math.prod(s for s in sizes if s != -1)
    if num_devices % known:
      raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} does not divide the {num_devices} devices")
    sizes = [num_devices // known if s == -1 else s for s in sizes]
    if math.prod(sizes) != num_devices:
      raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} uses {math.prod(sizes)} devices, but there are "
                       f"{num_devices}")
    return tuple(sizes)


def make_mesh(cfg: MeshConfig | None = None, devices: Sequence | None = None) -> Mesh:
  """A (data, fsdp, tp) mesh over `devices` (default all), with automatic (GSPMD) sharding propagation."""
  cfg = cfg or MeshConfig()
  devices = list(devices if devices is not None else jax.devices())
  shape = cfg.shape(len(devices))
  if devices == list(jax.devices()):
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3)
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def check_rules(rules, mesh: Mesh):
  """Every rule must name mesh axes that exist."""
  for name, target in rules:
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    for a in axes:
      if a not in mesh.axis_names:
        raise ValueError(f"sharding rule {name!r} -> {target!r} names mesh axis {a!r}; the mesh has "
                         f"{', '.join(mesh.axis_names)}")


def logical_to_spec(axes: Sequence[str | None], rules, mesh: Mesh, shape: Sequence[int] | None = None) -> P:
  """PartitionSpec for one array with logical `axes`. A dimension whose size does not divide over its mesh axes
  stays replicated along them (e.g. 2 kv heads on tp=4); each mesh axis is used at most once per array."""
  table = dict(rules)
  used: set[str] = set()
  spec = []
  for i, name in enumerate(axes):
    if name is None:
      spec.append(None)
      continue
    if name not in table:
      raise ValueError(f"logical axis {name!r} has no sharding rule; rules cover {', '.join(sorted(table))}")
    target = table[name]
    mesh_axes = tuple(a for a in ((target,) if isinstance(target, str) else (target or ()))
                      if a not in used and mesh.shape[a] > 1)
    if shape is not None and mesh_axes and shape[i] % math.prod(mesh.shape[a] for a in mesh_axes):
      mesh_axes = ()
    used.update(mesh_axes)
    spec.append(mesh_axes[0] if len(mesh_axes) == 1 else (mesh_axes or None))
  return P(*spec)


def tree_shardings(logical_tree, abstract_tree, mesh: Mesh, rules=DEFAULT_RULES):
  """NamedShardings for a pytree, from its logical axes and shapes."""
  check_rules(rules, mesh)
  return jax.tree.map(lambda axes, a: NamedSharding(mesh, logical_to_spec(axes, rules, mesh, a.shape)),
                      logical_tree, abstract_tree, is_leaf=lambda x: isinstance(x, tuple))


def param_shardings(cfg, mesh: Mesh, rules=DEFAULT_RULES):
  """NamedSharding for every parameter of a model config."""
  from sparkjax.models import transformer

  return tree_shardings(transformer.logical_axes(cfg), transformer.abstract_params(cfg), mesh, rules)


def batch_sharding(mesh: Mesh, ndim: int, rules=DEFAULT_RULES) -> NamedSharding:
  """Leading (batch) dimension split over the data axes, the rest replicated."""
  return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1), rules, mesh))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


# Markers for `jit_sharded`: an argument or output whose leading dimension is split over the data axes (any rank,
# any pytree of arrays), or one copied to every device.
ROWS, REPLICATED = "rows", "replicated"


def jit_sharded(fn, mesh: Mesh | None, in_shardings: tuple, out_shardings, donate_argnums=()):
  """`jax.jit(fn)` with every input and output pinned to a layout, so each call compiles for the layout the
  pipeline chose rather than whatever its inputs carried (the one such helper of the sampler, the SFT step and the
  GRPO iteration).

  Args:
    mesh: None = a plain jit (inputs keep their placement; the shardings are not read).
    in_shardings: one entry per positional argument: a sharding or a tree of shardings (e.g. a TrainState of
      NamedShardings), or ROWS / REPLICATED, which may also be leaves inside a tree (e.g. SampleOutput(ROWS, ...)).
    out_shardings: the same for the output tree.
    donate_argnums: as for `jax.jit`.
  """
  if mesh is None:
    return jax.jit(fn, donate_argnums=donate_argnums)
  named = {ROWS: batch_sharding(mesh, 1), REPLICATED: replicated(mesh)}  # a 1-d spec shards dim 0 of any rank
  resolve = lambda tree: jax.tree.map(lambda s: named.get(s, s) if isinstance(s, str) else s, tree)
  return jax.jit(fn, in_shardings=resolve(tuple(in_shardings)), out_shardings=resolve(out_shardings),
                 donate_argnums=donate_argnums)


def check_batch(global_batch: int, mesh: Mesh, rules=DEFAULT_RULES, what: str = "batch"):
  spec = logical_to_spec(("batch",), rules, mesh)
  axes = spec[0] if isinstance(spec[0], tuple) else ((spec[0],) if spec[0] else ())
  n = math.prod(mesh.shape[a] for a in axes)
  if global_batch % n:
    raise ValueError(f"{what} {global_batch} does not divide over the data axes {axes} of size {n}")


def check_replication(abstract_tree, shardings, min_size: int = 2**20):
  """Raises if a parameter with >= min_size elements is fully replicated although the mesh has model-sharding
  axes (fsdp or tp > 1). A pure data-parallel mesh replicates parameters by design and passes."""
  bad = []
  for (path, a), s in zip(jax.tree_util.tree_flatten_with_path(abstract_tree)[0], jax.tree.leaves(shardings)):
    shardable = math.prod(n for ax, n in s.mesh.shape.items() if ax != "data") > 1
    if a.size >= min_size and shardable and all(p is None for p in s.spec):
      bad.append(f"{jax.tree_util.keystr(path)} {tuple(a.shape)}")
  if bad:
    raise ValueError("large parameters would be replicated on every device (add or fix a sharding rule): "
                     + "; ".join(bad))
