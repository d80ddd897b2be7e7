"""The Stage III format constraint: hand-checked cases, and the device check equals the host check."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparkjax.data import arith
from sparkjax.spark import rewards as R

WORLD = arith.WorldConfig(min_ops=2, max_ops=3, max_operand=3, max_value=12)
SPEC = R.FormatSpec(min_steps=2, max_steps=3)
GOOD = "<think> <step> 2 * 2 = 4 </step> <step> 4 * 3 = 12 </step> </think> <answer> \\boxed{ 12 } </answer>"
CASES = {  # text -> reason (an index into R.REASONS)
    GOOD: 0,
    "<think> <step> 2 * 2 = 4 </step> <step> 4 * 3 = 12 </step> </think> \\boxed{ 12 }": 1,  # no answer tags
    GOOD.replace(" </answer>", ""): 1,  # unclosed
    GOOD + " Problem : Start with 3 , then + 1 .": 2,  # an appended problem
    GOOD + " <answer> \\boxed{ 5 } </answer>": 3,  # a second answer
    GOOD.replace("<answer>", "") : 3,  # </answer> without <answer>
    GOOD.replace("<answer> \\boxed{ 12 } </answer>", "</answer> \\boxed{ 12 } <answer> </answer>"): 3,  # two closes
    GOOD.replace("\\boxed{ 12 }", "\\boxed{ 12 } \\boxed{ 4 }"): 4,  # two boxed answers
    GOOD.replace("\\boxed{ 12 }", "12"): 4,  # none
    GOOD.replace("<step> 2 * 2", "\\boxed{ 4 } <step> 2 * 2").replace("\\boxed{ 12 }", "12"): 4,  # outside
    GOOD.replace("4 * 3 = 12 </step>", "4 * 3 = 12"): 5,  # unbalanced steps
    "<think> <step> 2 * 2 = 4 </step> </think> <answer> \\boxed{ 4 } </answer>": 6,
    GOOD.replace("</think>", "<step> 12 - 1 = 11 </step> <step> 11 + 1 = 12 </step> </think>"): 7,
}


@pytest.fixture(scope="module")
def tok():
  return arith.build_tokenizer(WORLD.max_value)


def _rows(tok, texts, finished=True):
  ids = [tok.encode(t) + ([tok.eos_token_id] if finished else []) for t in texts]
  T = max(map(len, ids))
  tokens = np.full((len(ids), T), tok.pad_token_id, np.int32)
  for i, r in enumerate(ids):
    tokens[i, :len(r)] = r
  return jnp.asarray(tokens), jnp.asarray([len(r) for r in ids]), jnp.full((len(ids),), finished)


@pytest.mark.parametrize("finished", [True, False])
def test_hand_cases_on_host_and_device(tok, finished):
  texts = list(CASES)
  host = [R.format_check_text(t, SPEC) for t in texts]
  assert [R.REASONS.index(r) for _, _, r in host] == list(CASES.values())
  assert [v for v, _, _ in host] == [r == 0 for r in CASES.values()]
  dev = jax.jit(R.format_check_tokens, static_argnums=(3, 4))(*_rows(tok, texts, finished),
                                                               R.FormatTokens.from_tokenizer(tok), SPEC)
  assert np.asarray(dev["reason"]).tolist() == list(CASES.values())
  assert np.asarray(dev["num_steps"]).tolist() == [n for _, n, _ in host]
  assert np.asarray(dev["valid"]).tolist() == [v for v, _, _ in host]


def test_device_equals_host_on_random_edits(tok):
  """World solutions in the policy format, edited at random with the tags a hacking policy would add, drop or
  move: the device check and the host check on the decoded text agree on every row."""
  rng = np.random.default_rng(0)
  tags = ["<answer>", "</answer>", "\\boxed{", "}", "<step>", "</step>", "Problem", "5"]
  texts = []
  for i in range(300):
    p = arith.problem_at(3, i, WORLD)
    s = arith.sample_solution(p, rng, WORLD, p_error=0.3)
    words = arith.render_solution(s.steps, s.answer if s.answer is not None else 0, "think").split(" ")
    for _ in range(int(rng.integers(0, 3))):
      k = int(rng.integers(0, 3))
      j = int(rng.integers(0, len(words) + 1))
      if k == 0 and words:
        words.pop(min(j, len(words) - 1))
      elif k == 1:
        words.insert(j, tags[int(rng.integers(0, len(tags)))])
      else:
        words.append(tags[int(rng.integers(0, len(tags)))])
    texts.append(" ".join(words) if words else "Problem")
  tokens, lengths, finished = _rows(tok, texts)
  dev = R.format_check_tokens(tokens, lengths, finished, R.FormatTokens.from_tokenizer(tok), SPEC)
  host = [R.format_check_text(tok.decode(tokens[i, :lengths[i] - 1].tolist()), SPEC) for i in range(len(texts))]
  np.testing.assert_array_equal(np.asarray(dev["valid"]), [v for v, _, _ in host])
  np.testing.assert_array_equal(np.asarray(dev["num_steps"]), [n for _, n, _ in host])
  np.testing.assert_array_equal(np.asarray(dev["reason"]), [R.REASONS.index(r) for _, _, r in host])
  reasons = set(np.asarray(dev["reason"]).tolist())
  assert 0 in reasons and len(reasons) >= 5, reasons  # the edits reach valid rows and most failure kinds


def test_guards_are_checked():
  with pytest.raises(ValueError, match="min_steps=5, max_steps=3"):
    R.FormatSpec(min_steps=5, max_steps=3)
  R.check_step_bounds(R.FormatSpec(2, 3), WORLD.min_ops, WORLD.max_ops)
  with pytest.raises(ValueError, match=r"rl.format.min_steps=4, rl.format.max_steps=20 contradict the world's "
                                       r"problems of 2-3 operations.*min_steps <= 2"):
    R.check_step_bounds(R.FormatSpec(), WORLD.min_ops, WORLD.max_ops)
  with pytest.raises(ValueError, match="max_steps >= 3"):
    R.check_step_bounds(R.FormatSpec(1, 2), WORLD.min_ops, WORLD.max_ops)


def test_a_tokenizer_without_single_tag_tokens_is_named():
  class Pieces:
    unk_token_id = 3

    def convert_tokens_to_ids(self, tokens):
      return [3 if t.startswith("<") else 7 for t in tokens]

  with pytest.raises(ValueError, match="use format_check_text for real ones"):
    R.FormatTokens.from_tokenizer(Pieces())


def _verdicts():
  """Two groups of G = 2: row 2's PRM judged another step count, row 3 broke the format."""
  return dict(valid=jnp.array([True, True, True, False]), final=jnp.array([1.0, 0.0, 1.0, 1.0]),
              num_steps=jnp.array([2, 2, 3, 2]), prm_steps=jnp.array([2, 2, 2, 2]),
              step_ok=jnp.array([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]], bool),
              token_step=jnp.array([[-1, 0, 0, 1, 1, -1], [-1, 0, 0, 1, 1, -1], [0, 1, 2, 2, -1, -1],
                                    [0, 0, 1, 1, -1, -1]], jnp.int32))


