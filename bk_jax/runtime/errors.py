"""Errors whose message is one line: the scripts print it and exit with status 2."""

from __future__ import annotations


class ConfigError(ValueError):
  """A bad configuration value; the message is one line."""
