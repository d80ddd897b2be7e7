"""Per-chip memory plan of a config's real-size programs, compiled ahead of time for a TPU slice on this machine.

    python -m sparkjax.tools.plan --config configs/qwen25_math_7b_grpo.py --topology v5p-64
    python -m sparkjax.tools.plan --config configs/qwen25_math_1_5b_gpu.py --gpu h100-80gb

TPU (`--topology v5p-N | v5litepod-N | v6e-N`): with the `libtpu` package installed (`pip install libtpu==0.0.42.*`,
the version `jax[tpu]==0.10.2` pins) XLA compiles for a TPU topology without any TPU: `get_topology_desc` gives the
slice's compile-only devices, the config's (data, fsdp, tp) mesh is laid over them, and each program is jitted over
`ShapeDtypeStruct`s carrying the mesh's NamedShardings (no real-size array is ever built) and compiled. The
compiler's buffer assignment (`memory_analysis`) gives the per-chip arguments, outputs and temporaries. Programs:

  sampler  `sampling.sample` through `rl.rollout`: prompts x G samples, prompt + max_new_tokens KV cache.
  update   `rl.policy_update`: GRPO loss, gradient (with the config's micro-batches), AdamW step; state donated.
  iteration (--iteration) the whole `rl.iteration` in one program, with a placeholder on-device reward.

Without libtpu (or with `--aot cpu`) the same programs are compiled for CPU devices with the same mesh shape and
the result is labelled as such: CPU buffer assignment differs from TPU's, so treat it as an estimate next to the
analytic one printed with it. GPUs (`--gpu h100-80gb | a100-80gb`) cannot be compiled for here: the plan is analytic.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import importlib.util
import math
import os
import re
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding, PartitionSpec as P

from sparkjax import sampling, sharding
from sparkjax.models import transformer
from sparkjax.models.config import ModelConfig
from sparkjax.rl import iteration as rl
from sparkjax.train import state as state_lib

GiB = 2**30

# ---- accelerators ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Accelerator:
  """A TPU slice or a set of GPUs: `devices` chips (one JAX device each) with `hbm_gib` of memory each."""

  name: str  # as given: "v5p-64", "h100-80gb"
  kind: str  # "TPU v5p", "NVIDIA H100 80GB"
  devices: int
  hbm_gib: float
  topology: str | None = None  # libtpu topology, e.g. "v5:2x4x4"; None for GPUs

  @property
  def is_tpu(self) -> bool:
    return self.topology is not None


# Per-chip HBM. v5p chips run as one "megacore" device, and a v5p-N slice has N TensorCores = N / 2 chips; v5e and
# v6e have one TensorCore per chip and N counts chips.
_TPU_FAMILIES = {
    "v5p": ("TPU v5p", "v5", 95.0),
    "v5litepod": ("TPU v5e", "v5e", 16.0),
    "v5e": ("TPU v5e", "v5e", 16.0),
    "v6e": ("TPU v6e", "v6e", 32.0),
}
_LITE_SHAPES = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
GPUS = {
    # Memory as CUDA reports it (nvidia-smi: 81559 MiB and 81920 MiB).
    "h100-80gb": ("NVIDIA H100 80GB", 79.6),
    "a100-80gb": ("NVIDIA A100 80GB", 80.0),
}


def _v5p_shape(chips: int) -> str:
  """The 3D torus of a v5p slice: from 2x2x1 (v5p-8), double the last of the smallest dimensions (2x2x2, 2x2x4,
  2x4x4, 4x4x4, ...): the shapes Cloud TPU gives the power-of-two slices."""
  dims = [2, 2, 1]
  while math.prod(dims) < chips:
    smallest = min(dims)
    i = max(j for j, d in enumerate(dims) if d == smallest)
    dims[i] *= 2
  return "x".join(map(str, dims))


def parse_topology(name: str) -> Accelerator:
  """`v5p-N` (N TensorCores, 8..8192, powers of two), `v5litepod-N` or `v5e-N`, `v6e-N` (N chips, 1..256)."""
  m = re.fullmatch(r"(v5p|v5litepod|v5e|v6e)-(\d+)", name.strip().lower())
  known = ("v5p-N (N = 8, 16, ..., 8192 TensorCores: N/2 chips), v5litepod-N or v5e-N and v6e-N (N = "
           + ", ".join(map(str, _LITE_SHAPES)) + " chips)")
  if not m:
    raise ValueError(f"unknown topology {name!r}; supported: {known}")
  family, n = m.group(1), int(m.group(2))
  kind, prefix, hbm = _TPU_FAMILIES[family]
  if family == "v5p":
    chips = n // 2
    if n % 2 or chips < 4 or chips > 4096 or chips & (chips - 1):
      raise ValueError(f"unknown topology {name!r}: a v5p slice has a power-of-two number of TensorCores from 8 "
                       f"to 8192; supported: {known}")
    shape = _v5p_shape(chips)
  else:
    if n not in _LITE_SHAPES:
      raise ValueError(f"unknown topology {name!r}: {kind} slices have {', '.join(map(str, _LITE_SHAPES))} chips; "
                       f"supported: {known}")
    chips, shape = n, _LITE_SHAPES[n]
  return Accelerator(name=name, kind=kind, devices=chips, hbm_gib=hbm, topology=f"{prefix}:{shape}")


def parse_gpu(name: str, count: int = 1) -> Accelerator:
  key = name.strip().lower()
  if key not in GPUS:
    raise ValueError(f"unknown GPU {name!r}; supported: {', '.join(GPUS)}")
  if count < 1:
    raise ValueError(f"--gpus {count}: expected >= 1")
  kind, hbm = GPUS[key]
  return Accelerator(name=key if count == 1 else f"{count}x {key}", kind=kind, devices=count, hbm_gib=hbm)


# ---- the config --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Job:
  """What the plan needs from a config: the model, the RL settings and the batch geometry."""

  cfg: ModelConfig
  preset: str
  settings: rl.GRPOSettings
  opt: Any  # the optimizer ConfigDict
  mesh: sharding.MeshConfig
  prompts: int  # B prompts per iteration
  group: int  # G samples per prompt
  prompt_len: int  # P
  new_tokens: int  # T
  prm: "Job | None" = None  # SPARK-PRM Stage III: the PRM's greedy decode of the rollouts (`reward.kind = "prm"`)
  # SPARK-CoEvolve (`coevolve.enabled`): the reward-period update's sampler and update, the same model and optimizer
  # on the judge batch's shapes.
  judge: "Job | None" = None

  @property
  def rows(self) -> int:
    return self.prompts * self.group


def _field(c, path: str):
  node = c
  for part in path.split("."):
    if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in node:
      raise ValueError(f"the config has no field {path} (the plan reads model.preset, model.dtype, mesh.data/fsdp/tp, "
                       "rl.batch_size, rl.group_size, rl.max_new_tokens, data.max_prompt_len, rl.optimizer)")
    node = node[part]
  return node


def job_from_config(c) -> Job:
  """Reads a config (see configs/qwen25_math_7b_grpo.py); optional fields take the library defaults."""
  m, r = _field(c, "model"), _field(c, "rl")
  preset = _field(c, "model.preset")
  dtype = _field(c, "model.dtype")
  cfg = ModelConfig.preset(preset, compute_dtype=dtype, param_dtype=m.get("param_dtype", dtype),
                           scan_layers=bool(m.get("scan_layers", True)), remat=bool(m.get("remat", False)))
  batch, group = int(_field(c, "rl.batch_size")), int(_field(c, "rl.group_size"))
  if group < 1 or batch % group:
    raise ValueError(f"rl.batch_size={batch} is not a multiple of rl.group_size={group} (rollouts per iteration = "
                     "prompts x group_size)")
  eos = cfg.eos_token_id
  stop = tuple(eos) if isinstance(eos, tuple) else ((eos,) if eos is not None else ())
  sp = sampling.SamplingParams(max_new_tokens=int(_field(c, "rl.max_new_tokens")),
                               temperature=float(r.get("temperature", 1.0)), top_k=int(r.get("top_k", 0)),
                               top_p=float(r.get("top_p", 1.0)), num_samples=group, stop_tokens=stop,
                               pad_id=stop[0] if stop else 0)
  settings = rl.GRPOSettings(
      sampling=sp, advantage=r.get("advantage", "grpo"), policy_loss=r.get("policy_loss", "clip"),
      eps_low=float(r.get("eps_low", 0.2)), eps_high=float(r.get("eps_high", 0.2)),
      dual_clip=float(r.get("dual_clip", 0.0)), aggregation=r.get("aggregation", "token_mean"),
      kl=r.get("kl", "k3"), kl_coef=float(r.get("kl_coef", 0.0)), mu=int(r.get("mu", 1)),
      num_microbatches=int(r.get("num_microbatches", 1)), logprob_chunk=int(r.get("logprob_chunk", 0)))
  mc = _field(c, "mesh")
  mesh = sharding.MeshConfig(int(mc.get("data", -1)), int(mc.get("fsdp", 1)), int(mc.get("tp", 1)))
  job = Job(cfg=cfg, preset=preset, settings=settings, opt=_field(c, "rl.optimizer"), mesh=mesh,
            prompts=batch // group, group=group, prompt_len=int(_field(c, "data.max_prompt_len")),
            new_tokens=sp.max_new_tokens, prm=prm_job(c, mesh))
  return dataclasses.replace(job, judge=judge_job(c, job))


def judge_job(c, job: Job) -> "Job | None":
  """The CoEvolve judge update of a config with `coevolve.enabled`: `coevolve.judge_batch` prompts of
  `coevolve.max_prompt_len` tokens, `coevolve.judge_group_size` samples of `coevolve.max_new_tokens` each."""
  cc = c.get("coevolve")
  if not cc or not cc.get("enabled"):
    return None
  g = int(_field(c, "coevolve.judge_group_size"))
  sp = dataclasses.replace(job.settings.sampling, num_samples=g,
                           max_new_tokens=int(_field(c, "coevolve.max_new_tokens")))
  return dataclasses.replace(job, settings=dataclasses.replace(job.settings, sampling=sp),
                             prompts=int(_field(c, "coevolve.judge_batch")), group=g,
                             prompt_len=int(_field(c, "coevolve.max_prompt_len")), new_tokens=sp.max_new_tokens,
                             prm=None, judge=None)


def prm_job(c, mesh: sharding.MeshConfig) -> "Job | None":
  """The PRM's part of a Stage III config (`reward.kind = "prm"` with `reward.prm_preset`): its greedy decode of
  `reward.prm_rows` rollouts per call, inputs padded to `reward.prm_max_prompt_len` (the policy's prompt and
  response inside the verifier prompt), `reward.prm_max_new_tokens` new tokens; parameters in the compute dtype
  (frozen: no optimizer state)."""
  r = c.get("reward")
  if not r or r.get("kind") != "prm":
    return None
  preset = r.get("prm_preset")
  if not preset:
    raise ValueError("config reward.kind='prm' needs reward.prm_preset (the PRM's shapes, a name in "
                     "sparkjax.models.config.PRESETS) for a memory plan")
  dtype = _field(c, "model.dtype")
  cfg = ModelConfig.preset(preset, compute_dtype=dtype, param_dtype=dtype, scan_layers=True, remat=False)
  eos = cfg.eos_token_id
  stop = tuple(eos) if isinstance(eos, tuple) else ((eos,) if eos is not None else ())
  sp = sampling.SamplingParams(max_new_tokens=int(_field(c, "reward.prm_max_new_tokens")), temperature=0.0,
                               num_samples=1, stop_tokens=stop, pad_id=stop[0] if stop else 0)
  return Job(cfg=cfg, preset=preset, settings=rl.GRPOSettings(sampling=sp), opt=None, mesh=mesh,
             prompts=int(_field(c, "reward.prm_rows")), group=1,
             prompt_len=int(_field(c, "reward.prm_max_prompt_len")), new_tokens=sp.max_new_tokens)


# What sets each batch geometry's shapes, for the errors: (its prompts, its rollouts, their config field, the
# new-token field).
_POLICY_FIELDS = ("prompts per iteration (rl.batch_size / rl.group_size)", "rollouts per iteration",
                  "rl.batch_size", "rl.max_new_tokens")
_JUDGE_FIELDS = ("judge prompts per update (coevolve.judge_batch)", "judge rollouts per update",
                 "coevolve.judge_batch x coevolve.judge_group_size", "coevolve.max_new_tokens")


def check_job(job: Job, mesh) -> None:
  """Every shape the programs split must divide; raises before anything is compiled."""
  s = job.settings
  M = s.num_microbatches
  for j, (prompts, rollouts, rows, tokens) in ((job, _POLICY_FIELDS), (job.judge, _JUDGE_FIELDS)):
    if j is None:
      continue
    sharding.check_batch(j.prompts, mesh, what=prompts)
    sharding.check_batch(j.rows, mesh, what=f"{rollouts} ({rows})")
    if j.rows % M:
      raise ValueError(f"rl.num_microbatches={M} does not divide {rows}={j.rows}")
    sharding.check_batch(j.rows // M, mesh, what=f"micro-batch rows ({rows} / rl.num_microbatches={M})")
    if not rl.logprob_chunk_fits(s.logprob_chunk, j.new_tokens):
      raise ValueError(f"rl.logprob_chunk={s.logprob_chunk} does not divide {tokens}={j.new_tokens}")
  if job.prm is not None:
    sharding.check_batch(job.prm.prompts, mesh, what="PRM rows per call (reward.prm_rows)")


def load_config(spec: str, overrides: list[str] = ()) -> ml_collections.ConfigDict:
  """`path.py[:arg]` -> get_config(arg), then `key=value` overrides typed like the value they replace."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ValueError(f"config file not found: {path}")
  module_spec = importlib.util.spec_from_file_location("_plan_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  c = module.get_config(arg or None)
  for item in overrides:
    key, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"--set {item!r}: expected KEY=VALUE")
    *parents, leaf = key.split(".")
    node = _field(c, ".".join(parents)) if parents else c
    old = _field(c, key)
    if isinstance(old, bool):
      new = value.lower() in ("1", "true", "yes")
    elif isinstance(old, (int, float)):
      new = type(old)(float(value)) if isinstance(old, int) and "." in value else type(old)(value)
    else:
      new = value
    node[leaf] = new
  return c


