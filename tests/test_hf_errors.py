"""Bad model directories give clear errors that name the problem and leave files untouched."""

import json

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from sparkjax.models import hf, transformer
from sparkjax.models.config import ModelConfig

CFG = ModelConfig.tiny("llama")


@pytest.fixture()
def model_dir(tmp_path):
  params = transformer.init_params(CFG, jax.random.key(0))
  return hf.save_params(params, CFG, tmp_path / "m")


def test_missing_dir(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    hf.load_params(tmp_path / "nope")


def test_empty_dir(tmp_path):
  (tmp_path / "e").mkdir()
  with pytest.raises(FileNotFoundError, match="config.json"):
    hf.load_params(tmp_path / "e")


def test_no_weights(model_dir):
  (model_dir / "model.safetensors").unlink()
  with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
    hf.load_params(model_dir)


def test_unsupported_model_type(model_dir):
  cfg = json.loads((model_dir / "config.json").read_text())
  cfg["model_type"] = "gpt2"
  (model_dir / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(ValueError, match="unsupported model_type 'gpt2'; supported: llama, qwen2, qwen3"):
    hf.load_params(model_dir)


def test_missing_tensor_is_named(model_dir):
  f = model_dir / "model.safetensors"
  tensors = load_file(f)
  del tensors["model.layers.1.mlp.up_proj.weight"]
  save_file(tensors, f)
  with pytest.raises(ValueError, match="'model.layers.1.mlp.up_proj.weight' is missing"):
    hf.load_params(model_dir)


def test_wrong_shape_is_named(model_dir):
  f = model_dir / "model.safetensors"
  tensors = load_file(f)
  tensors["model.layers.0.self_attn.k_proj.weight"] = np.zeros((3, 64), np.float32)
  save_file(tensors, f)
  with pytest.raises(ValueError, match=r"'model.layers.0.self_attn.k_proj.weight' has shape \(3, 64\), "
                                       r"expected \(32, 64\)"):
    hf.load_params(model_dir)


def test_save_refuses_to_overwrite(model_dir):
  before = (model_dir / "model.safetensors").read_bytes()
  params = transformer.init_params(CFG, jax.random.key(1))
  with pytest.raises(FileExistsError):
    hf.save_params(params, CFG, model_dir)
  assert (model_dir / "model.safetensors").read_bytes() == before


def test_sharded_index_loads(model_dir):
  tensors = load_file(model_dir / "model.safetensors")
  names = sorted(tensors)
  half = len(names) // 2
  save_file({n: tensors[n] for n in names[:half]}, model_dir / "model-00001-of-00002.safetensors")
  save_file({n: tensors[n] for n in names[half:]}, model_dir / "model-00002-of-00002.safetensors")
  (model_dir / "model.safetensors").unlink()
  index = {"weight_map": {n: f"model-0000{1 + (i >= half)}-of-00002.safetensors" for i, n in enumerate(names)}}
  (model_dir / "model.safetensors.index.json").write_text(json.dumps(index))
  params, _ = hf.load_params(model_dir)
  np.testing.assert_array_equal(np.asarray(params["layers"]["mlp_norm"][0]),
                                tensors["model.layers.0.post_attention_layernorm.weight"])


def test_presets_have_the_real_sizes():
  billions = {name: ModelConfig.preset(name).num_params() / 1e9 for name in
              ("qwen25_math_1_5b", "qwen25_math_7b", "qwen25_14b", "qwen3_8b", "qwen3_32b", "smollm2_135m")}
  expected = dict(qwen25_math_1_5b=1.54, qwen25_math_7b=7.62, qwen25_14b=14.77, qwen3_8b=8.19, qwen3_32b=32.76,
                  smollm2_135m=0.135)
  for name, b in billions.items():
    assert abs(b - expected[name]) / expected[name] < 0.01, (name, b)


def test_full_size_shapes_without_memory():
  cfg = ModelConfig.qwen25_math_7b(param_dtype="bfloat16", compute_dtype="bfloat16")
  out = jax.eval_shape(lambda p, t: transformer.forward(p, cfg, t), transformer.abstract_params(cfg),
                       jax.ShapeDtypeStruct((2, 16), np.int32))
  assert out.shape == (2, 16, 152064)
