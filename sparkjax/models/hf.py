"""Hugging Face checkpoint directories <-> sparkjax params.

A HF directory is `config.json` plus `model.safetensors` or `model.safetensors.index.json` with shards. Loading checks
every tensor's presence and shape before reading any data, and places each parameter straight onto its sharding
(`jax.make_array_from_callback`), so a process only materialises the slices its devices hold. Saving writes a
directory that `transformers.AutoModelForCausalLM.from_pretrained` loads.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import jax
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from sparkjax.models.config import ModelConfig
from sparkjax.models.transformer import Params, abstract_params

# HF name (with {i} for the layer) -> (our path in the params tree, transform kind). Kinds: "in": HF linear
# [out, in] -> [in, out]; "in_heads_*": [N*H, D] -> [D, N, H]; "out_heads": [D, N*H] -> [N, H, D];
# "bias_*": [N*H] -> [N, H]; "vec": copied as is.
_LAYER_MAP = {
    "model.layers.{i}.input_layernorm.weight": (("attn_norm",), "vec"),
    "model.layers.{i}.self_attn.q_proj.weight": (("q_proj", "kernel"), "in_heads_q"),
    "model.layers.{i}.self_attn.k_proj.weight": (("k_proj", "kernel"), "in_heads_kv"),
    "model.layers.{i}.self_attn.v_proj.weight": (("v_proj", "kernel"), "in_heads_kv"),
    "model.layers.{i}.self_attn.q_proj.bias": (("q_proj", "bias"), "bias_q"),
    "model.layers.{i}.self_attn.k_proj.bias": (("k_proj", "bias"), "bias_kv"),
    "model.layers.{i}.self_attn.v_proj.bias": (("v_proj", "bias"), "bias_kv"),
    "model.layers.{i}.self_attn.o_proj.weight": (("o_proj", "kernel"), "out_heads"),
    "model.layers.{i}.self_attn.q_norm.weight": (("q_norm",), "vec"),
    "model.layers.{i}.self_attn.k_norm.weight": (("k_norm",), "vec"),
    "model.layers.{i}.post_attention_layernorm.weight": (("mlp_norm",), "vec"),
    "model.layers.{i}.mlp.gate_proj.weight": (("gate_proj", "kernel"), "in"),
    "model.layers.{i}.mlp.up_proj.weight": (("up_proj", "kernel"), "in"),
    "model.layers.{i}.mlp.down_proj.weight": (("down_proj", "kernel"), "in"),
}
_TOP_MAP = {
    "model.embed_tokens.weight": (("embed",), "vec"),
    "model.norm.weight": (("final_norm",), "vec"),
    "lm_head.weight": (("lm_head",), "in"),
}


def _get(tree, path):
  for p in path:
    if not isinstance(tree, dict) or p not in tree:
      return None
    tree = tree[p]
  return tree


def _hf_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  """The HF tensor shape for one layer's slice of our parameter of `shape` (leading L removed)."""
  if kind.startswith("in_heads"):
    d, n, h = shape
    return (n * h, d)
  if kind == "in":
    return (shape[1], shape[0])
  if kind == "out_heads":
    n, h, d = shape
    return (d, n * h)
  if kind.startswith("bias"):
    return (shape[0] * shape[1],)
  return tuple(shape)