# ---- abstract inputs ---------------------------------------------------------------------------------------------


def _abstract(tree, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)


def state_shardings(abstract_state, cfg: ModelConfig, param_shardings, mesh):
  """Shardings of a TrainState: params as given; an optimizer leaf shaped like a parameter (Adam's mu and nu) like
  that parameter (matched by the end of its tree path); everything else (step, rng, counts) replicated."""
  params = {jax.tree_util.keystr(k): (a, s) for (k, a), s in zip(
      jax.tree_util.tree_flatten_with_path(transformer.abstract_params(cfg))[0], jax.tree.leaves(param_shardings))}
  replicated = NamedSharding(mesh, P())

  def pick(path, a):
    key = jax.tree_util.keystr(path)
    match = [k for k, (p, _) in params.items() if key.endswith(k) and p.shape == a.shape]
    return params[max(match, key=len)][1] if match else replicated

  return jax.tree_util.tree_map_with_path(pick, abstract_state)


def per_device_bytes(tree) -> int:
  """Bytes one device holds of a pytree of ShapeDtypeStructs with shardings."""
  total = 0
  for a in jax.tree.leaves(tree):
    shape = a.sharding.shard_shape(a.shape) if a.sharding is not None else a.shape
    total += math.prod(shape) * np.dtype(a.dtype).itemsize
  return total


