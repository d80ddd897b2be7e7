"""Model hyperparameters as data: one frozen dataclass and the real size presets.

The same `ModelConfig` describes Qwen2 / Qwen2.5 (q/k/v bias), Llama 3 / SmolLM2 (no bias, optional Llama-3 rope
scaling) and Qwen3 (per-head q/k RMSNorm). Families differ only in flags, so presets are plain constructors, not
subclasses. Runtime choices (dtypes, scan, remat) live here too so one object fixes every compiled shape.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3")

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Llama-3 style frequency-dependent rope scaling (`rope_type: llama3` in HF configs)."""

  factor: float = 8.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Decoder hyperparameters. Names follow HF where one exists; sizes are counts, not bytes."""

  model_type: str = "qwen2"
  vocab_size: int = 256
  hidden_size: int = 64
  intermediate_size: int = 128
  num_layers: int = 2
  num_heads: int = 4
  num_kv_heads: int = 2
  head_dim: int = 16
  rope_theta: float = 10000.0
  rope_scaling: RopeScaling | None = None
  rms_norm_eps: float = 1e-6
  tie_embeddings: bool = True
  qkv_bias: bool = False
  qk_norm: bool = False
  max_position_embeddings: int = 4096
  bos_token_id: int | None = None
  eos_token_id: int | tuple[int, ...] | None = None
  # Runtime choices.
  param_dtype: str = "float32"
  compute_dtype: str = "float32"
  scan_layers: bool = True
  remat: bool = False

  def __post_init__(self):
    if self.model_type not in SUPPORTED_MODEL_TYPES:
      raise ValueError(
          f"unsupported model_type {self.model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
    for name in ("param_dtype", "compute_dtype"):
      if getattr(self, name) not in _DTYPES:
        raise ValueError(f"{name}={getattr(self, name)!r}; expected one of {sorted(_DTYPES)}")

  @property
  def dtype(self):
    return _DTYPES[self.compute_dtype]

  @property
  def pdtype(self):
    return _DTYPES[self.param_dtype]

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  def num_params(self) -> int:
    """Parameter count (embedding counted once when tied)."""
    d, f, h = self.hidden_size, self.intermediate_size, self.head_dim
    attn = d * h * (2 * self.num_heads + 2 * self.num_kv_heads)
    if self.qkv_bias:
      attn += h * (self.num_heads + 2 * self.num_kv_heads)
    if self.qk_norm:
      attn += 2 * h
    layer = attn + 3 * d * f + 2 * d
    emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
    return self.num_layers * layer + emb + d

  def flops_per_token(self, context: int = 0) -> float:
    """Forward FLOPs per token: 2 * (non-embedding matmul params + lm_head) + attention over `context` keys."""
    d, h = self.hidden_size, self.head_dim
    matmul = self.num_layers * (d * h * (2 * self.num_heads + 2 * self.num_kv_heads) + 3 * d * self.intermediate_size)
    matmul += self.vocab_size * d
    attn = self.num_layers * 2 * 2 * self.num_heads * h * context
    return 2.0 * matmul + attn

  # ---- presets: the real checkpoints' shapes --------------------------------------------------------------------

  @classmethod
  def tiny(cls, model_type: str = "qwen2", **kw) -> "ModelConfig":
    """A ~0.1M-parameter model of the given family, for tests."""
    flags = dict(qwen2=dict(qkv_bias=True), llama=dict(), qwen3=dict(qk_norm=True))[model_type]
    return cls(model_type=model_type, **{**flags, **kw})

  @classmethod
  def qwen25_math_1_5b(cls, **kw) -> "ModelConfig":
    return cls(model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_layers=28,
               num_heads=12, num_kv_heads=2, head_dim=128, rope_theta=10000.0, rms_norm_eps=1e-6,
               tie_embeddings=True, qkv_bias=True, max_position_embeddings=4096, bos_token_id=151643,
               eos_token_id=151643, **kw)

  @classmethod
  def qwen25_math_7b(cls, **kw) -> "ModelConfig":
    return cls(model_type="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28,
               num_heads=28, num_kv_heads=4, head_dim=128, rope_theta=10000.0, rms_norm_eps=1e-6,
               tie_embeddings=False, qkv_bias=True, max_position_embeddings=4096, bos_token_id=151643,
               eos_token_id=151643, **kw)

  @classmethod
  def qwen25_14b(cls, **kw) -> "ModelConfig":
    return cls(model_type="qwen2", vocab_size=152064, hidden_size=5120, intermediate_size=13824, num_layers=48,
               num_heads=40, num_kv_heads=8, head_dim=128, rope_theta=1000000.0, rms_norm_eps=1e-6,
               tie_embeddings=False, qkv_bias=True, max_position_embeddings=32768, bos_token_id=151643,
               eos_token_id=151645, **kw)

  @classmethod
  def qwen3_8b(cls, **kw) -> "ModelConfig":
    return cls(model_type="qwen3", vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_layers=36,
               num_heads=32, num_kv_heads=8, head_dim=128, rope_theta=1000000.0, rms_norm_eps=1e-6,
               tie_embeddings=False, qk_norm=True, max_position_embeddings=40960, bos_token_id=151643,
               eos_token_id=151645, **kw)

  @classmethod
  def qwen3_32b(cls, **kw) -> "ModelConfig":
    return cls(model_type="qwen3", vocab_size=151936, hidden_size=5120, intermediate_size=25600, num_layers=64,
               num_heads=64, num_kv_heads=8, head_dim=128, rope_theta=1000000.0, rms_norm_eps=1e-6,
               tie_embeddings=False, qk_norm=True, max_position_embeddings=40960, bos_token_id=151643,
               eos_token_id=151645, **kw)

  @classmethod
  def smollm2_135m(cls, **kw) -> "ModelConfig":
    return cls(model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
               num_heads=9, num_kv_heads=3, head_dim=64, rope_theta=100000.0, rms_norm_eps=1e-5,
               tie_embeddings=True, max_position_embeddings=8192, bos_token_id=1, eos_token_id=2, **kw)

  @classmethod
  def preset(cls, name: str, **kw) -> "ModelConfig":
    """A preset by name, e.g. `preset("qwen25_math_7b", param_dtype="bfloat16")`."""
    fn = PRESETS.get(name)
    if fn is None:
      raise ValueError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return fn(**kw)

  # ---- Hugging Face config.json ---------------------------------------------------------------------------------

  @classmethod
  def from_hf(cls, hf: dict[str, Any], source: str = "config.json", **kw) -> "ModelConfig":
    """Builds a config from a HF `config.json` dict; `source` names the file in errors."""
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
      raise ValueError(f"{source}: unsupported model_type {model_type!r}; supported: "
                       f"{', '.join(SUPPORTED_MODEL_TYPES)}")
    _check_hf_types(hf, source)
    try:
      heads = hf["num_attention_heads"]
      d = hf["hidden_size"]
      scaling = hf.get("rope_scaling") or (hf.get("rope_parameters") if isinstance(hf.get("rope_parameters"), dict)
                                           else None)
      rope_theta = hf.get("rope_theta")
      if rope_theta is None and isinstance(hf.get("rope_parameters"), dict):
        rope_theta = hf["rope_parameters"].get("rope_theta")
      rope = None
      if scaling and scaling.get("rope_type", scaling.get("type")) == "llama3":
        rope = RopeScaling(factor=float(scaling["factor"]), low_freq_factor=float(scaling["low_freq_factor"]),
                           high_freq_factor=float(scaling["high_freq_factor"]),
                           original_max_position_embeddings=int(scaling["original_max_position_embeddings"]))
      elif scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
        raise ValueError(f"{source}: rope scaling type {scaling.get('rope_type')!r} is not supported "
                         "(supported: default, llama3)")
      eos = hf.get("eos_token_id")
      cfg = dict(
          model_type=model_type, vocab_size=hf["vocab_size"], hidden_size=d,
          intermediate_size=hf["intermediate_size"], num_layers=hf["num_hidden_layers"], num_heads=heads,
          num_kv_heads=hf.get("num_key_value_heads") or heads, head_dim=hf.get("head_dim") or d // heads,
          rope_theta=float(rope_theta if rope_theta is not None else 10000.0), rope_scaling=rope,
          rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
          tie_embeddings=bool(hf.get("tie_word_embeddings", model_type != "qwen3")),
          qkv_bias=model_type == "qwen2" or bool(hf.get("attention_bias", False)),
          qk_norm=model_type == "qwen3",
          max_position_embeddings=hf.get("max_position_embeddings", 4096),
          bos_token_id=hf.get("bos_token_id"),
          eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
      )
    except KeyError as e:
      raise ValueError(f"{source}: missing field {e.args[0]!r}") from None
    except (TypeError, AttributeError, ValueError) as e:
      raise ValueError(f"{source}: rope_scaling / rope_parameters has a field of the wrong type ({e})") from None
    return cls(**{**cfg, **kw})

  def to_hf(self) -> dict[str, Any]:
    """The HF `config.json` dict that `transformers` loads into the matching architecture."""
    arch = dict(llama="LlamaForCausalLM", qwen2="Qwen2ForCausalLM", qwen3="Qwen3ForCausalLM")[self.model_type]
    out = dict(
        architectures=[arch], model_type=self.model_type, vocab_size=self.vocab_size,
        hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
        num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads,
        num_key_value_heads=self.num_kv_heads, head_dim=self.head_dim, rope_theta=self.rope_theta,
        rms_norm_eps=self.rms_norm_eps, tie_word_embeddings=self.tie_embeddings,
        max_position_embeddings=self.max_position_embeddings, hidden_act="silu",
        torch_dtype=self.param_dtype, bos_token_id=self.bos_token_id,
        eos_token_id=list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id,
    )
    if self.model_type == "llama":
      out.update(attention_bias=False, mlp_bias=False)
    if self.model_type == "qwen3":
      out.update(attention_bias=False)
    if self.rope_scaling is not None:
      out["rope_scaling"] = dict(rope_type="llama3", **dataclasses.asdict(self.rope_scaling))
    return out


_HF_INTS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "max_position_embeddings")
_HF_FLOATS = ("rope_theta", "rms_norm_eps")


def _check_hf_types(hf: dict[str, Any], source: str):
  """Every size in a HF config.json a positive integer, every float a positive number (None = unset)."""
  for k in _HF_INTS:
    v = hf.get(k)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
      raise ValueError(f"{source}: field {k!r} is {v!r}; expected a positive integer")
  for k in _HF_FLOATS:
    v = hf.get(k)
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0):
      raise ValueError(f"{source}: field {k!r} is {v!r}; expected a positive number")
  for k in ("bos_token_id", "eos_token_id"):
    v = hf.get(k)
    ids = v if isinstance(v, list) else [v]
    if v is not None and not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
      raise ValueError(f"{source}: field {k!r} is {v!r}; expected a token id or a list of them")


PRESETS = {
    "tiny": ModelConfig.tiny,
    "qwen25_math_1_5b": ModelConfig.qwen25_math_1_5b,
    "qwen25_math_7b": ModelConfig.qwen25_math_7b,
    "qwen25_14b": ModelConfig.qwen25_14b,
    "qwen3_8b": ModelConfig.qwen3_8b,
    "qwen3_32b": ModelConfig.qwen3_32b,
    "smollm2_135m": ModelConfig.smollm2_135m,
}
