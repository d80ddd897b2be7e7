"""Host grading: math-verify in worker processes; a hanging item times out alone and is counted."""

import time

from sparkjax.data import host_grading


def _slow_grade(pred, gold):
  if pred == "hang":
    time.sleep(60)
  if pred == "crash":
    raise RuntimeError("boom")
  return float(pred == gold)


def test_math_verify_grades():
  pool = host_grading.GraderPool("math_verify", workers=2, timeout=30)
  try:
    out = pool.grade(["so \\boxed{\\frac{1}{2}}", "\\boxed{0.5}", "\\boxed{3}", "no answer"], ["1/2", "$\\frac{1}{2}$", "4",
                                                                                                "7"])
  finally:
    pool.close()
  assert out.rewards.tolist() == [1.0, 1.0, 0.0, 0.0] and out.timeouts == 0 and out.errors == 0


def test_hanging_and_crashing_items_cost_only_themselves():
  pool = host_grading.GraderPool(_slow_grade, workers=2, timeout=3.0)
  try:
    t0 = time.time()
    out = pool.grade(["a", "hang", "b", "crash", "c"], ["a", "x", "b", "x", "z"])
    took = time.time() - t0
  finally:
    pool.close()
  assert out.rewards.tolist() == [1.0, 0.0, 1.0, 0.0, 0.0]
  assert out.timeouts == 1 and out.errors == 1
  assert took < 30


def test_world_grade_and_boxed():
  assert host_grading.world_grade("Step 1 : 1 + 2 = 3 \n Answer : 3 <eos>", "3") == 1.0
  assert host_grading.world_grade("Answer : 3 \n Answer : 3 <eos>", "3") == 0.0
  assert host_grading.world_grade("Answer : 3", "3") == 0.0  # never stopped
  assert host_grading.world_grade("<think> </think> <answer> \\boxed{ 12 } </answer> <eos>", "12") == 1.0
  assert host_grading.last_boxed("a \\boxed{\\frac{1}{2}} b \\boxed{x^{2}}") == "x^{2}"
  assert host_grading.last_boxed("none") is None
