"""Metrics to TensorBoard event files and the console, without stalling the device.

`MetricsLoop.push(step, device_metrics)` keeps the newest step's metrics on device and fetches the previous
step's, so the host reads step t - 1 while step t runs. Every fetched scalar is checked: NaN/Inf stops the run
with an error naming the step.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import jax
import numpy as np


class NonFiniteError(FloatingPointError):
  pass


class Writer:
  """TensorBoard scalars and text (tensorboardX event files); a no-op writer where `enabled` is False."""

  def __init__(self, logdir: str | os.PathLike, enabled: bool = True):
    self.enabled = enabled
    self._w = None
    if enabled:
      from tensorboardX import SummaryWriter

      Path(logdir).mkdir(parents=True, exist_ok=True)
      self._w = SummaryWriter(str(logdir), flush_secs=10)

  def scalars(self, step: int, metrics: dict, prefix: str = ""):
    if self._w is not None:
      for k, v in metrics.items():
        self._w.add_scalar(f"{prefix}{k}", float(v), step)

  def text(self, step: int, tag: str, text: str):
    if self._w is not None:
      self._w.add_text(tag, text, step)

  def flush(self):
    if self._w is not None:
      self._w.flush()

  def close(self):
    if self._w is not None:
      self._w.close()


def check_finite(step: int, metrics: dict, keys=("loss",)):
  for k in keys:
    if k in metrics and not math.isfinite(float(metrics[k])):
      raise NonFiniteError(f"non-finite {k}={float(metrics[k])} at step {step}; stopping before any checkpoint "
                           "is written for it")


def to_host(metrics: dict) -> dict:
  return {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}


class MetricsLoop:
  """One-step-lagged metric fetching (see the module docstring)."""

  def __init__(self, writer: Writer, prefix: str = "", derive=None):
    """derive(host_metrics) -> dict of extra metrics computed on the host (e.g. throughput)."""
    self.writer, self.prefix, self.derive = writer, prefix, derive
    self._pending: tuple[int, dict] | None = None
    self.last: dict = {}

  def push(self, step: int, metrics: dict, extra: dict | None = None) -> dict | None:
    """Queues `step`'s device metrics; returns the previous step's host metrics (or None)."""
    done = self.flush()
    self._pending = (step, metrics, extra or {})
    return done

  def flush(self) -> dict | None:
    """Fetches, checks and writes the pending step's metrics."""
    if self._pending is None:
      return None
    step, metrics, extra = self._pending
    self._pending = None
    host = to_host(metrics) | extra
    check_finite(step, host)
    if self.derive is not None:
      host |= self.derive(host)
    self.writer.scalars(step, host, self.prefix)
    self.last = host
    return host
