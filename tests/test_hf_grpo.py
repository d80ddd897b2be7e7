"""The `hf_grpo` pipeline end to end on a tiny random Qwen2 with the real Qwen3 tokenizer, GSM8K and math-verify,
on a (2, 2, 2) mesh of fake devices; resume gives the uninterrupted run's parameters; real data readers."""

import importlib.util
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from sparkjax.data import math as math_data
from sparkjax.models import hf, transformer
from sparkjax.models.config import ModelConfig

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
QWEN3_TOK = SHARED / "tokenizers" / "qwen3"

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")


def _config(model_dir, iterations, train_path=None):
  spec = importlib.util.spec_from_file_location("hf_grpo_cpu", ROOT / "configs" / "hf_grpo_cpu.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config(f"iterations={iterations},model_dir={model_dir}")
  c.model.preset = ""  # a random tiny model, not SmolLM2
  c.mesh.update(dict(data=2, fsdp=2, tp=2))
  if train_path:
    c.data.path = str(train_path)
  c.data.limit = 32
  c.data.max_prompt_len = 128
  c.rl.batch_size = 4 * 2  # 4 prompts (they split over data x fsdp = 4) x 2 samples
  c.rl.group_size = 2
  c.rl.max_new_tokens = 8
  c.rl.optimizer.lr = 1e-3  # large enough that an update visibly changes the tiny model
  c.rl.kl_coef = 0.01
  c.eval.size = 4
  c.eval.batch_size = 4
  c.eval.every = 2
  c.checkpoint.every = 1
  c.grader_workers = 1
  return c


SEVEN = 22  # the Qwen3 tokenizer's id of "7"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  """A tiny Qwen2 with the real Qwen3 tokenizer, built so that every sampled token is "7" or end-of-turn with equal
  probability (their logits are equal and ~22 above all others): a response "7" (probability 1/4) earns reward 1 on
  a question whose answer is 7, anything else 0. Groups with mixed rewards, hence a policy gradient, follow from
  the sampler's seed and not from rounding: the two logits are bitwise equal and every other token is far below."""
  if not (QWEN3_TOK / "tokenizer.json").is_file():
    pytest.skip(f"shared Qwen3 tokenizer not found at {QWEN3_TOK}")
  from sparkjax.models.tokenizer import load_tokenizer

  tok = load_tokenizer(QWEN3_TOK)
  assert tok.encode("7") == [SEVEN]
  cfg = ModelConfig.tiny("qwen2", vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_heads=4,
                         num_kv_heads=2, head_dim=8, num_layers=2, eos_token_id=tok.eos_token_id,
                         max_position_embeddings=512, tie_embeddings=False)
  params = jax.tree.map(np.array, transformer.init_params(cfg, jax.random.key(0), std=0.02))
  params["embed"][:, 0] = 1.0  # one large residual direction shared by every token
  params["lm_head"][:] = 0.0
  params["lm_head"][0, [SEVEN, tok.eos_token_id]] = 4.0
  out = tmp_path_factory.mktemp("tiny") / "hf"
  hf.save_params(params, cfg, out, extra_files=lambda tmp: [shutil.copy(f, tmp) for f in QWEN3_TOK.glob("*.json")])
  return out


@pytest.fixture(scope="module")
def sevens(tmp_path_factory):
  """32 GSM8K-style records whose answer is 7; every fourth question is too long for the 128-token prompt limit."""
  f = tmp_path_factory.mktemp("data") / "sevens.jsonl"
  long = " ".join(["The farmer counts his ducks again."] * 40)
  rows = [dict(question=f"Tom has {i} apples and eats {i - 7}. How many are left?" + (long if i % 4 == 0 else ""),
               answer=f"{i} - {i - 7} = <<{i}-{i - 7}=7>>7\n#### 7") for i in range(10, 42)]
  f.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return f


def _run(tmp, model_dir, iterations, train_path=None):
  from sparkjax.pipelines import hf_grpo

  return hf_grpo.run(_config(model_dir, iterations, train_path), str(tmp))


def test_runs_resumes_and_exports(tiny_dir, sevens, tmp_path, capsys):
  straight = _run(tmp_path / "straight", tiny_dir, 3, sevens)
  assert sorted(straight["history"], key=int) == ["0", "2", "3"]
  m = straight["final_metrics"]
  assert m["grader_timeouts"] == 0 and m["grader_errors"] == 0
  assert 0 < m["response_length"] <= 8 and np.isfinite(m["loss"])
  # Rewards were earned and the policy moved away from the reference (see `tiny_dir`: by construction).
  assert 0 < m["reward_mean"] < 1 and m["kl"] > 0, m
  assert straight["train_records"] == 24 and straight["train_too_long"] == 8
  assert straight["train_unreadable"] == 0

  # Stop after 2 iterations, then ask for 3: it resumes from the checkpoint of iteration 2.
  _run(tmp_path / "resumed", tiny_dir, 2, sevens)
  capsys.readouterr()
  _run(tmp_path / "resumed", tiny_dir, 3, sevens)
  assert "resumed from iteration 2" in capsys.readouterr().err
  a = load_file(str(tmp_path / "straight" / "policy_3" / "model.safetensors"))
  b = load_file(str(tmp_path / "resumed" / "policy_3" / "model.safetensors"))
  base = load_file(str(tiny_dir / "model.safetensors"))
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert any(not np.array_equal(a[k], base[k]) for k in a)  # the policy moved
  # The exported policy is a HF directory sparkjax (and transformers) can load, tokenizer included.
  hf.load_params(tmp_path / "straight" / "policy_3")
  assert (tmp_path / "straight" / "policy_3" / "tokenizer.json").is_file()
  summary = json.loads((tmp_path / "straight" / "summary.json").read_text())
  assert summary["history"]["3"]["accuracy"] == straight["history"]["3"]["accuracy"]

  # Running the finished run again changes none of its results.
  before = (tmp_path / "straight" / "summary.json").read_bytes()
  _run(tmp_path / "straight", tiny_dir, 3, sevens)
  assert (tmp_path / "straight" / "summary.json").read_bytes() == before


def test_missing_model_is_a_clear_error(tmp_path):
  c = _config("", 1)
  c.model.gguf = ""
  from sparkjax.pipelines import hf_grpo

  with pytest.raises(ValueError, match="model.dir .* or model.gguf must be set"):
    hf_grpo.run(c, str(tmp_path))


def test_preset_mismatch_is_a_clear_error(tiny_dir, tmp_path):
  c = _config(tiny_dir, 1)
  c.model.preset = "smollm2_135m"
  from sparkjax.pipelines import hf_grpo

  with pytest.raises(ValueError, match="model.preset='smollm2_135m'.*does not describe"):
    hf_grpo.run(c, str(tmp_path))


def test_real_math_sources_read():
  gsm = math_data.load_math(SHARED / "data" / "gsm8k" / "test.jsonl")
  assert len(gsm.records) == 1319 and not gsm.bad and gsm.records[0].answer == "18"
  m500 = math_data.load_math(SHARED / "data" / "math" / "math500_test.jsonl")
  assert len(m500.records) == 500 and m500.records[0].answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
  train = math_data.load_math(SHARED / "data" / "math" / "hendrycks_math_train.jsonl")
  assert len(train.records) + len(train.bad) == 7500
  assert all("\\boxed{}" in why for _, why in train.bad)  # reported with line and reason, not dropped silently
  olymp = math_data.load_math(SHARED / "data" / "qwen25_math_eval" / "olympiadbench" / "test.jsonl")
  assert olymp.records[0].answer == "2"


def test_bad_math_records_are_reported(tmp_path):
  f = tmp_path / "d.jsonl"
  f.write_text("\n".join(json.dumps(r) for r in [
      {"question": "1+1?", "answer": "so #### 2"},
      {"question": "no answer"},
      {"answer": "3"},
      {"problem": "p", "solution": "no box"},
      {"problem": "q", "solution": "thus \\boxed{\\frac{1}{2}}"},
  ]) + "\n")
  d = math_data.load_math(f)
  assert [r.answer for r in d.records] == ["2", "\\frac{1}{2}"]
  assert [w for w, _ in d.bad] == ["d.jsonl:2", "d.jsonl:3", "d.jsonl:4"]
  assert "3 left out" in d.report()
  (tmp_path / "empty.jsonl").write_text(json.dumps({"answer": "1"}) + "\n")
  with pytest.raises(ValueError, match="empty.jsonl.*no usable record"):
    math_data.load_math(tmp_path / "empty.jsonl")


def test_prompt_dataset_is_the_same_global_batch_for_any_process_count():
  prompts = [[i + 1] * (1 + i % 3) for i in range(10)]
  one = iter(math_data.prompt_dataset(prompts, 4, 0, seed=3, global_batch=4))
  two = [iter(math_data.prompt_dataset(prompts, 4, 0, seed=3, global_batch=4, process_index=p, process_count=2))
         for p in range(2)]
  seen = []
  for _ in range(5):  # crosses an epoch boundary (10 prompts, 4 per batch)
    a = next(one)
    b = [next(t) for t in two]
    np.testing.assert_array_equal(a["target"], np.concatenate([x["target"] for x in b]))
    np.testing.assert_array_equal(a["prompt"], np.concatenate([x["prompt"] for x in b]))
    seen += a["target"].tolist()
  assert sorted(seen[:10]) == list(range(10))  # an epoch is a permutation
  row = a["prompt"][0]
  assert (row[a["prompt_mask"][0]] == prompts[a["target"][0]]).all()  # left-padded prompt, mask on its tokens


def test_coevolve_on_real_text_recycles_updates_and_resumes(tiny_dir, sevens, tmp_path, capsys):
  """hf_grpo with coevolve.enabled on the tiny "7" model: rollouts become judge / reflection examples (written to
  judge_examples.jsonl), a full cache triggers a judge update whose unreadable outputs are counted, and a run
  stopped after 2 iterations and resumed to 3 ends bitwise where the straight run does, cache included."""
  from sparkjax.pipelines import hf_grpo

  def cfg(iterations):
    c = _config(tiny_dir, iterations, sevens)
    c.coevolve.update(enabled=True, max_judge=2, max_reflection=2, judge_batch=4, judge_group_size=2,
                      max_prompt_len=192, max_new_tokens=8)
    return c

  straight = hf_grpo.run(cfg(3), str(tmp_path / "straight"))
  m = straight["final_metrics"]
  assert m["judge_updates"] >= 1 and m["recycled_pointwise"] + m["recycled_pairwise"] >= 1
  # The tiny model answers "7" or nothing, never a boxed verdict: every judge row is counted as unreadable.
  rows = m["judge_updates"] * 4 * 2
  assert m["judge_rows_no_box"] == rows and m["judge_rows_ok"] == 0
  lines = [json.loads(l) for l in (tmp_path / "straight" / "judge_examples.jsonl").read_text().splitlines()]
  assert {l["kind"] for l in lines} <= {"pointwise", "pairwise", "reflection"} and len(lines) >= 4
  assert all(l["label"] in ("Yes", "No", "A", "B") for l in lines if l["kind"] != "reflection")
  assert all(l["label"] == "7" for l in lines if l["kind"] == "reflection")
  assert {l["iteration"] for l in lines} <= {0, 1, 2}
  hf_grpo.run(cfg(2), str(tmp_path / "resumed"))
  capsys.readouterr()
  hf_grpo.run(cfg(3), str(tmp_path / "resumed"))
  assert "resumed from iteration 2" in capsys.readouterr().err
  a = load_file(str(tmp_path / "straight" / "policy_3" / "model.safetensors"))
  b = load_file(str(tmp_path / "resumed" / "policy_3" / "model.safetensors"))
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert (tmp_path / "resumed" / "judge_examples.jsonl").read_text() == \
      (tmp_path / "straight" / "judge_examples.jsonl").read_text()


@pytest.mark.parametrize("name", ["hf_grpo_cpu", "hf_grpo_qwen_cpu", "hf_grpo_prm_cpu", "coevolve_cpu"])
def test_real_model_cpu_configs_pass_their_checks(name, tiny_dir):
  """The CPU configs of real models are valid as written (with a model directory in place of the cached GGUF, and
  the batch on one data shard: their default mesh spreads it over the machine's one CPU device)."""
  from sparkjax import config_check
  from sparkjax.pipelines import hf_grpo

  spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config(f"model_dir={tiny_dir}")
  c.mesh.update(dict(data=1, fsdp=1, tp=8))
  checks = config_check.Checks(c)
  hf_grpo.check_config(checks)
  assert checks.errors == []
