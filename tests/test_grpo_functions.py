"""Registered GRPO functions against hand-computed values."""

import jax.numpy as jnp
import numpy as np
import pytest

from sparkjax.rl import grpo

R = jnp.asarray([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])  # two groups of G=4


def test_grpo_advantages():
  a = np.asarray(grpo.ADVANTAGES["grpo"](R, 4))
  # group 1: mean .5, std .5 -> +-1; group 2: zero variance -> 0
  np.testing.assert_allclose(a, [1, -1, -1, 1, 0, 0, 0, 0], atol=1e-5)


def test_drgrpo_and_rloo():
  np.testing.assert_allclose(grpo.ADVANTAGES["drgrpo"](R, 4), [.5, -.5, -.5, .5, 0, 0, 0, 0])
  # RLOO: r_0 = 1, others mean (0 + 0 + 1) / 3 = 1/3 -> 2/3; r_1 = 0, others mean 2/3 -> -2/3
  np.testing.assert_allclose(grpo.ADVANTAGES["rloo"](R, 4), [2 / 3, -2 / 3, -2 / 3, 2 / 3, 0, 0, 0, 0], atol=1e-6)


def test_group_size_must_divide():
  with pytest.raises(ValueError, match="groups of G=3"):
    grpo.ADVANTAGES["grpo"](R, 3)
  assert float(grpo.zero_variance_fraction(R, 4)) == 0.5


def test_clipped_loss_hand_computed():
  old = jnp.zeros((1, 4))
  logp = jnp.log(jnp.asarray([[1.5, 0.5, 1.5, 0.5]]))
  adv = jnp.asarray([[1.0, 1.0, -1.0, -1.0]])
  loss, clipped = grpo.POLICY_LOSSES["clip"](logp, old, adv, eps_low=0.2, eps_high=0.3)
  # A>0, rho 1.5: min(1.5, 1.3) = 1.3 -> -1.3, clipped. A>0, rho .5: min(.5, .8) = .5 -> -.5.
  # A<0, rho 1.5: min(-1.5, -1.3) = -1.5 -> 1.5. A<0, rho .5: min(-.5, -.8) = -.8 -> .8, clipped.
  np.testing.assert_allclose(loss, [[-1.3, -0.5, 1.5, 0.8]], atol=1e-6)
  np.testing.assert_array_equal(clipped, [[1, 0, 0, 1]])


def test_dual_clip_bounds_negative_advantage():
  logp = jnp.log(jnp.asarray([[5.0, 5.0]]))
  loss, clipped = grpo.POLICY_LOSSES["clip"](logp, jnp.zeros((1, 2)), jnp.asarray([[-1.0, 1.0]]), dual_clip=3.0)
  np.testing.assert_allclose(loss, [[3.0, -1.2]], atol=1e-5)  # 5 capped at 3; A>0 untouched by dual clip
  np.testing.assert_array_equal(clipped, [[1, 1]])


def test_aggregations():
  x = jnp.asarray([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
  m = jnp.asarray([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
  assert float(grpo.AGGREGATIONS["token_mean"](x, m)) == pytest.approx(10 / 4)
  assert float(grpo.AGGREGATIONS["seq_mean_token_mean"](x, m)) == pytest.approx((2 + 4) / 2)
  assert float(grpo.AGGREGATIONS["seq_sum_norm"](x, m)) == pytest.approx(10 / (2 * 3))
  assert float(grpo.AGGREGATIONS["seq_sum_norm"](x, m, norm_length=5)) == pytest.approx(10 / 10)


def test_kl_estimators():
  logp = jnp.log(jnp.asarray([0.5]))
  ref = jnp.log(jnp.asarray([0.25]))
  assert float(grpo.KL_ESTIMATORS["k1"](logp, ref)[0]) == pytest.approx(np.log(2))
  # k3 = r - log r - 1 with r = pi_ref / pi = 0.5
  assert float(grpo.KL_ESTIMATORS["k3"](logp, ref)[0]) == pytest.approx(0.5 - np.log(0.5) - 1)
  assert float(grpo.KL_ESTIMATORS["k3"](ref, ref)[0]) == 0.0


def test_token_logprobs_and_entropy():
  logits = jnp.log(jnp.asarray([[[0.5, 0.25, 0.25]]]))
  logp, ent = grpo.token_logprobs(logits, jnp.asarray([[1]]))
  assert float(logp[0, 0]) == pytest.approx(np.log(0.25), abs=1e-6)
  assert float(ent[0, 0]) == pytest.approx(-(0.5 * np.log(0.5) + 0.5 * np.log(0.25)), abs=1e-6)


def test_lookup_lists_registered_names():
  with pytest.raises(ValueError, match="registered: drgrpo, grpo, rloo"):
    grpo.lookup(grpo.ADVANTAGES, "ppo", "advantage estimator")