def make_inputs(job: Job, mesh, with_state: bool = True):
  """Abstract (shape, dtype, sharding) arguments of the sampler and the update (the sampler's only without
  `with_state`); nothing real-size is allocated."""
  cfg, B, G, P_, T = job.cfg, job.prompts, job.group, job.prompt_len, job.new_tokens
  N = B * G
  p_shard = sharding.param_shardings(cfg, mesh)
  sharding.check_replication(transformer.abstract_params(cfg), p_shard)
  params = _abstract(transformer.abstract_params(cfg), p_shard)
  rows = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding.batch_sharding(mesh, len(shape)))
  key = jax.ShapeDtypeStruct((), jax.eval_shape(lambda: jax.random.key(0)).dtype, sharding=NamedSharding(mesh, P()))
  if not with_state:
    return dict(params=params, prompt=rows((B, P_), jnp.int32), prompt_mask=rows((B, P_), jnp.bool_), key=key)
  tx, schedule = state_lib.make_optimizer(job.opt)
  abstract_state = jax.eval_shape(lambda p: state_lib.create_state(p, tx, 0), transformer.abstract_params(cfg))
  state = _abstract(abstract_state, state_shardings(abstract_state, cfg, p_shard, mesh))
  prompt, prompt_mask = rows((B, P_), jnp.int32), rows((B, P_), jnp.bool_)
  batch = dict(prompt=prompt, prompt_mask=prompt_mask, tokens=rows((N, T), jnp.int32), lengths=rows((N,), jnp.int32),
               old_logp=rows((N, T), jnp.float32), advantages=rows((N,), jnp.float32))
  return dict(params=params, state=state, prompt=prompt, prompt_mask=prompt_mask, key=key, batch=batch,
              targets=rows((B,), jnp.int32), tx=tx, schedule=schedule)


