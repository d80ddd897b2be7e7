"""The memory planner: small plans compile and report, real configs load, bad inputs fail before compiling.

With libtpu installed the plans compile for TPU topologies; without it they fall back to CPU devices (8 fake ones,
tests/conftest.py), and the tests that need libtpu skip.
"""

import functools
import os
import subprocess
import sys
from pathlib import Path

import ml_collections
import pytest

from sparkjax.tools import plan

ROOT = Path(__file__).resolve().parents[1]
CONFIG_7B = "configs/qwen25_math_7b_grpo.py"
CONFIG_1_5B = "configs/qwen25_math_1_5b_gpu.py"
GiB = 2**30


@functools.cache
def _libtpu_reason() -> str | None:
  """None when libtpu can describe a TPU topology here, else why not."""
  try:
    plan.tpu_devices(plan.parse_topology("v5p-8"))
    return None
  except RuntimeError as e:
    return str(e)


needs_libtpu = pytest.mark.skipif("_libtpu_reason() is not None", reason="libtpu cannot compile for TPU here")


def _tiny_config(batch_size=32, group_size=4, mesh=(1, -1, 2), microbatches=2, chunk=8, new_tokens=16):
  opt = ml_collections.ConfigDict(dict(lr=1e-6, total_steps=10, warmup_steps=0, schedule="constant", b1=0.9,
                                       b2=0.999, eps=1e-8, weight_decay=0.0, grad_clip=1.0))
  c = ml_collections.ConfigDict()
  c.pipeline = "hf_grpo"
  c.model = ml_collections.ConfigDict(dict(preset="tiny", dtype="bfloat16", param_dtype="float32", remat=True))
  c.mesh = ml_collections.ConfigDict(dict(zip(("data", "fsdp", "tp"), mesh)))
  c.data = ml_collections.ConfigDict(dict(max_prompt_len=16))
  c.rl = ml_collections.ConfigDict(dict(batch_size=batch_size, group_size=group_size, max_new_tokens=new_tokens,
                                        kl="k3", kl_coef=0.001, num_microbatches=microbatches, logprob_chunk=chunk,
                                        optimizer=opt))
  return c


def _check_compiled(p: plan.Plan):
  assert [x.name for x in p.programs] == ["sampler", "update"]
  for prog in p.programs:
    assert prog.error is None and prog.compile_seconds > 0 and prog.fits
    names = [part.name for part in prog.parts]
    assert names[0] == "parameters (float32)" and "temporaries" in names and "generated code" in names
    # The total is the sum of the parts ("of which" lines detail a part and are not added again).
    assert prog.total == pytest.approx(sum(x.bytes for x in prog.parts if not x.name.startswith(" ")), rel=1e-9)
    temp = next(x.bytes for x in prog.parts if x.name == "temporaries")
    assert temp > 0
  sampler, update = p.programs
  assert any(x.name == "resident optimizer state" for x in sampler.parts)
  # The update's optimizer state is AdamW's mu and nu: two float32 copies of this device's shard of the params.
  params = next(x.bytes for x in update.parts if x.name.startswith("parameters"))
  opt = next(x.bytes for x in update.parts if x.name == "optimizer state")
  assert opt == pytest.approx(2 * params, rel=0.01)
  cfg = plan.job_from_config(_tiny_config()).cfg
  assert cfg.num_params() * 4 / 4 <= params < cfg.num_params() * 4 / 2  # fsdp=2 x tp=2, small norms replicated


def test_tiny_plan_compiles_and_reports():
  p = plan.make_plan(_tiny_config(), topology="v5p-8", config_name="tiny")
  _check_compiled(p)
  assert p.mesh == dict(data=1, fsdp=2, tp=2)
  if _libtpu_reason() is None:
    assert "libtpu" in p.method and "v5:2x2x1" in p.method
  else:
    assert p.method.startswith("CPU-device AOT")
  text = plan.format_plan(p)
  assert "mesh:    data=1 fsdp=2 tp=2 over 4 devices" in text
  assert "of which KV cache" in text and "verdict: FITS" in text and "of 95 GiB HBM" in text


