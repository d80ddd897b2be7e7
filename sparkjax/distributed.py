"""Multi-process start-up, driven by the environment; a single process needs nothing.

- Cloud TPU pod slices: `jax.distributed.initialize()` finds the coordinator from the TPU metadata (it is called when
  the TPU environment names more than one worker).
- Anywhere else (several local processes, GPU clusters): set SPARKJAX_COORDINATOR=host:port,
  SPARKJAX_NUM_PROCESSES=N and SPARKJAX_PROCESS_ID=i in each process. On CPUs the collectives go through gloo.
"""

from __future__ import annotations

import os

import jax

_initialized = False


def initialize_from_env() -> None:
  global _initialized
  if _initialized:
    return
  coordinator = os.environ.get("SPARKJAX_COORDINATOR")
  if coordinator:
    try:
      n = int(os.environ["SPARKJAX_NUM_PROCESSES"])
      pid = int(os.environ["SPARKJAX_PROCESS_ID"])
    except (KeyError, ValueError) as e:
      raise ValueError("SPARKJAX_COORDINATOR is set, so SPARKJAX_NUM_PROCESSES and SPARKJAX_PROCESS_ID must be "
                       f"integers too ({e})") from None
    if not 0 <= pid < n:
      raise ValueError(f"SPARKJAX_PROCESS_ID={pid} is outside [0, SPARKJAX_NUM_PROCESSES={n})")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=n, process_id=pid)
  elif len([h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
    jax.distributed.initialize()
  _initialized = True


def is_main() -> bool:
  """True on the process that writes metrics and prints (process 0)."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier `name` (no-op for one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)
