"""Stage III on real text: the host PRM reward's format check, PRM prompt, verdict parsing and designs against
hand-computed values, a PRM that writes nothing parseable (counted, reward 0), and `hf_grpo` running with a PRM
directory as its reward."""

import importlib.util
from pathlib import Path

import jax
import numpy as np
import pytest

from sparkjax.spark import host_prm_reward as H
from sparkjax.spark import rewards as R

ROOT = Path(__file__).resolve().parents[1]


def _resp(steps, answer="7", tail=""):
  body = "".join(f"<step>{s}</step>" for s in steps)
  return f"<think>{body}</think><answer>\\boxed{{{answer}}}</answer>{tail}"


@pytest.fixture(scope="module")
def prm_dir(tiny_qwen_dir):
  """A tiny random Qwen2 with the real Qwen3 tokenizer: it writes nothing a verification parser can read."""
  return tiny_qwen_dir


def test_designs_and_parsing_by_hand(prm_dir, monkeypatch):
  spec = R.FormatSpec(2, 4)
  texts = [_resp(["a = 1", "b = 2", "c = 7"]),  # valid, 3 steps
           _resp(["a = 1", "b = 7"]),  # valid, 2 steps
           _resp(["a = 7"]),  # too few steps: not sent to the PRM
           _resp(["a = 1", "b = 7"], tail=" Problem 2: ..."),  # text after </answer>
           _resp(["a = 1", "b = 2", "c = 7"])]  # valid; the PRM's output is unreadable
  outputs = {0: "Step 1: Correct\nStep 2: Incorrect\nStep 3: Incorrect\nIs the answer correct (Yes/No)? No",
             1: "Step 1: Correct\nStep 2: Correct\nIs the answer correct (Yes/No)? Yes", 4: "I think so."}
  prompts_seen = []

  def fake(self, prompts, n, max_new_tokens, temperature, key, top_p=1.0, desc=None):
    assert n == 1 and temperature == 0.0  # greedy, as the paper decodes the PRM
    prompts_seen.extend(prompts)
    return [[outputs[i]] for i in (0, 1, 4)]

  from sparkjax import text_generation

  monkeypatch.setattr(text_generation.TextModel, "sample_texts", fake)
  for design, want in (("process_outcome", [0, 1, 0, 0, 0]),
                       ("step_augmented", [0.4 * 1 / 3, 0.4 + 0.6, 0, 0, 0])):
    prompts_seen.clear()
    scorer = H.HostPRMScorer(prm_dir, "prm", design, spec, max_new_tokens=16)
    got = scorer(texts, ["P"] * 5)
    np.testing.assert_allclose(got["rewards"], want, rtol=1e-6)
    np.testing.assert_array_equal(got["format_valid"], [1, 1, 0, 0, 1])
    np.testing.assert_array_equal(got["prm_parsed"], [1, 1, 0, 0, 0])  # the unreadable output is counted
    np.testing.assert_array_equal(got["hack_step_collapse"], [0, 0, 1, 0, 0])
    np.testing.assert_array_equal(got["hack_appended"], [0, 0, 0, 1, 0])
  # The PRM's input: the verifier format with the policy's steps and its boxed answer.
  assert "Student Solution:\nStep 1: a = 1\nStep 2: b = 7\nAnswer: 7" in prompts_seen[1]
  assert prompts_seen[1].rstrip().endswith("Let's verify step by step.")


def test_a_prm_that_writes_nothing_readable_earns_zero(prm_dir):
  scorer = H.HostPRMScorer(prm_dir, "prm_cot", "process_outcome", R.FormatSpec(1, 4), max_new_tokens=8)
  got = scorer([_resp(["1 + 1 = 2", "2 + 5 = 7"])] * 3, ["What is 1 + 1 + 5?"] * 3)
  np.testing.assert_array_equal(got["format_valid"], 1.0)  # every row went to the PRM
  np.testing.assert_array_equal(got["prm_parsed"], 0.0)
  np.testing.assert_array_equal(got["rewards"], 0.0)


def test_bad_prm_settings_are_named(prm_dir):
  with pytest.raises(ValueError, match="selective_advantage.*not available on the host path"):
    H.HostPRMScorer(prm_dir, "prm", "selective_advantage", R.FormatSpec(), 8)
  with pytest.raises(ValueError, match="'disc'.*generative"):
    H.HostPRMScorer(prm_dir, "disc", "process_outcome", R.FormatSpec(), 8)


def test_hf_grpo_with_a_prm_directory(prm_dir, tmp_path):
  """`hf_grpo` with `reward.kind = "prm"`: the tiny policy rarely writes the format, so rewards are 0, but every
  part runs (format check, PRM calls when a row is valid, metrics) and the run resumes."""
  if jax.device_count() < 8:
    pytest.skip("needs 8 (fake) devices")
  from sparkjax import config_check
  from sparkjax.pipelines import hf_grpo

  spec = importlib.util.spec_from_file_location("hf_grpo_prm_cpu", ROOT / "configs" / "hf_grpo_prm_cpu.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config(f"iterations=2,model_dir={prm_dir},prm_dir={prm_dir}")
  c.mesh.update(dict(data=2, fsdp=2, tp=2))
  c.data.limit = 16
  c.data.max_prompt_len = 192
  c.rl.update(batch_size=8, group_size=2, max_new_tokens=8)
  c.reward.update(prm_max_new_tokens=8, prm_rows=8)
  c.eval.update(path="", size=4, batch_size=4)
  checks = config_check.Checks(c)
  hf_grpo.check_config(checks)
  checks.done()
  out = hf_grpo.run(c, str(tmp_path / "w"))
  m = out["final_metrics"]
  assert m["reward_mean"] == 0.0 and "score_format_valid" in m and "score_prm_parsed" in m
  assert 0.0 <= m["score_format_valid"] <= 1.0