def _to_ours(kind: str, w: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  if kind.startswith("in_heads"):
    return w.T.reshape(shape)
  if kind == "in":
    return w.T
  if kind == "out_heads":
    return w.T.reshape(shape)
  if kind.startswith("bias"):
    return w.reshape(shape)
  return w


def _to_hf(kind: str, w: np.ndarray) -> np.ndarray:
  if kind.startswith("in_heads"):
    d = w.shape[0]
    return w.reshape(d, -1).T
  if kind == "in":
    return w.T
  if kind == "out_heads":
    return w.reshape(-1, w.shape[-1]).T
  if kind.startswith("bias"):
    return w.reshape(-1)
  return w


def _entries(cfg: ModelConfig):
  """Yields (hf_name, our_path, layer index or None, kind) for every parameter `cfg` has."""
  abstract = abstract_params(cfg)
  for name, (path, kind) in _TOP_MAP.items():
    if _get(abstract, path) is not None:
      yield name, path, None, kind
  for i in range(cfg.num_layers):
    for name, (path, kind) in _LAYER_MAP.items():
      if _get(abstract["layers"], path) is not None:
        yield name.format(i=i), ("layers",) + path, i, kind


def check_model_dir(model_dir: str | os.PathLike) -> Path:
  """`model_dir` as a Path if it is a HF model directory (it has config.json); otherwise an error that says what it
  is instead (missing, a file, a GGUF file with the command that converts it)."""
  p = Path(model_dir).expanduser()
  if p.is_file() and (p.suffix == ".gguf" or _is_gguf(p)):
    raise ValueError(f"{model_dir} is a GGUF file, not a Hugging Face model directory; convert it first: "
                     f"python -m sparkjax.tools.convert --gguf {model_dir} --out DIR, then use DIR")
  if p.is_file():
    raise NotADirectoryError(f"model directory {str(model_dir)!r} is a file; expected a Hugging Face model directory "
                             "(config.json + safetensors + tokenizer)")
  if not p.is_dir():
    raise FileNotFoundError(f"model directory {str(model_dir)!r} does not exist")
  if not (p / "config.json").is_file():
    raise FileNotFoundError(f"{p / 'config.json'}: missing; a Hugging Face model directory needs config.json and "
                            "safetensors weights")
  return p


def _is_gguf(p: Path) -> bool:
  with open(p, "rb") as f:
    return f.read(4) == b"GGUF"


def load_config(model_dir: str | os.PathLike, **overrides) -> ModelConfig:
  """Reads `config.json` of a HF directory into a `ModelConfig` (runtime fields can be overridden)."""
  cfg_path = check_model_dir(model_dir) / "config.json"
  try:
    hf = json.loads(cfg_path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{cfg_path}: not valid JSON ({e})") from None
  if not isinstance(hf, dict):
    raise ValueError(f"{cfg_path}: expected a JSON object, got {type(hf).__name__}")
  return ModelConfig.from_hf(hf, source=str(cfg_path), **overrides)


def _weight_files(model_dir: Path) -> dict[str, Path]:
  """Maps every tensor name to the safetensors file holding it."""
  index = model_dir / "model.safetensors.index.json"
  if index.is_file():
    try:
      weight_map = json.loads(index.read_text())["weight_map"]
      return {name: model_dir / f for name, f in weight_map.items()}
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
      raise ValueError(f"{index}: not a weight index (expected a JSON object with a 'weight_map' of tensor name -> "
                       f"file; {type(e).__name__}: {e})") from None
  files = sorted(model_dir.glob("*.safetensors"))
  if not files:
    raise FileNotFoundError(f"{model_dir}: no *.safetensors weights (and no model.safetensors.index.json)")
  out = {}
  for f in files:
    with _open_safetensors(f) as sf:
      for name in sf.keys():
        out[name] = f
  return out


def _open_safetensors(f: Path):
  """safe_open with its errors (a truncated or foreign file) as a ValueError that names the file."""
  try:
    return safe_open(str(f), framework="numpy")
  except FileNotFoundError:
    raise FileNotFoundError(f"{f}: missing (listed in the model's weight index)") from None
  except Exception as e:  # safetensors raises its own SafetensorError type
    raise ValueError(f"{f}: not a readable safetensors file ({e}); the download or copy may be incomplete") from None


def load_params(model_dir: str | os.PathLike, cfg: ModelConfig | None = None,
                shardings: Params | None = None) -> tuple[Params, ModelConfig]:
  """Loads a HF safetensors directory into (params, cfg).

  Every parameter is checked (present, right shape) before any is read. `shardings`, a pytree like the params of
  `jax.sharding.Sharding`, places each parameter onto its devices slice by slice; default: the first device.
  Parameters are cast to `cfg.param_dtype`.
  """
  model_dir = Path(model_dir)
  cfg = cfg or load_config(model_dir)
  files = _weight_files(model_dir)
  abstract = abstract_params(cfg)

  # Validate names and shapes first so a bad checkpoint fails before any data is read.
  handles: dict[Path, object] = {}

  def handle(f: Path):
    if f not in handles:
      handles[f] = _open_safetensors(f)
    return handles[f]

  plan: dict[tuple[str, ...], list] = {}
  for name, path, layer, kind in _entries(cfg):
    if name not in files:
      if name == "lm_head.weight" and cfg.tie_embeddings:
        continue
      raise ValueError(f"{model_dir}: tensor {name!r} is missing from the safetensors files")
    full_shape = _get(abstract, path).shape
    expected = _hf_shape(kind, full_shape[1:] if layer is not None else full_shape)
    found = tuple(handle(files[name]).get_slice(name).get_shape())
    if found != expected:
      raise ValueError(f"{files[name]}: tensor {name!r} has shape {found}, expected {expected} for config "
                       f"{cfg.model_type} (hidden {cfg.hidden_size}, heads {cfg.num_heads}/{cfg.num_kv_heads})")
    plan.setdefault(path, []).append((name, layer, kind))

  def host_array(path) -> np.ndarray:
    shape = _get(abstract, path).shape
    out = np.empty(shape, np.dtype(cfg.pdtype))
    for name, layer, kind in plan[path]:
      w = handle(files[name]).get_tensor(name)
      if layer is None:
        out[...] = _to_ours(kind, w, shape)
      else:
        out[layer] = _to_ours(kind, w, shape[1:])
    return out

  def place(path, sharding):
    arr = host_array(path)
    if sharding is None:
      return jax.device_put(arr)
    return jax.make_array_from_callback(arr.shape, sharding, lambda idx: arr[idx])

  paths = jax.tree_util.tree_flatten_with_path(abstract)[0]
  treedef = jax.tree.structure(abstract)
  shard_leaves = jax.tree.leaves(shardings) if shardings is not None else [None] * len(paths)
  leaves = []
  for (kp, _), sharding in zip(paths, shard_leaves):
    leaves.append(place(tuple(k.key for k in kp), sharding))
  return jax.tree.unflatten(treedef, leaves), cfg


def save_params(params: Params, cfg: ModelConfig, out_dir: str | os.PathLike, dtype: str | None = None,
                extra_files: Callable[[Path], None] | None = None) -> Path:
  """Writes `config.json` + `model.safetensors` that `transformers` loads; atomic (temp dir, then rename).

  dtype: "float32" / "bfloat16" for the saved tensors (default the params' dtype). `extra_files(tmp_dir)` may add
  files (tokenizer, generation config) before the directory is moved into place.
  """
  out_dir = Path(out_dir)
  if out_dir.exists() and any(out_dir.iterdir()):
    raise FileExistsError(f"{out_dir} exists and is not empty; refusing to overwrite")
  host = jax.tree.map(lambda a: np.asarray(jax.device_get(a)), params)
  np_dtype = np.dtype(cfg.replace(param_dtype=dtype).pdtype) if dtype else None
  tensors = {}
  for name, path, layer, kind in _entries(cfg):
    w = _get(host, path)
    w = w[layer] if layer is not None else w
    w = np.ascontiguousarray(_to_hf(kind, w))
    tensors[name] = w.astype(np_dtype) if np_dtype is not None else w
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
  try:
    hf_cfg = cfg.to_hf()
    if dtype:
      hf_cfg["torch_dtype"] = dtype
    (tmp / "config.json").write_text(json.dumps(hf_cfg, indent=2))
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    if extra_files is not None:
      extra_files(tmp)
    if out_dir.exists():
      out_dir.rmdir()
    os.replace(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out_dir