# ---- the plan ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Part:
  name: str
  bytes: float
  note: str = ""


@dataclasses.dataclass
class ProgramPlan:
  name: str
  description: str
  parts: list[Part]
  total: float  # bytes per device
  hbm: float  # bytes per device
  compile_seconds: float | None = None
  error: str | None = None  # the compiler's refusal (e.g. out of HBM), if any

  @property
  def fits(self) -> bool:
    return self.error is None and self.total <= self.hbm


@dataclasses.dataclass
class Plan:
  config: str
  accelerator: Accelerator
  method: str
  mesh: dict[str, int]
  model: str
  batch: str
  programs: list[ProgramPlan]
  notes: list[str]

  @property
  def fits(self) -> bool:
    return all(p.fits for p in self.programs)


def _oom_bytes(message: str) -> float | None:
  """The temporaries figure of XLA's 'Ran out of memory in memory space hbm' compile error, in bytes."""
  m = re.search(r"HLO temporaries \(([\d.]+)([KMGTP]?)\)", message)
  if not m:
    return None
  return float(m.group(1)) * 1024 ** " KMGTP".index(m.group(2) or " ")


def _compile(jitted, args):
  """(compiled or None, seconds, error) of a jitted function for abstract `args`."""
  start = time.perf_counter()
  try:
    return jitted.trace(*args).lower().compile(), time.perf_counter() - start, None
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    return None, time.perf_counter() - start, str(e).splitlines()[0]


def _kv_cache_bytes(job: Job, mesh_shape: dict[str, int]) -> tuple[float, str]:
  cfg = job.cfg
  dp = mesh_shape["data"] * mesh_shape["fsdp"]
  tp = mesh_shape["tp"]
  rows = job.rows // dp
  heads = cfg.num_kv_heads // tp if cfg.num_kv_heads % tp == 0 else cfg.num_kv_heads
  slots = job.prompt_len + job.new_tokens
  size = 2 * cfg.num_layers * rows * heads * slots * cfg.head_dim * np.dtype(cfg.dtype).itemsize
  return size, (f"{rows} rows x {cfg.num_layers} layers x {heads} kv heads x {slots} slots x {cfg.head_dim} x "
                f"{cfg.compute_dtype} x (k, v)")


def _program(name, description, compiled, error, seconds, arg_parts, acc: Accelerator, temp_note: str,
             temp_detail=None, resident=()) -> ProgramPlan:
  """A program's per-device parts: `arg_parts` (its arguments, computed from shapes and shardings), then what the
  compiler assigned (temporaries, outputs, code), then `resident` buffers that live on the device while it runs
  without being its arguments. total = arguments + outputs - aliased + temporaries + code (+ resident)."""
  parts = list(arg_parts)
  known_args = sum(p.bytes for p in arg_parts)
  if compiled is not None:
    ma = compiled.memory_analysis()
    other = ma.argument_size_in_bytes - known_args
    if other:
      parts.append(Part("other arguments", other, "PRNG key, step, layout padding"))
    parts.append(Part("temporaries", ma.temp_size_in_bytes, "compiler temp: " + temp_note))
    if temp_detail is not None:
      parts.append(temp_detail)
    parts.append(Part("outputs", ma.output_size_in_bytes - ma.alias_size_in_bytes, "not aliased to donated inputs"))
    parts.append(Part("generated code", ma.generated_code_size_in_bytes))
    total = (ma.argument_size_in_bytes + ma.output_size_in_bytes - ma.alias_size_in_bytes + ma.temp_size_in_bytes
             + ma.generated_code_size_in_bytes)
  else:
    temp = _oom_bytes(error)
    parts.append(Part("temporaries", temp if temp is not None else float("nan"),
                      "AT LEAST: the compiler stopped at its out-of-memory check"))
    if temp_detail is not None:
      parts.append(temp_detail)
    total = known_args + (temp or 0.0)
  parts.extend(resident)
  total += sum(p.bytes for p in resident)
  return ProgramPlan(name, description, parts, total, acc.hbm_gib * GiB, seconds, error)


