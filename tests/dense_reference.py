"""Dense float64 numpy references built straight from the definitions (invert the matrices)."""

from __future__ import annotations

import numpy as np
import scipy.linalg


def tridiagonal(v: np.ndarray, t: float) -> np.ndarray:
  """H = H0 + diag(v) with H0 = tridiag(t, -2, t), for one head: v (N,) -> (N, N)."""
  n = v.shape[0]
  return np.diag(v - 2.0) + t * (np.eye(n, k=1) + np.eye(n, k=-1))


def prefix_resolvents(h: np.ndarray, z: complex) -> list[np.ndarray]:
  """[(H_{0..i} - z)^{-1} for i in range(N)]."""
  n = h.shape[0]
  return [np.linalg.inv(h[: i + 1, : i + 1] - z * np.eye(i + 1)) for i in range(n)]


def causal_diag(v: np.ndarray, t: np.ndarray, z: np.ndarray, u=None, s=None) -> np.ndarray:
  """g[..., i, h] = [(H_{0..i} - z)^{-1}]_{ii}; H gets + U diag(s) U^T when u, s are given."""
  v = np.asarray(v, np.float64)
  out = np.zeros(v.shape, np.complex128)
  for idx in np.ndindex(*v.shape[:-2]):
    for h in range(v.shape[-1]):
      mat = tridiagonal(v[idx][:, h], t[h])
      if u is not None:
        uh = u[idx][:, h, :]
        mat = mat + uh @ np.diag(s[h]) @ uh.T
      for i, r in enumerate(prefix_resolvents(mat, z[h])):
        out[idx + (i, h)] = r[i, i]
  return out


def causal_diag_grad_v(v: np.ndarray, t: np.ndarray, z: np.ndarray, weights: np.ndarray) -> np.ndarray:
  """d/dv_j of sum_i Re(weights_i g_i), from dg_i/dv_j = -(G^{(i)}_{ij})^2 (j <= i). v (N, H)."""
  n, heads = v.shape
  grad = np.zeros((n, heads))
  for h in range(heads):
    for i, r in enumerate(prefix_resolvents(tridiagonal(v[:, h], t[h]), z[h])):
      grad[: i + 1, h] += np.real(weights[i, h] * -(r[i, : i + 1] ** 2))
  return grad


def full_diag(v: np.ndarray, t: np.ndarray, z: np.ndarray) -> np.ndarray:
  out = np.zeros(v.shape, np.complex128)
  for idx in np.ndindex(*v.shape[:-2]):
    for h in range(v.shape[-1]):
      mat = tridiagonal(v[idx][:, h], t[h])
      out[idx + (slice(None), h)] = np.diag(np.linalg.inv(mat - z[h] * np.eye(mat.shape[0])))
  return out


def free_resolvent(n: int, t: float, z: complex, pad: int = 4000) -> np.ndarray:
  """Free-lattice resolvent block R0 on n sites, from a long finite lattice (banded solve).

  Independent of the closed form used by bk_jax: the centre block of the (2 pad + n)-site
  lattice inverse converges to the infinite-lattice kernel exponentially fast in pad.
  """
  size = 2 * pad + n
  bands = np.zeros((3, size), np.complex128)
  bands[0, 1:] = t
  bands[1, :] = -2.0 - z
  bands[2, :-1] = t
  rhs = np.zeros((size, n), np.complex128)
  rhs[pad + np.arange(n), np.arange(n)] = 1.0
  return scipy.linalg.solve_banded((1, 1), bands, rhs)[pad : pad + n]


def birman_schwinger(v: np.ndarray, t: float, z: complex) -> np.ndarray:
  """K = |V|^{1/2} R0 |V|^{1/2} for one head: v (N,) -> (N, N)."""
  sq = np.sqrt(np.abs(v))
  return sq[:, None] * free_resolvent(v.shape[0], t, z) * sq[None, :]


def jacobi(v: np.ndarray, t: np.ndarray) -> np.ndarray:
  """H = diag(v - 2) + off-diagonals t_i between positions i-1 and i (t_0 unused): (N,) -> (N, N)."""
  n = v.shape[0]
  off = np.asarray(t, np.float64)[1:n]
  return np.diag(v - 2.0) + np.diag(off, 1) + np.diag(off, -1)


def prefix_rows(v: np.ndarray, t, z) -> np.ndarray:
  """rows[..., i, j, h] = [(H_{0..i} - diag(z_{0..i}))^{-1}]_{ij} for j <= i, 0 for j > i.

  Per-position Jacobi matrices (DESIGN §2.9), inverted densely in float64. v (..., N, H) real;
  t real and z complex, each per head (H,) or per position, broadcastable to v's shape.
  """
  v = np.asarray(v, np.float64)
  t = np.broadcast_to(np.asarray(t, np.float64), v.shape)
  z = np.broadcast_to(np.asarray(z, np.complex128), v.shape)
  n = v.shape[-2]
  out = np.zeros(v.shape[:-2] + (n, n, v.shape[-1]), np.complex128)
  for idx in np.ndindex(*v.shape[:-2]):
    for h in range(v.shape[-1]):
      mat = jacobi(v[idx][:, h], t[idx][:, h]) - np.diag(z[idx][:, h])
      for i in range(n):
        out[idx + (i, slice(0, i + 1), h)] = np.linalg.inv(mat[: i + 1, : i + 1])[i]
  return out


def causal_diag_jacobi(v: np.ndarray, t, z) -> np.ndarray:
  """g[..., i, h] = [(H_{0..i} - diag(z))^{-1}]_{ii} with per-position t and z (dense)."""
  rows = prefix_rows(v, t, z)
  return np.diagonal(rows, axis1=-3, axis2=-2).swapaxes(-1, -2)


def causal_green(v: np.ndarray, t, z, x: np.ndarray) -> np.ndarray:
  """y[..., i, h, :] = sum_{j <= i} [(H_{0..i} - diag(z))^{-1}]_{ij} x[..., j, h, :] (dense)."""
  return np.einsum("...ijh,...jhd->...ihd", prefix_rows(v, t, z), np.asarray(x))
