"""Two processes (jax.distributed over localhost, gloo CPU collectives) == one process with the same global batch,
including a checkpoint written by two processes and resumed by two."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

ROOT = Path(__file__).resolve().parents[1]
BASE = ["--config=configs/arith.py:runlocal", "--config.sft.steps=10", "--config.sft.optimizer.total_steps=10",
        "--config.rl.optimizer.total_steps=3", "--config.rl.eval_every=1"]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices, **extra):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
  env.update({k: str(v) for k, v in extra.items()})
  return env


def _run_two(workdir, iterations):
  port = _free_port()
  cmd = [sys.executable, "-m", "sparkjax.main", *BASE, f"--config.rl.iterations={iterations}",
         f"--workdir={workdir}"]
  procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(1, SPARKJAX_COORDINATOR=f"127.0.0.1:{port}", SPARKJAX_NUM_PROCESSES=2,
                                     SPARKJAX_PROCESS_ID=i))
           for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  return outs


def _params(workdir, step):
  """The checkpoint's params on this process's first device, whatever topology wrote them."""
  path = Path(workdir).absolute() / "checkpoints" / "rl" / str(step) / "state"
  ckpt = ocp.StandardCheckpointer()
  meta = ckpt.metadata(path)
  meta = getattr(meta, "item_metadata", meta)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta)
  return ckpt.restore(path, target)["params"]


def test_two_processes_match_one(tmp_path):
  one = tmp_path / "one"
  r = subprocess.run([sys.executable, "-m", "sparkjax.main", *BASE, "--config.rl.iterations=3",
                      f"--workdir={one}"], cwd=ROOT, env=_env(2), capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]

  two = tmp_path / "two"
  _run_two(two, iterations=2)  # stops after a checkpoint at iteration 2 ...
  outs = _run_two(two, iterations=3)  # ... which both processes resume
  assert "rl: resumed from iteration 2" in outs[0][1]
  assert "held-out accuracy" in outs[0][0] and "held-out accuracy" not in outs[1][0]  # console: process 0 only

  a, b = _params(one, 3), _params(two, 3)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5)  # cross-device reduction order differs