def plan_compiled(job: Job, acc: Accelerator, devices, method: str, programs=("sampler", "update"),
                  platform: str = "tpu") -> Plan:
  """Compiles the job's programs over `devices` (compile-only TPU devices or CPU devices) and reads their memory."""
  shape = job.mesh.shape(len(devices))
  mesh = _device_mesh(shape, devices)
  check_job(job, mesh)
  mesh_shape = dict(zip(sharding.MESH_AXES, shape))
  x = make_inputs(job, mesh)
  cfg, s = job.cfg, job.settings
  # The sampler's per-layer weight split is a CPU-only choice; compile the target platform's code path.
  s = dataclasses.replace(s, sampling=dataclasses.replace(s.sampling, per_layer_weights=platform == "cpu"))
  # The pipelines' own jitted programs (explicit in/out shardings, state donated), not re-jitted copies.
  state_sh = jax.tree.map(lambda a: a.sharding, x["state"])
  params_b = per_device_bytes(x["params"])
  opt_b = per_device_bytes(x["state"].opt_state)
  ref_b = params_b if s.kl_coef > 0 else 0.0
  opt_note = _opt_note(cfg)
  out = []

  # The policy's programs, then (CoEvolve) the same programs on the judge update's shapes.
  for j, label in ((job, ""), (job.judge, "judge ")):
    if j is None:
      continue
    xj = x if j is job else make_inputs(j, mesh)
    sj = s if j is job else dataclasses.replace(j.settings, sampling=dataclasses.replace(
        j.settings.sampling, per_layer_weights=platform == "cpu"))
    name = lambda n: n if j is job else f"judge_{n}"
    if "sampler" in programs:
      fn = rl.make_rollout(cfg, sj, state_sh.params, mesh)
      compiled, secs, err = _compile(fn, (xj["params"], xj["prompt"], xj["prompt_mask"], xj["key"]))
      kv, kv_note = _kv_cache_bytes(j, mesh_shape)
      args = [Part(f"parameters ({cfg.param_dtype})", params_b),
              Part(f"{label}prompts", per_device_bytes((xj["prompt"], xj["prompt_mask"])))]
      resident = [Part("resident optimizer state", opt_b, "kept on device between updates; " + opt_note)]
      if ref_b:
        resident.append(Part("resident reference params", ref_b, "for the KL term"))
      what = "sampling.sample via rl.rollout" if j is job else (
          f"the judge's sampling: {j.prompts} judge prompts x {j.group} samples")
      out.append(_program(name("sampler"), what, compiled, err, secs, args, acc,
                          "KV cache, prefill activations, per-step logits",
                          Part("  of which KV cache", kv, "analytic: " + kv_note), resident))

    if "update" in programs:
      fn = rl.make_update(cfg, sj, xj["tx"], xj["schedule"], state_sh)
      compiled, secs, err = _compile(fn, (xj["state"], xj["params"], xj["batch"]))
      args = [Part(f"parameters ({cfg.param_dtype})", params_b), Part("optimizer state", opt_b, opt_note)]
      if ref_b:
        args.append(Part(f"reference params ({cfg.param_dtype})", ref_b, "for the KL term"))
      args.append(Part(f"{label}batch", per_device_bytes(xj["batch"]),
                       "prompts, completions, old log-probs, advantages"))
      what = "rl.policy_update: GRPO loss, gradient, AdamW step (state donated)" if j is job else (
          "the reward-period update: the same loss and optimizer on the judge batch")
      out.append(_program(name("update"), what, compiled, err, secs, args, acc,
                          "activations (remat), attention scores, logits blocks, gradients"))

  if job.prm is not None:
    pj = job.prm
    x_prm = make_inputs(pj, mesh, with_state=False)
    prm_b = per_device_bytes(x_prm["params"])
    prm_sh = jax.tree.map(lambda a: a.sharding, x_prm["params"])
    ps = dataclasses.replace(pj.settings, sampling=dataclasses.replace(pj.settings.sampling,
                                                                         per_layer_weights=platform == "cpu"))
    fn = rl.make_rollout(pj.cfg, ps, prm_sh, mesh)
    compiled, secs, err = _compile(fn, (x_prm["params"], x_prm["prompt"], x_prm["prompt_mask"], x_prm["key"]))
    kv, kv_note = _kv_cache_bytes(pj, mesh_shape)
    args = [Part(f"PRM parameters ({pj.cfg.param_dtype})", prm_b),
            Part("PRM inputs", per_device_bytes((x_prm["prompt"], x_prm["prompt_mask"])))]
    resident = [Part(f"resident policy parameters ({cfg.param_dtype})", params_b),
                Part("resident optimizer state", opt_b, opt_note)]
    if ref_b:
      resident.append(Part("resident reference params", ref_b, "for the KL term"))
    prm_prog = _program("prm", f"the PRM's greedy decode: {pj.prompts} rollouts per call", compiled, err, secs,
                        args, acc, "KV cache, prefill activations, per-step logits",
                        Part("  of which KV cache", kv, "analytic: " + kv_note), resident)
    for prog in out:  # the PRM stays on the device while the policy samples and updates
      prog.parts.append(Part(f"resident PRM parameters ({pj.cfg.param_dtype})", prm_b, "frozen, no optimizer"))
      prog.total += prm_b
    out.append(prm_prog)

  if "iteration" in programs:
    reward = rl.rule_reward(lambda tokens, lengths, finished, targets: finished.astype(jnp.float32))
    fn = rl.make_iteration(cfg, s, x["tx"], reward, x["schedule"], state_sh)
    compiled, secs, err = _compile(fn, (x["state"], x["params"], None, x["prompt"], x["prompt_mask"],
                                        x["targets"]))
    args = [Part(f"parameters ({cfg.param_dtype})", params_b), Part("optimizer state", opt_b, opt_note)]
    if ref_b:
      args.append(Part(f"reference params ({cfg.param_dtype})", ref_b))
    out.append(_program("iteration", "rl.iteration: sample + placeholder device reward + update, one program",
                        compiled, err, secs, args, acc, "the sampler's and the update's, reusing memory"))
  return Plan("", acc, method, mesh_shape, _model_line(job), _batch_line(job), out, [])


def _size(n: float) -> str:
  if n != n:  # NaN: unknown
    return "?"
  if abs(n) >= 0.01 * GiB:
    return f"{n / GiB:.2f} GiB"
  if abs(n) >= 0.01 * 2**20:
    return f"{n / 2**20:.2f} MiB"
  return f"{n / 1024:.2f} KiB"