A = 0.5 / (0.5 + 1e-6)  # GRPO advantage of rewards (1, 0) in a group of two


def test_process_outcome_and_step_augmented_rewards():
  r, a = R.REWARD_DESIGNS["process_outcome"](_verdicts(), 2)
  np.testing.assert_allclose(r, [1, 0, 1, 0])
  np.testing.assert_allclose(a, [A, -A, A, -A], rtol=1e-6)
  # 0.4 k/n + 0.6 y: row 0 2/2 and y = 1; row 1 1/2 and y = 0; row 2 k/n dropped (step counts differ); row 3 invalid.
  r, a = R.REWARD_DESIGNS["step_augmented"](_verdicts(), 2)
  np.testing.assert_allclose(r, [1.0, 0.2, 0.6, 0.0], rtol=1e-6)
  np.testing.assert_allclose(a, [1.0, -1.0, 1.0, -1.0], rtol=1e-5)


def test_selective_advantage():
  r, a = R.REWARD_DESIGNS["selective_advantage"](_verdicts(), 2)
  np.testing.assert_allclose(a, [
      [A] * 6,  # A >= 0, both steps judged correct: every token keeps A
      [-A, 0, 0, -A, -A, -A],  # A < 0: step 0 (correct) loses it, step 1 (incorrect) and the rest keep it
      [A] * 6,  # unusable step verdicts: unchanged
      [-A] * 6], rtol=1e-6)


def test_global_step_reward():
  r, a = R.REWARD_DESIGNS["global_step"](_verdicts(), 2)
  # Group 1's step rewards +-1/2: (0.5, 0.5 | 0.5, -0.5), mean 0.25, std sqrt(0.1875).
  up, down = 0.25 / (0.1875 ** 0.5 + 1e-6), -0.75 / (0.1875 ** 0.5 + 1e-6)
  np.testing.assert_allclose(a, [
      [0.8 * A, 0.8 * A + 0.2 * up, 0.8 * A + 0.2 * up, 0.8 * A + 0.2 * up, 0.8 * A + 0.2 * up, 0.8 * A],
      [-0.8 * A, -0.8 * A + 0.2 * up, -0.8 * A + 0.2 * up, -0.8 * A + 0.2 * down, -0.8 * A + 0.2 * down, -0.8 * A],
      [0.8 * A] * 6,  # group 2 has no usable step verdicts: A_step = 0
      [-0.8 * A] * 6], rtol=1e-5)


def test_designs_are_registered_and_jit(tok):
  assert sorted(R.REWARD_DESIGNS) == ["global_step", "process_outcome", "selective_advantage", "step_augmented"]
  with pytest.raises(ValueError, match="unknown reward design 'best'; registered: global_step"):
    R.lookup_design("best")
  for name, fn in R.REWARD_DESIGNS.items():
    eager = fn(_verdicts(), 2)
    jitted = jax.jit(fn, static_argnums=1)(_verdicts(), 2)
    for x, y in zip(eager, jitted):
      np.testing.assert_allclose(x, y, rtol=1e-6, err_msg=name)
      assert np.isfinite(np.asarray(y)).all()


def test_token_steps(tok):
  tokens, lengths, _ = _rows(tok, [GOOD])
  steps = np.asarray(R.token_steps(tokens, lengths, R.FormatTokens.from_tokenizer(tok)))[0]
  # <think> | <step> 2 * 2 = 4 </step> | <step> 4 * 3 = 12 </step> | </think> <answer> \boxed{ 12 } </answer> <eos>
  assert steps.tolist() == [-1] + [0] * 7 + [1] * 7 + [-1] * 7
