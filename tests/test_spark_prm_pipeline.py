"""The `spark_prm` pipeline end to end on its smoke config: every stage's output, resume by skipping finished stages,
and a Stage-I file with records of the wrong schema (counted and reported; the run goes on)."""

import json
import subprocess
import sys
from pathlib import Path

import datasets
import jax

from sparkjax.spark import prm_examples
from sparkjax.spark import verdicts as vd

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("step_consistency", "outcome_consistency", "meta_critique_base", "meta_critique_outcome",
            "reference_guided", "gold")


def _main(workdir):
  # correct_share: the generative PRMs' rows repeat the all-correct records (checked below); given here so the
  # check does not rest on the config's value.
  return subprocess.run([sys.executable, "-m", "sparkjax.main", "--config=configs/spark_prm.py:runlocal",
                         "--config.stage2.correct_share=0.3", f"--workdir={workdir}"], capture_output=True, text=True,
                        cwd=ROOT, timeout=900)


def test_stages_files_resume_and_bad_records(tmp_path):
  r = _main(tmp_path)
  assert r.returncode == 0, r.stderr[-3000:]
  results = json.loads((tmp_path / "summary.json").read_text())
  s1 = results["stage1"]
  for row in ("single", "step_consensus@1", "step_consensus@2", "outcome_consensus@2", "meta_critique_base",
              "meta_critique_outcome", "reference_guided"):
    assert {"step", "outcome", "processbench"} <= set(s1[row]), row
  assert s1["verifications"] == s1["solutions"] * s1["n_max"]
  for v in VARIANTS:  # every variant is a file `datasets` reads, and its left-out count is reported
    path = tmp_path / "stage1" / f"{v}.jsonl"
    assert path.is_file()
    assert s1["records"][v] + s1["left_out"][v] == s1["solutions"]
    if s1["records"][v]:
      assert datasets.load_dataset("json", data_files=str(path), split="train").num_rows == s1["records"][v]
  # The upper bound's data: exact labels, and a rationale (the teacher at eps 0) that reads back to the same labels.
  gold = [json.loads(line) for line in (tmp_path / "stage1" / "gold.jsonl").read_text().splitlines()]
  assert len(gold) == s1["solutions"]
  for rec in gold:
    assert rec["verdicts"] == rec["gold_verdicts"] and rec["final"] == rec["gold_final"]
    v = vd.parse_verification(rec["rationale"])
    assert (list(v.steps), v.final) == (rec["verdicts"], rec["final"]), rec
    # Each step's own check (the exact-label discriminative PRM's labels) first fails where the verdicts do.
    first = lambda labels: next((i for i, ok in enumerate(labels) if not ok), -1)
    assert len(rec["step_checks"]) == len(rec["steps"]) and first(rec["step_checks"]) == first(rec["verdicts"]), rec
  trained = [k for k, v in results["stage2"].items() if "error" not in v]
  assert trained, results["stage2"]
  repeated = []
  for k in trained:
    assert results["stage2"][k]["train_records"] > 0 and "outcome" in results["stage2"][k]
    assert results["stage2"][k]["label_field"] == ("step_checks" if k == "gold:disc" else "verdicts"), k
    # Generative formats train on the records with the all-correct ones repeated to 30% of the rows; disc does not.
    recs = [json.loads(line) for line in (tmp_path / "stage1" / f"{k.split(':')[0]}.jsonl").read_text().splitlines()]
    rows = len(prm_examples.repeat_correct(recs, 0.3))  # its arithmetic: tests/test_prm.py
    generative = not k.endswith(":disc")
    assert results["stage2"][k]["correct_share"] == (0.3 if generative else 0.0), k
    assert results["stage2"][k]["train_rows"] == (rows if generative else len(recs)), (k, rows, len(recs))
    # runlocal's PRM-CoTs train in batches of 4 (stage2.format_batch), the other formats in stage2's 8.
    assert results["stage2"][k]["train_batch"] == (4 if k.endswith(":prm_cot") else 8), k
    repeated.append(generative and rows > len(recs))
  assert any(repeated), repeated  # some run's rows were repeated, so the checks above see the wiring
  # Every trained PRM is a HF directory with the world tokenizer (Stage III and ProcessBench load it).
  from sparkjax.models import hf, tokenizer as tok_lib

  for k in trained:
    d = Path(results["stage2"][k]["prm_dir"])
    assert d == tmp_path / "prms" / k.replace(":", "_")
    cfg = hf.load_config(d)
    params, _ = hf.load_params(d, cfg)
    assert cfg.num_params() == sum(x.size for x in jax.tree.leaves(params))
    world_tok = tok_lib.load_tokenizer(tmp_path / "tokenizer")
    assert tok_lib.load_tokenizer(d).encode("Step 1 : 2 + 3 = 5") == world_tok.encode("Step 1 : 2 + 3 = 5")
  assert "| PRM (Stage II)" in r.stdout and "| paper claim |" in r.stdout
  # The report: headline figures, each claim with its figures, phase times and the F1-against-N picture.
  head = results["headline"]
  assert 0.0 <= head["verifier_sampled_step_accuracy"] <= 1.0
  assert head["verifier_sampled_step_accuracy"] == s1["sampled"]["step_accuracy"]
  assert len(s1["sampled"]["step_accuracy_per_sample"]) == s1["n_max"]
  assert {c["name"] for c in results["claims"]} >= {"consensus_beats_single", "step_beats_outcome"}
  assert set(results["seconds"]) == {"generator", "verifier", "stage1", "heldout", "stage2", "total"}
  assert (tmp_path / "f1_vs_n.png").read_bytes()[:4] == b"\x89PNG"

  # Again: every stage is found and skipped.
  r2 = _main(tmp_path)
  assert r2.returncode == 0, r2.stderr[-3000:]
  assert "stage I: found" in r2.stderr and "done before" in r2.stderr

  # The selection-set tool trains one run again as the pipeline does (here with another data order) and scores it on
  # the generator's solutions to training problems Stage I never drew; the workdir's results stay as they were.
  kept_results = (tmp_path / "stage2.json").read_text()
  out = tmp_path / "selection.json"
  r_sel = subprocess.run([sys.executable, "-m", "sparkjax.tools.prm_selection", "--config=configs/spark_prm.py:runlocal",
                          f"--workdir={tmp_path}", "--run=gold:prm_cot", "--seed=1", "--problems=4", "--m=2",
                          f"--out={out}"], capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert r_sel.returncode == 0, r_sel.stderr[-3000:]
  sel = json.loads(out.read_text())
  assert (sel["run"], sel["seed"], sel["steps"], sel["batch"]) == ("gold:prm_cot", 1, 3, 4)
  assert sel["train_records"] == s1["records"]["gold"] and sel["train_rows"] == results["stage2"]["gold:prm_cot"][
      "train_rows"]
  assert 1 <= sel["selection_problems"] <= 4 and sel["selection_solutions"] <= 8 and "f1" in sel and "outcome_f1" in sel
  rows = json.loads((tmp_path / "selection_items-m2-p4.json").read_text())
  assert len(rows) == sel["selection_solutions"] and not {row[1] for row in rows} & {rec["problem"] for rec in gold}
  assert (tmp_path / "stage2.json").read_text() == kept_results

  # A Stage-I file with records of the wrong schema: counted and named, the good records still train.
  run = trained[0]
  variant = run.split(":")[0]
  path = tmp_path / "stage1" / f"{variant}.jsonl"
  lines = path.read_text().splitlines()
  bad = json.loads(lines[0])
  bad["verdicts"] = "yes"
  missing = json.loads(lines[0])
  del missing["steps"]
  path.write_text("\n".join([json.dumps(bad), json.dumps(missing)] + lines) + "\n")
  # Only the runs whose kept result is gone or stale train again: the bad lines leave the usable records (and so the
  # run's fingerprint) as they were, so this run's result is removed; another's fingerprint is made stale, as a
  # changed schedule or Stage-I file would. The other runs' results stay (Stage II resumes run by run).
  done = json.loads((tmp_path / "stage2.json").read_text())
  del done[run]
  other = next(k for k in trained if k != run)
  kept = done[other]["fingerprint"]
  done[other]["fingerprint"] = "0" * len(kept)
  (tmp_path / "stage2.json").write_text(json.dumps(done))
  r3 = _main(tmp_path)
  assert r3.returncode == 0, r3.stderr[-3000:]
  assert f"stage II {other}: its records or schedule changed" in r3.stderr
  assert json.loads((tmp_path / "stage2.json").read_text())[other]["fingerprint"] == kept  # same records, schedule
  res = json.loads((tmp_path / "stage2.json").read_text())[run]
  assert res["bad_records"] == 2 and res["train_records"] == len(lines)
  assert "2 records of" in r3.stderr and "left out" in r3.stderr
  assert sum("done before" in line for line in r3.stderr.splitlines() if "stage II" in line) == len(done) - 1
  # The retrained PRM replaced its directory; nothing half-written is left beside it.
  assert Path(res["prm_dir"]).is_dir() and not list((tmp_path / "prms").glob("*.new"))


def test_selection_problems_are_training_problems_stage_one_never_drew():
  """The set the config's Stage II choices are made on: distinct, in the training split, none of Stage I's."""
  import importlib.util

  from sparkjax.data import arith
  from sparkjax.pipelines import spark_prm
  from sparkjax.pipelines import prm_selection

  spec = importlib.util.spec_from_file_location("spark_prm_config", ROOT / "configs" / "spark_prm.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  config = mod.get_config()
  world = arith.WorldConfig(**config.world)
  problems = prm_selection.selection_problems(config, world)
  texts = [p.text() for p in problems]
  stage1 = {p.text() for p in spark_prm.stage1_problems(config, world)}
  assert len(problems) == 66 and len(set(texts)) == len(texts)  # the README's 66 problems
  assert not set(texts) & stage1 and all(arith.split_of(p, world) == "train" for p in problems)
  assert [p.text() for p in prm_selection.selection_problems(config, world, 5)] == texts[:5]
