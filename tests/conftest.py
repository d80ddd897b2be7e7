"""Shared pytest fixtures. Eight fake CPU devices are configured here, before JAX starts, for the sharding tests."""

import os

# CPU only: an installed libtpu would otherwise be probed (and its lock file taken) by every JAX process.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import atexit
import shutil
import tempfile

# One persistent XLA compilation cache for the session, inherited by the CLI subprocesses: the suite runs the same
# small programs (the smoke configs' SFT step, GRPO iteration, sampler) in dozens of processes and test functions,
# and a repeated compile is read back instead (a smoke main job 34 s -> 16 s). Same executables, same results.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix="sparkjax-test-xla-cache-")
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

from pathlib import Path

import pytest

SMOLLM2_GGUF = (Path(__file__).resolve().parents[1].parent / "shared" / "models" / "smollm2-135m-instruct-gguf"
                / "SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
  """SmolLM2-135M-Instruct converted from the shared 4-bit GGUF to a HF directory, once per session."""
  if not SMOLLM2_GGUF.is_file():
    pytest.skip(f"shared SmolLM2 GGUF not found at {SMOLLM2_GGUF}")
  from sparkjax.models.gguf import convert_gguf

  return convert_gguf(SMOLLM2_GGUF, tmp_path_factory.mktemp("smollm2") / "hf").out_dir
