"""Llama- and Qwen2-family GGUF files -> Hugging Face `LlamaForCausalLM` / `Qwen2ForCausalLM` directories.

A GGUF file (llama.cpp's format) holds the weights, the hyper-parameters and the tokenizer of one model. We
dequantise every tensor to float32 with the `gguf` package, rename it to its Hugging Face name and undo the one
layout change llama.cpp makes on the way in for Llama: the rotary row order of the q and k projections (its Qwen2
converter writes them unpermuted, as HF has them). The result is an ordinary HF directory (`config.json`,
`model.safetensors`, tokenizer files) that `transformers` and our own loaders read like any other checkpoint. The
tokenizer is rebuilt from the file's vocabulary, merges and chat template with the `tokenizers` library
(`build_tokenizer`); nothing here needs torch.

Every tensor's name, quantisation type and byte range is checked before any is dequantised, so an unsupported or
damaged file fails at once, naming the tensor. Memory: `read_gguf` holds the whole model in float32 on the host
(4 bytes per parameter); `convert_gguf` streams one tensor at a time into `model.safetensors` (peak about the largest
tensor, e.g. 0.9 GB for a 1536 x 151936 embedding).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
import os
import shutil
import struct
import uuid
from pathlib import Path
from typing import Any, Iterator

import gguf
import numpy as np

SUPPORTED_ARCHITECTURES = ("llama", "qwen2")
# GGUF `general.architecture` -> the HF class and `model_type` it becomes.
_HF_CLASSES = {"llama": ("LlamaForCausalLM", "llama"), "qwen2": ("Qwen2ForCausalLM", "qwen2")}

# GGUF tensor name -> HF name (both families). Per-layer names are keyed by the part after `blk.N.`.
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
# Qwen2 has q/k/v biases (no o bias); HF Llama has none unless `attention_bias`, which would add an o bias too.
_QKV_BIAS_NAMES = {
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
}
_ARCH_LAYER_NAMES = {"llama": _LAYER_NAMES, "qwen2": {**_LAYER_NAMES, **_QKV_BIAS_NAMES}}
# llama.cpp bakes llama3-style rope scaling into this tensor instead of writing metadata; it becomes config.
_ROPE_FREQS = "rope_freqs.weight"

# llama.cpp pre-tokenizer types that split every digit off before the GPT-2 regex. `transformers` (5.x) drops that
# step when it rebuilds the tokenizer from GGUF, which changes how whitespace before digits is tokenised
# ("\n\n1" -> "Ċ","Ċ","1" instead of "ĊĊ","1"), so we put it back.
_DIGIT_SPLIT_PRE = frozenset({"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"})
# llama.cpp pre-tokenizer types that replace GPT-2's regex with their own, as `transformers` (5.x) maps them.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_TEKKEN_SPLIT = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
                 r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
                 r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen2's split (`transformers.models.qwen2.tokenization_qwen2.PRETOKENIZE_REGEX`): single digits, unlike Llama 3.
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
                r"|\s+(?!\S)|\s+")
_SPLIT_REGEX_PRE = {
    **dict.fromkeys(["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
                     "jina-v5-nano", "dbrx", "smaug-bpe"], _LLAMA3_SPLIT),
    "tekken": _TEKKEN_SPLIT,
    **dict.fromkeys(["qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"], _QWEN2_SPLIT),
}
# `tokenizer.ggml.token_type` values (llama.cpp's llama_token_type).
_TOKEN_NORMAL, _TOKEN_CONTROL, _TOKEN_USER_DEFINED = 1, 3, 4


def llamacpp_to_hf_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
  """Put q/k projection rows back from llama.cpp's rotary order into Hugging Face's.

  HF's Llama rotates the two halves of each head (`rotate_half`), llama.cpp rotates interleaved pairs, so
  convert_hf_to_gguf.py permutes the rows of each head `[a0..a(h/2-1), b0..b(h/2-1)] -> [a0, b0, a1, b1, ...]`.
  This is its exact inverse.

  Args:
    w: `(n_head * head_dim, in_dim)` weight or `(n_head * head_dim,)` bias, in llama.cpp's row order.
    n_head: heads of this projection (`num_key_value_heads` for k).
  Returns:
    Array of the same shape and dtype in HF's row order.
  """
  head_dim = w.shape[0] // n_head
  return w.reshape(n_head, head_dim // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_scaling(
    rope_freqs: np.ndarray, rope_theta: float, head_dim: int, original_max_position_embeddings: int = 8192
) -> dict[str, Any]:
  """Recover HF's `rope_scaling` dict for llama3-style rope from llama.cpp's `rope_freqs` tensor.

  llama.cpp stores the per-frequency divisor (1 for short wavelengths, `factor` for long ones, a smooth blend
  between) rather than the parameters. In the blend band the smoothing weight is linear in
  `original_max_position_embeddings / wavelength` with slope `1 / (high - low)` and offset `-low / (high - low)`,
  so a line fit gives both frequency factors. Scaling the original context length and both factors together
  leaves the tensor unchanged, so the context length is not recoverable: we take llama.cpp's own default (8192,
  right for Llama 3.1-3.3) unless the file states it.

  Args:
    rope_freqs: `(head_dim // 2,)` divisors from the GGUF.
  Returns:
    `{"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}`.
  Raises:
    ValueError: the tensor is not of llama3 form (recomputing it from the recovered parameters disagrees).
  """
  rope_freqs = np.asarray(rope_freqs, np.float64)
  factor = float(rope_freqs.max())
  wavelen = 2 * np.pi * rope_theta ** (np.arange(0, head_dim, 2) / head_dim)
  band = (rope_freqs > 1 + 1e-4) & (rope_freqs < factor * (1 - 1e-4))
  low, high = 1.0, 4.0  # llama.cpp's defaults; only identifiable from two or more points in the band
  if band.sum() >= 2:
    smooth = (1 / rope_freqs[band] - 1 / factor) / (1 - 1 / factor)
    slope, offset = np.polyfit(original_max_position_embeddings / wavelen[band], smooth, 1)
    low = round(float(-offset / slope), 3)
    high = round(float(low + 1 / slope), 3)
  scaling = {
      "rope_type": "llama3",
      "factor": round(factor, 4),
      "low_freq_factor": low,
      "high_freq_factor": high,
      "original_max_position_embeddings": int(original_max_position_embeddings),
  }
  smooth = np.clip((original_max_position_embeddings / wavelen - low) / (high - low), 0, 1)
  expected = 1 / ((1 - smooth) / factor + smooth)
  if not np.allclose(expected, rope_freqs, rtol=1e-3):
    raise ValueError(f"rope_freqs tensor is not llama3-style rope scaling (best fit {scaling})")
  return scaling


class _TensorError(ValueError):
  """A tensor the checked reader refuses; `_open` prefixes the file name."""


def _gguf_version() -> str:
  try:
    return importlib.metadata.version("gguf")
  except importlib.metadata.PackageNotFoundError:
    return "?"


class _CheckedReader(gguf.GGUFReader):
  """`gguf.GGUFReader` that checks every tensor's type id and byte range before the reader maps it.

  The plain reader turns an unknown type id into a bare enum error and a truncated file into a reshape error, neither
  naming the tensor. This hooks `_build_tensors` (gguf==0.19's private step that maps each tensor; its field parts
  are name length, name, rank, dims, type id, offset) and raises `_TensorError` naming the tensor first.
  """

  def _build_tensors(self, start_offs: int, fields: list) -> None:
    known = {t.value for t in gguf.GGMLQuantizationType}
    for field in fields:
      if len(field.parts) != 6:  # another gguf release's layout: leave the checks to the reader itself
        break
      _, name_data, _, dims, raw_type, offset = field.parts
      name = bytes(name_data).decode("utf-8", "replace")
      type_id = int(raw_type[0])
      if type_id not in known or gguf.GGMLQuantizationType(type_id) not in gguf.GGML_QUANT_SIZES:
        raise _TensorError(f"tensor {name!r} has quantisation type id {type_id}, unknown to gguf {_gguf_version()} "
                           f"(supported: {', '.join(_supported_types())})")
      qtype = gguf.GGMLQuantizationType(type_id)
      block, type_size = gguf.GGML_QUANT_SIZES[qtype]
      end = start_offs + int(offset[0]) + int(np.prod(dims, dtype=np.int64)) * type_size // block
      if end > self.data.size:
        raise _TensorError(f"truncated: tensor {name!r} ({qtype.name}) ends at byte {end:,} but the file has "
                           f"{self.data.size:,} bytes (an incomplete download or copy?)")
    super()._build_tensors(start_offs, fields)


@functools.cache
def _dequantizable(qtype: gguf.GGMLQuantizationType) -> bool:
  """Whether `gguf.quants.dequantize` handles `qtype` (tried on one all-zero block)."""
  _, type_size = gguf.GGML_QUANT_SIZES[qtype]
  try:
    gguf.quants.dequantize(np.zeros((1, type_size), np.uint8), qtype)
  except NotImplementedError:
    return False
  return True


def _supported_types() -> list[str]:
  return [t.name for t in gguf.GGMLQuantizationType if t in gguf.GGML_QUANT_SIZES and _dequantizable(t)]


def _open(path: Path) -> gguf.GGUFReader:
  if path.is_dir():
    raise IsADirectoryError(f"{path} is a directory; expected a GGUF file (.gguf)")
  if not path.is_file():
    raise FileNotFoundError(f"GGUF file not found: {path}")
  try:
    return _CheckedReader(path)
  except _TensorError as e:
    raise ValueError(f"{path}: {e}") from None
  except Exception as e:  # the reader raises assorted errors (bad magic, truncated arrays) for non-GGUF files
    with open(path, "rb") as f:
      if f.read(4) == b"GGUF":  # the header itself is cut short or damaged
        raise ValueError(f"{path} is a truncated or damaged GGUF file ({path.stat().st_size:,} bytes; the reader "
                         f"stopped in its header: {e})") from e
    raise ValueError(f"{path} is not a readable GGUF file: {e}") from e


def _metadata(reader: gguf.GGUFReader) -> dict[str, Any]:
  meta = {}
  for key, field in reader.fields.items():
    value = field.contents()
    if field.types == [gguf.GGUFValueType.FLOAT32]:
      value = float(str(np.float32(value)))  # shortest decimal: 1e-05, not 9.999999747378752e-06
    meta[key] = value
  return meta


def _hf_config(meta: dict[str, Any], shapes: dict[str, tuple[int, ...]], rope_freqs, path: Path,
               arch: str = "llama") -> dict[str, Any]:
  """The HF `config.json` of a `arch` ("llama" or "qwen2") GGUF from its `<arch>.*` metadata and tensor shapes."""
  def get(key, default=None):
    value = meta.get(f"{arch}.{key}", default)
    if value is None:
      raise ValueError(f"{path}: GGUF metadata lacks {arch}.{key}")
    return value

  if meta.get(f"{arch}.expert_count", 0):
    raise ValueError(f"{path}: mixture-of-experts GGUFs ({arch}.expert_count) are not supported")
  hidden, n_head = get("embedding_length"), get("attention.head_count")
  n_kv_head = get("attention.head_count_kv", n_head)
  head_dim = get("attention.key_length", hidden // n_head)
  if get("rope.dimension_count", head_dim) != head_dim:
    raise ValueError(f"{path}: partial rotary embeddings ({arch}.rope.dimension_count "
                     f"{get('rope.dimension_count')} < head dim {head_dim}) are not supported")
  if arch == "qwen2" and head_dim * n_head != hidden:
    raise ValueError(f"{path}: head dim {head_dim} x {n_head} heads != embedding length {hidden}; HF Qwen2 "
                     "derives the head dim from them")
  rope_theta = get("rope.freq_base", 10000.0)
  hf_class, model_type = _HF_CLASSES[arch]
  config = {
      "architectures": [hf_class],
      "model_type": model_type,
      "hidden_size": hidden,
      "intermediate_size": get("feed_forward_length"),
      "num_hidden_layers": get("block_count"),
      "num_attention_heads": n_head,
      "num_key_value_heads": n_kv_head,
      "head_dim": head_dim,
      "hidden_act": "silu",
      "rms_norm_eps": get("attention.layer_norm_rms_epsilon"),
      "rope_theta": rope_theta,
      "max_position_embeddings": get("context_length"),
      "vocab_size": shapes["model.embed_tokens.weight"][0],
      "tie_word_embeddings": "lm_head.weight" not in shapes,
      "torch_dtype": "float32",
  }
  if arch == "llama":
    config.update(attention_bias=False, mlp_bias=False)
  else:  # Qwen2: q/k/v biases are part of the architecture; llama.cpp runs every layer with full attention
    del config["head_dim"]
    config["use_sliding_window"] = False
  for hf_key, gguf_key in [("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                           ("pad_token_id", "padding_token_id")]:
    if f"tokenizer.ggml.{gguf_key}" in meta:
      config[hf_key] = meta[f"tokenizer.ggml.{gguf_key}"]

  # Old GGUFs wrote only `rope.scale_linear`; newer ones a type plus `rope.scaling.factor`.
  scaling_type = meta.get(f"{arch}.rope.scaling.type", "linear" if f"{arch}.rope.scale_linear" in meta else "none")
  factor = meta.get(f"{arch}.rope.scaling.factor", meta.get(f"{arch}.rope.scale_linear", 1.0))
  orig_ctx = meta.get(f"{arch}.rope.scaling.original_context_length")
  if rope_freqs is not None:
    config["rope_scaling"] = llama3_rope_scaling(rope_freqs, rope_theta, head_dim, orig_ctx or 8192)
  elif scaling_type == "linear" and factor != 1.0:
    config["rope_scaling"] = {"rope_type": "linear", "factor": factor}
  elif scaling_type == "yarn" and orig_ctx:  # Qwen2.5's long-context setting, as llama.cpp's converter writes it
    config["rope_scaling"] = {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": orig_ctx}
  elif scaling_type not in ("none", "linear"):
    raise ValueError(f"{path}: rope scaling type {scaling_type!r} is not supported (none, linear, llama3, yarn "
                     f"with {arch}.rope.scaling.original_context_length)")
  return config


def _hf_name(name: str, arch: str = "llama") -> str | None:
  if name in _GLOBAL_NAMES:
    return _GLOBAL_NAMES[name]
  parts = name.split(".", 2)
  layer_names = _ARCH_LAYER_NAMES[arch]
  if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in layer_names:
    return f"model.layers.{parts[1]}.{layer_names[parts[2]]}"
  return None


@dataclasses.dataclass(frozen=True)
class _Entry:
  """One GGUF tensor and what it becomes: its HF name, HF (numpy) shape, and the heads whose llama.cpp rotary row
  order is undone (Llama q/k projections; None for every other tensor)."""
  hf_name: str
  tensor: Any  # gguf.ReaderTensor
  shape: tuple[int, ...]
  rotary_heads: int | None


def _plan(path: Path) -> tuple[dict[str, Any], list[_Entry], dict[str, Any]]:
  """Reads the header of `path` and checks everything that can be checked before dequantising: architecture, tensor
  names, quantisation types, byte ranges (the reader), missing tensors, config. Returns (config, entries, meta)."""
  reader = _open(path)
  meta = _metadata(reader)
  arch = meta.get("general.architecture")
  if arch not in SUPPORTED_ARCHITECTURES:
    raise ValueError(
        f"{path}: unsupported GGUF architecture {arch!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}")

  found, rope_freqs, unknown, undecodable = [], None, [], []
  for tensor in reader.tensors:
    if not _dequantizable(tensor.tensor_type):
      undecodable.append(f"{tensor.name!r} ({tensor.tensor_type.name})")
    elif tensor.name == _ROPE_FREQS and arch == "llama":
      rope_freqs = _dequantize(path, tensor)
    elif (hf := _hf_name(tensor.name, arch)) is not None:
      found.append((hf, tensor))
    else:
      unknown.append(tensor.name)
  if undecodable:
    raise ValueError(f"{path}: tensor {undecodable[0]} has a quantisation type gguf {_gguf_version()} cannot "
                     f"dequantise" + (f" (and {len(undecodable) - 1} more)" if len(undecodable) > 1 else "")
                     + f"; supported: {', '.join(_supported_types())}")
  if unknown:
    raise ValueError(f"{path}: GGUF tensors with no HF {_HF_CLASSES[arch][0]} equivalent: {unknown[:8]}")

  # GGUFReader lists dims fastest-first (ggml's ne0, ne1); numpy/HF layout is the reverse, which is also what
  # `dequantize` returns for the row-major block data.
  shapes = {hf: tuple(reversed(tensor.shape.tolist())) for hf, tensor in found}
  config = _hf_config(meta, shapes, rope_freqs, path, arch)
  layer_names = _ARCH_LAYER_NAMES[arch].values()
  expected = {v for k, v in _GLOBAL_NAMES.items() if k != "output.weight"} | {
      f"model.layers.{i}.{v}" for i in range(config["num_hidden_layers"]) for v in layer_names}
  if missing := sorted(expected - shapes.keys()):
    raise ValueError(f"{path}: GGUF lacks tensors for {missing[:8]}")
  if extra := sorted(shapes.keys() - expected - {"lm_head.weight"}):
    raise ValueError(f"{path}: GGUF has tensors for layers beyond block_count {config['num_hidden_layers']}: "
                     f"{extra[:8]}")

  def rotary_heads(hf):
    if arch != "llama":  # llama.cpp permutes q/k rows for its Llama converter only (convert_hf_to_gguf.py)
      return None
    if hf.endswith("self_attn.q_proj.weight"):
      return config["num_attention_heads"]
    if hf.endswith("self_attn.k_proj.weight"):
      return config["num_key_value_heads"]
    return None

  return config, [_Entry(hf, tensor, shapes[hf], rotary_heads(hf)) for hf, tensor in found], meta


def _dequantize(path: Path, tensor) -> np.ndarray:
  """One GGUF tensor as a float32 array in HF (numpy) layout. np.array copies: the reader is a memmap."""
  expected_shape = tuple(reversed(tensor.shape.tolist()))
  try:
    array = np.array(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
  except (ValueError, TypeError, NotImplementedError) as e:
    raise ValueError(f"{path}: tensor {tensor.name!r} ({tensor.tensor_type.name}) could not be dequantised: {e}")
  if array.shape != expected_shape:
    raise ValueError(f"{path}: {tensor.name} dequantised to {array.shape}, expected {expected_shape}")
  return array


def _hf_tensors(path: Path, entries: list[_Entry]) -> Iterator[tuple[str, np.ndarray]]:
  """(HF name, float32 array in HF layout) for every entry, one tensor dequantised at a time."""
  for entry in entries:
    array = _dequantize(path, entry.tensor)
    if entry.rotary_heads is not None:
      array = llamacpp_to_hf_rotary(array, entry.rotary_heads)
    yield entry.hf_name, array


def read_gguf(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, Any]]:
  """Read a Llama- or Qwen2-family GGUF file as HF config, dequantised HF state dict and raw metadata.

  Returns:
    hf_config: the `config.json` dict of a `LlamaForCausalLM` or `Qwen2ForCausalLM`.
    state_dict: HF name -> float32 array in HF layout, e.g. `model.layers.N.self_attn.q_proj.weight`
      `(num_attention_heads * head_dim, hidden_size)`, `...q_proj.bias` `(num_attention_heads * head_dim,)` (Qwen2),
      `model.embed_tokens.weight` `(vocab_size, hidden_size)`, norms `(hidden_size,)`. No `lm_head.weight` when
      the file has no `output.weight` (tied embeddings).
    metadata: every GGUF key -> Python value (strings, numbers, lists such as `tokenizer.ggml.tokens`).
  Raises:
    FileNotFoundError: no file at `path`.
    ValueError: not a GGUF file, a truncated one, an architecture other than llama / qwen2, a tensor of a
      quantisation type `gguf` cannot dequantise (named with its type), or tensors/metadata we cannot map.
  """
  path = Path(path)
  config, entries, meta = _plan(path)
  return config, dict(_hf_tensors(path, entries)), meta


def _write_safetensors(out: Path, entries: list[_Entry], tensors: Iterator[tuple[str, np.ndarray]],
                       metadata: dict[str, str]) -> None:
  """Writes `tensors` (float32, in `entries`' order and shapes) as one safetensors file, a tensor at a time.

  The format: an 8-byte little-endian header length, a JSON header (each tensor's dtype, shape and byte range in
  the data section; padded with spaces to 8 bytes), then the raw little-endian data, back to back.
  """
  header: dict[str, Any] = {"__metadata__": metadata}
  offset = 0
  for entry in entries:
    size = 4 * int(np.prod(entry.shape, dtype=np.int64))
    header[entry.hf_name] = {"dtype": "F32", "shape": list(entry.shape), "data_offsets": [offset, offset + size]}
    offset += size
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)
  with open(out, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for entry, (name, array) in zip(entries, tensors, strict=True):
      if name != entry.hf_name or array.shape != entry.shape or array.dtype != np.float32:
        raise AssertionError(f"{name} {array.shape} {array.dtype} written in the place of {entry.hf_name}")
      f.write(np.ascontiguousarray(array, dtype="<f4").data)


def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2's byte -> printable character table: the alphabet byte-level BPE vocabularies are spelled in."""
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
  rest = [b for b in range(256) if b not in printable]
  return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(rest)}}


