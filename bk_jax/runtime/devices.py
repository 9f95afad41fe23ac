"""Which JAX platform a run uses (config.device), checked before the first computation."""

from __future__ import annotations

import jax

from bk_jax.runtime.errors import ConfigError

_PLATFORMS = {"cpu": "cpu", "gpu": "cuda", "cuda": "cuda", "tpu": "tpu"}


def select_device(device: str) -> None:
  """Applies config.device before the first computation; ConfigError if JAX runs elsewhere."""
  if device == "auto":
    return
  want = _PLATFORMS[device]
  try:
    jax.config.update("jax_platforms", want)
  except Exception:  # noqa: BLE001 - backend already initialised: checked below
    pass
  try:
    got = jax.default_backend()
  except (AssertionError, RuntimeError) as e:  # the platform is not installed / has no device
    why = str(e).splitlines()[0] if str(e) else "no such backend"
    raise ConfigError(f"device={device!r} requested but this machine has no usable {want} device "
                      f"({why}); use --config.device=auto or cpu") from None
  if (want == "cuda" and got != "gpu") or (want != "cuda" and got != want):
    raise ConfigError(f"device={device!r} requested but JAX runs on {got!r}")
