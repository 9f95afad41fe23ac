"""What a run trained on: the corpus identity and the cache entry, for the results JSON.

The embedded `pystdlib` corpus is the standard library of the running Python, so it differs
between Python versions (and patch releases): losses on "the default corpus" are comparable only
when `corpus_identity(...)["sha256"]` matches. `pysource` (the standard library and every
installed package) also depends on the installed packages, whose versions are recorded. The hash
covers the source text of every split in the order the cache builder reads it (before any
data_limit cut); it is computed once per cache entry and stored next to it (`identity.json`).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys

from bk_jax.data import cache
from bk_jax.data.config import SPLITS


def corpus_identity(data_cfg) -> dict:
  """Identity of `data_cfg`'s source corpus and the cache entry the run reads.

  Args:
    data_cfg: config.data (a text dataset; the synthetic tasks return their task settings).
  Returns:
    dict(dataset, source_bytes, source_files, sha256 (hex digest of the source text of every
    split), python_version (pystdlib, and pysource of the running interpreter), roots and
    packages ("name==version", pysource only), cache_key, cache_entry (directory holding
    <split>.bin token arrays of `dtype`), dtype, split_tokens (tokens per split after
    data_limit), split_bytes, tokenizer, data_limit).
  """
  if data_cfg.dataset == "synthetic":
    return dict(dataset="synthetic", task=data_cfg.synthetic.to_dict())
  from bk_jax.data.corpus import corpus_entry, load_corpus

  source, entry, key = corpus_entry(data_cfg)
  corpus = load_corpus(data_cfg)
  path = entry / "identity.json"
  ident = None
  if path.is_file():
    try:
      ident = json.loads(path.read_text())
    except ValueError:
      ident = None
  if ident is None or ident.get("cache_key") != key:
    h = hashlib.sha256()
    for split in SPLITS:
      h.update(f"\0split:{split}\0".encode())
      for piece in source.pieces(split):
        h.update(piece.text.encode("utf-8"))
    ident = dict(cache_key=key, sha256=h.hexdigest(), source_bytes=int(source.total_bytes),
                 source_files=sum(1 for e in source.fingerprint if e and e[0] != "split"
                                  and isinstance(e, list)))
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(ident))
    os.replace(tmp, path)
  out = dict(dataset=data_cfg.dataset, source_bytes=ident["source_bytes"],
             source_files=ident["source_files"], sha256=ident["sha256"])
  if data_cfg.dataset == "pystdlib" or (data_cfg.dataset == "pysource" and not data_cfg.path):
    out["python_version"] = platform.python_version()
    out["python_implementation"] = sys.implementation.name
  if data_cfg.dataset == "pysource":
    from bk_jax.data.pysource import library_roots, package_versions

    out["roots"] = {label: str(root) for label, root in library_roots(data_cfg.path)}
    out["packages"] = package_versions(data_cfg.path)
  meta = cache.read_meta(entry) or {}
  out.update(cache_key=key, cache_entry=str(entry), tokenizer=data_cfg.tokenizer,
             dtype=meta.get("dtype"),
             data_limit=int(data_cfg.data_limit),
             split_tokens={s: int(len(corpus.splits[s])) for s in SPLITS},
             split_bytes={s: float(meta.get("bytes", {}).get(s, corpus.split_bytes[s])) for s in SPLITS})
  return out
