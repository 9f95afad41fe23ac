"""Pure, jit-able BK operators: resolvents, semiseparable Woodbury, Birman-Schwinger monitors."""

from bk_jax.ops import birman_schwinger, linear_scan, resolvent, scan, semiseparable

__all__ = ["birman_schwinger", "linear_scan", "resolvent", "scan", "semiseparable"]