def build_tokenizer(path: str | os.PathLike, meta: dict[str, Any]):
  """The HF tokenizer a GGUF's metadata describes, built with the `tokenizers` library (no torch).

  llama.cpp's `gpt2` tokenizer model is byte-level BPE: the vocabulary is `tokenizer.ggml.tokens` (ids are list
  positions), the merges `tokenizer.ggml.merges`. Tokens marked CONTROL in `tokenizer.ggml.token_type` become special
  tokens, USER_DEFINED ones plain added tokens, both matched whole. The text is split as the `tokenizer.ggml.pre`
  pre-tokenizer type says (GPT-2's regex, preceded by a split into single digits for the types that have one, or the
  Llama 3 / Tekken / Qwen2 regex). This reproduces what `transformers` builds from the same file (plus our digit
  split), without its GGUF reader, which needs torch.

  Qwen2 (`general.architecture` qwen2) also gets Qwen2's NFC normalizer: `AutoTokenizer` loads every `model_type`
  qwen2 directory as `Qwen2Tokenizer`, which imposes it, so writing it keeps `tokenizer.json` and `AutoTokenizer`
  in agreement (and equal to upstream Qwen2.5's `tokenizer.json`). It changes only text that is not already NFC
  (e.g. "e" + combining acute), where llama.cpp and transformers' GGUF tokenizer do not normalise.

  Args:
    path: the GGUF file, for error messages.
    meta: its metadata, as `read_gguf` returns it.
  Returns:
    A `transformers.PreTrainedTokenizerFast` with the file's bos/eos/unk/pad tokens, `add_bos_token` /
    `add_eos_token` and chat template.
  Raises:
    ValueError: the file has no tokenizer, or one of a model other than `gpt2`.
  """
  kind = meta.get("tokenizer.ggml.model")
  if kind is None or "tokenizer.ggml.tokens" not in meta:
    raise ValueError(f"{path}: GGUF has no tokenizer (no tokenizer.ggml.model / tokenizer.ggml.tokens metadata)")
  if kind != "gpt2":
    raise ValueError(f"{path}: GGUF tokenizer model {kind!r} is not supported; only 'gpt2' (byte-level BPE) is")
  if "tokenizer.ggml.merges" not in meta:
    raise ValueError(f"{path}: GGUF byte-level BPE tokenizer lacks tokenizer.ggml.merges")
  from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
  from transformers import PreTrainedTokenizerFast

  tokens = list(meta["tokenizer.ggml.tokens"])
  token_types = meta.get("tokenizer.ggml.token_type") or [_TOKEN_NORMAL] * len(tokens)

  # Vocabularies are written in the byte alphabet; respell any token that is not (as transformers does).
  spelling = _bytes_to_unicode()
  alphabet = set(spelling.values())
  vocab = {t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8")): i
           for i, t in enumerate(tokens)}
  merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
  backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                                 end_of_word_suffix="", fuse_unk=False))
  pre = meta.get("tokenizer.ggml.pre")
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
  if pre in _DIGIT_SPLIT_PRE:
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
  elif pre in _SPLIT_REGEX_PRE:
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_SPLIT_REGEX_PRE[pre]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
  else:  # GPT-2's own regex, as transformers does for every other type
    backend.pre_tokenizer = byte_level
  backend.decoder = decoders.ByteLevel()
  if meta.get("general.architecture") == "qwen2":
    backend.normalizer = normalizers.NFC()
  # A CONTROL token outside the byte alphabet is a llama.cpp mislabel; transformers skips those, and so do we.
  backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t, t_type in zip(tokens, token_types)
                              if t_type == _TOKEN_CONTROL and set(t) <= alphabet])
  backend.add_tokens([AddedToken(t, normalized=False, special=False) for t, t_type in zip(tokens, token_types)
                      if t_type == _TOKEN_USER_DEFINED and t in vocab])

  def token(key):
    token_id = meta.get(f"tokenizer.ggml.{key}")
    return tokens[token_id] if token_id is not None else None

  return PreTrainedTokenizerFast(
      tokenizer_object=backend,
      bos_token=token("bos_token_id"),
      eos_token=token("eos_token_id"),
      unk_token=token("unknown_token_id"),
      pad_token=token("padding_token_id"),
      add_bos_token=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
      add_eos_token=bool(meta.get("tokenizer.ggml.add_eos_token", False)),
      chat_template=meta.get("tokenizer.chat_template"),
  )


