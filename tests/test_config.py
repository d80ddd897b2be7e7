"""Configs are code: typed `:key=value` args, locked configs, and readable override errors."""

import subprocess
import sys
from pathlib import Path

import pytest

from sparkjax.config_args import parse_arg

ROOT = Path(__file__).resolve().parents[1]


def test_parse_arg_types():
  c = parse_arg("num_prompts=3,runlocal,name=x", runlocal=False, num_prompts=8, name=None, t=0.5)
  assert c.num_prompts == 3 and c.runlocal is True and c.name == "x" and c.t == 0.5
  assert parse_arg(None, a=1).a == 1


@pytest.mark.parametrize("arg,msg", [("nope=1", "'nope' is not known"), ("num_prompts=x", "expected an integer"),
                                     ("num_prompts", "needs a value"), ("runlocal=maybe", "expected true or false")])
def test_parse_arg_errors(arg, msg):
  with pytest.raises(ValueError, match=msg):
    parse_arg(arg, runlocal=False, num_prompts=8)


def _main(*args):
  return subprocess.run([sys.executable, "-m", "sparkjax.main", *args], capture_output=True, text=True, cwd=ROOT,
                        timeout=300)


def test_override_typo_names_the_key(tmp_path):
  r = _main("--config=configs/generate.py:runlocal", "--config.sampling.temprature=0.5", f"--workdir={tmp_path}")
  assert r.returncode != 0
  assert "--config.sampling.temprature" in r.stderr and "unknown key 'temprature'" in r.stderr
  assert not any(tmp_path.iterdir())


def test_override_wrong_type_is_an_error(tmp_path):
  r = _main("--config=configs/generate.py:runlocal", "--config.sampling.num_samples=many", f"--workdir={tmp_path}")
  assert r.returncode != 0 and "num_samples" in r.stderr
  assert not any(tmp_path.iterdir())


def test_bad_config_arg_is_an_error(tmp_path):
  r = _main("--config=configs/generate.py:num_prompt=3", f"--workdir={tmp_path}")
  assert r.returncode != 0 and "'num_prompt' is not known" in r.stderr


@pytest.mark.parametrize("chunk,tokens,ok", [(0, 400, True), (80, 400, True), (512, 400, True), (64, 400, False)])
def test_logprob_chunk_must_divide_the_completion(chunk, tokens, ok):
  import ml_collections

  from sparkjax import config_check

  ch = config_check.Checks(ml_collections.ConfigDict(dict(rl=dict(logprob_chunk=chunk, max_new_tokens=tokens))))
  config_check.check_logprob_chunk(ch, "rl.max_new_tokens")
  assert ch.errors == ([] if ok else ["config rl.logprob_chunk=64 does not divide rl.max_new_tokens=400 (log-probs "
                                      "are taken in blocks of rl.logprob_chunk; 0 = one block)"])


def test_microbatches_must_divide_the_rollouts():
  import ml_collections

  from sparkjax import config_check

  ch = config_check.Checks(ml_collections.ConfigDict(dict(rl=dict(batch_size=16, num_microbatches=3))))
  config_check.check_grpo(ch)
  assert ("config rl.batch_size=16 is not a multiple of rl.num_microbatches=3 (the update's micro-batches split its "
          "rows evenly)") in ch.errors
  # The field is optional (the world's configs have none): absent, nothing is said about it.
  ch = config_check.Checks(ml_collections.ConfigDict(dict(rl=dict(batch_size=16))))
  config_check.check_grpo(ch)
  assert not [e for e in ch.errors if "num_microbatches" in e]


def test_microbatches_must_divide_the_judge_rows():
  import ml_collections

  from sparkjax import config_check

  def judge_errors(judge_batch, microbatches=None):
    rl = dict(batch_size=16, group_size=4, **({} if microbatches is None else dict(num_microbatches=microbatches)))
    ch = config_check.Checks(ml_collections.ConfigDict(dict(rl=rl, coevolve=dict(
        judge_batch=judge_batch, judge_group_size=4, max_judge=1, max_reflection=1))))
    config_check.check_coevolve(ch, None)
    return [e for e in ch.errors if "judge_batch" in e]

  assert judge_errors(3, microbatches=8) == [
      "config coevolve.judge_batch=3: coevolve.judge_batch x coevolve.judge_group_size = 12 judge rows per update is "
      "not a multiple of rl.num_microbatches=8 (the judge update splits its rows into the policy's micro-batches)"]
  assert judge_errors(4, microbatches=8) == []
  assert judge_errors(3) == []  # no micro-batches (the world's configs): nothing to split


def test_spark_prm_trains_the_variants_discriminative_prms_only_when_asked():
  """The paper's formats (`prm`, PRM-CoT) on every data variant and the ORM always; the discriminative PRM on the
  exact labels and step consistency (Stage III's), and on the other four SPARK variants only with `disc_variants`."""
  import importlib.util

  spec = importlib.util.spec_from_file_location("spark_prm_config", ROOT / "configs" / "spark_prm.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  variants = ["step_consistency", "outcome_consistency", "meta_critique_base", "meta_critique_outcome",
              "reference_guided", "gold"]
  for arg, discs in ((None, ["step_consistency", "gold"]), ("disc_variants", variants)):
    runs = list(mod.get_config(arg).stage2.runs)
    assert sorted(r for r in runs if r.endswith(":disc")) == sorted(f"{v}:disc" for v in discs)
    for fmt in ("prm", "prm_cot"):
      assert sorted(r for r in runs if r.endswith(f":{fmt}")) == sorted(f"{v}:{fmt}" for v in variants)
    assert [r for r in runs if r.endswith(":orm")] == ["step_consistency:orm"] and len(set(runs)) == len(runs)
  # Stage III's default runs name PRMs the default Stage II trains.
  spec = importlib.util.spec_from_file_location("spark_rl_config", ROOT / "configs" / "spark_rl.py")
  rl = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(rl)
  trained = {r.replace(":", "_") for r in mod.get_config().stage2.runs}
  needed = {r.split("/")[0] for r in rl.RUNS if r not in ("rlvr", "random")}
  assert needed <= trained, needed - trained
