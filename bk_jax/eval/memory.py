"""Peak memory of the evaluation: process peak RSS on the CPU, device peak bytes elsewhere."""

from __future__ import annotations

import resource

import jax
import psutil


def peak_memory() -> dict:
  """{"kind", "peak_gb", "current_gb"}.

  kind "host_peak_rss": the process's peak resident set (getrusage ru_maxrss; the whole process,
  JAX runtime included) on the CPU backend; "device_peak_bytes": `memory_stats()`
  peak_bytes_in_use of the first local device on an accelerator.
  """
  dev = jax.local_devices()[0]
  if dev.platform != "cpu":
    stats = dev.memory_stats() or {}
    return dict(kind="device_peak_bytes", peak_gb=stats.get("peak_bytes_in_use", 0) / 1e9,
                current_gb=stats.get("bytes_in_use", 0) / 1e9)
  rss = psutil.Process().memory_info().rss
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
  return dict(kind="host_peak_rss", peak_gb=max(peak, rss) / 1e9, current_gb=rss / 1e9)
