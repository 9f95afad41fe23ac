"""bk_jax.memory: the figure is named by what it measures (host RSS on the CPU, device peak since
start on accelerators) and follows real allocations."""

import jax
import numpy as np
import psutil

from bk_jax.memory import DEVICE_PEAK, HOST_RSS, headline, memory_usage


def test_cpu_reports_host_rss_close_to_psutil():
  before = psutil.Process().memory_info().rss / 1e9
  m = memory_usage()
  after = psutil.Process().memory_info().rss / 1e9
  assert jax.default_backend() == "cpu"
  assert m.kind == HOST_RSS and m.metric == "perf/host_rss_gb" and m.label == "host RSS"
  assert m.device_peak_gb is None and m.device_in_use_gb is None  # no stand-in device figure
  assert m.value_gb == m.host_rss_gb > 0
  lo, hi = min(before, after), max(before, after)
  assert 0.98 * lo <= m.host_rss_gb <= 1.02 * hi, (before, m.host_rss_gb, after)
  assert m.peak_gb == m.host_peak_rss_gb >= m.host_rss_gb
  assert m.peak_kind == "host_peak_rss_since_start"
  assert headline(m.fields()) == (HOST_RSS, m.host_rss_gb)


def test_host_rss_follows_an_allocation():
  base = memory_usage()
  block = np.ones(300_000_000 // 8)  # 300 MB, every page written
  grown = memory_usage()
  assert grown.host_rss_gb - base.host_rss_gb > 0.25, (base, grown)
  assert grown.host_peak_rss_gb >= grown.host_rss_gb
  del block


class _Device:
  """An accelerator device as PJRT presents it; only what memory_usage reads (no GPU here)."""

  def __init__(self, stats, platform="gpu"):
    self.platform, self._stats = platform, stats

  def memory_stats(self):
    return self._stats


def test_device_without_stats_falls_back_to_named_host_rss():
  m = memory_usage([_Device(None)])
  assert m.kind == HOST_RSS and m.device_peak_gb is None and m.value_gb == m.host_rss_gb > 0
  # the real CPU device (memory_stats() is None or host memory) never yields a device figure
  assert memory_usage(jax.local_devices()).kind == HOST_RSS


def test_device_peak_is_the_max_peak_over_devices_and_named_so():
  devs = [_Device({"bytes_in_use": 1_000_000_000, "peak_bytes_in_use": 3_000_000_000}),
          _Device({"bytes_in_use": 2_000_000_000, "peak_bytes_in_use": 2_500_000_000})]
  m = memory_usage(devs)
  assert m.kind == DEVICE_PEAK == "device_peak_since_start"
  assert m.metric == "perf/device_peak_since_start_gb" and m.label == "device peak since start"
  assert m.value_gb == m.peak_gb == 3.0 and m.device_in_use_gb == 2.0
  assert m.host_rss_gb > 0  # host RSS is still reported, under its own name
  assert headline(m.fields()) == (DEVICE_PEAK, 3.0)