def test_cpu_fallback_is_labelled():
  p = plan.make_plan(_tiny_config(), topology="v5litepod-4", aot="cpu")
  _check_compiled(p)
  assert p.method.startswith("CPU-device AOT") and "ESTIMATE" in p.method
  assert any(n.startswith("analytic estimate for comparison") for n in p.notes)
  assert "of 16 GiB HBM" in plan.format_plan(p)


@needs_libtpu
def test_iteration_program_and_v6e():
  p = plan.make_plan(_tiny_config(), topology="v6e-4", programs=("sampler", "update", "iteration"))
  assert [x.name for x in p.programs] == ["sampler", "update", "iteration"]
  assert all(x.fits for x in p.programs) and "v6e:2x2" in p.method
  assert "of 32 GiB HBM" in plan.format_plan(p)


@needs_libtpu
def test_a_plan_that_does_not_fit_is_reported():
  """The 7B config squeezed onto 4 v5e chips: the compiler refuses; the plan says DOES NOT FIT with its figure."""
  c = plan.load_config(str(ROOT / CONFIG_7B), ["mesh.fsdp=1", "rl.num_microbatches=256"])
  p = plan.make_plan(c, topology="v5litepod-4")
  assert not p.fits
  for prog in p.programs:
    assert "RESOURCE_EXHAUSTED" in prog.error and prog.total > 16 * GiB
  text = plan.format_plan(p)
  assert "DOES NOT FIT" in text and "total (at least)" in text and "verdict: DOES NOT FIT" in text


def test_gpu_plan_is_analytic():
  c = plan.load_config(str(ROOT / CONFIG_1_5B))
  p = plan.make_plan(c, gpu="h100-80gb", config_name=CONFIG_1_5B)
  assert p.method.startswith("analytic") and p.mesh == dict(data=1, fsdp=1, tp=1)
  sampler, update = p.programs
  params = 1.54e9 * 4
  assert next(x.bytes for x in update.parts if x.name == "optimizer state") == pytest.approx(2 * params, rel=0.01)
  assert 30 * GiB < sampler.total < 45 * GiB and 45 * GiB < update.total < 65 * GiB and p.fits
  text = plan.format_plan(p)
  assert "h100-80gb (1 x NVIDIA H100 80GB, 79.6 GiB each)" in text and "analytic" in text
  # More GPUs split the batch: the same config's rows over 4 data-parallel GPUs need less each.
  c.mesh.data = -1
  assert plan.make_plan(c, gpu="a100-80gb", gpus=4).programs[1].total < update.total


def test_real_configs():
  from sparkjax.main import PIPELINES

  c7 = plan.load_config(str(ROOT / CONFIG_7B))
  job = plan.job_from_config(c7)
  assert (job.prompts, job.group, job.prompt_len, job.new_tokens) == (256, 16, 2048, 2048)
  assert job.cfg.hidden_size == 3584 and job.cfg.compute_dtype == "bfloat16" and job.cfg.remat
  s = job.settings
  assert (s.kl, s.kl_coef, s.eps_low, s.eps_high, s.mu) == ("k3", 0.001, 0.2, 0.2, 1)
  assert c7.rl.optimizer.lr == 1e-6 and job.rows % s.num_microbatches == 0
  job15 = plan.job_from_config(plan.load_config(str(ROOT / CONFIG_1_5B)))
  assert job15.cfg.hidden_size == 1536 and job15.mesh.shape(1) == (1, 1, 1)
  # The configs name the pipeline that runs them (tested on the CPU in tests/test_hf_grpo.py).
  assert c7.pipeline == "hf_grpo" and "hf_grpo" in PIPELINES
  assert plan.load_config(str(ROOT / CONFIG_7B) + ":microbatches=32").rl.num_microbatches == 32


