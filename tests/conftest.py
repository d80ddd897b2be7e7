"""Shared pytest fixtures. Eight fake CPU devices are configured here, before JAX starts, for the sharding tests."""

import os

# CPU only: an installed libtpu would otherwise be probed (and its lock file taken) by every JAX process.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

# The suite's processes (xdist workers, CLI subprocesses) start with malloc's large blocks on huge pages, as
# `python -m sparkjax.main` does for itself (sparkjax.cli.huge_pages_env): XLA:CPU's per-call temporaries then stop
# faulting page by page.
from sparkjax import cli as _cli

_env = _cli.huge_pages_env()
if _env is not None:
  os.environ["GLIBC_TUNABLES"] = _env["GLIBC_TUNABLES"]

import atexit
import shutil
import signal
import subprocess
import sys
import tempfile
import time

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


QWEN3_TOK = Path(__file__).resolve().parents[1].parent / "shared" / "tokenizers" / "qwen3"
REPO = Path(__file__).resolve().parents[1]


def main_cmd(args, workdir) -> list[str]:
  """The main job's command line with config `args` and `workdir`."""
  return [sys.executable, "-m", "sparkjax.main", *args, f"--workdir={workdir}"]


def _env() -> dict:
  return dict(os.environ, JAX_PLATFORMS="cpu")


def run_main(args, workdir, timeout: float = 900):
  """Runs the main job to its end in a subprocess; it must succeed. Returns the CompletedProcess (stderr kept)."""
  r = subprocess.run(main_cmd(args, workdir), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)
  assert r.returncode == 0, r.stderr[-3000:]
  return r


def kill_when(args, workdir, marker: Path, timeout: float = 600):
  """Starts the main job and kills it with SIGKILL as soon as `marker` exists (or when it ends or `timeout`
  seconds pass): a kill -9 at a chosen moment."""
  p = subprocess.Popen(main_cmd(args, workdir), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
  deadline = time.time() + timeout
  while not marker.exists() and p.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  p.send_signal(signal.SIGKILL)
  p.wait()


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory) -> Path:
  """A tiny random Qwen2 with the real Qwen3 tokenizer as a HF directory: real text in, gibberish out (e.g. a PRM
  or judge whose output no parser can read)."""
  if not (QWEN3_TOK / "tokenizer.json").is_file():
    pytest.skip(f"shared Qwen3 tokenizer not found at {QWEN3_TOK}")
  import jax

  from sparkjax.models import hf, transformer
  from sparkjax.models.config import ModelConfig
  from sparkjax.models.tokenizer import load_tokenizer

  tok = load_tokenizer(QWEN3_TOK)
  cfg = ModelConfig.tiny("qwen2", vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_heads=4,
                         num_kv_heads=2, head_dim=8, num_layers=2, eos_token_id=tok.eos_token_id,
                         max_position_embeddings=1024, tie_embeddings=False)
  params = transformer.init_params(cfg, jax.random.key(0), std=0.02)
  out = tmp_path_factory.mktemp("tiny_qwen") / "hf"
  hf.save_params(params, cfg, out, extra_files=lambda tmp: [shutil.copy(f, tmp) for f in QWEN3_TOK.glob("*.json")])
  return out