def _device_mesh(shape, devices) -> Mesh:
  """The (data, fsdp, tp) mesh over `devices`, laid out along the physical topology when the devices have one."""
  try:
    from jax.experimental import mesh_utils

    arr = mesh_utils.create_device_mesh(shape, list(devices), allow_split_physical_axes=True)
  except Exception:  # CPU devices and shapes mesh_utils cannot map: plain order
    arr = np.asarray(list(devices)).reshape(shape)
  return Mesh(arr, sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def _opt_note(cfg: ModelConfig) -> str:
  return f"AdamW mu + nu in {cfg.param_dtype} (optax keeps them in the param dtype)"


def _model_line(job: Job) -> str:
  cfg = job.cfg
  flags = [f"params {cfg.param_dtype}", f"compute {cfg.compute_dtype}"]
  flags += ["scanned layers"] if cfg.scan_layers else []
  flags += ["remat"] if cfg.remat else []
  n = cfg.num_params()
  count = f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"
  return f"{job.preset}, {count} parameters, " + ", ".join(flags)


def _batch_line(job: Job) -> str:
  s = job.settings
  line = (f"{job.prompts} prompts x {job.group} samples = {job.rows} rollouts, {job.prompt_len} prompt + "
          f"{job.new_tokens} new tokens; update")
  if s.num_microbatches > 1:
    line += f" in {s.num_microbatches} micro-batches of {job.rows // s.num_microbatches} rows"
  line += f", log-probs in blocks of {s.logprob_chunk} positions" if s.logprob_chunk else ", log-probs in one block"
  return line


# ---- analytic estimate -------------------------------------------------------------------------------------------


def _shard_bytes(cfg: ModelConfig, mesh_shape: dict[str, int], dtype) -> float:
  mesh = AbstractMesh(tuple(mesh_shape.values()), tuple(mesh_shape))
  total = 0
  for axes, a in zip(jax.tree.leaves(transformer.logical_axes(cfg), is_leaf=lambda t: isinstance(t, tuple)),
                     jax.tree.leaves(transformer.abstract_params(cfg))):
    spec = sharding.logical_to_spec(axes, sharding.DEFAULT_RULES, mesh, a.shape)
    n = math.prod(a.shape)
    for entry in spec:
      for ax in (entry if isinstance(entry, tuple) else (entry,) if entry else ()):
        n /= mesh_shape[ax]
    total += n * np.dtype(dtype).itemsize
  return total


def _sampler_temp(job: Job, mesh_shape: dict[str, int], params_b: float) -> float:
  """Analytic sampler temporaries per device, the KV cache included (see `plan_analytic`)."""
  cfg = job.cfg
  dp, tp = mesh_shape["data"] * mesh_shape["fsdp"], mesh_shape["tp"]
  cb, f32 = np.dtype(cfg.dtype).itemsize, 4
  heads = cfg.num_heads / tp if cfg.num_heads % tp == 0 else cfg.num_heads
  mlp = cfg.intermediate_size / tp if cfg.intermediate_size % tp == 0 else cfg.intermediate_size
  kv, _ = _kv_cache_bytes(job, mesh_shape)
  P_, S, D = job.prompt_len, job.prompt_len + job.new_tokens, cfg.hidden_size
  # Prefill of B / dp prompts, then the cache repeated G times and the decode loop.
  prefill = (job.prompts / dp) * (3 * heads * P_ * S * f32 + 4 * P_ * mlp * cb + 4 * P_ * D * cb)
  decode = (job.rows / dp) * (6 * cfg.vocab_size * f32)  # per-step logits, noise, filtered logits
  # The weights cast to the compute dtype once, hoisted out of the decode loop.
  decode += params_b * cb / np.dtype(cfg.pdtype).itemsize if cfg.dtype != cfg.pdtype else 0
  # Peak: the prefill (the prompts' cache, before it is repeated G times) or the decode loop (both caches).
  return max(kv / job.group + prefill, kv + kv / job.group + decode)


def plan_analytic(job: Job, acc: Accelerator) -> Plan:
  """Per-device memory from shapes alone, for targets this machine cannot compile for (GPUs).

  Calibrated against TPU compilations of the same programs, within ~10% (the model materialises attention scores:
  no fused attention kernel): update temporaries ~ remat layer inputs + 5 float32 copies of one layer's attention
  scores + 4 of its MLP activations + 4 float32 copies of a logits block + 3 parameter-sized buffers (gradient,
  accumulator, AdamW's update);
  sampler temporaries ~ the larger of the prefill (the prompts' cache before it is repeated G times + 3 float32
  copies of one layer's attention scores + MLP) and the decode loop (the repeated cache, the weights in the compute
  dtype, per-step [rows, V] buffers).
  """
  shape = job.mesh.shape(acc.devices)
  mesh_shape = dict(zip(sharding.MESH_AXES, shape))
  check_job(job, AbstractMesh(shape, sharding.MESH_AXES))
  cfg, s = job.cfg, job.settings
  dp, tp = mesh_shape["data"] * mesh_shape["fsdp"], mesh_shape["tp"]
  cb, f32 = np.dtype(cfg.dtype).itemsize, 4
  heads = cfg.num_heads / tp if cfg.num_heads % tp == 0 else cfg.num_heads
  mlp = cfg.intermediate_size / tp if cfg.intermediate_size % tp == 0 else cfg.intermediate_size
  vocab = cfg.vocab_size / tp if cfg.vocab_size % tp == 0 else cfg.vocab_size
  params_b = _shard_bytes(cfg, mesh_shape, cfg.pdtype)
  opt_b = 2 * params_b
  ref_b = params_b if s.kl_coef > 0 else 0.0
  opt_note = _opt_note(cfg)

  def parts_of(j: Job) -> tuple[list, list]:
    """(sampler parts, update parts) of the policy's programs on job `j`'s shapes."""
    kv, kv_note = _kv_cache_bytes(j, mesh_shape)
    T, S = j.new_tokens, j.prompt_len + j.new_tokens
    D, L = cfg.hidden_size, cfg.num_layers

    sampler_temp = _sampler_temp(j, mesh_shape, params_b)
    sampler = [Part(f"parameters ({cfg.param_dtype})", params_b),
               Part("KV cache", kv, kv_note),
               Part("prefill + decode transients", sampler_temp - kv, "analytic"),
               Part("resident optimizer state", opt_b, opt_note)]
    if ref_b:
      sampler.append(Part("resident reference params", ref_b, "for the KL term"))

    # Update: one micro-batch of r rows per data shard at a time.
    r = j.rows / s.num_microbatches / dp
    chunk = s.logprob_chunk if s.logprob_chunk and s.logprob_chunk < T else T
    saved = L * r * S * D * cb if cfg.remat else L * r * S * (6 * D + 3 * mlp) * cb
    layer = r * (5 * heads * S * S * f32 + 4 * S * mlp * cb)
    logits = 4 * r * chunk * vocab * f32
    grads = 2 * params_b if s.num_microbatches > 1 else params_b
    update = [Part(f"parameters ({cfg.param_dtype})", params_b), Part("optimizer state", opt_b, opt_note)]
    if ref_b:
      update.append(Part(f"reference params ({cfg.param_dtype})", ref_b, "for the KL term"))
    update += [Part("gradients", grads, "gradient + accumulator" if s.num_microbatches > 1 else "gradient"),
               Part("optimizer step", params_b, "AdamW's update tree"),
               Part("activations", saved + layer, f"{r:g} rows per device per micro-batch: remat layer inputs, one "
                                                  "layer's attention scores and MLP"),
               Part("logits block", logits, f"{r:g} rows x {chunk} positions x {vocab:g} vocab, float32, ~4 copies")]
    return sampler, update

  sampler, update = parts_of(job)
  hbm = acc.hbm_gib * GiB
  if job.prm is not None:
    pj = job.prm
    prm_b = _shard_bytes(pj.cfg, mesh_shape, pj.cfg.pdtype)
    for parts in (sampler, update):  # the PRM stays on the device while the policy samples and updates
      parts.append(Part(f"resident PRM parameters ({pj.cfg.param_dtype})", prm_b, "frozen, no optimizer"))
    pkv, pkv_note = _kv_cache_bytes(pj, mesh_shape)
    prm = [Part(f"PRM parameters ({pj.cfg.param_dtype})", prm_b), Part("KV cache", pkv, pkv_note),
           Part("prefill + decode transients", _sampler_temp(pj, mesh_shape, prm_b) - pkv, "analytic"),
           Part(f"resident policy parameters ({cfg.param_dtype})", params_b),
           Part("resident optimizer state", opt_b, opt_note)]
    if ref_b:
      prm.append(Part("resident reference params", ref_b, "for the KL term"))
  progs = [ProgramPlan("sampler", "sampling.sample via rl.rollout (analytic)", sampler,
                       sum(p.bytes for p in sampler), hbm),
           ProgramPlan("update", "rl.policy_update (analytic)", update, sum(p.bytes for p in update), hbm)]
  if job.judge is not None:
    js, ju = parts_of(job.judge)
    progs += [ProgramPlan("judge_sampler", f"the judge's sampling: {job.judge.prompts} judge prompts x "
                          f"{job.judge.group} samples (analytic)", js, sum(p.bytes for p in js), hbm),
              ProgramPlan("judge_update", "the reward-period update on the judge batch (analytic)", ju,
                          sum(p.bytes for p in ju), hbm)]
  if job.prm is not None:
    progs.append(ProgramPlan("prm", f"the PRM's greedy decode: {job.prm.prompts} rollouts per call (analytic)", prm,
                             sum(p.bytes for p in prm), hbm))
  notes = []
  if not acc.is_tpu:
    peak = max(p.total for p in progs)
    notes.append("JAX preallocates 75% of GPU memory by default (" + _size(0.75 * hbm) + "): "
                 + ("the plan is within it." if peak <= 0.75 * hbm else
                    "the plan needs more; set XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 (or XLA_PYTHON_CLIENT_PREALLOCATE="
                    "false)."))
  return Plan("", acc, "analytic estimate from shapes (no compiler for this target on this machine)", mesh_shape,
              _model_line(job), _batch_line(job), progs, notes)


# ---- entry points ------------------------------------------------------------------------------------------------


def libtpu_version() -> str | None:
  try:
    return importlib.metadata.version("libtpu")
  except importlib.metadata.PackageNotFoundError:
    return None


def tpu_devices(acc: Accelerator):
  """Compile-only devices of the slice (libtpu); raises RuntimeError with the reason when that is not possible."""
  if libtpu_version() is None:
    raise RuntimeError("the libtpu package is not installed (pip install 'libtpu==0.0.42.*', the version "
                       "jax[tpu]==0.10.2 pins)")
  from jax.experimental import topologies

  # libtpu takes /tmp/libtpu_lockfile so that one process owns a TPU VM's chips; describing a topology owns no chip,
  # and without this any other JAX process on the machine that loaded libtpu makes it fail ("ABORTED: Internal
  # error when accessing libtpu multi-process lockfile").
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  try:
    devices = topologies.get_topology_desc(platform="tpu", topology_name=acc.topology).devices
  except Exception as e:  # noqa: BLE001 - any libtpu failure means: fall back, and say why
    raise RuntimeError(f"libtpu {libtpu_version()} could not describe topology {acc.topology}: "
                       f"{type(e).__name__}: {e}") from e
  if len(devices) != acc.devices:
    raise RuntimeError(f"libtpu gave {len(devices)} devices for {acc.topology}, expected {acc.devices}")
  return devices


def make_plan(config, topology: str | None = None, gpu: str | None = None, gpus: int = 1, aot: str = "auto",
              programs=("sampler", "update"), config_name: str = "") -> Plan:
  """The memory plan of `config` (a ConfigDict) on a TPU `topology` (compiled) or `gpu` (analytic).

  aot: "auto" (libtpu if it works, else CPU devices), "tpu" (libtpu or an error), "cpu" (CPU devices).
  """
  if (topology is None) == (gpu is None):
    raise ValueError("give exactly one of a TPU topology or a GPU")
  if aot not in ("auto", "tpu", "cpu"):
    raise ValueError(f"aot={aot!r}: expected auto, tpu or cpu")
  acc = parse_topology(topology) if topology else parse_gpu(gpu, gpus)
  job = job_from_config(config)
  if gpu:
    plan = plan_analytic(job, acc)
  else:
    # Errors in the config's shapes are reported before anything is compiled.
    shape = job.mesh.shape(acc.devices)
    check_job(job, AbstractMesh(shape, sharding.MESH_AXES))
    reason = None
    if aot != "cpu":
      try:
        devices = tpu_devices(acc)
      except RuntimeError as e:
        if aot == "tpu":
          raise
        reason = str(e)
    if aot == "cpu" or reason:
      cpus = jax.devices("cpu")
      if len(cpus) < acc.devices:
        raise ValueError(f"the CPU fallback needs {acc.devices} CPU devices for {acc.name}, this process has "
                         f"{len(cpus)} (set XLA_FLAGS=--xla_force_host_platform_device_count={acc.devices} before "
                         "JAX starts)" + (f"; it is used because {reason}" if reason else ""))
      method = (f"CPU-device AOT (XLA:CPU buffer assignment, {acc.devices} CPU devices, same mesh): an ESTIMATE, "
                "not a TPU compilation" + (f"; libtpu unavailable: {reason}" if reason else ""))
      plan = plan_compiled(job, acc, cpus[:acc.devices], method, programs)
      plan.notes.append("analytic estimate for comparison: " + "; ".join(
          f"{p.name} {_size(p.total)}" for p in plan_analytic(job, acc).programs))
    else:
      method = (f"XLA ahead-of-time compilation for TPU topology {acc.topology} with libtpu {libtpu_version()} "
                "(compile-only devices, no TPU attached)")
      plan = plan_compiled(job, acc, devices, method, programs)
  if job.prompt_len + job.new_tokens > job.cfg.max_position_embeddings:
    plan.notes.append(f"prompt + new tokens = {job.prompt_len + job.new_tokens} exceeds the model's "
                      f"max_position_embeddings={job.cfg.max_position_embeddings}")
  plan.config = config_name
  return plan


def format_plan(plan: Plan) -> str:
  acc = plan.accelerator
  mesh = " ".join(f"{k}={v}" for k, v in plan.mesh.items())
  split = plan.mesh["data"] * plan.mesh["fsdp"]
  lines = [f"Memory plan: {plan.config or 'config'} on {acc.name} ({acc.devices} x {acc.kind}, "
           f"{acc.hbm_gib:g} GiB each)",
           f"  method:  {plan.method}",
           f"  model:   {plan.model}",
           f"  mesh:    {mesh} over {acc.devices} device{'s' if acc.devices > 1 else ''}; rollout rows split "
           f"{split} way{'s' if split > 1 else ''}",
           f"  batch:   {plan.batch}",
           "  per-device memory:"]
  for p in plan.programs:
    took = f", compiled in {p.compile_seconds:.1f} s" if p.compile_seconds is not None else ""
    lines.append(f"  {p.name}: {p.description}{took}")
    for part in p.parts:
      lines.append(f"    {part.name:<28}{_size(part.bytes):>11}   {part.note}".rstrip())
    verdict = "FITS" if p.fits else "DOES NOT FIT"
    label = "total (at least)" if p.error else "total"
    lines.append(f"    {label:<28}{_size(p.total):>11}   of {p.hbm / GiB:g} GiB HBM ({100 * p.total / p.hbm:.0f}%): "
                 f"{verdict}")
    if p.error:
      lines.append(f"    compiler: {p.error[:300]}")
  worst = max(plan.programs, key=lambda p: p.total)
  lines.append(f"  verdict: {'FITS' if plan.fits else 'DOES NOT FIT'} (largest: {worst.name}, "
               f"{_size(worst.total)} of {worst.hbm / GiB:g} GiB per device)")
  lines.extend(f"  note: {n}" for n in plan.notes)
  return "\n".join(lines)


def _prepare_environment(topology: str | None, devices: int, aot: str) -> None:
  """Before JAX starts its backends: CPU only, libtpu's probing for a TPU VM quietened (it prints warnings when
  there is none), and enough XLA:CPU devices for a CPU fallback."""
  # The plan never runs anything: JAX needs no accelerator backend (and must not claim a TPU VM's chips).
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  if topology:
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", topology)
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  flags = os.environ.get("XLA_FLAGS", "")
  fallback = aot == "cpu" or (aot == "auto" and libtpu_version() is None)
  if topology and fallback and "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m sparkjax.tools.plan", description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True, help="configs/X.py[:args]")
  target = parser.add_mutually_exclusive_group(required=True)
  target.add_argument("--topology", help="TPU slice: v5p-N, v5litepod-N (v5e-N), v6e-N")
  target.add_argument("--gpu", help=f"GPU type for an analytic plan: {', '.join(GPUS)}")
  parser.add_argument("--gpus", type=int, default=1, help="number of GPUs (with --gpu)")
  parser.add_argument("--aot", choices=("auto", "tpu", "cpu"), default="auto",
                      help="auto: libtpu if it works, else CPU devices; tpu: libtpu only; cpu: CPU devices")
  parser.add_argument("--iteration", action="store_true", help="also compile the whole rl.iteration in one program")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
  args = parser.parse_args(argv)
  try:
    acc = parse_topology(args.topology) if args.topology else parse_gpu(args.gpu, args.gpus)
    _prepare_environment(args.topology, acc.devices, args.aot)
    config = load_config(args.config, args.set)
    programs = ("sampler", "update") + (("iteration",) if args.iteration else ())
    plan = make_plan(config, topology=args.topology, gpu=args.gpu, gpus=args.gpus, aot=args.aot,
                     programs=programs, config_name=args.config)
  except (ValueError, RuntimeError, OSError) as e:  # RuntimeError: libtpu could not compile for the topology
    from sparkjax import cli

    print(f"plan: error: {cli.one_line(e)}", file=sys.stderr)
    return cli.EXIT_USER_ERROR
  print(format_plan(plan))
  return 0


if __name__ == "__main__":
  sys.exit(main())
