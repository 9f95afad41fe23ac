"""The files of the `pysource` dataset: every .py file of a Python installation.

With ``data.path`` empty the installation is the running interpreter: its standard library
(``sysconfig``'s "stdlib", without the third-party directories inside it) and every
site-packages directory it imports from (``site.getsitepackages()``: a virtualenv's own, not
the base interpreter's). With ``data.path`` set, every .py file under that directory (another
prefix, a checkout, a vendored tree). Test-suite directories are skipped as for `pystdlib`
(``sources.PYSTDLIB_EXCLUDE``: they hold deliberately mis-encoded files and generated data).

Each file is keyed by ``<root label>/<path relative to the root>`` (e.g. "stdlib/json/decoder.py",
"site-packages/numpy/linalg/_linalg.py"): the key, not the machine's absolute path, decides the
split (``sources.stable_split``), so the split of a file never changes when other files are added
or removed, and two machines with the same package versions split identically.
"""

from __future__ import annotations

import importlib.metadata
import os
import site
import sysconfig
from pathlib import Path

from bk_jax.data.errors import DataError

#: Directories skipped everywhere (the same rule as the standard-library corpus).
EXCLUDE = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test",
                     "__pycache__"})


def library_roots(path: str = "") -> list[tuple[str, Path]]:
  """The directories whose .py files make up the corpus, each with the label of its keys.

  Args:
    path: "" for the running interpreter; else a directory (a prefix, a source tree).

  Returns:
    [(label, root)]: ("stdlib", the standard library) and ("site-packages", each site
    directory) for the running interpreter; [("tree", Path(path))] otherwise. Labels are unique
    per key prefix: a second site directory gets "site-packages1", ...

  Raises:
    DataError: ``path`` is not an existing directory.
  """
  if path:
    root = Path(path)
    if not root.is_dir():
      raise DataError(f"data.path {path!r} is not a directory: dataset 'pysource' reads every .py "
                      f"file under a Python prefix or source tree (leave data.path empty for the "
                      f"running interpreter's standard library and site-packages)")
    return [("tree", root.resolve())]
  roots = [("stdlib", Path(sysconfig.get_paths()["stdlib"]).resolve())]
  sites = [Path(p).resolve() for p in site.getsitepackages() if Path(p).is_dir()]
  for i, p in enumerate(dict.fromkeys(sites)):  # ordered, without duplicates
    roots.append((f"site-packages{i or ''}", p))
  return roots


def _scan(label: str, root: str, rel: str, out: list[tuple[str, str]]) -> None:
  """Appends (path, key) of every .py file under root/rel (os.scandir: one system call per
  directory, so listing the ~6,000 files of a virtualenv takes tens of milliseconds)."""
  with os.scandir(os.path.join(root, rel) if rel else root) as it:
    entries = list(it)
  for e in entries:
    if e.is_dir(follow_symlinks=False):  # as os.walk: symlinked directories are not entered
      if e.name not in EXCLUDE and not e.name.startswith("."):
        _scan(label, root, f"{rel}{e.name}/", out)
    elif e.name.endswith(".py") and e.is_file():  # a dangling symlink is not a file
      out.append((e.path, f"{label}/{rel}{e.name}"))


def python_files(path: str = "") -> tuple[list[tuple[str, Path]], list[tuple[str, str]]]:
  """Every .py file of the corpus, sorted by key.

  Args:
    path: see `library_roots`.

  Returns:
    (the roots, [(file path, key)]) with key = "<label>/<posix path relative to the root>".

  Raises:
    DataError: a bad path, or no .py file under it.
  """
  roots = library_roots(path)
  files: list[tuple[str, str]] = []
  for label, root in roots:
    _scan(label, str(root), "", files)
  if not files:
    where = path or ", ".join(str(r) for _, r in roots)
    raise DataError(f"no .py files under {where!r} (dataset 'pysource'; skipped directories: "
                    f"{', '.join(sorted(EXCLUDE))})")
  files.sort(key=lambda t: t[1])  # deterministic order, independent of the directory order
  return roots, files


def package_versions(path: str = "") -> list[str]:
  """"name==version" of every distribution installed in the corpus's roots, sorted by name.

  Args:
    path: see `library_roots`; for a directory, the distributions whose metadata
      (``*.dist-info`` / ``*.egg-info``) lies anywhere under it.

  Returns:
    The sorted, de-duplicated list (what decides the site-packages part of the corpus).
  """
  if path:
    where = sorted({str(p.parent) for pattern in ("*.dist-info", "*.egg-info")
                    for p in Path(path).rglob(pattern) if p.is_dir()})
  else:
    where = [str(r) for label, r in library_roots() if label != "stdlib"]
  dists = importlib.metadata.distributions(path=where) if where else []
  found = {f"{d.metadata['Name']}=={d.version}" for d in dists if d.metadata["Name"]}
  return sorted(found, key=str.lower)
