"""The test-time self-judge CLI end to end on a tiny real-tokenizer model and GSM8K: it runs, grades with
math-verify, counts the judge's unreadable verdicts, writes its files; bad input is one line."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl"


def _run(*args):
  return subprocess.run([sys.executable, "-m", "sparkjax.coevolve.self_judge", *map(str, args)], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)


def test_self_judge_cli(tiny_qwen_dir, tmp_path):
  r = _run("--model", tiny_qwen_dir, "--data", GSM8K, "--limit", 3, "--rounds", 1, "--max_new_tokens", 6,
           "--rows", 4, "--out", tmp_path / "o")
  assert r.returncode == 0, r.stderr[-3000:]
  res = json.loads((tmp_path / "o" / "results.json").read_text())
  # A random model: no readable verdict, so every question is reflected once; nothing is right.
  assert res["questions"] == 3 and res["judge_unreadable"] == 3 and res["reflections"] == 3
  assert res["accuracy_without"] == 0.0 and res["accuracy_with"] == 0.0
  traces = [json.loads(line) for line in (tmp_path / "o" / "traces.jsonl").read_text().splitlines()]
  assert [len(t["answers"]) for t in traces] == [2, 2, 2] and traces[0]["verdicts"] == [None]
  bad = _run("--model", tmp_path / "nowhere", "--data", GSM8K, "--out", tmp_path / "o2")
  assert bad.returncode == 2 and "self_judge: error:" in bad.stderr and "Traceback" not in bad.stderr