@pytest.mark.parametrize("kw, message", [
    (dict(topology="v4-8"), "unknown topology 'v4-8'; supported: v5p-N"),
    (dict(topology="v5p-12"), "power-of-two number of TensorCores"),
    (dict(topology="v6e-3"), "TPU v6e slices have 1, 4, 8"),
    (dict(gpu="h200"), "unknown GPU 'h200'; supported: h100-80gb, a100-80gb"),
    (dict(topology="v5p-8", cfg=dict(mesh=(1, 1, 3))), "does not divide the 4 devices"),
    (dict(topology="v5p-8", cfg=dict(mesh=(2, 1, 1))), "uses 2 devices, but there are 4"),
    (dict(topology="v5p-8", cfg=dict(mesh=(4, 1, 1), batch_size=24)),
     "prompts per iteration .* 6 does not divide over the data axes"),
    (dict(topology="v5p-8", cfg=dict(mesh=(4, 1, 1), batch_size=32, microbatches=16)),
     "micro-batch rows .* 2 does not divide over the data axes"),
    (dict(topology="v5p-8", cfg=dict(microbatches=3)), "num_microbatches=3 does not divide rl.batch_size=32"),
    (dict(topology="v5p-8", cfg=dict(chunk=6)), "logprob_chunk=6 does not divide rl.max_new_tokens=16"),
    (dict(topology="v5p-8", cfg=dict(batch_size=30)), "batch_size=30 is not a multiple of rl.group_size=4"),
    (dict(gpu="h100-80gb", cfg=dict(mesh=(1, 1, 2))), "does not divide the 1 devices"),
])
def test_errors_before_compiling(monkeypatch, kw, message):
  monkeypatch.setattr(plan, "_compile", lambda *a, **k: pytest.fail("compiled despite a bad input"))
  c = _tiny_config(**kw.pop("cfg", {}))
  with pytest.raises(ValueError, match=message):
    plan.make_plan(c, **kw)


def test_missing_config_field():
  c = _tiny_config()
  del c.rl["max_new_tokens"]
  with pytest.raises(ValueError, match="the config has no field rl.max_new_tokens"):
    plan.job_from_config(c)


def test_oom_message_parsing():
  msg = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries (5.03T) "
         "exceeds available HBM (95.74G).")
  assert plan._oom_bytes(msg) == pytest.approx(5.03 * 2**40)
  assert plan._oom_bytes("something else") is None


