"""Memory figures whose names say what they measure; the one reader used by train and eval.

Two different things are measured, never under one another's name:

* **device peak since start** (accelerators): `Device.memory_stats()["peak_bytes_in_use"]`, the
  allocator's high-water mark, maximised over this process's local devices. JAX (0.10: `Device`
  has `memory_stats()` and nothing that resets it) keeps it for the process's lifetime, so it is
  the peak since the process started, not the peak of the last log interval; it is named so
  (`device_peak_since_start_gb`, `perf/device_peak_since_start_gb`, console "device peak since
  start").
* **device memory now** (accelerators): `bytes_in_use` (what live arrays hold) and `pool_bytes`
  (what the allocator has taken from the device, torch's "reserved"), maximised over local
  devices: the seed's `memory_allocated_gb` / `memory_reserved_gb` record fields.
* **host RSS** (every backend): the resident set of this process (psutil), and its peak since
  start (`getrusage` ru_maxrss). On the CPU backend this is where JAX's buffers live, so it is the
  headline figure there (`host_rss_gb`, `perf/host_rss_gb`, console "host RSS"); it includes the
  Python interpreter and the JAX runtime, not only arrays.

A device whose `memory_stats()` returns None (the CPU backend, some plugins) has no device figure;
the headline is then host RSS, and says so.
"""

from __future__ import annotations

import dataclasses
import resource
import sys

import jax
import psutil

#: Headline kinds: what `MemoryUsage.value_gb` measures.
DEVICE_PEAK = "device_peak_since_start"
HOST_RSS = "host_rss"

#: TensorBoard tag and console label of each headline kind.
METRIC = {DEVICE_PEAK: "perf/device_peak_since_start_gb", HOST_RSS: "perf/host_rss_gb"}
LABEL = {DEVICE_PEAK: "device peak since start", HOST_RSS: "host RSS"}


@dataclasses.dataclass(frozen=True)
class MemoryUsage:
  """One reading. Sizes in GB (1e9 bytes); device fields are None where no stats exist."""

  device_peak_gb: float | None  # max over local devices of peak_bytes_in_use (since start)
  device_in_use_gb: float | None  # max over local devices of bytes_in_use now
  device_reserved_gb: float | None  # max over local devices of the allocator's pool_bytes now
  host_rss_gb: float  # this process's resident set now
  host_peak_rss_gb: float  # this process's peak resident set since start
  platform: str  # jax platform of the local devices ("cpu", "gpu", "tpu", ...)

  @property
  def kind(self) -> str:
    """DEVICE_PEAK where the device reports memory stats, else HOST_RSS."""
    return DEVICE_PEAK if self.device_peak_gb is not None else HOST_RSS

  @property
  def value_gb(self) -> float:
    """The headline figure: device peak since start, or host RSS now."""
    return self.device_peak_gb if self.device_peak_gb is not None else self.host_rss_gb

  @property
  def peak_gb(self) -> float:
    """Peak since start of the headline's memory: device peak, or host peak RSS."""
    return self.device_peak_gb if self.device_peak_gb is not None else self.host_peak_rss_gb

  @property
  def peak_kind(self) -> str:
    """What `peak_gb` measures: "device_peak_since_start" or "host_peak_rss_since_start"."""
    return DEVICE_PEAK if self.device_peak_gb is not None else "host_peak_rss_since_start"

  @property
  def metric(self) -> str:
    return METRIC[self.kind]

  @property
  def label(self) -> str:
    return LABEL[self.kind]

  def scalars(self) -> dict[str, float]:
    """The per-step metrics (`perf/...`, GB): host RSS always, the device peak where it exists."""
    out = {METRIC[HOST_RSS]: self.host_rss_gb}
    if self.device_peak_gb is not None:
      out[METRIC[DEVICE_PEAK]] = self.device_peak_gb
    return out


def headline(record: dict) -> tuple[str, float] | None:
  """(kind, GB) of the headline figure of a record holding `MemoryUsage.scalars()`, or None."""
  for kind in (DEVICE_PEAK, HOST_RSS):
    if record.get(METRIC[kind]) is not None:
      return kind, record[METRIC[kind]]
  return None


def _host_rss() -> tuple[float, float]:
  rss = psutil.Process().memory_info().rss
  # ru_maxrss is in KiB on Linux, in bytes on macOS
  maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
  return rss / 1e9, max(rss, maxrss) / 1e9


def _device_stats(devices) -> tuple[float | None, float | None, float | None]:
  """(peak, in use, reserved) in GB, maximised over `devices`; None where nothing reports."""
  peaks, in_use, pools = [], [], []
  for d in devices:
    if d.platform == "cpu":  # the CPU client's stats (when any) are host memory: RSS says it
      continue
    try:
      stats = d.memory_stats()
    except Exception:  # noqa: BLE001 - a backend without the call is a backend without stats
      stats = None
    if stats and "peak_bytes_in_use" in stats:
      peaks.append(stats["peak_bytes_in_use"])
      in_use.append(stats.get("bytes_in_use", 0))
      if "pool_bytes" in stats:
        pools.append(stats["pool_bytes"])
  if not peaks:
    return None, None, None
  return max(peaks) / 1e9, max(in_use) / 1e9, (max(pools) / 1e9 if pools else None)


def memory_usage(devices=None) -> MemoryUsage:
  """Reads the device and host memory figures now.

  Args:
    devices: devices to read (default: `jax.local_devices()`).

  Returns:
    MemoryUsage; `kind`/`value_gb`/`metric`/`label` give the headline figure (device peak since
    start on accelerators with stats, host RSS otherwise).
  """
  devices = jax.local_devices() if devices is None else list(devices)
  peak, in_use, reserved = _device_stats(devices)
  rss, peak_rss = _host_rss()
  return MemoryUsage(device_peak_gb=peak, device_in_use_gb=in_use, device_reserved_gb=reserved,
                     host_rss_gb=rss,
                     host_peak_rss_gb=peak_rss, platform=devices[0].platform if devices else "cpu")
