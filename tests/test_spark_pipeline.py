"""The main job, pipeline `spark`, end to end on its smoke config: Stages I-II, then Stage III with the PRM-CoT it
trained beside RLVR; the comparison, the Stage III table, claims and picture; kill -9 inside a Stage III run and
restart gives bitwise the same parameters; a PRM of another world is refused with the reason."""

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import kill_when, run_main

ARGS = ["--config=configs/spark.py:runlocal", "--config.rl.iterations=4", "--config.rl.optimizer.total_steps=4",
        "--config.rl.eval_every=2"]
PRM_RUN = "step_consistency_prm_cot+process_outcome"


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  d = tmp_path_factory.mktemp("spark") / "run"
  r = run_main(ARGS, d)
  return d, r


def _final_params(workdir, run):
  return ocp.StandardCheckpointer().restore(Path(workdir).absolute() / "stage3" / "runs" / run / "checkpoints" / "4"
                                            / "state")


def test_the_main_job_reports_the_comparison(straight):
  d, r = straight
  s = json.loads((d / "spark_summary.json").read_text())
  comp = s["comparison"]
  assert set(comp["runs"]) == {"rlvr", "step_consistency_prm_cot/process_outcome"}
  prm = comp["runs"]["step_consistency_prm_cot/process_outcome"]
  # The PRM's F1 is the one Stage II measured for it.
  stage2 = json.loads((d / "stage2.json").read_text())
  assert prm["prm_processbench_f1"] == stage2["step_consistency:prm_cot"]["f1"]
  for row in comp["runs"].values():
    assert 0.0 <= row["greedy_accuracy"] <= 1.0 and 0.0 <= row["accuracy"] <= 1.0
  assert 0.0 <= prm["hack_rate"] <= 1.0
  assert "| Stage III reward |" in r.stdout and "| claim |" in r.stdout
  report = json.loads((d / "stage3" / "results.json").read_text())
  assert report["iterations"] == 4 and set(report["runs"]["rlvr"]["history"]) == {"2", "4"}  # 0: the SFT row
  # Every iteration's training metrics are kept; the baselines report the format diagnostics too.
  assert len(report["runs"]["rlvr"]["curves"]["reward_mean"]) == 4
  assert "score_prm_agrees" in report["runs"]["step_consistency_prm_cot/process_outcome"]["train"]
  assert "score_format_valid" in report["runs"]["rlvr"]["train"]
  assert (d / "stage3" / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
  meta = json.loads((d / "prms" / "step_consistency_prm_cot" / "prm.json").read_text())
  assert meta["format"] == "prm_cot" and meta["world"]["max_value"] == 12


def test_kill_inside_stage3_and_resume_is_bitwise(straight, tmp_path):
  d, _ = straight
  killed = tmp_path / "killed"
  shutil.copytree(d, killed)  # Stages I-II and the policy's SFT done; the PRM run starts again
  shutil.rmtree(killed / "stage3" / "runs" / PRM_RUN)
  shutil.rmtree(killed / "stage3" / "tensorboard" / PRM_RUN)
  results = json.loads((killed / "stage3" / "results.json").read_text())
  del results["runs"]["step_consistency_prm_cot/process_outcome"]
  (killed / "stage3" / "results.json").write_text(json.dumps(results))
  marker = killed / "stage3" / "runs" / PRM_RUN / "checkpoints" / "2"
  kill_when(ARGS, killed, marker)
  assert marker.exists()
  r = run_main(ARGS, killed)
  assert "rl: resumed from iteration" in r.stderr and "stage III rlvr: done before" in r.stderr
  a, b = jax.tree.leaves(_final_params(d, PRM_RUN)), jax.tree.leaves(_final_params(killed, PRM_RUN))
  assert len(a) == len(b) > 0
  for x, y in zip(a, b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  ra = json.loads((d / "stage3" / "results.json").read_text())["runs"]["step_consistency_prm_cot/process_outcome"]
  rb = json.loads((killed / "stage3" / "results.json").read_text())["runs"]["step_consistency_prm_cot/process_outcome"]
  assert ra["history"] == rb["history"] and ra["curves"] == rb["curves"]


def test_a_prm_of_another_world_is_refused(straight, tmp_path):
  """A PRM directory whose tokenizer is another world's, or whose prm.json names another world: refused, naming
  the directory and the difference."""
  from sparkjax.data import arith
  from sparkjax.pipelines import common, spark_rl
  import ml_collections

  d, _ = straight
  src = d / "prms" / "step_consistency_prm_cot"
  world = arith.WorldConfig(min_ops=2, max_ops=3, max_operand=3, max_value=12, ops="+-", heldout_every=5)
  tok = arith.build_tokenizer(12)
  from sparkjax.pipelines import arith_rl

  config = ml_collections.ConfigDict(dict(model=dict(hidden_size=64, intermediate_size=128, num_layers=2,
                                                     num_heads=2, num_kv_heads=1, dtype="float32"),
                                          mesh=dict(data=-1, fsdp=1, tp=1)))
  place = common.Placement(config, arith_rl.model_config(config, tok))
  params, cfg, fmt = spark_rl.load_world_prm(src, tok, world, place)
  assert fmt == "prm_cot" and cfg.vocab_size == len(tok)
  other = tmp_path / "other_vocab_prm_cot"
  shutil.copytree(src, other)
  arith.build_tokenizer(30).save_pretrained(str(other))
  with pytest.raises(ValueError, match="tokenizer .* is not this world's"):
    spark_rl.load_world_prm(other, tok, world, place)
  moved = tmp_path / "other_world_prm_cot"
  shutil.copytree(src, moved)
  meta = json.loads((moved / "prm.json").read_text())
  meta["world"]["max_ops"] = 4
  (moved / "prm.json").write_text(json.dumps(meta))
  with pytest.raises(ValueError, match="trained on world .*'max_ops': 4"):
    spark_rl.load_world_prm(moved, tok, world, place)


def test_stage1_phase_cache_recomputes_only_unfinished_phases(tmp_path):
  """A phase's result is kept once computed and read back instead of recomputed; a write cut by a kill (the .tmp
  left behind) is not read; no directory means no cache."""
  from sparkjax.pipelines.spark_prm import phase_cache

  calls = []

  def phase(v):
    calls.append(v)
    return {"items": [v, v + 1]}

  d = tmp_path / "partial"
  assert phase_cache(d, "solutions", lambda: phase(1)) == {"items": [1, 2]}
  (d / "verifications.tmp").write_bytes(b"cut short")
  assert phase_cache(d, "solutions", lambda: phase(5)) == {"items": [1, 2]}  # read back, not recomputed
  assert phase_cache(d, "verifications", lambda: phase(7)) == {"items": [7, 8]}
  assert calls == [1, 7] and sorted(p.name for p in d.iterdir()) == ["solutions.pkl", "verifications.pkl"]
  assert phase_cache(None, "solutions", lambda: phase(9)) == {"items": [9, 10]} and calls == [1, 7, 9]