def test_command_line(tmp_path):
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  bad = subprocess.run([sys.executable, "-m", "sparkjax.tools.plan", "--config", CONFIG_7B, "--topology", "v9-8"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert bad.returncode == 2 and "Traceback" not in bad.stderr
  assert bad.stderr.strip().splitlines()[-1].startswith("plan: error: unknown topology 'v9-8'")
  ok = subprocess.run([sys.executable, "-m", "sparkjax.tools.plan", "--config", CONFIG_1_5B, "--gpu", "h100-80gb",
                       "--set", "rl.num_microbatches=8"], cwd=ROOT, env=env, capture_output=True, text=True,
                      timeout=300)
  assert ok.returncode == 0, ok.stderr
  assert "analytic estimate" in ok.stdout and "micro-batches of 16 rows" in ok.stdout and "verdict:" in ok.stdout


@needs_libtpu
def test_real_7b_plan_on_v5p_64():
  """The real plan (~45 s here): Qwen2.5-Math-7B GRPO at the paper's batch fits a v5p-64 slice."""
  p = plan.make_plan(plan.load_config(str(ROOT / CONFIG_7B)), topology="v5p-64", config_name=CONFIG_7B)
  assert p.mesh == dict(data=1, fsdp=8, tp=4) and p.fits
  sampler, update = p.programs
  kv = next(x.bytes for x in sampler.parts if "KV cache" in x.name)
  assert kv == 28 * GiB  # 512 rows x 28 layers x 1 kv head x 4096 slots x 128 x 2 bytes x (k, v)
  assert 30 * GiB < sampler.total < 50 * GiB and 20 * GiB < update.total < 50 * GiB
  print(plan.format_plan(p))


def test_falls_back_to_cpu_devices_without_libtpu(monkeypatch):
  monkeypatch.setattr(plan, "libtpu_version", lambda: None)
  p = plan.make_plan(_tiny_config(), topology="v5p-8")
  assert p.method.startswith("CPU-device AOT") and "libtpu unavailable: the libtpu package is not installed" in p.method
  with pytest.raises(RuntimeError, match="libtpu package is not installed"):
    plan.make_plan(_tiny_config(), topology="v5p-8", aot="tpu")


def _with_prm(c, rows=8):
  c.reward = ml_collections.ConfigDict(dict(kind="prm", prm_preset="tiny", prm_rows=rows, prm_max_prompt_len=32,
                                            prm_max_new_tokens=16))
  return c


@pytest.mark.parametrize("target", [dict(topology="v5p-8"), dict(gpu="h100-80gb")])
def test_stage3_plan_holds_the_prm(target):
  """A Stage III config: the PRM's greedy decode is a program of its own with the policy's state resident, and the
  PRM's parameters are resident in the policy's programs; the totals add up."""
  c = _tiny_config()
  if "gpu" in target:
    c.mesh.update(dict(data=1, fsdp=1, tp=1))
  base = plan.make_plan(_tiny_config() if "topology" in target else c.copy_and_resolve_references(), **target)
  p = plan.make_plan(_with_prm(c), **target)
  assert [x.name for x in p.programs] == ["sampler", "update", "prm"]
  prm = p.programs[2]
  names = [x.name for x in prm.parts]
  assert names[0].startswith("PRM parameters") and "resident policy parameters (float32)" in names
  prm_params = prm.parts[0].bytes
  for before, after in zip(base.programs, p.programs[:2]):
    resident = next(x.bytes for x in after.parts if x.name.startswith("resident PRM parameters"))
    assert resident == pytest.approx(prm_params) and after.total == pytest.approx(before.total + resident, rel=1e-6)
  assert prm.total == pytest.approx(sum(x.bytes for x in prm.parts if not x.name.startswith(" ")), rel=1e-9)
  assert "prm: the PRM's greedy decode: 8 rollouts per call" in plan.format_plan(p)
  with pytest.raises(ValueError, match="PRM rows per call .* 3 does not divide"):
    plan.make_plan(_with_prm(_tiny_config(mesh=(2, 1, 2)), rows=3), topology="v5p-8")


def test_stage3_config_needs_the_prm_shapes():
  c = _tiny_config()
  c.reward = ml_collections.ConfigDict(dict(kind="prm", prm_rows=8))
  with pytest.raises(ValueError, match="reward.prm_preset"):
    plan.job_from_config(c)


@pytest.mark.parametrize("target", [dict(topology="v5p-8"), dict(gpu="h100-80gb")])
def test_coevolve_plan_adds_the_judge_programs(target):
  """A CoEvolve config: the judge's sampler and update are the policy's programs on the judge batch's shapes (the
  same model and optimizer state); with the judge batch equal to the policy's, they are the same size."""
  c = _tiny_config()
  if "gpu" in target:
    c.mesh.update(dict(data=1, fsdp=1, tp=1))
  c.coevolve = ml_collections.ConfigDict(dict(enabled=True, judge_batch=8, judge_group_size=4, max_prompt_len=16,
                                              max_new_tokens=16))
  p = plan.make_plan(c, **target)
  assert [x.name for x in p.programs] == ["sampler", "update", "judge_sampler", "judge_update"]
  for a, b in ((p.programs[0], p.programs[2]), (p.programs[1], p.programs[3])):
    assert b.total == pytest.approx(a.total, rel=0.05), (a.name, a.total, b.total)
  c.coevolve.max_prompt_len = 64  # longer judge prompts: a larger judge update
  q = plan.make_plan(c, **target)
  assert q.programs[3].total > q.programs[1].total
  assert "judge_sampler: the judge's sampling: 8 judge prompts x 4 samples" in plan.format_plan(q)
  if "topology" in target:  # 4 chips, prompts split over fsdp = 2
    c.coevolve.judge_batch = 3
    with pytest.raises(ValueError, match="judge prompts per update .* 3"):
      plan.make_plan(c, **target)