def _save_tokenizer(path: Path, meta: dict[str, Any], out_dir: Path) -> None:
  """Write `build_tokenizer`'s files (`tokenizer.json`, `tokenizer_config.json`, `chat_template.jinja`)."""
  build_tokenizer(path, meta).save_pretrained(str(out_dir))


@dataclasses.dataclass(frozen=True)
class Converted:
  """What `convert_gguf` wrote."""
  out_dir: Path
  files: list[str]
  num_tensors: int
  num_params: int


# The list of files a conversion wrote, kept in the output directory: an overwrite removes only these.
MANIFEST = ".sparkjax-convert.json"


def convert_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False) -> Converted:
  """Convert a Llama- or Qwen2-family GGUF file into a Hugging Face model directory.

  Writes `config.json`, `generation_config.json`, the tokenizer files (with the chat template) and
  `model.safetensors` (float32, HF layout as in `read_gguf`, streamed one tensor at a time) into a temporary sibling
  of `out_dir`, then moves them into place, so a failure never leaves a half-written `out_dir`. Everything that can
  be checked from the file's header (architecture, tensor names and types, a truncated file) is checked before
  anything is written. The names of the files written are kept in `out_dir/MANIFEST`.

  With `overwrite`, the files an earlier conversion wrote into `out_dir` (its manifest) are replaced; every other
  file there is left alone, and one that the new files would replace or that a loader would mistake for weights
  is an error: the converter only ever removes what it wrote.

  Raises:
    FileExistsError: `out_dir` is not empty and `overwrite` is False, or holds files of its own that clash.
    NotADirectoryError: `out_dir` or one of its parents is a file.
    FileNotFoundError, IsADirectoryError, ValueError: as `read_gguf`; ValueError also for a tokenizer we cannot
      rebuild (`build_tokenizer`).
  """
  gguf_path, out_dir = Path(gguf_path), Path(out_dir).absolute()
  for parent in [out_dir, *out_dir.parents]:
    if parent.exists():
      if not parent.is_dir():
        raise NotADirectoryError(f"output directory {out_dir}: {parent} is a file")
      break
  if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
    raise FileExistsError(f"{out_dir} already exists and is not empty (--overwrite / overwrite=True replaces the "
                          "files an earlier conversion wrote there and leaves every other file alone)")
  config, entries, meta = _plan(gguf_path)

  out_dir.parent.mkdir(parents=True, exist_ok=True)
  tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
  tmp.mkdir()
  try:
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in config}
    (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    _save_tokenizer(gguf_path, meta, tmp)  # before the weights: a tokenizer we cannot rebuild fails fast
    _write_safetensors(tmp / "model.safetensors", entries, _hf_tensors(gguf_path, entries), {"format": "pt"})
    files = sorted(p.name for p in tmp.iterdir())
    (tmp / MANIFEST).write_text(json.dumps(dict(source=str(gguf_path), files=files), indent=2) + "\n")
    if out_dir.exists():
      _replace_own_files(tmp, out_dir, files)
    else:
      os.replace(tmp, out_dir)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return Converted(out_dir, files, len(entries), sum(int(np.prod(e.shape, dtype=np.int64)) for e in entries))


def _replace_own_files(tmp: Path, out_dir: Path, files: list[str]):
  """Moves `files` (+ the manifest) from `tmp` into the existing `out_dir`, removing only what the earlier
  conversion's manifest lists; the old files are put back if any move fails."""
  try:
    ours = set(json.loads((out_dir / MANIFEST).read_text())["files"]) if (out_dir / MANIFEST).is_file() else set()
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise ValueError(f"{out_dir / MANIFEST}: unreadable ({e}); remove it, or convert into another directory") from None
  theirs = [p.name for p in out_dir.iterdir() if p.name not in ours and p.name != MANIFEST]
  clash = sorted(n for n in theirs if n in files or n.endswith(".safetensors") or n == "model.safetensors.index.json")
  if clash:
    raise FileExistsError(f"{out_dir} holds {', '.join(clash)}, which no conversion wrote there; the converter only "
                          "replaces its own files: move them away or choose another --out")
  backup = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
  backup.mkdir()
  moved_old, moved_new = [], []
  try:
    for name in sorted(ours | {MANIFEST}):
      if (out_dir / name).exists():
        os.replace(out_dir / name, backup / name)
        moved_old.append(name)
    for name in files + [MANIFEST]:
      os.replace(tmp / name, out_dir / name)
      moved_new.append(name)
  except BaseException:
    for name in moved_new:
      (out_dir / name).unlink(missing_ok=True)
    for name in moved_old:
      os.replace(backup / name, out_dir / name)
    raise
  finally:
    shutil.rmtree(backup, ignore_errors=True)
